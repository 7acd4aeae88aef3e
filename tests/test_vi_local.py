"""Local latents in the data plate: minibatch and data-parallel fits.

Truths, none of them the package's own output:

- the conjugate hierarchy :math:`y_i \\sim N(\\theta_i, 1)`, :math:`\\theta_i \\sim N(\\mu, 1)`,
  :math:`\\mu \\sim N(0, 10^2)`, whose posterior is Gaussian in closed form: :math:`\\mu \\mid y
  \\sim N(m, v)` with :math:`1/v = 1/100 + N/2`, :math:`m = v \\sum_i y_i / 2`, and
  :math:`\\theta_i \\mid \\mu, y \\sim N((y_i + \\mu)/2, 1/2)`; so :math:`E[\\theta_i \\mid y] =
  (y_i + m)/2`, :math:`\\mathrm{Var}[\\theta_i \\mid y] = 1/2 + v/4`, :math:`\\mathrm{Cov}(\\mu,
  \\theta_i) = v/2`;
- scipy's normal densities (the guide's density, the model's full-data log joint);
- the single-process full-data gradient, against which the average DDP takes over two ranks'
  halves is compared;
- the shipped scripts' NUTS reference draws (NumPyro, independent of the package).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from ranks import cli_ok, spawned_ranks
from scipy import stats

from ppl_models import cli, distributed, svi
from ppl_models.batches import index_batches
from ppl_models.runs import read_json
from ppl_models.vi import initialization
from ppl_models.vi.data_plate import find_data_plate, subsampled
from ppl_models.vi.diagnose import diagnose
from ppl_models.vi.fitting import fit_svi
from ppl_models.vi.local import LocalLatentGuide, local_guide_refusal
from ppl_models.vi.logweights import draw_log_weights
from ppl_models.vi.references import Reference, load_reference
from ppl_models.vi.script import load_script

RUNS = Path(__file__).resolve().parents[1] / "runs"
N = 40
Y = torch.tensor(
    np.round(
        np.random.default_rng(1).normal(1.0, 1.0, N) + np.random.default_rng(2).normal(size=N), 6
    )
)


def model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 10.0))
    with pyro.plate("obs", len(y)) as i:
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y[i])


def exact(y=Y):
    """The closed-form posterior: means, sds of (mu, theta_1..N), and the covariance."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    v = 1.0 / (1.0 / 100.0 + n / 2.0)
    m = v * y.sum() / 2.0
    mean = np.concatenate([[m], (y + m) / 2.0])
    cov = np.empty((n + 1, n + 1))
    cov[0, 0] = v
    cov[0, 1:] = cov[1:, 0] = v / 2.0
    cov[1:, 1:] = v / 4.0 + 0.5 * np.eye(n)
    return mean, np.sqrt(np.diag(cov)), cov


def exact_reference(draws=2500, chains=4, seed=0) -> Reference:
    mean, _, cov = exact()
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal(mean, cov, size=(chains, draws))
    return Reference({"mu": z[..., 0], "theta": z[..., 1:]}, "exact draws (closed form)")


def guide_means(fit) -> np.ndarray:
    """The guide's means of (mu, theta): its unconstrained mean (identity transforms here)."""
    with svi.local_params():
        return fit.guide.unconstrained_mean().detach().cpu().numpy()


# ----------------------------------------------------------------------------- the pieces


