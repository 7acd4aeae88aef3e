"""Kid's test score on mother's IQ (posteriordb ``kidiq-kidscore_momiq``).

kid_score ~ Normal(beta[1] + beta[2] * mom_iq, sigma), a flat prior on beta (Stan's default for
an unconstrained parameter without a prior: ImproperUniform), sigma ~ HalfCauchy(2.5).

Diagnose it against posteriordb's reference draws with the command in runs/README.md.
"""

import pyro
import pyro.distributions as dist
from pyro.distributions import constraints

from ppl_models.vi.script import posteriordb_data


def model(N, kid_score, mom_iq, **other_data):
    # posteriordb's kidiq data also holds mom_hs, mom_hs_new and mom_iq_new (other kidiq models)
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (2,)))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    # beta[..., :1], not beta[0]: the leading dims are particles when draws are vectorized
    mean = beta[..., :1] + beta[..., 1:] * mom_iq
    pyro.sample(
        "kid_score", dist.Normal(mean, sigma[..., None]).to_event(1), obs=kid_score.to(mean)
    )


def data():
    return posteriordb_data("kidiq-kidscore_momiq")
