"""fit_svi against closed-form posteriors; vectorization detection; the convergence rule;
a custom pyro.param guide; no global state left behind."""

from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

import ppl_models
from ppl_models.svi import local_params
from ppl_models.vi.convergence import convergence_report
from ppl_models.vi.fitting import fit_svi
from ppl_models.vi.traces import max_plate_nesting
from ppl_models.vi.vectorization import vectorization_ok


def normal_mean(x, sigma=0.8, mu0=0.0, tau0=10.0):
    mu = pyro.sample("mu", dist.Normal(mu0, tau0))
    with pyro.plate("obs", len(x)):
        pyro.sample("x", dist.Normal(mu, sigma), obs=x)


X_OBS = [2.3, 1.9, 3.1, 2.8, 1.4, 2.6, 2.2, 3.4, 1.8, 2.5]


def normal_mean_posterior(x, sigma=0.8, mu0=0.0, tau0=10.0):
    precision = 1 / tau0**2 + len(x) / sigma**2
    return (mu0 / tau0**2 + sum(x) / sigma**2) / precision, precision**-0.5


def regression(X, y, sigma):
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (X.shape[-1],)))
    pyro.sample("y", dist.Normal(beta @ X.T, sigma).to_event(1), obs=y)


def regression_indexed(X, y, sigma):
    """The same model written with beta[0]-style indexing: wrong under a particle plate."""
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (X.shape[-1],)))
    mean = beta[0] * X[:, 0] + beta[1] * X[:, 1] + beta[2] * X[:, 2]
    pyro.sample("y", dist.Normal(mean, sigma).to_event(1), obs=y)


def regression_data(n=30, sigma=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    X[:, 1] += 0.8 * X[:, 0]
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + sigma * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    return {"X": X, "y": y, "sigma": sigma}


def regression_posterior(data):
    X, y, s = data["X"], data["y"], data["sigma"]
    precision = X.T @ X / s**2
    cov = torch.linalg.inv(precision)
    return cov @ X.T @ y / s**2, cov, precision


def q_moments(fit, n=40000):
    """Mean and covariance of the fitted guide in the unconstrained space."""
    with local_params(), torch.no_grad():
        posterior = fit.guide.get_posterior()
        if fit.guide_name == "auto-iaf":
            z = posterior.sample((n,))
            return z.mean(0), torch.atleast_2d(torch.cov(z.T))
        if fit.guide_name == "auto-normal":
            return posterior.mean, torch.diag(posterior.variance)
        return posterior.mean, posterior.covariance_matrix


@pytest.mark.parametrize("init", ["laplace", "feasible"])
def test_normal_mean_matches_the_closed_form(init):
    m, s = normal_mean_posterior(X_OBS)
    steps = 400 if init == "laplace" else 1000  # from a feasible point: the default steps
    fit = fit_svi(normal_mean, "auto-normal", {"x": X_OBS}, steps=steps, device="cpu", init=init)
    mean, cov = q_moments(fit)
    assert abs(float(mean[0]) - m) / s < 0.05
    assert abs(float(cov[0, 0]) ** 0.5 / s - 1) < 0.05
    assert fit.vectorized and fit.guide_name == "auto-normal" and fit.dtype == torch.float64
    assert len(fit.losses) == steps and fit.settings["init"] == init
    assert fit.convergence["rule"] and "Stan ADVI" in fit.convergence["rule"]


@pytest.mark.parametrize("name", ["auto-normal", "auto-mvn", "auto-lowrank", "auto-iaf"])
def test_linear_regression_matches_the_closed_form(name):
    data = regression_data()
    mean, cov, precision = regression_posterior(data)
    fit = fit_svi(regression, name, data, steps=300, device="cpu")
    q_mean, q_cov = q_moments(fit)
    sd = cov.diagonal().sqrt()
    assert ((q_mean - mean).abs() / sd).max() < 0.1
    if name == "auto-normal":  # the mean-field optimum: sds 1 / sqrt(precision_ii)
        target = precision.diagonal().rsqrt()
        assert ((q_cov.diagonal().sqrt() / target) - 1).abs().max() < 0.1
    else:
        assert ((q_cov.diagonal().sqrt() / sd) - 1).abs().max() < 0.1
    if name in ("auto-mvn", "auto-iaf"):
        corr = cov / sd[:, None] / sd[None, :]
        q_sd = q_cov.diagonal().sqrt()
        q_corr = q_cov / q_sd[:, None] / q_sd[None, :]
        assert (q_corr - corr).abs().max() < 0.05


def test_a_full_data_fit_is_traced_and_gives_the_plain_fit_to_the_last_digit():
    # the traced objective replays the plain Trace_ELBO's tensor operations on the same draws:
    # the same seeded fit ends at the same parameters; asked for the plain objective, the fit
    # runs Pyro's handlers at every step and says so
    data = regression_data()
    traced = fit_svi(regression, "auto-mvn", data, steps=150, device="cpu")
    plain = fit_svi(regression, "auto-mvn", data, steps=150, device="cpu", objective="plain")
    assert (traced.extras["objective"], plain.extras["objective"]) == ("traced", "plain")
    for (name, mine), (_, theirs) in zip(
        traced.guide.named_parameters(), plain.guide.named_parameters(), strict=True
    ):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12, msg=name)
    np.testing.assert_allclose(traced.losses, plain.losses, rtol=1e-12)