def test_the_data_plate_names_its_latents_with_the_dim_its_indices_take():
    def vector_local(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("obs", len(y)) as i:
            w = pyro.sample("w", dist.Normal(mu, 1.0).expand([3]).to_event(1))
            pyro.sample("y", dist.Normal(w.sum(-1), 1.0), obs=y[i])

    plate = find_data_plate(poutine.trace(vector_local).get_trace(Y), "obs")
    assert (plate.sites, plate.latents, plate.latent_dims) == (("y",), ("w",), (-2,))
    values = {"w": torch.arange(N * 3.0).reshape(N, 3)}
    cut = plate.local_values(values, torch.tensor([2, 5]))["w"]
    assert cut.tolist() == [[6.0, 7.0, 8.0], [15.0, 16.0, 17.0]]


@pytest.mark.parametrize("family", ["auto-normal", "auto-mvn"])
def test_the_guide_draws_the_subsample_from_its_indexed_parameters(family):
    indices = torch.tensor([3, 17, 29])
    with svi.local_params():
        guide = LocalLatentGuide(
            family, model, find_data_plate(poutine.trace(model).get_trace(Y), "obs")
        )
        guide.setup(y=Y)
        with torch.no_grad():
            guide.local_locs[0].copy_(torch.linspace(-1.0, 1.0, N, dtype=torch.float64))
        with subsampled("obs", indices):
            trace = poutine.trace(guide).get_trace(y=Y)
        whole = poutine.trace(guide).get_trace(y=Y)
    aux = trace.nodes["theta_unconstrained"]
    mu = trace.nodes["mu"]["value"].detach().reshape(1)
    loc, scale = guide._local_loc_scale(0, "theta", None, guide.deviation(mu))
    loc, scale = loc.detach()[indices].numpy(), scale.detach()[indices].numpy()
    assert trace.nodes["theta"]["value"].shape == (3,) and whole.nodes["theta"]["value"].shape == (
        N,
    )
    fn = getattr(aux["fn"], "base_dist", aux["fn"])
    np.testing.assert_allclose(fn.loc.detach().numpy(), loc, rtol=1e-12)
    # the guide's local log-density is scaled like the model's: N/|B| times the batch's
    trace.compute_log_prob()
    logpdf = stats.norm(loc, scale).logpdf(aux["value"].detach().numpy()).sum()
    assert float(aux["log_prob_sum"].detach()) == pytest.approx(N / 3 * logpdf, rel=1e-10)


@pytest.mark.parametrize("dense", [True, False], ids=["hessian", "global-columns"])
def test_the_start_is_the_closed_form_posterior_from_the_hessian_or_its_global_columns(
    dense, monkeypatch
):
    # above DENSE_CURVATURE coordinates only the globals' columns of the Hessian are formed
    if not dense:
        monkeypatch.setattr(initialization, "DENSE_CURVATURE", 10)
    with svi.local_params(), torch.no_grad():
        guide = LocalLatentGuide(
            "auto-mvn", model, find_data_plate(poutine.trace(model).get_trace(Y), "obs")
        )
        guide.setup(y=Y)
        posterior = guide.globals.get_posterior()
        zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        c0, sd = guide._local_loc_scale(0, "theta", None, guide.deviation(zero))
        c1, _ = guide._local_loc_scale(0, "theta", None, guide.deviation(one))
    assert (guide.start.scale_tril is not None) == dense
    mean, _, cov = exact()
    assert float(posterior.mean) == pytest.approx(mean[0], abs=1e-6)
    assert float(posterior.variance) == pytest.approx(cov[0, 0], rel=1e-9)
    # theta_i | mu, y ~ N((y_i + mu) / 2, 1/2): intercept y_i / 2, slope 1/2, sd sqrt(1/2)
    np.testing.assert_allclose(c0.numpy(), Y.numpy() / 2, atol=1e-6)
    np.testing.assert_allclose((c1 - c0).numpy(), 0.5, rtol=1e-9)
    np.testing.assert_allclose(sd.numpy(), np.sqrt(0.5), rtol=1e-9)


def test_the_flat_posterior_is_the_joint_gaussian_the_guide_defines():
    # auto-mvn: u_G ~ N(a, S), theta | u_G ~ N(c + b u_G, diag s^2), a joint Gaussian in closed form
    with svi.local_params(), torch.no_grad():
        guide = LocalLatentGuide(
            "auto-mvn", model, find_data_plate(poutine.trace(model).get_trace(Y), "obs")
        )
        guide.setup(y=Y)
        guide.local_dependence[0].add_(0.3)  # a dependence away from its start
        posterior = guide.globals.get_posterior()
        a, s = float(posterior.mean), float(posterior.variance)
        zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        c, sd = guide._local_loc_scale(0, "theta", None, guide.deviation(zero))
        c1, _ = guide._local_loc_scale(0, "theta", None, guide.deviation(one))
        b = (c1 - c).numpy()
        mean = np.concatenate([[a], c.numpy() + b * a])
        cov = np.empty((N + 1, N + 1))
        cov[0, 0] = s
        cov[0, 1:] = cov[1:, 0] = b * s
        cov[1:, 1:] = np.outer(b, b) * s + np.diag(sd.numpy() ** 2)
        joint = guide.get_posterior()
        u = joint.sample((50,))
        expected = stats.multivariate_normal(mean, cov).logpdf(u.numpy())
        np.testing.assert_allclose(joint.log_prob(u).numpy(), expected, rtol=1e-9)
        big = joint.sample((40000,)).numpy()
    assert np.abs(big.mean(0) - mean).max() < 5 * np.sqrt(cov.diagonal().max() / 40000)


def test_discrete_sites_or_dynamic_supports_beside_local_latents_are_refused_when_subsampled():
    plate = find_data_plate(poutine.trace(model).get_trace(Y), "obs")
    assert "do not enumerate yet" in local_guide_refusal(["z"], [], "auto-normal", plate)
    assert "dynamic supports" in local_guide_refusal(None, ["b"], "auto-normal", plate)
    assert local_guide_refusal(None, [], "auto-normal", plate) is None


# ----------------------------------------------------------------------------- fits


@pytest.mark.parametrize("family", ["auto-normal", "auto-mvn"])
def test_minibatch_fit_recovers_the_closed_form_posterior(family):
    # from Pyro's start (no Laplace), so that SVI itself must find every mean
    fit = fit_svi(model, family, {"y": Y}, data_plate="obs", batch_size=10, init="prior")
    assert isinstance(fit.guide, LocalLatentGuide) and fit.vectorization == "plate"
    assert any("batch of 10" in note for note in fit.notes)
    mean, sd, cov = exact()
    errors = (guide_means(fit) - mean) / sd
    assert np.abs(errors).max() < 0.1, errors
    # auto-mvn holds the exact posterior; mean-field's optimum on a Gaussian target has the sds
    # 1 / sqrt(diag(precision)): 1 / sqrt(1/100 + N) for mu, 1 / sqrt(2) for each theta_i
    target = sd if family == "auto-mvn" else 1.0 / np.sqrt(np.diag(np.linalg.inv(cov)))
    with svi.local_params(), torch.no_grad():
        draws = fit.guide.get_posterior().sample((20000,)).numpy()
    np.testing.assert_allclose(draws.std(0) / target, 1.0, atol=0.1)


def unbroadcast_model(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(1, dtype=y.dtype), 10.0).to_event(1))
    with pyro.plate("obs", len(y)) as i:
        theta = pyro.sample("theta", dist.Normal(mu[0], 1.0))  # mu[0]: vmapped, not plated
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y[i])


