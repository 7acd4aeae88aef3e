r"""A one-dimensional Gaussian mixture whose assignments are summed out by enumeration.

weights ~ Dirichlet(0.5, 0.5), scale ~ LogNormal(0, 2), locs_k ~ Normal(LOC_PRIOR_k, 1.5) for
k = 1, 2; for each observation i, assignment_i ~ Categorical(weights) and
x_i ~ Normal(locs[assignment_i], scale). The assignments are discrete latent sites, marked with
``config_enumerate``: a fit must sum them out (``TraceEnum_ELBO``) and fit a guide on
``weights``, ``scale`` and ``locs`` only.

Source: adapted from Pyro's Gaussian mixture tutorial (``tutorial/source/gmm.ipynb``, Apache-2.0),
whose model is kept: ``config_enumerate``, Categorical assignments in the data plate, and
``locs[assignment]`` indexing. Changes: 60 simulated points (``SIMULATED_FROM``, seed 0) instead
of the tutorial's five, and each component's location prior has its own centre
(``LOC_PRIOR``). With the tutorial's exchangeable prior the posterior has two mirror-image modes
(label switching), between which NUTS chains do not cross and which a Gaussian guide cannot
represent; with the distinct centres, the density at the mirror mode is e^-15 of the peak.

Truth: NUTS reference draws (``REFERENCE``; ``runs/references/make_references.py --only
gmm_enum``), run on a NumPyro twin of this model that sums the assignments out by hand
(log-sum-exp over components).

    ppl-models fit runs/gmm_enum.py --reference runs/references/gmm_enum.json.zip
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate

KIND = "enumeration"
GUIDE = "auto-normal"
REFERENCE = "references/gmm_enum.json.zip"

K = 2  # fixed number of components
LOC_PRIOR = (-2.0, 6.0)  # prior centres of the component locations (they identify the labels)
LOC_PRIOR_SCALE = 1.5
SIMULATED_FROM = {"weights": (0.4, 0.6), "locs": (0.0, 4.0), "scale": 1.0}
N, SEED = 60, 0


@config_enumerate
def model(x):
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K, dtype=x.dtype)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample(
            "locs", dist.Normal(torch.tensor(LOC_PRIOR, dtype=x.dtype), LOC_PRIOR_SCALE)
        )
    with pyro.plate("data", len(x)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=x)


def data():
    rng = np.random.default_rng(SEED)
    z = rng.choice(K, size=N, p=SIMULATED_FROM["weights"])
    x = rng.normal(np.asarray(SIMULATED_FROM["locs"])[z], SIMULATED_FROM["scale"])
    return {"x": [round(float(v), 6) for v in x]}