def branching_normal_mean(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    if float(x.sum()) > 0:  # reads a value into Python: a trace would freeze the branch
        with pyro.plate("obs", len(x)):
            pyro.sample("x", dist.Normal(mu, 0.8), obs=x)


def test_a_model_that_cannot_be_traced_is_fitted_plainly_without_a_warning(recwarn):
    fit = fit_svi(branching_normal_mean, "auto-normal", {"x": X_OBS}, steps=300, device="cpu")
    assert fit.extras["objective"].startswith("plain (the loss cannot be traced")
    assert not [w for w in recwarn if "traced objective" in str(w.message)]
    m, s = normal_mean_posterior(X_OBS)
    mean, cov = q_moments(fit)
    assert abs(float(mean[0]) - m) / s < 0.1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_whitening_fits_a_posterior_with_tiny_sds(dtype):
    """Posterior sd 1e-3 around 1 (the sblri-blr trap): the mean within 0.1 posterior sd."""
    g = torch.Generator().manual_seed(3)
    x = (1.0 + 0.01 * torch.randn(100, generator=g, dtype=torch.float64)).tolist()
    m, s = normal_mean_posterior(x, sigma=0.01, tau0=10.0)
    assert 5e-4 < s < 2e-3
    fit = fit_svi(normal_mean, "auto-normal", {"x": x, "sigma": 0.01}, steps=300, dtype=dtype)
    mean, cov = q_moments(fit)
    assert fit.dtype == dtype
    assert abs(float(mean[0]) - m) / s < 0.1
    assert abs(float(cov[0, 0]) ** 0.5 / s - 1) < 0.1


def test_beta0_indexing_is_detected_and_the_loop_gives_the_same_answer():
    data = regression_data()
    mean, cov, _ = regression_posterior(data)
    with local_params():
        good = fit_svi(regression, "auto-mvn", data, steps=10, device="cpu")
        assert vectorization_ok(regression, good.guide, good.data, good.max_plate_nesting)
        assert not vectorization_ok(
            regression_indexed, good.guide, good.data, good.max_plate_nesting
        )
    sd = cov.diagonal().sqrt()
    for vectorize, mode in ((None, "vmap"), (False, "loop")):  # vmapped, or looped if asked
        fit = fit_svi(
            regression_indexed,
            "auto-mvn",
            data,
            steps=200,
            particles=4,
            device="cpu",
            vectorize=vectorize,
        )
        assert fit.vectorization == mode
        if vectorize is None:
            assert any("beta[0]" in note for note in fit.notes)
        q_mean, q_cov = q_moments(fit)
        assert ((q_mean - mean).abs() / sd).max() < 0.1
        assert ((q_cov.diagonal().sqrt() / sd) - 1).abs().max() < 0.15


def test_eight_schools_plates_and_deterministic_sites_vectorize():
    def model(J, y, sigma):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", J):
            eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
            theta = pyro.deterministic("theta", mu + tau * eta)
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    data = {
        "J": 8,
        "y": [28.0, 8, -3, 7, -1, 1, 18, 12],
        "sigma": [15.0, 10, 16, 11, 9, 11, 10, 18],
    }
    fit = fit_svi(model, "auto-normal", data, steps=30, device="cpu")
    assert fit.vectorized and fit.max_plate_nesting == 1
    assert fit.data["y"].dtype == torch.float64


def test_custom_param_guide_and_on_step():
    def guide(x, sigma=0.8, mu0=0.0, tau0=10.0):
        loc = pyro.param("loc", torch.tensor(0.0, dtype=torch.float64))
        scale = pyro.param(
            "scale", torch.tensor(1.0, dtype=torch.float64), constraint=constraints.positive
        )
        pyro.sample("mu", dist.Normal(loc, scale))

    seen = []

    def on_step(step, loss, g):
        seen.append(step)
        return step == 399  # stop after 400 steps

    m, s = normal_mean_posterior(X_OBS)
    fit = fit_svi(normal_mean, guide, {"x": X_OBS}, steps=1500, device="cpu", on_step=on_step)
    assert fit.guide_name == "custom" and len(seen) == 400
    assert fit.extras["stopped_early"]
    # the last iterate of a run stopped inside its window: the guide's params, in the store
    assert abs(float(pyro.param("loc").detach()) - m) < 0.2


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="steps must be"):
        fit_svi(normal_mean, "auto-normal", {"x": X_OBS}, steps=0)
    with pytest.raises(ValueError, match="lr_final must be"):
        fit_svi(normal_mean, "auto-normal", {"x": X_OBS}, lr=0.01, lr_final=0.1)
    with pytest.raises(ValueError, match="guide must be one of"):
        fit_svi(normal_mean, "auto-bogus", {"x": X_OBS})
    with pytest.raises(ValueError, match="objective must be one of plain, traced, got 'jit'"):
        fit_svi(normal_mean, "auto-normal", {"x": X_OBS}, objective="jit")
    with pytest.raises(ValueError, match="the key 'extra' that model"):
        fit_svi(normal_mean, "auto-normal", {"x": X_OBS, "extra": 1})
    with pytest.raises(ValueError, match="'x' contains NaN"):
        fit_svi(normal_mean, "auto-normal", {"x": [1.0, float("nan")]})