def test_a_model_evaluated_by_vmap_fits_its_local_latents_on_minibatches():
    fit = fit_svi(
        unbroadcast_model, "auto-mvn", {"y": Y}, data_plate="obs", batch_size=10, init="prior"
    )
    assert isinstance(fit.guide, LocalLatentGuide) and fit.vectorization == "vmap"
    mean, sd, _ = exact()
    errors = (guide_means(fit) - mean) / sd
    assert np.abs(errors).max() < 0.1, errors
    with svi.local_params(), torch.no_grad():
        draws = fit.guide.get_posterior().sample((20000,)).numpy()
    np.testing.assert_allclose(draws.std(0) / sd, 1.0, atol=0.1)


def test_a_custom_autonormal_given_the_plate_by_create_plates_is_fitted_on_minibatches():
    # Pyro's own AutoNormal: its plate takes the fit's indices (no fixed subsample_size)
    with svi.local_params():
        guide = AutoNormal(model, create_plates=lambda y: pyro.plate("obs", len(y)))
        fit_svi(model, guide, {"y": Y}, data_plate="obs", batch_size=10)
        with torch.no_grad():
            locs = np.concatenate([guide.locs.mu.reshape(1), guide.locs.theta]).astype(float)
            scales = np.concatenate([guide.scales.mu.reshape(1), guide.scales.theta])
    mean, sd, cov = exact()
    assert np.abs((locs - mean) / sd).max() < 0.1
    # mean-field's optimum: 1 / sqrt(diag(precision))
    target = 1.0 / np.sqrt(np.diag(np.linalg.inv(cov)))
    np.testing.assert_allclose(scales / target, 1.0, atol=0.1)


def test_without_subsampling_the_fit_keeps_one_flat_guide_over_all_latents():
    fit = fit_svi(model, "auto-normal", {"y": Y}, data_plate="obs", steps=300)
    assert not isinstance(fit.guide, LocalLatentGuide) and fit.guide.latent_dim == N + 1


