r"""Efron and Morris's baseball players, pooled through a Beta prior (``m.unsqueeze(-1)``).

m ~ Uniform(0, 1) (the population's mean batting average), kappa ~ Pareto(1, 1.5) (its
concentration); for each of 18 players j, phi_j ~ Beta(m kappa, (1 - m) kappa) and
hits_j ~ Binomial(at_bats_j, phi_j). The scalar hyper-parameters enter the plate as
``m.unsqueeze(-1)`` and ``kappa.unsqueeze(-1)``, the way one writes a scalar that must broadcast
against a vector of players.

Source: Pyro's ``examples/baseball.py`` (``partially_pooled``, Apache-2.0), with ``scalar_like``
replaced by plain floats and the hyper-parameters unsqueezed as above. Data: the first 45
at-bats of the 1970 season for 18 players, as tabulated by Efron and Morris (1975), JASA
70:311-319 (the data Pyro's example downloads).

Truth: NUTS reference draws (``REFERENCE``; ``runs/references/make_references.py --only
baseball_pooled``) of a NumPyro twin.

    ppl-models fit runs/baseball_pooled.py --reference runs/references/baseball_pooled.json.zip
"""

import pyro
import pyro.distributions as dist

KIND = "idiom"
GUIDE = "auto-normal"
REFERENCE = "references/baseball_pooled.json.zip"

# Hits in the first 45 at-bats of 1970 (Efron and Morris 1975, table 1), Clemente to Alvis.
HITS = (18, 17, 16, 15, 14, 14, 13, 12, 11, 11, 10, 10, 10, 10, 10, 9, 8, 7)
AT_BATS = 45


def model(at_bats, hits):
    num_players = at_bats.shape[0]
    m = pyro.sample("m", dist.Uniform(0.0, 1.0))
    kappa = pyro.sample("kappa", dist.Pareto(1.0, 1.5))
    with pyro.plate("num_players", num_players):
        phi_prior = dist.Beta(
            m.unsqueeze(-1) * kappa.unsqueeze(-1), (1 - m).unsqueeze(-1) * kappa.unsqueeze(-1)
        )
        phi = pyro.sample("phi", phi_prior)
        return pyro.sample("obs", dist.Binomial(at_bats, phi), obs=hits)


def data():
    # floats: the counts arrive in the run's float dtype, as Binomial wants
    return {"at_bats": [float(AT_BATS)] * len(HITS), "hits": [float(h) for h in HITS]}
