r"""Error bounds on a variational fit's means and sds from its importance weights (VIABEL).

With :math:`z_s \sim q`, :math:`w_s = p(x, z_s) / q(z_s)` and :math:`\pi = p(z \mid x)`:

- With the ELBO :math:`\mathcal L` and :math:`\mathrm{CUBO}_2 = \frac12 \log E_q[w^2]`
  (:mod:`ppl_models.importance`):
  since :math:`E_q[w^2] = p(x)^2 E_q[(\pi/q)^2]`, the Rényi-2 divergence
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

import numpy as np


def _expm1_safe(d2: float) -> float:
    return math.expm1(d2) if d2 < 700 else math.inf


def wasserstein_bounds(d2: float, unconstrained: np.ndarray) -> dict[str, float]:
    r"""Bounds on :math:`W_1(q, \pi)` and :math:`W_2(q, \pi)` in the space of ``unconstrained``.

    Parameters
    ----------
    d2
        An upper bound on :math:`D_2(\pi \| q)` (:func:`ppl_models.importance.d2_bound`).
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
    mean = u.mean(axis=0)
    sq = np.concatenate([np.sum((u[rows] - mean) ** 2, axis=1) for rows in _blocks(u, axis=0)])
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
    var, fourth = np.empty(u.shape[1]), np.empty(u.shape[1])
    for cols in _blocks(u, axis=1):
        squares = (u[:, cols] - u[:, cols].mean(axis=0)) ** 2
        # the fourth power as the square squared: NumPy's ** 4 calls pow per number
        var[cols], fourth[cols] = squares.mean(axis=0), (squares * squares).mean(axis=0)
    sd = np.sqrt(var)
    if not math.isfinite(d2):
        inf = np.full(u.shape[1], np.inf)
        return {"sd": sd, "mean_error": inf, "sd_error": inf}
    e = _expm1_safe(d2)
    w1 = 2.0 * sd * math.sqrt(e)
    w2 = 2.0 * fourth**0.25 * e**0.25
    return {"sd": sd, "mean_error": np.minimum(w1, w2), "sd_error": w2}


def _blocks(u: np.ndarray, axis: int, numbers: int = 2**20):
    """Slices along ``axis`` of ``u`` (``(S, D)``) of about ``numbers`` entries each, so that
    the centred copies are made a block at a time."""
    size, other = u.shape[axis], u.shape[1 - axis]
    step = max(1, numbers // max(other, 1))
    return [slice(start, start + step) for start in range(0, size, step)]
