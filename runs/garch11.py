r"""GARCH(1,1) volatility: a latent whose upper bound is another latent (``1 - alpha1``).

mu ~ Normal(0, 1), alpha0 ~ HalfNormal(1), alpha1 ~ Uniform(0, 1),
beta1 ~ Uniform(0, 1 - alpha1); sigma_1 = ``sigma1`` (data), sigma_t^2 = alpha0 +
alpha1 (y_{t-1} - mu)^2 + beta1 sigma_{t-1}^2, y_t ~ Normal(mu, sigma_t). The support of
``beta1`` depends on ``alpha1``: Stan's ``real<lower=0, upper=(1-alpha1)> beta1``, which Stan
maps from the unconstrained space with each draw's own bound.

Source: the GARCH(1,1) model of the Stan User's Guide (time-series chapter) and posteriordb's
``garch-garch11`` (BSD-3-Clause), written for Pyro. Changes: Stan's flat priors on ``mu`` and
``alpha0`` become Normal(0, 1) and HalfNormal(1) (a Pyro model needs proper priors); 200
returns are simulated (``SIMULATED_FROM``, seed 0).

Truth: NUTS reference draws (``REFERENCE``; ``runs/references/make_references.py --only
garch11``). The NumPyro twin samples u ~ Uniform(0, 1) and sets beta1 = (1 - alpha1) u, the
same prior (its density on beta1 given alpha1 is 1/(1 - alpha1)) with a fixed support, so the
reference does not rely on any sampler's handling of a moving bound.

    ppl-models fit runs/garch11.py --reference runs/references/garch11.json.zip
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch

KIND = "dynamic-support"
GUIDE = "auto-normal"
REFERENCE = "references/garch11.json.zip"

SIMULATED_FROM = {"mu": 0.1, "alpha0": 0.2, "alpha1": 0.25, "beta1": 0.6, "sigma1": 1.0}
T, SEED = 200, 0


def model(y, sigma1):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    alpha0 = pyro.sample("alpha0", dist.HalfNormal(1.0))
    alpha1 = pyro.sample("alpha1", dist.Uniform(0.0, 1.0))
    beta1 = pyro.sample("beta1", dist.Uniform(0.0, 1.0 - alpha1))
    shock2 = (y - mu) ** 2
    # slices t-1:t keep a trailing time axis, so a batch of draws on the left broadcasts
    variance = [torch.full_like(shock2[..., :1], float(sigma1) ** 2)]
    for t in range(1, y.shape[-1]):
        variance.append(alpha0 + alpha1 * shock2[..., t - 1 : t] + beta1 * variance[-1])
    sigma = torch.cat(variance, dim=-1).sqrt()
    with pyro.plate("time", y.shape[-1]):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def data():
    p = SIMULATED_FROM
    rng = np.random.default_rng(SEED)
    y = np.zeros(T)
    variance = p["sigma1"] ** 2
    for t in range(T):
        if t > 0:
            variance = p["alpha0"] + p["alpha1"] * (y[t - 1] - p["mu"]) ** 2 + p["beta1"] * variance
        y[t] = p["mu"] + np.sqrt(variance) * rng.normal()
    return {"y": np.round(y, 6).tolist(), "sigma1": p["sigma1"]}
