"""Models that do not broadcast over particles, vmapped; PyroModule models; a model's own
parameters as type-II maximum-likelihood point estimates. Truths: the conjugate linear-Gaussian
posterior and evidence in closed form (NumPy), and the hand-written twin of a PyroModule model."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule, PyroSample
from scipy import optimize
from torch import nn

from ppl_models.vi.diagnose import diagnose
from ppl_models.vi.fitting import fit_svi

N, D, NOISE, PRIOR_SD = 40, 3, 0.5, 2.0


def regression_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 + NOISE * rng.normal(size=N)
    return {"x": torch.tensor(x), "y": torch.tensor(y)}


def exact_posterior(x, y, noise=NOISE):
    """Weights and bias ~ N(0, 2^2) each, y ~ N(x w + b, noise^2): the Gaussian posterior."""
    a = np.column_stack([x.numpy(), np.ones(len(x))])
    precision = a.T @ a / noise**2 + np.eye(D + 1) / PRIOR_SD**2
    cov = np.linalg.inv(precision)
    return cov @ a.T @ y.numpy() / noise**2, np.sqrt(np.diag(cov))


class Regression(PyroModule):
    """Pyro's Bayesian-regression tutorial style: PyroModule[nn.Linear] with PyroSample priors,
    built once, outside any fit (as the tutorial builds it when its script is imported)."""

    def __init__(self):
        super().__init__()
        self.linear = PyroModule[nn.Linear](D, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, PRIOR_SD).expand([1, D]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, PRIOR_SD).expand([1]).to_event(1))

    def forward(self, x, y=None):
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, NOISE), obs=y)


REGRESSION = Regression()


def tutorial_model(x, y):
    REGRESSION(x, y)


def test_a_pyromodule_model_built_before_the_fit_matches_the_closed_form():
    data = regression_data()
    fit = fit_svi(tutorial_model, "auto-mvn", data, steps=800)
    assert fit.vectorization == "vmap"  # nn.Linear takes one draw of its weight: vmapped
    summary = diagnose(fit, None, draws=4000, progress=False, mode_starts=0).summary
    assert summary["draws"] == 4000
    mean, sd = exact_posterior(data["x"], data["y"])
    rows = {p["name"]: p for p in summary["parameters"]}
    names = [f"linear.weight[1,{j + 1}]" for j in range(D)] + ["linear.bias[1]"]
    for name, m, s in zip(names, mean, sd, strict=True):
        assert abs(rows[name]["mean"] - m) < 0.1 * s, (name, rows[name]["mean"], m)
        assert abs(rows[name]["sd"] / s - 1) < 0.1, (name, rows[name]["sd"], s)


def hand_written(x, y):
    """The tutorial model written without modules: the same log joint at every point."""
    w = pyro.sample("linear.weight", dist.Normal(0.0, PRIOR_SD).expand([1, D]).to_event(2))
    b = pyro.sample("linear.bias", dist.Normal(0.0, PRIOR_SD).expand([1]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(x @ w[0] + b[0], NOISE), obs=y)


def test_the_pyromodule_model_and_its_hand_written_twin_have_one_log_joint():
    from pyro import poutine

    data = {k: v.float() for k, v in regression_data().items()}  # the module's own dtype
    values = {"linear.weight": torch.randn(1, D), "linear.bias": torch.ones(1)}
    joint = []
    for model in (tutorial_model, hand_written):
        trace = poutine.trace(poutine.condition(model, values)).get_trace(**data)
        joint.append(float(trace.log_prob_sum()))
    assert joint[0] == pytest.approx(joint[1], rel=1e-12)


def evidence_model(x, y):
    """The noise scale as a parameter of the model, fitted as a point estimate."""
    noise = pyro.param("noise", torch.tensor(1.0), constraint=dist.constraints.positive)
    w = pyro.sample("w", dist.Normal(0.0, PRIOR_SD).expand([D]).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, PRIOR_SD))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(x @ w + b, noise), obs=y)


def log_evidence(noise, x, y):
    a = np.column_stack([x, np.ones(len(x))])
    cov = PRIOR_SD**2 * a @ a.T + noise**2 * np.eye(len(x))
    sign, logdet = np.linalg.slogdet(cov)
    return -0.5 * (y @ np.linalg.solve(cov, y) + logdet + len(x) * math.log(2 * math.pi))


def test_a_pyro_param_in_the_model_is_the_type_ii_maximum_likelihood_estimate():
    pyro.clear_param_store()
    data = regression_data(seed=1)
    x, y = data["x"].numpy(), data["y"].numpy()
    best = optimize.minimize_scalar(
        lambda s: -log_evidence(s, x, y), bounds=(0.05, 5.0), method="bounded"
    ).x
    # a full-rank Gaussian guide holds the exact posterior, so max ELBO = max evidence
    fit = fit_svi(evidence_model, "auto-mvn", data, steps=1000)
    estimate = fit.extras["point_estimates"]["noise"]
    assert estimate == pytest.approx(best, rel=0.03)
    assert any("point estimates" in note and "noise" in note for note in fit.notes)
    pyro.clear_param_store()


@pytest.mark.parametrize("idiom", ["matmul_index", "unsqueeze"])
def test_the_readmes_idioms_are_vectorized(idiom):
    rng = np.random.default_rng(2)
    if idiom == "matmul_index":

        def model(X, y):  # (X @ beta[..., None])[..., 0] inside a plate, as runs/README.md says
            beta = pyro.sample("beta", dist.Normal(0.0, 2.0).expand([3]).to_event(1))
            with pyro.plate("obs", X.shape[0]):
                logits = (X @ beta[..., None])[..., 0]
                pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)

        X = torch.tensor(rng.normal(size=(60, 3)))
        data = {"X": X, "y": torch.tensor(rng.random(60) < 0.5).double()}
    else:

        def model(y):  # a scalar hyper-parameter broadcast as mu.unsqueeze(-1)
            mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
            with pyro.plate("groups", y.shape[0]):
                theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            with pyro.plate("draws", y.shape[1]), pyro.plate("g2", y.shape[0], dim=-2):
                pyro.sample("y", dist.Normal(theta.unsqueeze(-1), 1.0), obs=y)

        data = {"y": torch.tensor(rng.normal(size=(4, 6)))}
    fit = fit_svi(model, "auto-normal", data, steps=200)
    assert fit.vectorization in ("plate", "vmap")
    summary = diagnose(fit, None, draws=5000, progress=False, mode_starts=0).summary
    assert summary["draws"] == 5000 and summary["vectorized"]


def test_the_report_lists_the_models_point_estimates(tmp_path):
    from ppl_models.vi.report import write_report

    pyro.clear_param_store()
    fit = fit_svi(evidence_model, "auto-mvn", regression_data(seed=1), steps=300)
    diagnosis = diagnose(fit, None, draws=4000, progress=False, mode_starts=0)
    assert diagnosis.summary["point_estimates"]["noise"] == fit.extras["point_estimates"]["noise"]
    write_report(diagnosis, tmp_path / "run")
    html = (tmp_path / "run" / "report.html").read_text()
    assert "own parameters (point estimates)" in html and "<td>noise</td>" in html
    pyro.clear_param_store()
