"""Eight schools, centred (posteriordb ``eight_schools-eight_schools_centered``).

theta ~ Normal(mu, tau), y ~ Normal(theta, sigma), mu ~ Normal(0, 5), tau ~ HalfCauchy(5).
The funnel between tau and theta defeats mean-field Gaussians; the report should say so.

Diagnose it against posteriordb's reference draws with the command in runs/README.md.
"""

import pyro
import pyro.distributions as dist

from ppl_models.vi.script import posteriordb_data


def model(J, y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", J):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        # y and sigma arrive as int64 (whole numbers in the JSON): use the latents' dtype
        pyro.sample("y", dist.Normal(theta, sigma.to(theta)), obs=y.to(theta))


def data():
    return posteriordb_data("eight_schools-eight_schools_centered")
