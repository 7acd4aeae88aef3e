"""A support that depends on another latent (Stan's ``real<lower=0, upper=1-alpha> beta``),
mapped draw by draw with that draw's bounds, against 2-D quadrature of the posterior."""

import json

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_models import cli
from ppl_models.vi.diagnose import diagnose
from ppl_models.vi.fitting import fit_svi
from ppl_models.vi.unconstrained import dynamic_sites

COUNTS = (12.0, 5.0, 8.0)


def stick(y):
    """alpha ~ U(0, 1), beta ~ U(0, 1 - alpha), y ~ Multinomial(alpha, beta, 1 - alpha - beta)."""
    alpha = pyro.sample("alpha", dist.Uniform(0.0, 1.0))
    beta = pyro.sample("beta", dist.Uniform(0.0, 1.0 - alpha))
    p = torch.stack([alpha, beta, 1 - alpha - beta], -1)
    pyro.sample("y", dist.Multinomial(total_count=int(y.sum()), probs=p), obs=y)


def quadrature():
    """Posterior means and sds of alpha and beta on a 2-D grid: p ∝ 1/(1 - alpha) x likelihood
    on the triangle beta < 1 - alpha."""
    a = np.linspace(1e-4, 1 - 1e-4, 1600)[:, None]
    b = np.linspace(1e-4, 1 - 1e-4, 1600)[None, :]
    inside = b < 1 - a
    rest = np.clip(1 - a - b, 1e-300, None)
    lp = COUNTS[0] * np.log(a) + COUNTS[1] * np.log(b) + COUNTS[2] * np.log(rest) - np.log(1 - a)
    w = np.where(inside, np.exp(lp - lp[inside].max()), 0.0)
    w /= w.sum()
    out = {}
    for name, grid in (("alpha", a), ("beta", b)):
        mean = float((w * grid).sum())
        out[name] = (mean, float(np.sqrt((w * (grid - mean) ** 2).sum())))
    return out


def test_a_dynamic_support_is_fitted_with_each_draws_bounds():
    data = {"y": torch.tensor(COUNTS)}
    assert dynamic_sites(stick, data) == ["beta"]
    fit = fit_svi(stick, "auto-mvn", data, steps=1000)
    assert fit.dynamic == ["beta"] and fit.vectorization == "plate"
    summary = diagnose(fit, None, draws=20_000, progress=False, mode_starts=0).summary
    assert summary["draws"] == 20_000
    truth = quadrature()
    for row in summary["parameters"]:
        mean, sd = truth[row["name"]]
        assert abs(row["mean"] - mean) < 0.1 * sd, (row["name"], row["mean"], mean)
        assert abs(row["sd"] / sd - 1) < 0.1, (row["name"], row["sd"], sd)
        assert 0 < row["mean"] < 1
    # every draw lies inside its own support: beta < 1 - alpha
    samples = diagnose(fit, None, draws=2000, progress=False, mode_starts=0).idata.posterior
    assert bool((samples["beta"].values < 1 - samples["alpha"].values).all())


BAD_BOUND = """
import pyro, pyro.distributions as dist, torch
def model(y):
    alpha = pyro.sample("alpha", dist.Normal(0.0, 1.0))
    beta = pyro.sample("beta", dist.Uniform(0.0, torch.log(alpha)))  # NaN bound for alpha < 0
    pyro.sample("y", dist.Normal(beta, 1.0), obs=torch.tensor(y))
def data():
    return {"y": 0.2}
"""


def test_a_bound_that_is_not_finite_is_refused_in_one_line(tmp_path, capsys):
    script = tmp_path / "bad_bound.py"
    script.write_text(BAD_BOUND)
    code = cli.main(["fit", str(script), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    # the bound's own distribution names it: Uniform(low: 0.0, high: nan)
    assert "Uniform(low: 0.0, high: nan)" in err[0] and "invalid values" in err[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"  # the run says so; nothing half-written


def test_bounds_that_cross_at_a_draw_are_refused_naming_the_site():
    from ppl_models.vi.unconstrained import Point, check_bounds

    empty = dist.Uniform(torch.tensor(0.0), torch.tensor(0.5), validate_args=False).support
    crossed = dist.constraints.interval(torch.tensor(0.3), torch.tensor(0.1))
    point = Point(torch.tensor(0.0), torch.tensor(0.0), {}, supports={"b": crossed, "a": empty})
    check_bounds(point, ["a"])  # finite and ordered
    with pytest.raises(ValueError, match=r"site 'b' has a support .* empty"):
        check_bounds(point, ["b"])
