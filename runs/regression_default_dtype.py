r"""Linear regression whose data the model casts to torch's default dtype before a matmul.

a ~ Normal(0, 10), b ~ Normal(0, 1) (3 coefficients), sigma ~ Uniform(0, 10);
y_i ~ Normal(a + x_i . b, sigma). The model casts its data with
``torch.as_tensor(v, dtype=torch.get_default_dtype())``, as scripts ported from tutorials do,
and multiplies them with the latent ``b`` (``X @ b[..., None]``): the product needs the
latents in the default dtype too.

Source: adapted from Pyro's Bayesian regression part II tutorial (``tutorial/source/
bayesian_regression_ii.ipynb``, Apache-2.0), whose model (``a``, ``bA``, ``bR``, ``bAR``,
``sigma`` with these priors) is kept with the three slopes as one vector ``b`` and the data
cast as the tutorial casts them (``dtype=torch.float``, which is the default dtype).
Change: 120 observations of three standard-normal features are simulated (``SIMULATED_FROM``,
seed 1) instead of downloading the rugged data.

Truth: NUTS reference draws (``REFERENCE``; ``runs/references/make_references.py --only
regression_default_dtype``) of a NumPyro twin in float64.

    ppl-models fit runs/regression_default_dtype.py \
        --reference runs/references/regression_default_dtype.json.zip
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch

KIND = "default-dtype"
GUIDE = "auto-normal"
REFERENCE = "references/regression_default_dtype.json.zip"

SIMULATED_FROM = {"a": 1.5, "b": (0.8, -1.2, 0.3), "sigma": 0.7}
N, SEED = 120, 1


def model(x, y):
    X = torch.as_tensor(x, dtype=torch.get_default_dtype())
    y = torch.as_tensor(y, dtype=torch.get_default_dtype())
    a = pyro.sample("a", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
    mean = a + (X @ b[..., None])[..., 0]
    with pyro.plate("data", X.shape[0]):
        pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


def data():
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(N, 3))
    y = SIMULATED_FROM["a"] + x @ np.asarray(SIMULATED_FROM["b"])
    y = y + rng.normal(0.0, SIMULATED_FROM["sigma"], size=N)
    return {"x": np.round(x, 6).tolist(), "y": np.round(y, 6).tolist()}
