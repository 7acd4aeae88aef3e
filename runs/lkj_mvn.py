r"""A multivariate normal with an LKJ prior on its correlations and half-Cauchy variances.

theta_k ~ HalfCauchy(1) (variances, k = 1..3), L_omega ~ LKJCholesky(3, 1) (the Cholesky
factor of a correlation matrix, uniform over correlation matrices);
y_i ~ MultivariateNormal(0, scale_tril = diag(sqrt(theta)) L_omega), i = 1..100.

Source: adapted from Pyro's ``examples/lkj.py`` (Apache-2.0): the same priors and likelihood.
Changes: ``theta`` is one site with ``.to_event(1)`` (the example leaves a batch of 3 outside any
plate); ``diag(sqrt(theta)) L_omega`` is written ``theta.sqrt()[..., None] * L_omega`` so that
draws can be batched; the 100 observations are simulated with correlations 0.6, -0.3, 0.2 and
variances 1, 4, 0.25 (``SIMULATED_FROM``, seed 0) instead of the example's uncorrelated noise.

Truth: NUTS reference draws (``REFERENCE``; ``runs/references/make_references.py --only
lkj_mvn``) of a NumPyro twin (NumPyro's ``LKJCholesky``). ``L_omega[1,1]`` is 1 and the upper
triangle is 0 in every draw; R-hat and ESS are checked on the other elements.

    ppl-models fit runs/lkj_mvn.py --reference runs/references/lkj_mvn.json.zip
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch

KIND = "lkj"
GUIDE = "auto-mvn"
REFERENCE = "references/lkj_mvn.json.zip"

SIMULATED_FROM = {
    "variances": (1.0, 4.0, 0.25),
    "correlation": ((1.0, 0.6, -0.3), (0.6, 1.0, 0.2), (-0.3, 0.2, 1.0)),
}
N, SEED = 100, 0


def model(y):
    N, d = y.shape
    options = dict(dtype=y.dtype, device=y.device)
    # vector of variances for each of the d variables
    theta = pyro.sample("theta", dist.HalfCauchy(torch.ones(d, **options)).to_event(1))
    # lower Cholesky factor of a correlation matrix; concentration 1: uniform over them
    concentration = torch.ones((), **options)
    L_omega = pyro.sample("L_omega", dist.LKJCholesky(d, concentration))
    # lower Cholesky factor of the covariance matrix
    L_Omega = theta.sqrt()[..., None] * L_omega
    mu = torch.zeros(d, **options)
    with pyro.plate("observations", N):
        pyro.sample("obs", dist.MultivariateNormal(mu, scale_tril=L_Omega), obs=y)


def data():
    rng = np.random.default_rng(SEED)
    sd = np.sqrt(SIMULATED_FROM["variances"])
    covariance = np.asarray(SIMULATED_FROM["correlation"]) * np.outer(sd, sd)
    y = rng.multivariate_normal(np.zeros(3), covariance, size=N)
    return {"y": np.round(y, 6).tolist()}
