"""Discrete latent sites summed out by enumeration, against a mixture's exact marginals.

The truth: a two-component mixture with known weights and locations -mu and +mu. Summing the
assignments out by hand, p(mu | x) is one-dimensional, so its moments and each assignment's
posterior probability p(z_i = 1 | x) = E[p(z_i = 1 | x, mu)] come from quadrature.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from scipy import stats

from ppl_models import cli
from ppl_models.svi import default_dtype
from ppl_models.vi.diagnose import diagnose
from ppl_models.vi.enumeration import (
    enumerated,
    find_discrete,
    marginal_log_joint,
    point_trace,
)
from ppl_models.vi.fitting import fit_svi

WEIGHTS = (0.3, 0.7)


def mixture(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(torch.tensor(WEIGHTS).to(x)))
        pyro.sample("x", dist.Normal(torch.where(z == 1, mu, -mu), 1.0), obs=x)


def mixture_data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return torch.tensor(np.where(rng.random(n) < 0.7, 1.5, -1.5) + rng.normal(size=n))


def log_marginal(mu, x):
    """log p(x, mu) with the assignments summed out, by hand."""
    mu = np.asarray(mu)[..., None]
    mix = WEIGHTS[0] * stats.norm(-mu, 1).pdf(x) + WEIGHTS[1] * stats.norm(mu, 1).pdf(x)
    return stats.norm(0, 5).logpdf(mu[..., 0]) + np.log(mix).sum(-1)


def quadrature(x):
    grid = np.linspace(-6, 6, 24001)
    lp = log_marginal(grid, x)
    w = np.exp(lp - lp.max())
    w /= w.sum()
    mean = (w * grid).sum()
    sd = np.sqrt((w * (grid - mean) ** 2).sum())
    one = WEIGHTS[1] * stats.norm(grid[:, None], 1).pdf(x)
    zero = WEIGHTS[0] * stats.norm(-grid[:, None], 1).pdf(x)
    return mean, sd, w @ (one / (one + zero))


def test_the_marginal_log_joint_is_the_mixtures_sum_over_assignments():
    x = mixture_data()
    discrete = find_discrete(mixture, {"x": x})
    assert discrete.sites == ("z",) and discrete.supports == {"z": 2} and not discrete.marked
    model = enumerated(mixture, discrete)
    with default_dtype(torch.float64):  # as inside a fit: the priors' constants in float64
        for mu in (-0.7, 1.2, 3.0):
            at = point_trace({"mu": torch.tensor(mu, dtype=torch.float64)})
            value = marginal_log_joint(model, at, {"x": x}, max_plate_nesting=1)
            assert float(value) == pytest.approx(float(log_marginal(mu, x.numpy())), rel=1e-10)


def test_a_mixture_fits_and_diagnoses_with_its_assignments_summed_out():
    x = mixture_data()
    mean, sd, p_one = quadrature(x.numpy())
    fit = fit_svi(mixture, "auto-normal", {"x": x}, steps=500)
    assert fit.discrete.sites == ("z",) and fit.vectorization == "plate"
    assert any("summed out by parallel enumeration" in note for note in fit.notes)
    diagnosis = diagnose(fit, None, draws=5000, progress=False, mode_starts=0)
    summary = diagnosis.summary
    (row,) = summary["parameters"]  # z is summed out, not a parameter
    assert abs(row["mean"] - mean) < 0.1 * sd and abs(row["sd"] / sd - 1) < 0.1
    # every draw's log p(x, mu) is the marginal over the assignments, by hand
    stats_ = diagnosis.idata.sample_stats
    mu = diagnosis.idata.posterior["mu"].values.ravel()
    log_joint = stats_["log_joint"].values.ravel()[: len(mu)]
    np.testing.assert_allclose(log_joint, log_marginal(mu, x.numpy()), rtol=1e-9)
    probabilities = np.array(summary["discrete_marginals"]["z"]["probabilities"])
    assert probabilities.shape == (len(x), 2)
    np.testing.assert_allclose(probabilities[:, 1], p_one, atol=0.01)


INFINITE = """
import pyro, pyro.distributions as dist, torch
def model(y):
    n = pyro.sample("n", dist.Poisson(3.0))
    pyro.sample("y", dist.Normal(n, 1.0), obs=torch.tensor(y))
def data():
    return {"y": 2.5}
"""


def test_a_discrete_site_with_an_infinite_support_is_refused_in_one_line(tmp_path, capsys):
    script = tmp_path / "poisson_latent.py"
    script.write_text(INFINITE)
    code = cli.main(["fit", str(script), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "site 'n' is a discrete latent variable (Poisson) with an infinite support" in err[0]
    assert "marginalize it in the model" in err[0]


def test_a_custom_guide_may_leave_out_the_sites_that_are_summed_out():
    x = mixture_data()

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.5, dtype=torch.float64))
        scale = pyro.param(
            "scale", torch.tensor(0.5, dtype=torch.float64), dist.constraints.positive
        )
        pyro.sample("mu", dist.Normal(loc, scale))

    pyro.clear_param_store()
    fit = fit_svi(mixture, guide, {"x": x}, steps=600, lr=0.02)
    mean, sd, _ = quadrature(x.numpy())
    assert abs(pyro.param("loc").item() - mean) < 0.1 * sd
    pyro.clear_param_store()
    with poutine.block():
        assert fit.discrete.sites == ("z",)


def test_the_report_lists_the_assignments_posterior_probabilities(tmp_path):
    from ppl_models.vi.report import write_report

    x = mixture_data()
    fit = fit_svi(mixture, "auto-normal", {"x": x}, steps=300)
    diagnosis = diagnose(fit, None, draws=4000, progress=False, mode_starts=0)
    write_report(diagnosis, tmp_path / "run")
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Discrete site z: posterior probabilities" in html
    assert html.count("<td>z[") == len(x)  # one row per assignment
    import arviz as az

    idata = az.from_netcdf(tmp_path / "run" / "posterior.nc")
    assert idata.discrete_marginals["z"].shape == (1, 1, len(x), 2)


TORCH_DISTRIBUTION = """
import pyro, torch
def model(y):
    m = pyro.sample("m", torch.distributions.Normal(0.0, 1.0))
    pyro.sample("y", torch.distributions.Normal(m, 1.0), obs=torch.tensor(y))
def data():
    return {"y": 0.5}
"""

STOCHASTIC_SITES = """
import pyro, pyro.distributions as dist, torch
def model(y):
    s = pyro.sample("s", dist.Normal(0.0, 1.0))
    name = "a" if s.item() > 0 else "b"  # which site exists depends on a random value
    m = pyro.sample(name, dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(m, 1.0), obs=torch.tensor(y))
def data():
    return {"y": 0.5}
"""


@pytest.mark.parametrize(
    "source, words",
    [
        (TORCH_DISTRIBUTION, "site 'm' draws from torch.distributions.Normal"),
        (STOCHASTIC_SITES, "the model's latent sites change from one run to the next"),
    ],
)
def test_models_pyro_cannot_fit_as_written_are_refused_in_one_line(tmp_path, capsys, source, words):
    script = tmp_path / "model.py"
    script.write_text(source)
    for seed in range(4):  # whichever branch the guide is built from, some seed takes the other
        code = cli.main(
            [
                "fit",
                str(script),
                "--out",
                str(tmp_path / f"run{seed}"),
                "--quiet",
                "--seed",
                str(seed),
                "--steps",
                "20",
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
        if code != 0:
            break
    assert code == 2 and len(err) == 1, err
    assert words in err[0]
