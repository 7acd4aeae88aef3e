r"""Logistic regression with the linear predictor written ``(X @ beta[..., None])[..., 0]``.

beta ~ Normal(0, 1) (3 coefficients); y_i ~ Bernoulli(logits = x_i . beta), in the plate
``obs`` (the script's ``DATA_PLATE``). The matrix-vector product is written the way
``runs/README.md`` recommends for batches of draws, ``(X[i] @ beta[..., None])[..., 0]``.

Source: the example in the docstring of Pyro's ``NUTS`` (``pyro/infer/mcmc/nuts.py``,
Apache-2.0): true coefficients (1, 2, 3), standard-normal features, labels drawn from the
model; its ``(coefs * data).sum(-1)`` is written as the matrix product above. Change: 500
observations (seed 0) instead of 2,000.

Truth: NUTS reference draws (``REFERENCE``; ``runs/references/make_references.py --only
logistic_regression``) of a NumPyro twin.

    ppl-models fit runs/logistic_regression.py \
        --reference runs/references/logistic_regression.json.zip
"""

import numpy as np
import pyro
import pyro.distributions as dist

KIND = "idiom"
GUIDE = "auto-normal"
REFERENCE = "references/logistic_regression.json.zip"
# The plate over the observations, indexed by its indices: minibatch and data-parallel fits.
DATA_PLATE = "obs"

SIMULATED_FROM = {"beta": (1.0, 2.0, 3.0)}
N, SEED = 500, 0


def model(X, y):
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with pyro.plate("obs", len(y)) as i:
        logits = (X[i] @ beta[..., None])[..., 0]
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y[i])


def data():
    rng = np.random.default_rng(SEED)
    X = rng.normal(size=(N, 3))
    p = 1.0 / (1.0 + np.exp(-(X @ np.asarray(SIMULATED_FROM["beta"]))))
    y = (rng.random(N) < p).astype(float)
    return {"X": np.round(X, 6).tolist(), "y": y.tolist()}
