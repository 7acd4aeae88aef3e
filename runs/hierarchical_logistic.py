r"""Hierarchical logistic regression: group intercepts drawn around a common mean.

mu ~ Normal(0, 2), sigma ~ HalfNormal(2), beta ~ Normal(0, 2); for each group j = 1..J,
alpha_j ~ Normal(mu, sigma); for each observation i, y_i ~ Bernoulli(logit^-1(alpha_{g_i} +
beta x_i)). The data are simulated (``simulate``): J = 100 groups of 20 observations, with
mu = 0.3, sigma = 1.2, beta = 0.8.

The joint density has no maximum (it grows without bound as sigma goes to 0 with every alpha_j
at mu), so a MAP start runs down the funnel; the fit must start where a plain Pyro fit would.

    ppl-models fit runs/hierarchical_logistic.py \
        --reference runs/references/hierarchical_logistic_J100.json.zip

The reference draws come from NUTS (``runs/references/hierarchical_logistic_nuts.py``).
"""

import numpy as np
import pyro
import pyro.distributions as dist

# The plate over the observations, indexed by its indices: minibatch and data-parallel fits.
DATA_PLATE = "obs"
GROUPS, PER_GROUP, SEED = 100, 20, 0
TRUTH = {"mu": 0.3, "sigma": 1.2, "beta": 0.8}


def model(J, group, x, y):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 2.0))
    with pyro.plate("groups", J):
        alpha = pyro.sample("alpha", dist.Normal(mu, sigma))
    with pyro.plate("obs", len(y)) as i:
        logits = alpha[..., group[i]] + beta * x[i]
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y[i].to(logits))


def simulate(groups: int = GROUPS, per_group: int = PER_GROUP, seed: int = SEED) -> dict:
    """Data of ``groups`` groups of ``per_group`` observations from the model at ``TRUTH``."""
    rng = np.random.default_rng(seed)
    alpha = rng.normal(TRUTH["mu"], TRUTH["sigma"], size=groups)
    group = np.repeat(np.arange(groups), per_group)
    x = rng.normal(size=groups * per_group)
    p = 1.0 / (1.0 + np.exp(-(alpha[group] + TRUTH["beta"] * x)))
    y = (rng.random(groups * per_group) < p).astype(np.int64)
    return {"J": groups, "group": group.tolist(), "x": x.tolist(), "y": y.tolist()}


def data():
    return simulate()
