r"""A negative-binomial (Gamma-Poisson) regression whose coefficients share a learned scale.

scale ~ LogNormal(0, 1), coef ~ Normal(0, scale) (one coefficient), concentration ~
LogNormal(0, 1); rate = softplus(coef . features_i) (recorded with ``pyro.deterministic``) and
counts_i ~ GammaPoisson(concentration, rate), whose mean is concentration / rate.

Source: Pyro's tutorial "Utilizing Predictive and Deterministic with MCMC and SVI"
(``tutorial/source/predictive_deterministic.ipynb``, Apache-2.0): the model is copied. Its data
come from ``sklearn.datasets.make_regression(n_features=1, bias=150, noise=5)`` transformed to
counts (y^3 / 100000 + 10, rounded, at least 0); here the same recipe is written in NumPy (100
points, a linear target with a random slope, seed 0) so the script needs no scikit-learn.

Truth: NUTS reference draws of ``scale``, ``coef`` and ``concentration`` (``REFERENCE``;
``runs/references/make_references.py --only negbin_glm``) of a NumPyro twin.

    ppl-models fit runs/negbin_glm.py --reference runs/references/negbin_glm.json.zip
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch

KIND = "glm"
GUIDE = "auto-normal"
REFERENCE = "references/negbin_glm.json.zip"

N, SEED = 100, 0


def model(features, counts):
    N, P = features.shape
    scale = pyro.sample("scale", dist.LogNormal(0, 1))
    coef = pyro.sample("coef", dist.Normal(0, scale).expand([P]).to_event(1))
    rate = pyro.deterministic("rate", torch.nn.functional.softplus(coef @ features.T))
    concentration = pyro.sample("concentration", dist.LogNormal(0, 1))
    with pyro.plate("bins", N):
        return pyro.sample("counts", dist.GammaPoisson(concentration, rate), obs=counts)


def data():
    # make_regression(n_features=1, bias=150, noise=5): y = 150 + w x + Normal(0, 5), with
    # w ~ 100 Uniform(0, 1) and x ~ Normal(0, 1); then the tutorial's transform to counts
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=N)
    y = 150.0 + 100.0 * rng.random() * x + rng.normal(0.0, 5.0, size=N)
    counts = np.clip(np.round(y**3 / 100000.0 + 10.0), 0.0, None)
    return {"features": np.round(x, 6)[:, None].tolist(), "counts": counts.tolist()}
