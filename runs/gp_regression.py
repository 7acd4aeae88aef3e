r"""Gaussian-process regression with its kernel hyperparameters latent, built on ``torch.eye(N)``.

variance ~ LogNormal(0, 1), lengthscale ~ LogNormal(0, 1), noise ~ LogNormal(-2, 1);
y ~ MultivariateNormal(0, K) with K_ij = variance exp(-(x_i - x_j)^2 / (2 lengthscale^2)) +
(noise + 1e-6) [i = j]. The identity is ``torch.eye(N)``, made in torch's default dtype and
combined with the latent draws.

Source: adapted from Pyro's Gaussian-process tutorial (``tutorial/source/gp.ipynb``,
Apache-2.0): its data (20 points, x ~ Uniform(0, 5), y = sin(3x)/2 + Normal(0, 0.2); seed 0
here), its RBF kernel, and its priors ``kernel.variance = PyroSample(LogNormal(0, 1))``,
``kernel.lengthscale = PyroSample(LogNormal(0, 1))``. Changes: the model of
``gp.models.GPRegression`` is written out by hand (a marginal-likelihood MultivariateNormal with
its 1e-6 jitter), and the noise variance is latent too, with a LogNormal(-2, 1) prior.

Truth: NUTS reference draws (``REFERENCE``; ``runs/references/make_references.py --only
gp_regression``) of a NumPyro twin in float64.

    ppl-models fit runs/gp_regression.py --reference runs/references/gp_regression.json.zip
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch

KIND = "default-dtype"
GUIDE = "auto-normal"
REFERENCE = "references/gp_regression.json.zip"

JITTER = 1e-6
N, SEED = 20, 0


def model(x, y):
    variance = pyro.sample("variance", dist.LogNormal(0.0, 1.0))
    lengthscale = pyro.sample("lengthscale", dist.LogNormal(0.0, 1.0))
    noise = pyro.sample("noise", dist.LogNormal(-2.0, 1.0))
    N = x.shape[0]
    d2 = (x[:, None] - x[None, :]) ** 2
    K = variance[..., None, None] * torch.exp(-0.5 * d2 / lengthscale[..., None, None] ** 2)
    K = K + (noise[..., None, None] + JITTER) * torch.eye(N)
    pyro.sample("y", dist.MultivariateNormal(torch.zeros(N), covariance_matrix=K), obs=y)


def data():
    rng = np.random.default_rng(SEED)
    x = rng.uniform(0.0, 5.0, size=N)
    y = 0.5 * np.sin(3.0 * x) + rng.normal(0.0, 0.2, size=N)
    return {"x": np.round(x, 6).tolist(), "y": np.round(y, 6).tolist()}
