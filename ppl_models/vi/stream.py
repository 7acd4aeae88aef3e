r"""Moments of many guide draws, accumulated chunk by chunk in bounded memory.

The diagnosis scores :math:`S` guide draws :math:`z_s` with log weights :math:`\log w_s`. It
needs, for every scalar element :math:`f` of the posterior, q's mean and sd and the
PSIS-corrected (self-normalised, Pareto-smoothed) mean and sd with their Monte Carlo errors.
Keeping every draw costs :math:`S \times d` numbers; :class:`MomentStream` keeps instead

- power sums of the centred elements, :math:`\sum_s (f_s - c)^k` for :math:`k \le 2` (q's own
  moments), and, with the weights scaled by :math:`e^{-m}` (:math:`m` the running largest log
  weight), :math:`A_k = \sum_s w_s (f_s - c)^k` for :math:`k \le 2` and
  :math:`B_k = \sum_s w_s^2 (f_s - c)^k` for :math:`k \le 4`;
- the draws with the :math:`M` largest weights, where :math:`M` bounds PSIS's tail
  :math:`\min(0.2 S, 3\sqrt S)` (ArviZ's ``psislw`` with relative efficiency 1);
- per element, the :math:`M` largest values of :math:`\log w_s + \log (f_s - c)_+`,
  :math:`\log w_s + \log (c - f_s)_+` and :math:`\log w_s + 2 \log |f_s - c|`: the tails from
  which :meth:`MomentStream.function_khats` estimates how reliable each element's PSIS mean and
  variance are.

PSIS replaces the tail's weights by smoothed ones and leaves the others as they were, up to one
normalising constant :math:`\kappa`: so every PSIS sum is :math:`\kappa (A_k - A_k^{tail}) +
\sum_{tail} \tilde w_s (f_s - c)^k` (and likewise for :math:`B_k`), exactly as if every draw had
been kept. Memory is :math:`O(d (M + \text{chunk}))`, independent of :math:`S`.

**How reliable each estimate is.** :math:`\hat k` of the weights alone says whether PSIS
can estimate expectations of bounded functions. An expectation :math:`E_p[h]` of an unbounded
:math:`h` is estimated from :math:`w_s h(z_s)`, whose tail is heavier than the weights' when
:math:`p`'s tails are heavier than :math:`q`'s: its own :math:`\hat k` decides (Vehtari et al.
2024, section 2.4; loo's ``E_loo_khat``), the larger of the weights' and of both tails of
:math:`w\,h`. For the mean :math:`h = f - c`, for the variance :math:`h = (f - c)^2`, with
:math:`c` the first chunk's mean of :math:`f` (near q's mean: the tails, not :math:`c`, set
:math:`\hat k`).
"""

from __future__ import annotations

import math

import numpy as np

from ..importance import WeightedMoments
from ..pareto import LOG_TINY, tail_khat, tail_size

_FUNCTIONS = 3  # the tails of w (f - c)_+, w (c - f)_+ and w (f - c)^2