def test_convergence_rule_on_known_traces():
    rng = np.random.default_rng(0)
    flat = 100.0 + rng.normal(0, 1, 1000)
    report = convergence_report(flat)
    assert report["held"] and report["step"] == 200 and "held from step 200" in report["status"]
    drifting = 1000.0 + np.linspace(10, 0, 1000) + rng.normal(0, 0.1, 1000)
    report = convergence_report(drifting)
    assert not report["held"] and report["step"] is None
    # the relative rule alone would pass: |ELBO| is large, the drift is not noise
    assert report["relative_changes"][-1] < 0.01
    assert not convergence_report(flat[:150])["held"]
    # a loss near 0 (a posterior without data, as Neal's funnel): a flat trace is converged,
    # where a change divided by |ELBO| ~ 0.001 would have read as a 10% movement
    near_zero = 0.001 + rng.normal(0, 0.01, 1000)
    assert convergence_report(near_zero)["held"]
    climbing = 1.0 + np.linspace(0.5, 0, 1000) + rng.normal(0, 0.01, 1000)
    assert not convergence_report(climbing)["held"]


def test_max_plate_nesting_counts_plates():
    with local_params():
        trace = pyro.poutine.trace(normal_mean).get_trace(torch.tensor(X_OBS))
    assert max_plate_nesting(trace) == 1


def test_user_style_script_after_import_keeps_its_param_store():
    """Importing ppl_models (and using it) changes no Pyro setting: plain SVI still works."""
    assert ppl_models.fit_svi is fit_svi
    fit_svi(normal_mean, "auto-normal", {"x": X_OBS}, steps=5, device="cpu")
    pyro.clear_param_store()
    x = torch.tensor(X_OBS)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("obs", len(x)):
            pyro.sample("x", dist.Normal(mu, 0.8), obs=x)

    def guide(x):
        loc = pyro.param("q_loc", torch.tensor(0.0))
        scale = pyro.param("q_scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO())
    for _ in range(20):
        svi.step(x)
    assert {"q_loc", "q_scale"} <= set(pyro.get_param_store().keys())
    auto = pyro.infer.autoguide.AutoNormal(model)
    svi = pyro.infer.SVI(model, auto, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO())
    svi.step(x)
    assert any(name.startswith("AutoNormal") for name in pyro.get_param_store().keys())


def test_meanfield_elbo_with_a_custom_guide_matches_the_closed_form():
    def guide(x, sigma=0.8, mu0=0.0, tau0=10.0):
        loc = pyro.param("m_loc", torch.tensor(2.0, dtype=torch.float64))
        scale = pyro.param(
            "m_scale", torch.tensor(0.5, dtype=torch.float64), constraint=constraints.positive
        )
        pyro.sample("mu", dist.Normal(loc, scale))

    m, s = normal_mean_posterior(X_OBS)
    fit = fit_svi(normal_mean, guide, {"x": X_OBS}, steps=600, lr=0.02, elbo="meanfield")
    assert fit.settings["elbo"] == "meanfield"
    assert abs(float(pyro.param("m_loc").detach()) - m) / s < 0.1
    assert abs(float(pyro.param("m_scale").detach()) / s - 1) < 0.1
    with pytest.raises(ValueError, match="elbo must be one of"):
        fit_svi(normal_mean, "auto-normal", {"x": X_OBS}, elbo="renyi")


@pytest.mark.parametrize("guide", ["auto-normal", "auto-mvn", "auto-lowrank", "auto-iaf"])
def test_a_model_without_latent_variables_is_refused_in_plain_words(guide):
    """Pyro's "AutoWhitenedNormal found no latent variables; Use an empty guide instead" named
    an internal class and gave advice the command line cannot follow."""

    def observed_only(x):
        with pyro.plate("n", len(x)):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError) as refused:
        fit_svi(observed_only, guide, {"x": X_OBS}, steps=5)
    message = str(refused.value)
    assert "no latent variables" in message and "obs=" in message
    assert "Auto" not in message and "empty guide" not in message


