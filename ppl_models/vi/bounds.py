r"""What importance weights say about a variational fit: evidence bounds, divergences, error bounds.

With :math:`z_s \sim q`, :math:`w_s = p(x, z_s) / q(z_s)` and :math:`\pi = p(z \mid x)`:

- **ELBO** :math:`\mathcal L = E_q[\log w] \le \log p(x)`, estimated by the mean of
  :math:`\log w_s`.
- **Importance-weighted bounds** (Burda et al. 2016)
  :math:`\mathcal L_K = E[\log \frac1K \sum_{k=1}^K w_k]`, rising with :math:`K` to
  :math:`\log p(x)`.
- **CUBO** (Dieng et al. 2017) :math:`\mathrm{CUBO}_2 = \frac12 \log E_q[w^2] \ge \log p(x)`,
  estimated stably as :math:`\frac12(\operatorname{logsumexp}_s 2 \log w_s - \log S)`.
- Since :math:`E_q[w^2] = p(x)^2 E_q[(\pi/q)^2]`, the Rényi-2 divergence
  :math:`D_2(\pi \| q) = \log E_q[(\pi/q)^2] = 2(\mathrm{CUBO}_2 - \log p(x))`, hence the
  computable upper bound :math:`d_2 = 2(\mathrm{CUBO}_2 - \mathcal L) \ge D_2(\pi \| q)`
  (Huggins et al. 2020, section 4). :math:`D_2` is unchanged by any bijective change of
  variables (the Jacobians cancel in :math:`\pi/q`).
- **Wasserstein bounds** (Huggins et al. 2020, theorem 3.4): for :math:`p \ge 1`,

  .. math::

      W_p(q, \pi) \le 2\, C_{2p}(q)^{1/(2p)} \big(e^{D_2(\pi \| q)} - 1\big)^{1/(2p)},
      \qquad C_{r}(q) = \min_y E_q \|z - y\|_2^{r} \le E_q\|z - \bar z\|_2^{r},

  so :math:`W_1 \le 2 \sqrt{E_q\|z - \bar z\|^2}\,\sqrt{e^{d_2} - 1}` and
  :math:`W_2 \le 2 (E_q\|z - \bar z\|^4)^{1/4} (e^{d_2} - 1)^{1/4}`.
  These distances, and so the bounds, live in the space whose coordinates :math:`z` are:
  this module uses the guide's **unconstrained** space (:math:`u = T^{-1}(z)`), where the
  moments of :math:`q` exist. (VIABEL's code uses :math:`\sum_i E(z_i - \bar z_i)^{2p}` for
  :math:`C_{2p}`, which is below :math:`E\|z - \bar z\|^{2p}` for :math:`p = 2` and more than
  one dimension; the norm is used here, as in the theorem.)
- **Mean and sd errors** (Huggins et al. 2020, section 3.2): the mean is 1-Lipschitz in
  :math:`W_1` and :math:`W_2`, so :math:`\|\mu_q - \mu_\pi\|_2 \le \min(W_1, W_2)`; every
  coordinate's standard deviation is 1-Lipschitz in :math:`W_2`:
  :math:`|\sigma_{q,i} - \sigma_{\pi,i}| \le W_2`. A coordinate's marginals satisfy
  :math:`D_2(\pi_i \| q_i) \le D_2(\pi \| q)` (data processing), so the per-coordinate bounds
  use the joint :math:`d_2` with that coordinate's moments:
  :math:`|\mu_{q,i} - \mu_{\pi,i}| \le 2 \sigma_{q,i} \sqrt{e^{d_2} - 1}`.

All are Monte Carlo estimates from the same draws: when :math:`E_q[w^2]` is infinite
(PSIS k-hat above 0.5) the CUBO estimate is too low and the bounds are not to be relied on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from .. import diagnostics

IW_KS = (1, 10, 100, 1000)


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
        v, se = diagnostics.iw_bound(lw, k)
        values[str(k)], errors[str(k)] = v, se
    return values, errors


def _expm1_safe(d2: float) -> float:
    return math.expm1(d2) if d2 < 700 else math.inf


def wasserstein_bounds(d2: float, unconstrained: np.ndarray) -> dict[str, float]:
    r"""Bounds on :math:`W_1(q, \pi)` and :math:`W_2(q, \pi)` in the space of ``unconstrained``.

    Parameters
    ----------
    d2
        An upper bound on :math:`D_2(\pi \| q)` (:func:`d2_bound`).
    unconstrained
        ``(S, D)`` draws of :math:`q`.

    Returns
    -------
    dict
        ``w1`` :math:`= 2 (E\|u - \bar u\|^2)^{1/2} (e^{d_2} - 1)^{1/2}`,
        ``w2`` :math:`= 2 (E\|u - \bar u\|^4)^{1/4} (e^{d_2} - 1)^{1/4}`,
        ``mean_error`` :math:`= \min(w_1, w_2)` (on :math:`\|\mu_q - \mu_\pi\|_2`) and
        ``sd_error`` :math:`= w_2` (on every :math:`|\sigma_{q,i} - \sigma_{\pi,i}|`).
    """
    u = np.asarray(unconstrained, dtype=np.float64)
    if u.ndim == 1:
        u = u[:, None]
    if not math.isfinite(d2):
        return {"w1": math.inf, "w2": math.inf, "mean_error": math.inf, "sd_error": math.inf}
    sq = np.sum((u - u.mean(axis=0)) ** 2, axis=1)
    c2, c4 = float(np.mean(sq)), float(np.mean(sq**2))
    e = _expm1_safe(d2)
    w1 = 2.0 * math.sqrt(c2) * math.sqrt(e)
    w2 = 2.0 * c4**0.25 * e**0.25
    return {"w1": w1, "w2": w2, "mean_error": min(w1, w2), "sd_error": w2}


def coordinate_bounds(d2: float, unconstrained: np.ndarray) -> dict[str, np.ndarray]:
    r"""Per-coordinate bounds from the joint :math:`d_2` and each coordinate's own moments.

    Returns ``sd`` (:math:`\sigma_{q,i}`), ``mean_error``
    :math:`= \min(2\sigma_{q,i}\sqrt{e^{d_2}-1},\ w_{2,i})` and ``sd_error``
    :math:`= w_{2,i} = 2 (E(u_i - \bar u_i)^4)^{1/4} (e^{d_2}-1)^{1/4}`, arrays of length D.
    """
    u = np.asarray(unconstrained, dtype=np.float64)
    if u.ndim == 1:
        u = u[:, None]
    centred = u - u.mean(axis=0)
    sd = np.sqrt(np.mean(centred**2, axis=0))
    if not math.isfinite(d2):
        inf = np.full(u.shape[1], np.inf)
        return {"sd": sd, "mean_error": inf, "sd_error": inf}
    e = _expm1_safe(d2)
    w1 = 2.0 * sd * math.sqrt(e)
    w2 = 2.0 * np.mean(centred**4, axis=0) ** 0.25 * e**0.25
    return {"sd": sd, "mean_error": np.minimum(w1, w2), "sd_error": w2}


@dataclass(frozen=True)
class WeightedMoments:
    """Self-normalised importance-sampling estimates of means and sds, with Monte Carlo errors."""

    mean: np.ndarray
    sd: np.ndarray
    mcse_mean: np.ndarray
    mcse_sd: np.ndarray


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