def test_the_diagnosis_scores_every_observation_and_certifies_only_what_it_should():
    fit = fit_svi(model, "auto-mvn", {"y": Y}, data_plate="obs", batch_size=10)
    # the log weights are the full data's: log p(y, mu, theta) over all N observations
    lw = draw_log_weights(fit.model, fit.guide, fit.data, draws=200, max_plate_nesting=1)
    mu, theta = lw.values["mu"], lw.values["theta"]
    assert theta.shape == (200, N)
    y = Y.numpy()
    full = (
        stats.norm(0, 10).logpdf(mu)
        + stats.norm(mu[:, None], 1).logpdf(theta).sum(1)
        + stats.norm(theta, 1).logpdf(y).sum(1)
    )
    np.testing.assert_allclose(lw.log_joint, full, rtol=1e-10)
    d = diagnose(fit, exact_reference(), draws=4000, progress=False, mode_starts=0)
    s = d.summary
    assert s["site_shapes"]["theta"] == [N] and s["psis_khat"] < 0.5
    rows = [r for r in s["parameters"] if r["kind"] == "latent"]
    assert len(rows) == N + 1 and all(r["ref_mean"] is not None for r in rows)
    assert max(abs(r["std_mean_error"]) for r in rows) < 0.1
    assert s["verdict"] == "trustworthy", s["verdict_reasons"]
    # a mean-field guide cannot hold mu's correlation with every theta: never certified
    mean_field = fit_svi(model, "auto-normal", {"y": Y}, data_plate="obs", batch_size=10)
    d = diagnose(mean_field, exact_reference(), draws=4000, progress=False, mode_starts=0)
    assert d.summary["verdict"] != "trustworthy"


# ----------------------------------------------------------------------------- two processes


def _tiny_noise_objective():
    """The loss of the local guide (auto-mvn) with every scale near zero, so that a step's
    loss and gradient hardly depend on the guide's noise, and its parameters moved off their
    start; the same on every process."""
    guide = LocalLatentGuide(
        "auto-mvn", model, find_data_plate(poutine.trace(model).get_trace(Y), "obs")
    )
    guide.setup(y=Y)
    loss_fn = svi.make_objective(model, guide, Trace_ELBO(num_particles=2))
    loss_fn(y=Y)
    with torch.no_grad():
        guide.globals.loc.add_(0.3)
        guide.globals.scale_unconstrained.fill_(-40.0)
        guide.local_scales[0].fill_(-40.0)
        guide.local_locs[0].copy_(torch.linspace(-0.5, 0.5, N, dtype=torch.float64))
        guide.local_dependence[0].add_(0.2)
    return loss_fn


def _local_ddp_gradient(out: Path) -> None:
    with distributed.session(torch.device("cpu")) as ctx, svi.local_params():
        loss_fn = _tiny_noise_objective()
        [indices] = index_batches(N, 0, 1, seed=0, rank=ctx.rank, world_size=2)
        pyro.set_rng_seed(1)
        with subsampled("obs", indices):
            loss_fn(y=Y).backward()
        own = {n: p.grad.clone() for n, p in loss_fn.named_parameters()}
        others = torch.ones(N, dtype=torch.bool)
        others[indices] = False
        local = [n for n in own if ".guide.local_" in n]
        zero = len(local) == 3 and all(bool((own[n][others] == 0).all()) for n in local)
        loss_fn.zero_grad()
        wrapped = ctx.wrap(loss_fn)
        pyro.set_rng_seed(1)
        with subsampled("obs", indices):
            wrapped(y=Y).backward()
        zeros = ctx.gather(zero)
        if ctx.is_main:
            grads = {n: p.grad for n, p in loss_fn.named_parameters()}
            torch.save({"grads": grads, "zeros": zeros}, out)


def test_ddp_averages_the_full_data_gradient_of_global_and_local_parameters(tmp_path):
    out = tmp_path / "gradients.pt"
    spawned_ranks(_local_ddp_gradient, out)
    with svi.local_params():
        loss_fn = _tiny_noise_objective()
        pyro.set_rng_seed(1)
        loss_fn(y=Y).backward()
        full = {n: p.grad for n, p in loss_fn.named_parameters()}
    saved = torch.load(out)
    # each rank's own gradient of the other rank's observations' parameters is exactly zero
    assert saved["zeros"] == [True, True]
    averaged = saved["grads"]
    assert averaged.keys() == full.keys()
    names = {"elbo.guide.local_locs.0", "elbo.guide.local_dependence.0", "elbo.guide.globals.loc"}
    assert names <= set(full)
    for name, grad in full.items():
        assert torch.allclose(averaged[name], grad, rtol=1e-6, atol=1e-8), name


CONJUGATE_SCRIPT = """
import pyro, pyro.distributions as dist
DATA_PLATE = "obs"
def model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("obs", len(y)) as i:
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y[i])
def data():
    return {"y": %s}
"""


