r"""Two-dimensional grid posteriors computed in log space, many densities at once.

The 2-D sibling of :mod:`ppl_models.grid`. A :class:`GridPosterior2D` holds an unnormalised
log-density :math:`\log f(z)`, :math:`z \in \mathbb R^2`, on an :math:`n \times n` grid of nodes
:math:`z_{ij} = (u_i, v_j)` with spacings :math:`h_u, h_v`, and turns it into a normalised
density :math:`p(z) = f(z) / Z`. As in 1-D, nothing is exponentiated before the peak has been
subtracted, and :math:`\log Z` is one log-sum-exp:

.. math::

    \log Z \approx \operatorname{logsumexp}_{ij}\big[\log f(z_{ij}) + \log w_{ij}\big],
    \qquad w_{ij} = h_u h_v\, c_i c_j, \quad c = (\tfrac12, 1, \dots, 1, \tfrac12),

the tensor-product trapezoid rule. Where the integrand has fallen ``log_drop`` nats below its
peak at every edge of the grid, the trapezoid rule converges faster than any power of :math:`h`
(its Euler-Maclaurin error terms are the derivatives at the edges, which vanish to
:math:`e^{-\text{log\_drop}}`), so it is more accurate there than Simpson's rule, which
:mod:`ppl_models.grid` needs for densities cut off at a support bound. Its equal interior weights
also make the quadrature and the grid's draws (a histogram over cells) agree. Comparing it with the
same rule on every other node estimates the quadrature error (:attr:`GridPosterior2D.log_z_error`).

:func:`grid_posteriors` ranges, evaluates and normalises the grids of a batch of densities (one
per held-out image, say) with one vectorised log-density, in chunks of bounded size:

1. start from a Gaussian guess (centre and scale per axis) and a box of
   :math:`\pm(\sqrt{2\,\text{log\_drop}} + 2)` scales, and optionally scan a fixed search box for
   mass the guess misses;
2. probe the box on a coarse grid; widen each side whose edge is within ``log_drop`` nats of the
   peak, or, when every edge is below, shrink the box to the probe cells above
   :math:`\max \log f - \text{log\_drop}` (one cell of margin), until those cells span at least
   half of the box on each axis;
3. evaluate the fine grid; if an edge of it is still within ``log_drop`` nats of its peak, widen
   that side and evaluate again.

The densities are assumed to put all but a negligible share of their mass in one connected
region that the guess (or the search box's coarse scan) touches; a separate mode far outside both
is not seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp
from tqdm import tqdm  # the terminal bar, as in ppl_models.svi

BatchLogDensity = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``log_density(index, z)``: ``index`` ``(b,)`` picks ``b`` of the batch's densities, ``z`` is
``(b, m, 2)`` float64; returns ``(b, m)`` unnormalised log-densities (float64, ``-inf`` allowed)."""

DEFAULT_CHUNK = 65536
_MAX_RANGING_ROUNDS = 40
_MAX_WIDENINGS = 4


