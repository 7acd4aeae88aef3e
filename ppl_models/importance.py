r"""Statistics of importance weights :math:`\log w_s = \log p(x, z_s) - \log q(z_s)`,
:math:`z_s \sim q`, that need nothing but the weights.

- **ELBO** :math:`\mathcal L = E_q[\log w] \le \log p(x)`, estimated by the mean of
  :math:`\log w_s`.
- **Importance-weighted bounds** (Burda et al. 2016)
  :math:`\mathcal L_K = E[\log \frac1K \sum_{k=1}^K w_k]`, rising with :math:`K` to
  :math:`\log p(x)`.
- **CUBO** (Dieng et al. 2017) :math:`\mathrm{CUBO}_2 = \frac12 \log E_q[w^2] \ge \log p(x)`,
  and from it :math:`d_2 = 2(\mathrm{CUBO}_2 - \mathcal L) \ge D_2(\pi \| q)` (Huggins et al.
  2020, section 4), the divergence that :mod:`ppl_models.vi.bounds` turns into error bounds.
- **Effective sample size** of self-normalised weights and **weighted moments** with their
  Monte Carlo standard errors.

Pareto smoothing and k-hat, which need ArviZ, live in :mod:`ppl_models.diagnostics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

IW_KS = (1, 10, 100, 1000)


def importance_ess(log_weights: np.ndarray) -> float:
    r"""Effective sample size of self-normalised importance weights,
    :math:`(\sum_s w_s)^2 / \sum_s w_s^2`, between 1 and the number of draws."""
    lw = np.asarray(log_weights, dtype=np.float64).ravel()
    return float(np.exp(2 * logsumexp(lw) - logsumexp(2 * lw)))


def iw_bound(log_weights: np.ndarray, k: int) -> tuple[float, float]:
    r"""Importance-weighted bound :math:`E[\log \frac1K \sum_{k=1}^K w_k]` and its standard error.

    The draws along the last axis are cut into ``n_draws // k`` disjoint groups of ``k``; each
    group gives one estimate :math:`\log \frac1K \sum_k w_k`, and the groups (and any leading
    rows, such as images) are averaged. ``K = 1`` is the ELBO; the bound increases with ``K``
    towards :math:`\log p(x)` (Burda et al. 2016).
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    n = lw.shape[-1]
    if k < 1 or k > n:
        raise ValueError(f"K must be between 1 and the number of draws ({n}), got {k}")
    groups = n // k
    grouped = lw[..., : groups * k].reshape(*lw.shape[:-1], groups, k)
    estimates = logsumexp(grouped, axis=-1) - math.log(k)
    # 1-D: the groups are the replicates; 2-D: one estimate per row (image), averaged over groups.
    samples = estimates if lw.ndim == 1 else estimates.mean(axis=-1)
    samples = samples.reshape(-1)
    se = float(samples.std(ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.nan
    return float(samples.mean()), se


def elbo(log_weights: np.ndarray) -> float:
    r"""Monte Carlo ELBO, :math:`\frac1S \sum_s \log w_s`."""
    return float(np.mean(np.asarray(log_weights, dtype=np.float64)))


def cubo2(log_weights: np.ndarray) -> float:
    r""":math:`\mathrm{CUBO}_2 = \frac12 \log \frac1S \sum_s w_s^2`, by log-sum-exp."""
    lw = np.asarray(log_weights, dtype=np.float64).ravel()
    return float(0.5 * (logsumexp(2.0 * lw) - math.log(lw.size)))


def d2_bound(log_weights: np.ndarray) -> float:
    r""":math:`d_2 = 2(\mathrm{CUBO}_2 - \mathcal L) \ge D_2(\pi \| q)`; never negative (Jensen).

    Infinite when it cannot be estimated (non-finite log weights): such a :math:`d_2` bounds
    nothing, and must never read as the perfect fit's 0.
    """
    d2 = 2.0 * (cubo2(log_weights) - elbo(log_weights))
    return max(0.0, d2) if not math.isnan(d2) else math.inf


def iw_bounds(
    log_weights: np.ndarray, ks: Iterable[int] = IW_KS
) -> tuple[dict[str, float], dict[str, float]]:
    """Importance-weighted bounds and their standard errors for each ``K`` that the number of
    draws allows (at least two groups of ``K``), keyed by ``str(K)``."""
    lw = np.asarray(log_weights, dtype=np.float64).ravel()
    values, errors = {}, {}
    for k in ks:
        if 2 * k > lw.size:
            continue
        v, se = iw_bound(lw, k)
        values[str(k)], errors[str(k)] = v, se
    return values, errors


@dataclass(frozen=True)
class WeightedMoments:
    r"""Self-normalised importance-sampling estimates of means and sds, with Monte Carlo errors,
    and where known the Pareto :math:`\hat k` that says whether each mean's and each sd's
    estimate is reliable (:meth:`ppl_models.vi.stream.MomentStream.function_khats`)."""

    mean: np.ndarray
    sd: np.ndarray
    mcse_mean: np.ndarray
    mcse_sd: np.ndarray
    khat_mean: np.ndarray | None = None
    khat_sd: np.ndarray | None = None
    own_khat_mean: np.ndarray | None = None  # the same with unit weights: q's draws alone
    own_khat_sd: np.ndarray | None = None


def weighted_moments(values: np.ndarray, log_weights_normalised: np.ndarray) -> WeightedMoments:
    r"""Posterior means and sds of the columns of ``values`` (``(S, D)``) under normalised
    weights :math:`\tilde w_s` (PSIS-smoothed, summing to 1).

    :math:`\hat\mu = \sum_s \tilde w_s f_s`, :math:`\hat\sigma^2 = \sum_s \tilde w_s (f_s -
    \hat\mu)^2`; the Monte Carlo standard error of a self-normalised estimate of
    :math:`E_\pi[g]` is :math:`\sqrt{\sum_s \tilde w_s^2 (g_s - \hat E g)^2}` (the delta
    method), applied to :math:`g = f` for the mean and to :math:`g = (f - \hat\mu)^2` for the
    variance, then :math:`\mathrm{se}(\hat\sigma) = \mathrm{se}(\hat\sigma^2) / (2\hat\sigma)`.
    """
    f = np.asarray(values, dtype=np.float64)
    if f.ndim == 1:
        f = f[:, None]
    w = np.exp(np.asarray(log_weights_normalised, dtype=np.float64))
    w = w / w.sum()
    mean = w @ f
    dev2 = (f - mean) ** 2
    var = w @ dev2
    w2 = w**2
    mcse_mean = np.sqrt(w2 @ dev2)
    mcse_var = np.sqrt(w2 @ (dev2 - var) ** 2)
    sd = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        mcse_sd = np.where(sd > 0, mcse_var / (2 * sd), 0.0)
    return WeightedMoments(mean, sd, mcse_mean, mcse_sd)
