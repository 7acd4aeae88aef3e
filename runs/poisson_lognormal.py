r"""Overdispersed counts: a Poisson regression with a normal effect for every observation.

b0 ~ Normal(0, 2), beta ~ Normal(0, 1) (2 coefficients), tau ~ HalfNormal(1); for each
observation i (in the data plate), eps_i ~ Normal(0, tau) and
counts_i ~ Poisson(exp(b0 + x_i . beta + eps_i)). The eps_i (an observation-level random
effect) are local latents inside the plate the script declares as its ``DATA_PLATE``; the linear
predictor uses the README's idiom ``(x[i] @ beta[..., None])[..., 0]``.

Source: the Poisson log-normal model (observation-level random effects; Elston et al. 2001,
Parasitology 122:563-569), written in the style of Pyro's GLM tutorial models (``tutorial/
source/predictive_deterministic.ipynb``). Data: 60 counts with two standard-normal features
(``SIMULATED_FROM``, seed 0), means from about 1 to 40.

Truth: NUTS reference draws (``REFERENCE``; ``runs/references/make_references.py --only
poisson_lognormal``) of a NumPyro twin, including every eps_i.

    ppl-models fit runs/poisson_lognormal.py \
        --reference runs/references/poisson_lognormal.json.zip
"""

import numpy as np
import pyro
import pyro.distributions as dist

KIND = "local-latents"
GUIDE = "auto-normal"
REFERENCE = "references/poisson_lognormal.json.zip"
# The plate over the observations, indexed by its indices: minibatch and data-parallel fits.
DATA_PLATE = "obs"

SIMULATED_FROM = {"b0": 1.5, "beta": (0.6, -0.4), "tau": 0.5}
N, SEED = 60, 0


def model(x, counts):
    b0 = pyro.sample("b0", dist.Normal(0.0, 2.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    tau = pyro.sample("tau", dist.HalfNormal(1.0))
    with pyro.plate("obs", len(counts)) as i:
        eps = pyro.sample("eps", dist.Normal(0.0, tau))
        log_rate = b0 + (x[i] @ beta[..., None])[..., 0] + eps
        pyro.sample("counts", dist.Poisson(log_rate.exp()), obs=counts[i])


def data():
    p = SIMULATED_FROM
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(N, 2))
    log_rate = p["b0"] + x @ np.asarray(p["beta"]) + rng.normal(0.0, p["tau"], size=N)
    counts = rng.poisson(np.exp(log_rate))
    # floats: the counts arrive in the run's float dtype, as Poisson's log_prob wants
    return {"x": np.round(x, 6).tolist(), "counts": [float(c) for c in counts]}
