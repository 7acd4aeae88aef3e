r"""Efron and Morris's baseball players, partially pooled on the logit scale (centred: a funnel).

loc ~ Normal(-1, 1), scale ~ HalfCauchy(1); for each of 18 players j, alpha_j ~ Normal(loc,
scale) and hits_j ~ Binomial(at_bats_j, logit^-1(alpha_j)). Written centred, the 18 alpha_j and
``scale`` form a funnel: as ``scale`` shrinks the alpha_j are squeezed together.

Source: Pyro's ``examples/baseball.py`` (``partially_pooled_with_logit``, Apache-2.0), copied
except for ``scalar_like``: plain floats give the same priors. Data: the first 45 at-bats of
the 1970 season for 18 players, as tabulated by Efron and Morris (1975), "Data analysis using
Stein's estimator and its generalizations", JASA 70:311-319 (the data Pyro's example downloads).

Truth: NUTS reference draws (``REFERENCE``; ``runs/references/make_references.py --only
baseball_logit``). NUTS runs on the non-centred twin (alpha_j = loc + scale * a_j, a_j ~
Normal(0, 1): the same posterior without the funnel), whose draws are mapped back to alpha.

    ppl-models fit runs/baseball_logit.py --reference runs/references/baseball_logit.json.zip
"""

import pyro
import pyro.distributions as dist

KIND = "funnel"
GUIDE = "auto-normal"
REFERENCE = "references/baseball_logit.json.zip"

# Hits in the first 45 at-bats of 1970 (Efron and Morris 1975, table 1), Clemente to Alvis.
HITS = (18, 17, 16, 15, 14, 14, 13, 12, 11, 11, 10, 10, 10, 10, 10, 9, 8, 7)
AT_BATS = 45


def model(at_bats, hits):
    num_players = at_bats.shape[0]
    loc = pyro.sample("loc", dist.Normal(-1.0, 1.0))
    scale = pyro.sample("scale", dist.HalfCauchy(scale=1.0))
    with pyro.plate("num_players", num_players):
        alpha = pyro.sample("alpha", dist.Normal(loc, scale))
        return pyro.sample("obs", dist.Binomial(at_bats, logits=alpha), obs=hits)


def data():
    # floats: the counts arrive in the run's float dtype, as Binomial wants
    return {"at_bats": [float(AT_BATS)] * len(HITS), "hits": [float(h) for h in HITS]}