def _largest(rows: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` largest entries of each column of ``rows`` (all of them if fewer), unordered."""
    if len(rows) <= n:
        return rows
    return np.partition(rows, len(rows) - n, axis=0)[len(rows) - n :]


def _powers(g: np.ndarray) -> list[np.ndarray]:
    r""":math:`g^k` for :math:`k = 0, \dots, 4`, by products (NumPy's ``**`` with an exponent
    above 2 calls ``pow`` per number, a hundred times slower)."""
    g2 = g * g
    return [np.ones_like(g), g, g2, g2 * g, g2 * g2]


def _function_logs(log_w: np.ndarray, g: np.ndarray):
    r""":math:`\log w + \log h` for the three functions :math:`h` of the module docstring, one
    ``(n, E)`` array at a time (:math:`\log 0` floored to PSIS's ``LOG_TINY``)."""
    with np.errstate(divide="ignore"):
        log_abs = np.log(np.abs(g))
    lw = log_w[:, None]
    yield np.where(g > 0, lw + log_abs, LOG_TINY)
    yield np.where(g < 0, lw + log_abs, LOG_TINY)
    yield np.maximum(lw + 2 * log_abs, LOG_TINY)


def _khats(tops: list[np.ndarray], tail: int, block: int = 2**20) -> tuple[np.ndarray, np.ndarray]:
    """The mean's k-hat (the heavier of its two tails) and the variance's, per column, from the
    ``tail`` largest of each column of ``tops``; ``block`` numbers of a tail at a time."""
    rows, e = tops[0].shape
    k = np.empty((len(tops), e))
    step = max(1, block // max(rows, 1))
    for start in range(0, e, step):
        cols = slice(start, start + step)
        for i, top in enumerate(tops):
            k[i, cols] = tail_khat(_largest(top[:, cols], tail).T)
    return np.maximum(k[0], k[1]), k[2]


def own_khats(values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The k-hats of :meth:`MomentStream.function_khats` with every weight 1, for every element
    of ``values`` (site -> ``(n, *shape)`` draws of q, in the stream's order): the tails of
    :math:`f - c` and :math:`(f - c)^2` over q's own draws, which any sampler's estimate of
    those moments shares. Site by site, so that no ``(n, E)`` copy of all of them is made."""
    parts = [_own_khats(v.reshape(len(v), -1)) for v in values.values()]
    if not parts:
        return np.empty(0), np.empty(0)
    return np.concatenate([k for k, _ in parts]), np.concatenate([k for _, k in parts])


def _own_khats(f: np.ndarray, block: int = 2**20) -> tuple[np.ndarray, np.ndarray]:
    """:func:`own_khats` of one site's draws ``f`` ``(n, E)``, ``block`` numbers at a time."""
    n, e = f.shape
    tail = tail_size(n) + 1
    k_mean, k_sd = np.empty(e), np.empty(e)
    step = max(1, block // max(n, 1))
    for start in range(0, e, step):
        cols = slice(start, start + step)
        g = f[:, cols] - f[:, cols].mean(axis=0)
        tops = [_largest(logs, tail) for logs in _function_logs(np.zeros(n), g)]
        k_mean[cols], k_sd[cols] = _khats(tops, tail)
    return k_mean, k_sd


class MomentStream:
    """Accumulates the statistics of the module docstring for the columns of chunks ``(n, E)``.

    Parameters
    ----------
    capacity
        The most draws that will be added: the tail kept is :func:`tail_size` of it (plus one).
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.count = 0
        self.log_w: list[np.ndarray] = []
        self._tail_capacity = tail_size(capacity) + 1
        self._center = None
        self._shift = -math.inf
        self._plain = None  # sum (f - c)^k, k = 1, 2
        self._a = None  # sum w (f - c)^k, k = 0, 1, 2 (w scaled by e^-shift)
        self._b = None  # sum w^2 (f - c)^k, k = 0..4 (w^2 scaled by e^-2 shift)
        self._tail_logw = np.empty(0)
        self._tail_f = None
        self._function_tails = None  # 3 x (M + 1, E): the largest log w + log h, per element
        self._pending: list[list[np.ndarray]] = []  # chunks not yet merged into them
        self._pending_draws = 0

    def add(self, log_w: np.ndarray, f: np.ndarray) -> None:
        """Add ``n`` draws: their log weights ``(n,)`` and elements ``(n, E)``."""
        log_w = np.asarray(log_w, dtype=np.float64)
        f = np.asarray(f, dtype=np.float64).reshape(len(log_w), -1)
        if self._center is None:
            self._center = f.mean(axis=0)
            e = f.shape[1]
            self._plain = np.zeros((2, e))
            self._a = np.zeros((3, e))
            self._b = np.zeros((5, e))
            self._tail_f = np.empty((0, e))
            self._function_tails = [np.empty((0, e))] * _FUNCTIONS
        self.log_w.append(log_w)
        self.count += len(log_w)
        top = float(log_w.max()) if len(log_w) else -math.inf
        if top > self._shift:  # rescale what was summed under the smaller shift
            if math.isfinite(self._shift):
                self._a *= math.exp(self._shift - top)
                self._b *= math.exp(2 * (self._shift - top))
            self._shift = top
        g = f - self._center
        w = np.exp(log_w - self._shift)
        powers = _powers(g)
        self._plain += np.stack([powers[1].sum(0), powers[2].sum(0)])
        self._a += np.stack([w @ powers[k] for k in range(3)])
        self._b += np.stack([(w * w) @ powers[k] for k in range(5)])
        self._add_to_tail(log_w, f)
        self._add_function_tails(log_w, g)

    def _add_to_tail(self, log_w: np.ndarray, f: np.ndarray) -> None:
        """Keep the :math:`M + 1` draws of largest weight. Once that many are kept, only the
        chunk's draws above the smallest kept weight enter, each in the place of one of the
        smallest: no copy of the kept rows per chunk."""
        capacity, kept = self._tail_capacity, len(self._tail_logw)
        if kept < capacity:
            both = np.concatenate([self._tail_logw, log_w])
            rows = np.concatenate([self._tail_f, f])
            if len(both) > capacity:
                keep = np.argpartition(both, len(both) - capacity)[-capacity:]
                both, rows = both[keep], rows[keep]
            self._tail_logw, self._tail_f = both, rows
            return
        entering = np.flatnonzero(log_w > self._tail_logw.min())
        if not len(entering):
            return
        both = np.concatenate([self._tail_logw, log_w[entering]])
        dropped = np.argpartition(both, len(entering) - 1)[: len(entering)]  # the smallest
        slots = dropped[dropped < capacity]  # kept draws that leave
        stays = np.ones(len(entering), dtype=bool)
        stays[dropped[dropped >= capacity] - capacity] = False
        self._tail_logw[slots] = log_w[entering[stays]]
        self._tail_f[slots] = f[entering[stays]]

    def _add_function_tails(self, log_w: np.ndarray, g: np.ndarray) -> None:
        r"""Keep, per element, the largest values of :math:`\log w + \log h` for the three
        functions :math:`h` of the module docstring. Chunks wait until they hold :math:`M + 1`
        draws and are then merged at once, so that many small chunks (a large data plate makes
        them a few dozen draws) cost :math:`O(S\,E)` in all, not :math:`O(S M E / n)`: each
        merge partitions at most twice the tails' rows for every new row, while what waits stays
        within the tails' own memory."""
        self._pending.append(list(_function_logs(log_w, g)))
        self._pending_draws += len(log_w)
        if self._pending_draws >= self._tail_capacity:
            self._merge_pending()

    def _merge_pending(self) -> None:
        if not self._pending:
            return
        self._function_tails = [
            _largest(
                np.concatenate([kept, *(chunk[i] for chunk in self._pending)]), self._tail_capacity
            )
            for i, kept in enumerate(self._function_tails)
        ]
        self._pending, self._pending_draws = [], 0

    def function_khats(self, khat: float) -> tuple[np.ndarray, np.ndarray]:
        r"""Per element, the :math:`\hat k` that decides whether its PSIS mean and its PSIS
        variance are reliable (module docstring): the largest of the weights' ``khat`` and of
        the tails of :math:`w\,(f - c)` (both signs), resp. :math:`w\,(f - c)^2`, over all the
        draws added."""
        self._merge_pending()
        tail = tail_size(self.count) + 1
        k_mean, k_sd = _khats(self._function_tails, tail)
        floor = -np.inf if khat is None or math.isnan(khat) else khat
        return np.maximum(floor, k_mean), np.maximum(floor, k_sd)

    @property
    def all_log_w(self) -> np.ndarray:
        """The log weights of every draw added, in order."""
        return np.concatenate(self.log_w) if self.log_w else np.empty(0)

    def q_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """q's mean and sd of every element, over all draws."""
        n = max(self.count, 1)
        mean_c = self._plain[0] / n
        var = np.maximum(self._plain[1] / n - mean_c**2, 0.0)
        return self._center + mean_c, np.sqrt(var)

    def psis_moments(self, smoothed: np.ndarray) -> WeightedMoments:
        """The PSIS-corrected moments (as :func:`ppl_models.importance.weighted_moments` gives
        them from every draw), from the normalised smoothed log weights of all draws."""
        raw = self.all_log_w
        smoothed = np.asarray(smoothed, dtype=np.float64)
        tail = tail_size(len(raw))
        # the draws PSIS smoothed: the largest raw weights (those it left keep their ratio kappa)
        order = np.argsort(raw)
        tail_index = order[len(raw) - tail - 1 :] if tail < len(raw) else order
        untouched = np.ones(len(raw), dtype=bool)
        untouched[tail_index] = False
        kappa = 0.0  # w~_s = kappa x (the scaled weight e^(log w_s - shift)) where untouched
        if untouched.any():
            j = int(np.flatnonzero(untouched)[0])
            kappa = math.exp(smoothed[j] - raw[j] + self._shift)
        # the tail's draws among those kept: the same largest log weights, paired in order
        tail_lw = raw[tail_index]
        kept = np.argsort(self._tail_logw, kind="stable")[len(self._tail_logw) - len(tail_lw) :]
        if not np.array_equal(self._tail_logw[kept], tail_lw):
            raise RuntimeError("the PSIS tail is not among the draws kept for it")
        g = self._tail_f[kept] - self._center
        w_raw = np.exp(tail_lw - self._shift)
        w_new = np.exp(smoothed[tail_index])
        powers = _powers(g)
        a = kappa * (self._a - np.stack([w_raw @ powers[k] for k in range(3)]))
        a += np.stack([w_new @ powers[k] for k in range(3)])
        b = kappa**2 * (self._b - np.stack([(w_raw**2) @ powers[k] for k in range(5)]))
        b += np.stack([(w_new**2) @ powers[k] for k in range(5)])
        total = a[0]
        mu = a[1] / total
        var = np.maximum(a[2] / total - mu**2, 0.0)
        b = b / total**2
        mcse_mean = np.sqrt(np.maximum(b[2] - 2 * mu * b[1] + mu**2 * b[0], 0.0))
        m4 = b[4] - 4 * mu * b[3] + 6 * mu**2 * b[2] - 4 * mu**3 * b[1] + mu**4 * b[0]
        m2 = b[2] - 2 * mu * b[1] + mu**2 * b[0]
        mcse_var = np.sqrt(np.maximum(m4 - 2 * var * m2 + var**2 * b[0], 0.0))
        sd = np.sqrt(var)
        with np.errstate(divide="ignore", invalid="ignore"):
            mcse_sd = np.where(sd > 0, mcse_var / (2 * sd), 0.0)
        return WeightedMoments(self._center + mu, sd, mcse_mean, mcse_sd)
