r"""Bayesian linear regression written as a ``PyroModule[nn.Linear]`` with ``PyroSample`` priors.

linear.weight ~ Normal(0, 1) (1 x 3), linear.bias ~ Normal(0, 10), sigma ~ Uniform(0, 10);
y_i ~ Normal(x_i . weight + bias, sigma), where the three features are "in Africa", terrain
ruggedness and their product, and y is log GDP per capita.

Source: adapted from Pyro's Bayesian regression tutorial (``tutorial/source/
bayesian_regression.ipynb``, Apache-2.0): the ``BayesianRegression`` module is copied, and, as
there, it is built when the script is imported (``model = BayesianRegression(3, 1)``). Change:
the tutorial downloads the rugged data (Nunn & Puga 2012); offline, 170 "nations" are simulated
like them (``SIMULATED_FROM``, roughly the tutorial's fitted values; seed 0).

Truth: NUTS reference draws (``REFERENCE``; ``runs/references/make_references.py --only
bayesian_regression_module``) of a NumPyro twin written without modules (same priors, same
names).

    ppl-models fit runs/bayesian_regression_module.py \
        --reference runs/references/bayesian_regression_module.json.zip
"""

import numpy as np
import pyro
import pyro.distributions as dist
from pyro.nn import PyroModule, PyroSample
from torch import nn

KIND = "pyromodule"
GUIDE = "auto-normal"
REFERENCE = "references/bayesian_regression_module.json.zip"

SIMULATED_FROM = {"bias": 9.2, "weight": (-1.9, -0.2, 0.4), "sigma": 0.9}
N, SEED = 170, 0


class BayesianRegression(PyroModule):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(
            dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2)
        )
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([out_features]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


# Built at import, as the tutorial builds it; ``model(x=..., y=...)`` calls ``forward``.
model = BayesianRegression(3, 1)


def data():
    rng = np.random.default_rng(SEED)
    africa = (rng.random(N) < 0.3).astype(float)
    rugged = rng.gamma(1.5, 0.9, size=N)
    x = np.stack([africa, rugged, africa * rugged], axis=1)
    y = (
        SIMULATED_FROM["bias"]
        + x @ np.asarray(SIMULATED_FROM["weight"])
        + rng.normal(0.0, SIMULATED_FROM["sigma"], size=N)
    )
    return {"x": np.round(x, 6).tolist(), "y": np.round(y, 6).tolist()}
