r"""Gull's lighthouse problem, for eight lighthouses: Cauchy data, polynomial posterior tails.

A lighthouse at position alpha along a straight coast, a distance beta out to sea, sends
flashes at uniformly random angles; a flash is seen on the coast at alpha + beta tan(angle),
so the positions x_k are Cauchy(alpha, beta). Here eight lighthouses, each seen through three
flashes, beta = 1 known: alpha_j ~ Normal(0, 10), x_kj ~ Cauchy(alpha_j, 1). With so few
flashes each alpha_j's posterior has tails like |alpha_j|^-6 (those of a Student-t with five
degrees of freedom) until the prior cuts them far out, and a stray flash adds a shoulder: a
Gaussian (or a Gaussian-based flow) misses that mass, while the posterior has every moment.

Source: Gull (1988), "Bayesian inductive inference and maximum entropy", in Maximum-Entropy and
Bayesian Methods in Science and Engineering, vol. 1, pp. 53-74; Sivia and Skilling (2006),
Data Analysis: A Bayesian Tutorial, 2nd ed., section 2.4. Change: eight lighthouses at once,
alpha_j's flat prior made Normal(0, 10). Data: positions ~ Normal(0, 2), flashes Cauchy around
them (seed 0); two lighthouses have a stray flash about 5 km from the nearest other, which
gives their posteriors a shoulder (a second, lower mode 2.6 to 3.1 nats down).

Truth: exact. The alpha_j are independent a posteriori, each with a one-dimensional density
(``log_posterior``, written with scipy.stats): its moments by quadrature
(``posterior_moments``), and exact independent draws, by the inverse of its CDF on a fine grid,
in ``REFERENCE`` (``runs/references/make_references.py --only lighthouses``: no MCMC).

    ppl-models fit runs/lighthouses.py --auto --reference runs/references/lighthouses.json.zip
"""

import numpy as np
import pyro
import pyro.distributions as dist
from scipy import integrate, stats

KIND = "heavy-tails"
GUIDE = "auto-normal"
REFERENCE = "references/lighthouses.json.zip"

PRIOR_SD, BETA = 10.0, 1.0  # alpha_j's prior sd; the known distance out to sea
SIMULATED_FROM = {"positions_sd": 2.0}
LIGHTHOUSES, FLASHES, SEED = 8, 3, 0


def model(x):
    with pyro.plate("lighthouses", x.shape[-1]):
        alpha = pyro.sample("alpha", dist.Normal(0.0, PRIOR_SD))
        with pyro.plate("flashes", x.shape[-2], dim=-2):
            pyro.sample("x", dist.Cauchy(alpha, BETA), obs=x)


def data():
    """``x[k][j]``: where the k-th flash of lighthouse j reached the coast."""
    rng = np.random.default_rng(SEED)
    alpha = rng.normal(0.0, SIMULATED_FROM["positions_sd"], size=LIGHTHOUSES)
    flashes = alpha[:, None] + BETA * rng.standard_t(1, size=(LIGHTHOUSES, FLASHES))  # Cauchy
    return {"x": np.round(flashes.T, 3).tolist()}


def log_posterior(alpha, flashes) -> np.ndarray:
    """Unnormalised log density of one lighthouse's alpha (any shape) given its flashes."""
    alpha = np.asarray(alpha, dtype=np.float64)[..., None]
    likelihood = stats.cauchy.logpdf(np.asarray(flashes), loc=alpha, scale=BETA).sum(-1)
    return stats.norm.logpdf(alpha[..., 0], scale=PRIOR_SD) + likelihood


def posterior_moments(x=None) -> dict[str, tuple[float, float]]:
    """``{"alpha[j]": (mean, sd)}`` (1-based), by adaptive quadrature over +/-10 prior sds
    (beyond them the density is below e^-50 of its peak), split at the flashes."""
    x = np.asarray(data()["x"] if x is None else x, dtype=np.float64)
    bound = 10 * PRIOR_SD
    moments = {}
    for j, flashes in enumerate(x.T):
        peak = log_posterior(np.median(flashes), flashes)

        def integral(power, centre=0.0, flashes=flashes, peak=peak):
            def f(a):
                return (a - centre) ** power * np.exp(log_posterior(a, flashes) - peak)

            breaks = np.clip(flashes, -bound, bound)
            return integrate.quad(f, -bound, bound, points=breaks, limit=500)[0]

        z = integral(0)
        mean = integral(1) / z
        moments[f"alpha[{j + 1}]"] = (float(mean), float(np.sqrt(integral(2, mean) / z)))
    return moments