def default_dtype_regression(X, y):
    """Constants made with the default dtype (an identity, data cast to it) meet the latents."""
    n, d = X.shape
    X = torch.as_tensor(X, dtype=torch.get_default_dtype())
    beta = pyro.sample("beta", dist.MultivariateNormal(torch.zeros(d), 10.0 * torch.eye(d)))
    mean = (X @ beta.unsqueeze(-1)).squeeze(-1)
    pyro.sample("y", dist.MultivariateNormal(mean, torch.eye(n)), obs=y)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_runs_dtype_is_the_default_dtype_inside_fit_and_diagnosis(dtype):
    from ppl_models.vi.diagnose import diagnose

    g = torch.Generator().manual_seed(3)
    X = torch.randn(20, 2, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -0.5], dtype=torch.float64) + torch.randn(20, generator=g)
    precision = X.T @ X + torch.eye(2, dtype=torch.float64) / 10.0  # conjugate: exact posterior
    mean = torch.linalg.solve(precision, X.T @ y)
    before = torch.get_default_dtype()
    fit = fit_svi(default_dtype_regression, "auto-mvn", {"X": X, "y": y}, dtype=dtype, steps=500)
    summary = diagnose(fit, None, draws=2000, progress=False, mode_starts=0).summary
    assert torch.get_default_dtype() == before  # scoped to the calls
    assert fit.dtype == getattr(torch, dtype) and fit.vectorized
    sds = torch.linalg.inv(precision).diagonal().sqrt()
    for j, p in enumerate(summary["parameters"][:2]):
        assert abs(p["mean"] - float(mean[j])) < 0.1 * float(sds[j]), p


def test_a_minibatch_fits_noise_is_not_taken_for_movement():
    # the conjugate normal mean fitted on batches of 4 of its 10 observations: the losses are
    # noisy (the window means move by over 1% of a 13-nat ELBO), the answer exact
    from ppl_models.vi.script import load_script

    script = load_script(Path(__file__).resolve().parents[1] / "runs/normal_mean.py")
    data = script.load_data()
    fit = fit_svi(script.model, "auto-normal", data, data_plate="obs", batch_size=4)
    assert fit.converged, fit.convergence["status"]
    x, s = torch.tensor(data["x"], dtype=torch.float64), data["sigma"]
    precision = 1 / 10.0**2 + len(x) / s**2
    mean = float(x.sum() / s**2 / precision)
    with local_params(), torch.no_grad():
        draws = fit.guide.get_posterior().sample((20_000,))[:, 0]
    assert abs(float(draws.mean()) - mean) < 0.1 * precision**-0.5
    # a drifting trace is still not converged, however noisy
    rng = np.random.default_rng(0)
    drifting = 100 + np.linspace(0, 5, 1000) + rng.normal(0, 0.1, 1000)
    assert not convergence_report(drifting, subsampled=True)["held"]
    # without minibatches the noise allowance does not apply: a noisy full-data trace whose
    # window means move by 2 to 5% is not called converged
    noisy = 10 + rng.normal(0, 3, 1000)
    assert convergence_report(noisy, subsampled=True)["held"]
    assert not convergence_report(noisy)["held"]
