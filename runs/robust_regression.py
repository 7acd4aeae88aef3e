r"""Robust regression: Student-t errors written as a per-observation scale mixture of normals.

alpha ~ Normal(0, 5), beta ~ Normal(0, 5), sigma ~ HalfNormal(2); for each observation i (in the
data plate), lam_i ~ Gamma(nu/2, nu/2) and y_i ~ Normal(alpha + beta x_i, sigma / sqrt(lam_i)),
with nu = 4. Integrating lam_i out gives y_i ~ StudentT(nu, alpha + beta x_i, sigma); keeping
it gives one local latent per observation, inside the plate the script declares as its
``DATA_PLATE`` (minibatch and data-parallel fits must subsample those latents with the data).

Source: the normal scale-mixture form of the t (Gelman et al., Bayesian Data Analysis, 3rd ed.,
section 17.2), written in the plate style of Pyro's ``runs/normal_mean.py`` and Pyro's Bayesian
regression tutorials. Data: 50 points on a line, with t(2) noise (a few outliers) (seed 0).

Truth: NUTS reference draws (``REFERENCE``; ``runs/references/make_references.py --only
robust_regression``) of a NumPyro twin, including every lam_i.

    ppl-models fit runs/robust_regression.py \
        --reference runs/references/robust_regression.json.zip
"""

import numpy as np
import pyro
import pyro.distributions as dist

KIND = "local-latents"
GUIDE = "auto-normal"
REFERENCE = "references/robust_regression.json.zip"
# The plate over the observations, indexed by its indices: minibatch and data-parallel fits.
DATA_PLATE = "obs"

NU = 4.0
SIMULATED_FROM = {"alpha": 1.0, "beta": 2.0, "sigma": 0.5, "noise_df": 2.0}
N, SEED = 50, 0


def model(x, y):
    alpha = pyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 5.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
    with pyro.plate("obs", len(y)) as i:
        lam = pyro.sample("lam", dist.Gamma(NU / 2, NU / 2))
        pyro.sample("y", dist.Normal(alpha + beta * x[i], sigma / lam.sqrt()), obs=y[i])


def data():
    p = SIMULATED_FROM
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=N)
    y = p["alpha"] + p["beta"] * x + p["sigma"] * rng.standard_t(p["noise_df"], size=N)
    return {"x": np.round(x, 6).tolist(), "y": np.round(y, 6).tolist()}
