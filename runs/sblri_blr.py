"""Bayesian linear regression (posteriordb ``sblri-blr``): posterior sds near 0.001 around means
near 1, the case where an SVI fit must be whitened to be precise.

beta ~ Normal(0, 10) (D of them), sigma ~ HalfNormal(10) (Stan's normal_lpdf on sigma > 0, up to
a constant), y ~ Normal(X beta, sigma).

Diagnose it against posteriordb's reference draws with the command in runs/README.md.
"""

import pyro
import pyro.distributions as dist

from ppl_models.vi.script import posteriordb_data


def model(N, D, X, y):
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([D]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(10.0))
    mean = beta @ X.T  # (..., D) @ (D, N): leading particle dims broadcast
    pyro.sample("y", dist.Normal(mean, sigma[..., None]).to_event(1), obs=y)


def data():
    return posteriordb_data("sblri-blr")
