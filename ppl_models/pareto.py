r"""Pareto :math:`\hat k` of many tails at once, from their largest values alone.

PSIS (Vehtari et al. 2024) fits a generalised Pareto distribution to the :math:`M =
\lceil\min(S/5, 3\sqrt S)\rceil` largest of :math:`S` weights, as exceedances over the
:math:`(M+1)`-th largest, by the empirical-Bayes method of Zhang & Stephens (2009), then shrinks
the shape towards 0.5 with the weight of ten observations: :math:`\hat k = (M \hat k_{ZS} + 5) /
(M + 10)`. Only those :math:`M + 1` values enter, so a stream that keeps each row's largest
values can estimate :math:`\hat k` for thousands of rows (the tail of :math:`w \cdot h` for
every element :math:`h` of a posterior) without keeping the draws. :func:`tail_khat` is
ArviZ's ``psislw`` estimate (``reff = 1``) row by row, vectorized.

**The largest of many estimates.** Each :math:`\hat k` has a standard error of about
:math:`(1 + k)/\sqrt M` (the asymptotic variance :math:`(1 + k)^2 / M` of the generalised
Pareto shape's maximum-likelihood estimate). Held one by one to a threshold :math:`t`, the
largest of :math:`E` estimates whose true :math:`k` sits just below it exceeds it by noise alone
far more often than one estimate does: by about :math:`(z_{1-\alpha/E} - z_{1-\alpha})(1 + t)
/ \sqrt M` more at the same rate :math:`\alpha` (Bonferroni's bound, a little generous since the
estimates share their weights). :func:`family_threshold` adds that allowance, so that a
1,000-element posterior q fits well is not refused for its noisiest element, while one or two
elements are held to :math:`t` itself.

**What the weights add.** A function with heavy tails under q itself (a funnel's
:math:`x = e^{y/2} z`) has a heavy tail in :math:`w\,h` even where q is exact and the weights are
equal: that tail is the Monte Carlo noise of any sampler's draws of :math:`h`, not a failure of
importance sampling, and it leaves q's and the PSIS estimate equal. So the tail of :math:`w\,h`
condemns an estimate only where it is heavier than the tail of :math:`h` over q's own draws by
more than the noise of the two estimates, :func:`weights_margin`: two standard errors of their
difference, :math:`2\sqrt 2\,(1 + k)/\sqrt M`.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

LOG_TINY = math.log(np.finfo(float).tiny)  # ArviZ's floor for the cutoff: log 0 below it
_PRIOR_K, _PRIOR_WEIGHT, _PRIOR_BS = 0.5, 10, 3
_BLOCK = 2**22  # numbers per block of the vectorized fit
FAMILY_ALPHA = 0.05  # the rate at which one estimate, or the largest of many, passes by noise


def tail_size(draws: int) -> int:
    """:math:`M`, the number of largest weights PSIS smooths for ``draws`` draws (ArviZ's
    ``psislw`` with relative efficiency 1)."""
    return int(math.ceil(min(0.2 * draws, 3 * math.sqrt(draws))))


def weights_margin(khat: float, draws: int) -> float:
    r"""How much heavier than :math:`h`'s own tail the tail of :math:`w\,h` must be before the
    weights are said to make it so: :math:`2\sqrt 2\,(1 + \hat k)/\sqrt M` (module docstring)."""
    return 2 * math.sqrt(2) * (1 + max(khat, 0.0)) / math.sqrt(tail_size(max(draws, 2)))


def family_threshold(threshold: float, elements: int, draws: int) -> float:
    r"""The threshold for the largest of ``elements`` :math:`\hat k` estimates from ``draws``
    draws: ``threshold`` plus :math:`(z_{1-\alpha/E} - z_{1-\alpha})(1 + t)/\sqrt M` (module
    docstring), ``threshold`` itself for one element."""
    if elements <= 1 or draws < 2:
        return threshold
    z = NormalDist().inv_cdf
    gain = z(1 - FAMILY_ALPHA / elements) - z(1 - FAMILY_ALPHA)
    return threshold + gain * (1 + threshold) / math.sqrt(tail_size(draws))


def tail_khat(top_log_values: np.ndarray) -> np.ndarray:
    r""":math:`\hat k` per row from the row's :math:`M + 1` largest log values.

    Parameters
    ----------
    top_log_values
        ``(rows, M + 1)``: for each row, the :math:`M + 1` largest of its :math:`S` log values
        (any order), :math:`M` = :func:`tail_size` of :math:`S`; entries may
        be ``-inf``.

    Returns
    -------
    numpy.ndarray
        ``(rows,)``: the shape of the generalised Pareto fitted to the :math:`M` largest values'
        exceedances of the :math:`(M+1)`-th, as ArviZ's ``psislw`` gives it; ``-inf`` for a row
        whose largest values are all equal (a flat tail, as
        :func:`ppl_models.diagnostics.psis_khat` reports it) and ``inf`` for one with at most
        four exceedances (too few to fit).
    """
    x = np.sort(np.asarray(top_log_values, dtype=np.float64), axis=1)
    rows, width = x.shape
    khat = np.full(rows, np.inf)
    if width < 2:
        return khat
    x = x - x[:, -1:]
    cutoff = np.maximum(x[:, 0], LOG_TINY)
    exceed = np.exp(x[:, 1:]) - np.exp(cutoff)[:, None]  # sorted, >= 0 where above the cutoff
    strict = (x[:, 1:] > cutoff[:, None]).sum(axis=1)
    flat = np.ptp(x, axis=1) <= 1e-12 * np.maximum(1.0, np.abs(x[:, 0]))
    full = (strict == width - 1) & ~flat
    index = np.flatnonzero(full)
    step = max(1, _BLOCK // ((width - 1) * (30 + int(math.sqrt(width - 1)))))
    for start in range(0, len(index), step):
        block = index[start : start + step]
        khat[block] = _gpd_shape(exceed[block])
    for i in np.flatnonzero(~full & ~flat & (strict > 4)):  # ties at the cutoff: a shorter tail
        tail = exceed[i][x[i, 1:] > cutoff[i]]
        khat[i] = _gpd_shape(tail[None, :])[0]
    khat[flat] = -np.inf
    return khat


def _gpd_shape(exceedances: np.ndarray) -> np.ndarray:
    """Zhang & Stephens' posterior-mean shape of each row of sorted positive exceedances
    ``(rows, n)``, shrunk by PSIS's prior (ArviZ's ``_gpdfit``, vectorized)."""
    y = exceedances
    n = y.shape[1]
    m = 30 + int(math.sqrt(n))
    grid = 1.0 - np.sqrt(m / (np.arange(1, m + 1, dtype=np.float64) - 0.5))
    quartile = y[:, int(n / 4 + 0.5) - 1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        b = grid[None, :] / (_PRIOR_BS * quartile[:, None]) + 1.0 / y[:, -1:]  # (rows, m)
        k = np.log1p(-b[:, :, None] * y[:, None, :]).mean(axis=2)
        profile = n * (np.log(-(b / k)) - k - 1.0)
        weights = 1.0 / np.exp(profile[:, None, :] - profile[:, :, None]).sum(axis=2)
        weights = np.where(weights >= 10 * np.finfo(float).eps, weights, 0.0)
        weights /= weights.sum(axis=1, keepdims=True)
        b_post = (b * weights).sum(axis=1)
        k_post = np.log1p(-b_post[:, None] * y).mean(axis=1)
    return (n * k_post + _PRIOR_WEIGHT * _PRIOR_K) / (n + _PRIOR_WEIGHT)


def squared_deviation_khat(draws: np.ndarray) -> np.ndarray:
    r""":math:`\hat k` of the upper tail of each row's squared deviations from its mean.

    The sample variance of :math:`x` is the mean of :math:`(x - \bar x)^2`; its own variance
    is finite only where that tail's shape :math:`k < 1/2` (a fourth moment), so at and above
    one half the sd's Monte Carlo error, :math:`\sqrt{(\mu_4 - \sigma^4)/\mathrm{ESS}}/(2\sigma)`
    as ArviZ estimates it, is a lower bound that more draws do not make honest (Vehtari et
    al. 2024, section 3 on the Pareto :math:`\hat k` of any Monte Carlo estimate).

    Parameters
    ----------
    draws
        ``(rows, S)``: each row the draws of one element, chains pooled.
    """
    x = np.asarray(draws, dtype=np.float64)
    m = tail_size(x.shape[1])
    with np.errstate(divide="ignore"):
        log_c2 = 2 * np.log(np.abs(x - x.mean(axis=1, keepdims=True)))
    return tail_khat(np.partition(log_c2, -(m + 1), axis=1)[:, -(m + 1) :])
