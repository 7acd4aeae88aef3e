r"""A small Bayesian neural network (1-4-1, tanh) built from ``PyroModule`` layers.

Every weight and bias ~ Normal(0, 1) (``PyroSample`` attributes of ``BayesianLinear``
``PyroModule`` layers), obs_scale ~ LogNormal(0, 1) (a ``PyroSample`` attribute too);
y_i ~ Normal(f(x_i), obs_scale), with f(x) = layer2(tanh(layer1(x))). The network's values at
the data, ``mean``, are recorded with ``pyro.deterministic``.

Source: adapted from Pyro's PyroModule tutorial (``tutorial/source/modules.ipynb``,
Apache-2.0): its ``BayesianLinear`` layer (``bias + input @ weight``) and its ``Model`` with
``obs_scale = PyroSample(LogNormal(0, 1))``, stacked into two layers with a tanh between. Change:
the bias prior is Normal(0, 1), not the tutorial's LogNormal(0, 1). Data: 40 points of
sin(3x)/2 plus noise of sd 0.2 on (-2, 2) (seed 0), like the GP tutorial's.

Truth: the weights are not identified (swapping hidden units, or flipping the signs of a unit's
weights through tanh, gives the same function: 2^4 4! equal modes), so the reference holds the
identified quantities only: ``obs_scale`` and ``mean`` (the function at the data). NUTS
reference draws (``REFERENCE``; ``runs/references/make_references.py --only bnn_module``) of a
NumPyro twin written without modules; R-hat and ESS are checked on those sites.

    ppl-models fit runs/bnn_module.py --reference runs/references/bnn_module.json.zip
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample

KIND = "pyromodule"
GUIDE = "auto-normal"
REFERENCE = "references/bnn_module.json.zip"

HIDDEN = 4
N, SEED = 40, 0


class BayesianLinear(PyroModule):
    def __init__(self, in_size, out_size):
        super().__init__()
        self.bias = PyroSample(dist.Normal(0.0, 1.0).expand([out_size]).to_event(1))
        self.weight = PyroSample(dist.Normal(0.0, 1.0).expand([in_size, out_size]).to_event(2))

    def forward(self, input):
        return self.bias + input @ self.weight  # this line samples bias and weight


class BNN(PyroModule):
    def __init__(self, hidden):
        super().__init__()
        self.layer1 = BayesianLinear(1, hidden)
        self.layer2 = BayesianLinear(hidden, 1)
        self.obs_scale = PyroSample(dist.LogNormal(0.0, 1.0))

    def forward(self, x, y=None):
        mean = pyro.deterministic("mean", self.layer2(torch.tanh(self.layer1(x))).squeeze(-1))
        obs_scale = self.obs_scale  # sampled here, outside the plate: one scale for all data
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, obs_scale), obs=y)
        return mean


# Built at import; ``model(x=..., y=...)`` calls ``forward`` (x is N x 1).
model = BNN(HIDDEN)


def data():
    rng = np.random.default_rng(SEED)
    x = rng.uniform(-2.0, 2.0, size=N)
    y = 0.5 * np.sin(3.0 * x) + rng.normal(0.0, 0.2, size=N)
    return {"x": np.round(x, 6)[:, None].tolist(), "y": np.round(y, 6).tolist()}
