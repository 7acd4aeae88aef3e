"""The exponential-normal tests' independent references: data sets, scipy densities and
quadrature, and the ``dataset`` fixture that runs a test on each data set."""

import math

import numpy as np
from scipy import integrate, optimize, stats


def simulated(n, rate, seed, z=None):
    """Observations from the model (or with a fixed z), as in the notebook's recipe."""
    rng = np.random.default_rng(seed)
    z = rng.exponential(1.0 / rate) if z is None else z
    return rng.normal(z, 1.0, n), rate


# (x, rate): the notebook's size, a larger N, and two with sum(x) < rate (posterior piled at 0).
DATASETS = {
    "n5": simulated(5, 1.0, 0),
    "n200": simulated(200, 0.5, 1),
    "sum_below_rate": simulated(4, 3.0, 2, z=0.05),
    "negative_mean": simulated(30, 1.0, 3, z=-0.4),
}


def ref_log_joint(z, x, rate):
    """log p(x, z) from scipy.stats densities, independent of the package."""
    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    return stats.expon.logpdf(z, scale=1.0 / rate) + stats.norm.logpdf(x[:, None], loc=z).sum(0)


def ref_evidence_parts(x, rate):
    """(c, mode, sd) for integrating exp(log p(x, z) - c) over z >= 0 by quadrature."""
    mode = optimize.minimize_scalar(
        lambda z: -ref_log_joint(z, x, rate)[0], bounds=(0.0, abs(x).max() + 10), method="bounded"
    ).x
    return ref_log_joint(mode, x, rate)[0], mode, 1.0 / math.sqrt(x.size)


def quad_posterior(f, x, rate):
    """integral of f(z) p(x, z) / exp(c) over z >= 0, split around the mode."""
    c, mode, sd = ref_evidence_parts(x, rate)
    g = lambda z: f(z) * math.exp(ref_log_joint(z, x, rate)[0] - c)  # noqa: E731
    hi = mode + 60 * sd
    pieces = [(0.0, mode), (mode, mode + 8 * sd), (mode + 8 * sd, hi)]
    total = sum(
        integrate.quad(g, a, b, epsabs=0, epsrel=1e-13, limit=200)[0] for a, b in pieces if b > a
    )
    return total, c


def scipy_kl(q, x, rate) -> float:
    """KL(q || exact posterior) by scipy quadrature, q a frozen scipy distribution on z > 0; the
    evidence is itself a quadrature."""
    total, c = quad_posterior(lambda z: 1.0, x, rate)
    log_ev = c + math.log(total)

    def integrand(z):
        return q.pdf(z) * (q.logpdf(z) - (ref_log_joint(z, x, rate)[0] - log_ev))

    edges = [0.0, *q.ppf([1e-9, 0.5, 1 - 1e-9]), np.inf]
    return sum(
        integrate.quad(integrand, a, b, epsabs=1e-14, epsrel=1e-12, limit=200)[0]
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    )