@pytest.mark.slow
def test_two_process_fit_of_local_latents_matches_the_closed_form_with_identical_parameters(
    tmp_path,
):
    import arviz as az

    script = tmp_path / "conjugate.py"
    script.write_text(CONJUGATE_SCRIPT % Y.tolist())
    run = tmp_path / "run"
    # from Pyro's start (no Laplace, which is exact here), so that SVI itself must find q
    argv = ["fit", str(script), "--guide", "auto-mvn", "--set", "init=prior", "--draws", "4000"]
    argv.append("--quiet")
    spawned_ranks(cli_ok, [*argv, "--out", str(run)])
    s = read_json(run / "summary.json")
    assert s["status"] == "complete" and s["world_size"] == 2
    assert s["parameter_digests"][0] == s["parameter_digests"][1]
    assert any("on each of 2 processes" in note for note in s["notes"])
    assert any("indexed by each step's subsample" in note for note in s["notes"])
    posterior = az.from_netcdf(run / "posterior.nc").posterior
    mu = posterior["mu"].values.reshape(-1)
    theta = posterior["theta"].values.reshape(-1, N)
    draws = np.concatenate([mu[:, None], theta], 1)
    mean, sd, _ = exact()
    errors = (draws.mean(0) - mean) / sd
    assert np.abs(errors).max() < 0.1, errors
    # auto-mvn holds the exact posterior, so its sds too (4000 draws: about 1% error)
    np.testing.assert_allclose(draws.std(0) / sd, 1.0, atol=0.1)


# ----------------------------------------------------------------------------- shipped scripts


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "guide", "batch_size"),
    [
        ("robust_regression", "auto-normal", 25),
        # mean-field's own optimum puts tau 0.32 sd below NUTS (a full-data auto-normal fit too):
        # the family with the locals' linear dependence on the globals holds it
        ("poisson_lognormal", "auto-mvn", 20),
    ],
)
def test_shipped_local_latent_scripts_fitted_on_minibatches_match_their_nuts_means(
    name, guide, batch_size
):
    script = load_script(RUNS / f"{name}.py")
    fit = fit_svi(script.model, guide, script.load_data(), data_plate="obs", batch_size=batch_size)
    assert isinstance(fit.guide, LocalLatentGuide) and fit.vectorized
    reference = load_reference(RUNS / "references" / f"{name}.json.zip")
    d = diagnose(fit, reference, progress=False, mode_starts=0)
    rows = [r for r in d.summary["parameters"] if r["kind"] == "latent"]
    assert all(r["ref_mean"] is not None for r in rows)
    worst = max(rows, key=lambda r: abs(r["std_mean_error"]))
    assert abs(worst["std_mean_error"]) < 0.25, (worst["name"], worst["std_mean_error"])


# ----------------------------------------------------------------------------- bad input

MISMATCHED = {
    # drawn at the full data's size inside the plate
    "expanded": "theta = pyro.sample('theta', dist.Normal(mu, 1.0).expand([len(y)]))\n"
    "        pyro.sample('y', dist.Normal(theta[i], 1.0), obs=y[i])",
    # drawn per index, then indexed again
    "indexed_twice": "theta = pyro.sample('theta', dist.Normal(mu, 1.0))\n"
    "        pyro.sample('y', dist.Normal(theta[i], 1.0), obs=y[i])",
}


@pytest.mark.parametrize(
    ("kind", "pyro_said"),
    [
        ("expanded", r"Shape mismatch inside plate\('obs'\) at site theta dim -1, 3 vs 6"),
        ("indexed_twice", r"index \d is out of bounds"),
    ],
)
def test_a_data_plate_whose_latents_do_not_match_the_subsample_is_one_line_and_exit_2(
    tmp_path, capsys, kind, pyro_said
):
    script = tmp_path / "m.py"
    script.write_text(
        "import pyro, pyro.distributions as dist\nDATA_PLATE = 'obs'\ndef model(y):\n"
        "    mu = pyro.sample('mu', dist.Normal(0.0, 10.0))\n"
        f"    with pyro.plate('obs', len(y)) as i:\n        {MISMATCHED[kind]}\n"
        "def data():\n    return {'y': [0.5, 1.5, 1.0, 2.0, 0.1, 0.7]}\n"
    )
    argv = ["fit", str(script), "--set", "batch_size=2", "--quiet", "--out", str(tmp_path / "o")]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "holds the latent site(s) theta, whose values do not match the subsample" in err[0]
    assert re.search(pyro_said, err[0]), err[0]
    # refused before fitting: the run says it failed, and holds no posterior and no report
    run = tmp_path / "o"
    s = read_json(run / "summary.json")
    assert s["status"] == "failed" and "do not match the subsample" in s["error"]
    assert not (run / "posterior.nc").exists() and not (run / "report.html").exists()