@dataclass(frozen=True)
class GridPosterior2D:
    r"""A normalised density on an :math:`n \times n` grid, from its log-density at the nodes.

    Parameters
    ----------
    u, v : numpy.ndarray
        Equally spaced nodes of the first and the second coordinate, increasing, ``(n,)`` each
        (``n >= 3``).
    log_values : numpy.ndarray
        ``(n, n)`` unnormalised log-density, ``log_values[i, j]`` at :math:`(u_i, v_j)`.

    Raises
    ------
    ValueError
        On nodes that are not equally spaced and increasing, a shape mismatch, NaN, or no finite
        value.
    """

    u: np.ndarray
    v: np.ndarray
    log_values: np.ndarray

    def __post_init__(self) -> None:
        for name in ("u", "v", "log_values"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        n_u, n_v = len(self.u), len(self.v)
        if n_u < 3 or n_v < 3 or self.log_values.shape != (n_u, n_v):
            raise ValueError(
                f"need >= 3 nodes per axis and log_values of shape (len(u), len(v)) = "
                f"({n_u}, {n_v}), got {self.log_values.shape}"
            )
        for name, nodes in (("u", self.u), ("v", self.v)):
            steps = np.diff(nodes)
            if not (steps > 0).all() or np.ptp(steps) > 1e-9 * steps.mean():
                raise ValueError(f"{name} must be equally spaced and increasing")
        if np.isnan(self.log_values).any() or not np.isfinite(self.log_values).any():
            raise ValueError("log_values must hold no NaN and at least one finite value")

    # -- quadrature ------------------------------------------------------------------------------

    @property
    def steps(self) -> tuple[float, float]:
        """The spacings :math:`(h_u, h_v)`."""
        return float(self.u[1] - self.u[0]), float(self.v[1] - self.v[0])

    @property
    def peak(self) -> float:
        """:math:`\\max_{ij} \\log f(z_{ij})`."""
        return float(self.log_values.max())

    @staticmethod
    def _log_trapezoid(log_values: np.ndarray, h_u: float, h_v: float) -> float:
        c_u = np.ones(log_values.shape[0])
        c_v = np.ones(log_values.shape[1])
        c_u[[0, -1]] = c_v[[0, -1]] = 0.5
        log_w = np.log(h_u * h_v) + np.log(c_u)[:, None] + np.log(c_v)[None, :]
        return float(logsumexp(log_values + log_w))

    @property
    def log_normalizer(self) -> float:
        r""":math:`\log Z` by the trapezoid rule; for a log joint :math:`\log p(x, z)` this is
        the log evidence :math:`\log p(x)`."""
        return self._log_trapezoid(self.log_values, *self.steps)

    @property
    def log_z_error(self) -> float:
        r"""Estimated quadrature error of :math:`\log Z`: its difference from the same rule on
        every other node (spacing :math:`2h`). The rule converges fast, so this bounds the error
        of the coarser rule and overstates that of the full one."""
        h_u, h_v = self.steps
        coarse = self._log_trapezoid(self.log_values[::2, ::2], 2 * h_u, 2 * h_v)
        return abs(self.log_normalizer - coarse)

    @property
    def edge_drop(self) -> float:
        """How far (nats) the log-density at the grid's edges stays below its peak."""
        lv = self.log_values
        edges = np.concatenate([lv[0], lv[-1], lv[:, 0], lv[:, -1]])
        return self.peak - float(edges.max())

    @property
    def probabilities(self) -> np.ndarray:
        r"""Quadrature weights times density, normalised: :math:`w_{ij} f(z_{ij}) / Z`, summing
        to 1; expectations are :math:`E[g] \approx \sum_{ij} P_{ij}\, g(z_{ij})`."""
        h_u, h_v = self.steps
        c_u = np.ones(len(self.u))
        c_v = np.ones(len(self.v))
        c_u[[0, -1]] = c_v[[0, -1]] = 0.5
        log_w = np.log(h_u * h_v) + np.log(c_u)[:, None] + np.log(c_v)[None, :]
        return np.exp(self.log_values + log_w - self.log_normalizer)

    @property
    def mean(self) -> np.ndarray:
        """Posterior mean ``(2,)``."""
        p = self.probabilities
        return np.array([np.sum(p.sum(axis=1) * self.u), np.sum(p.sum(axis=0) * self.v)])

    @property
    def cov(self) -> np.ndarray:
        """Posterior covariance ``(2, 2)``, centred before the products (no cancellation)."""
        p = self.probabilities
        du, dv = self.u - self.mean[0], self.v - self.mean[1]
        uu = np.sum(p.sum(axis=1) * du**2)
        vv = np.sum(p.sum(axis=0) * dv**2)
        uv = float(du @ p @ dv)
        return np.array([[uu, uv], [uv, vv]])

    @property
    def sd(self) -> np.ndarray:
        """Marginal standard deviations ``(2,)``."""
        return np.sqrt(np.diag(self.cov))

    @property
    def corr(self) -> float:
        """Correlation of the two coordinates."""
        cov = self.cov
        return float(cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1]))

    # -- the cell histogram: quantiles and draws ------------------------------------------------

    def _cell_masses(self) -> np.ndarray:
        # every node owns the cell [z - h/2, z + h/2] of its axis; cells share one area, so
        # their masses are the density values, normalised
        p = np.exp(self.log_values - self.peak)
        return p / p.sum()

    def quantile(self, q: np.ndarray | float) -> np.ndarray:
        r"""Marginal quantiles ``(len(q), 2)`` (``(2,)`` for a scalar ``q``).

        The marginal of each coordinate is the histogram of the cells' masses (the distribution
        :meth:`sample` draws from); its CDF is linear inside each cell and is inverted exactly.
        Against the continuous density the error is :math:`O(h^2)`.

        Raises
        ------
        ValueError
            If a level lies outside ``[0, 1]``.
        """
        q = np.asarray(q, dtype=np.float64)
        if np.any(~((q >= 0) & (q <= 1))):
            raise ValueError(f"quantile levels must lie in [0, 1], got {q}")
        masses = self._cell_masses()
        out = []
        for nodes, marginal in ((self.u, masses.sum(axis=1)), (self.v, masses.sum(axis=0))):
            h = nodes[1] - nodes[0]
            bounds = np.concatenate([nodes - h / 2, [nodes[-1] + h / 2]])
            cdf = np.concatenate([[0.0], np.cumsum(marginal)])
            cdf /= cdf[-1]
            out.append(np.interp(q, cdf, bounds))
        return np.stack(out, axis=-1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        r"""``n`` draws ``(n, 2)``: a cell with probability proportional to its density, then a
        uniform point inside it. Their covariance is the grid's plus :math:`h^2/12` per axis."""
        masses = self._cell_masses().ravel()
        cells = rng.choice(masses.size, size=n, p=masses)
        i, j = np.unravel_index(cells, self.log_values.shape)
        h_u, h_v = self.steps
        jitter = rng.uniform(-0.5, 0.5, size=(n, 2)) * np.array([h_u, h_v])
        return np.stack([self.u[i], self.v[j]], axis=-1) + jitter

    def density_levels(self, masses: np.ndarray | list[float]) -> np.ndarray:
        r"""Log-density levels whose highest-density regions hold the given probability masses,
        for contour plots: the level :math:`\ell` with :math:`P(\log f(z) \ge \ell) = m`, on the
        same (unnormalised) scale as :attr:`log_values`."""
        masses = np.asarray(masses, dtype=np.float64)
        if np.any(~((masses > 0) & (masses < 1))):
            raise ValueError(f"masses must lie in (0, 1), got {masses}")
        order = np.argsort(self.log_values, axis=None)[::-1]
        cumulative = np.cumsum(self._cell_masses().ravel()[order])
        picks = np.minimum(np.searchsorted(cumulative, masses), order.size - 1)
        return self.log_values.ravel()[order[picks]]


# ---------------------------------------------------------------------------------------------
# Ranging and evaluation of a batch of densities
# ---------------------------------------------------------------------------------------------


def evaluate_points(
    log_density: BatchLogDensity,
    index: np.ndarray,
    z: np.ndarray,
    *,
    chunk: int = DEFAULT_CHUNK,
    bar: tqdm | None = None,
) -> np.ndarray:
    """``log_density`` at ``z`` ``(b, m, 2)`` for densities ``index`` ``(b,)``, in passes of at
    most ``chunk`` points (several densities per pass when ``m`` is small); NaN becomes
    ``-inf``. ``bar``, when given, advances by the points done."""
    b, m = z.shape[:2]
    out = np.empty((b, m))
    rows = max(1, chunk // m)
    cols = min(m, chunk)
    for r in range(0, b, rows):
        for c in range(0, m, cols):
            values = log_density(index[r : r + rows], z[r : r + rows, c : c + cols])
            out[r : r + rows, c : c + cols] = values
            if bar is not None:
                bar.update(values.size)
    return np.where(np.isnan(out), -np.inf, out)


def _nodes(low: np.ndarray, high: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-density axes ``(b, n)`` each, and the grid's points ``(b, n * n, 2)`` in C order."""
    t = np.linspace(0.0, 1.0, n)
    u = low[:, 0, None] + t * (high[:, 0] - low[:, 0])[:, None]
    v = low[:, 1, None] + t * (high[:, 1] - low[:, 1])[:, None]
    uu = np.broadcast_to(u[:, :, None], (len(u), n, n))
    vv = np.broadcast_to(v[:, None, :], (len(v), n, n))
    return u, v, np.stack([uu, vv], axis=-1).reshape(len(u), n * n, 2)


def _edges_above(log_values: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """``(b, 4)``: whether the low-u, high-u, low-v and high-v edges reach ``threshold``."""
    thr = threshold[:, None]
    return np.stack(
        [
            log_values[:, 0, :].max(axis=1, keepdims=True) >= thr,
            log_values[:, -1, :].max(axis=1, keepdims=True) >= thr,
            log_values[:, :, 0].max(axis=1, keepdims=True) >= thr,
            log_values[:, :, -1].max(axis=1, keepdims=True) >= thr,
        ],
        axis=1,
    )[..., 0]


def _widen(low: np.ndarray, high: np.ndarray, edges: np.ndarray, factor: float) -> None:
    """Move each flagged side outward by ``factor`` times the box's width on that axis."""
    width = high - low
    low[:, 0] -= np.where(edges[:, 0], factor * width[:, 0], 0.0)
    high[:, 0] += np.where(edges[:, 1], factor * width[:, 0], 0.0)
    low[:, 1] -= np.where(edges[:, 2], factor * width[:, 1], 0.0)
    high[:, 1] += np.where(edges[:, 3], factor * width[:, 1], 0.0)


def _check_peak(peak: np.ndarray, index: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(peak)
    if bad.any():
        raise ValueError(
            f"the log-density is not finite anywhere on the {where} of densities "
            f"{index[bad].tolist()[:10]}: start the grid where it is finite"
        )


def _range_boxes(
    log_density: BatchLogDensity,
    low: np.ndarray,
    high: np.ndarray,
    scan: tuple[np.ndarray, np.ndarray] | None,
    log_drop: float,
    probe: int,
    chunk: int,
) -> None:
    """Probe, widen and shrink the boxes ``low``/``high`` ``(b, 2)`` in place (see module doc)."""
    b = len(low)
    index = np.arange(b)
    scan_points, scan_values = None, None
    if scan is not None:
        s_low = np.broadcast_to(np.asarray(scan[0], dtype=np.float64), (b, 2)).copy()
        s_high = np.broadcast_to(np.asarray(scan[1], dtype=np.float64), (b, 2)).copy()
        _, _, scan_points = _nodes(s_low, s_high, probe)
        scan_values = evaluate_points(log_density, index, scan_points, chunk=chunk)
    active = np.ones(b, dtype=bool)
    for _ in range(_MAX_RANGING_ROUNDS):
        rows = index[active]
        if not len(rows):
            return
        _, _, points = _nodes(low[rows], high[rows], probe)
        values = evaluate_points(log_density, rows, points, chunk=chunk)
        peak = values.max(axis=1)
        if scan_values is not None:
            peak = np.maximum(peak, scan_values[rows].max(axis=1))
        _check_peak(peak, rows, "probe grid")
        threshold = peak - log_drop
        edges = _edges_above(values.reshape(len(rows), probe, probe), threshold)
        for k, row in enumerate(rows):
            if edges[k].any():
                lo, hi = low[row : row + 1], high[row : row + 1]
                _widen(lo, hi, edges[k : k + 1], 1.0)
                continue
            above = points[k][values[k] >= threshold[k]]
            if scan_values is not None:  # mass the guess missed joins the box
                above = np.concatenate([above, scan_points[row][scan_values[row] >= threshold[k]]])
            cell = (high[row] - low[row]) / (probe - 1)
            new_low, new_high = above.min(axis=0) - cell, above.max(axis=0) + cell
            outside = (new_low < low[row]) | (new_high > high[row])
            resolved = (new_high - new_low) >= 0.5 * (high[row] - low[row])
            low[row], high[row] = new_low, new_high
            # done when the region above the threshold fills the probe box; the scan's points
            # outside it make the box grow, and the next probe checks the grown box's edges
            active[row] = bool(outside.any() or not resolved.all())
        if scan_values is not None:
            # the scan is used once to seed the boxes; later rounds judge the probes alone
            scan_values, scan_points = None, None
    raise ValueError(
        f"the grids of densities {index[active].tolist()[:10]} did not settle within "
        f"{_MAX_RANGING_ROUNDS} rounds: is each log-density normalisable?"
    )


def grid_posteriors(
    log_density: BatchLogDensity,
    center: np.ndarray,
    scale: np.ndarray,
    *,
    n_points: int = 401,
    log_drop: float = 30.0,
    probe_points: int = 41,
    search_box: tuple[np.ndarray, np.ndarray] | None = None,
    chunk: int = DEFAULT_CHUNK,
    progress: bool = False,
) -> list[GridPosterior2D]:
    r"""Grid posteriors of a batch of 2-D densities, each on its own automatically ranged grid.

    Parameters
    ----------
    log_density
        Vectorised unnormalised log-densities of the batch, see :data:`BatchLogDensity`.
    center, scale
        ``(b, 2)``: a Gaussian guess of each density's centre and standard deviations (for a
        VAE, the encoder's :math:`q(z \mid x)`); only the start of the search.
    n_points
        Nodes per axis of the final grids (odd, at least 5); ``n_points**2`` evaluations each.
    log_drop
        Every edge of a final grid lies at least this many nats below its peak.
    probe_points
        Nodes per axis of the coarse probes that range the boxes.
    search_box
        ``(low, high)``, each ``(2,)``: a region scanned once on the probe grid, so that mass the
        guess does not touch still joins the box (for a VAE, the bulk of the prior).
    chunk
        Most points per call of ``log_density``.
    progress
        A progress bar over the fine grids' evaluations (on a terminal only).

    Returns
    -------
    list of GridPosterior2D
        One per density, in the batch's order.

    Raises
    ------
    ValueError
        On invalid arguments, a log-density with no finite value on a probe, or one that does not
        fall ``log_drop`` nats below its peak within the widening rounds.
    """
    center = np.asarray(center, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    if center.ndim != 2 or center.shape[1] != 2 or scale.shape != center.shape:
        raise ValueError(
            f"center and scale must both be (b, 2), got {center.shape} and {scale.shape}"
        )
    if not (np.isfinite(center).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("center must be finite and scale positive and finite")
    if int(n_points) != n_points or n_points < 5 or n_points % 2 == 0:
        raise ValueError(f"n_points must be an odd integer >= 5, got {n_points}")
    if int(probe_points) != probe_points or probe_points < 5:
        raise ValueError(f"probe_points must be an integer >= 5, got {probe_points}")
    if not (math.isfinite(log_drop) and log_drop > 0):
        raise ValueError(f"log_drop must be a positive finite number, got {log_drop}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    radius = math.sqrt(2 * log_drop) + 2.0
    low, high = center - radius * scale, center + radius * scale
    _range_boxes(log_density, low, high, search_box, log_drop, int(probe_points), chunk)

    b, n = len(center), int(n_points)
    results = []
    # a few densities at a time, so that the points and values in flight stay bounded
    group = max(1, chunk // (n * n))
    with tqdm(
        total=b * n * n, desc="grid", unit="pt", unit_scale=True, disable=None if progress else True
    ) as bar:
        for start in range(0, b, group):
            rows = np.arange(start, min(start + group, b))
            results += _fine_grids(log_density, rows, low, high, n, log_drop, chunk, bar)
    return results


def _fine_grids(log_density, rows, low, high, n, log_drop, chunk, bar) -> list[GridPosterior2D]:
    """The final grids of densities ``rows``; a side whose edge still reaches within
    ``log_drop`` of the peak (the probe missed mass near it) is widened by half, and that
    density evaluated again."""
    done: dict[int, GridPosterior2D] = {}
    todo = rows
    for _ in range(_MAX_WIDENINGS):
        u, v, points = _nodes(low[todo], high[todo], n)
        values = evaluate_points(log_density, todo, points, chunk=chunk, bar=bar)
        values = values.reshape(len(todo), n, n)
        peak = values.max(axis=(1, 2))
        _check_peak(peak, todo, "grid")
        edges = _edges_above(values, peak - log_drop)
        for k, row in enumerate(todo):
            if not edges[k].any():
                done[int(row)] = GridPosterior2D(u[k], v[k], values[k].copy())
        redo = edges.any(axis=1)
        if not redo.any():
            return [done[int(row)] for row in rows]
        lo, hi = low[todo[redo]], high[todo[redo]]
        _widen(lo, hi, edges[redo], 0.5)
        low[todo[redo]], high[todo[redo]] = lo, hi
        todo = todo[redo]
        bar.total += len(todo) * n * n
    raise ValueError(
        f"the grids of densities {todo.tolist()[:10]} still reach within {log_drop} nats of "
        f"their peak at an edge after {_MAX_WIDENINGS} widenings"
    )
