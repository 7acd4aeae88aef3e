r"""The mean of a normal sample with known sd: a conjugate model whose posterior is known exactly.

mu ~ Normal(mu0, tau0), x_i | mu ~ Normal(mu, sigma), i = 1..N. The posterior is
Normal(m, s^2) with 1/s^2 = 1/tau0^2 + N/sigma^2 and m = s^2 (mu0/tau0^2 + sum(x)/sigma^2).

    ppl-models fit runs/normal_mean.py
    ppl-models fit runs/normal_mean.py --nproc 2    # data-parallel over the plate "obs"
"""

import pyro
import pyro.distributions as dist

# The plate over the observations: the model indexes x by its indices, so a fit can give it a
# batch of them (--set batch_size=B) or split them among processes (--nproc N).
DATA_PLATE = "obs"


def model(x, sigma=1.0, mu0=0.0, tau0=10.0):
    mu = pyro.sample("mu", dist.Normal(mu0, tau0))
    with pyro.plate("obs", len(x)) as i:
        pyro.sample("x", dist.Normal(mu, sigma), obs=x[i])


def data():
    return {"x": [2.3, 1.9, 3.1, 2.8, 1.4, 2.6, 2.2, 3.4, 1.8, 2.5], "sigma": 0.8}
