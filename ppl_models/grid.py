r"""One-dimensional grid posteriors computed in log space.

A :class:`GridPosterior` turns an unnormalised log-density :math:`\log f(z)` into a normalised
density :math:`p(z) = f(z) / Z` with :math:`Z = \int f(z)\,dz`. Everything is done with
log-densities: :math:`\log Z` comes from a log-sum-exp over Simpson weights, and the unnormalised
density is never exponentiated before :math:`\log Z` has been subtracted. This keeps products of
many likelihood terms (:math:`\log f \approx -10^5` for :math:`10^5` observations) finite, where
exponentiating first underflows to 0/0.

The grid range is chosen automatically: starting from the mode, it extends outward until
:math:`\log f` has dropped ``log_drop`` nats below its maximum (default 35, so the neglected
mass is of order :math:`e^{-35} \approx 6 \times 10^{-16}` relative), or until a support bound
is reached. The log-density is assumed unimodal on its support.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import optimize
from scipy.special import logsumexp

LogDensity = Callable[[np.ndarray], np.ndarray]

_MAX_DOUBLINGS = 200
_NEWTON_STEPS = 4
_SIMPSON = np.array([1.0, 4.0, 1.0])


class GridPosterior:
    r"""A normalised 1-D density on an automatically ranged grid, computed in log space.

    The normaliser uses composite Simpson's rule with the panel midpoints evaluated too: for nodes
    :math:`z_0 < \dots < z_{n-1}` with spacing :math:`h` and midpoints :math:`m_k`,

    .. math::

        \log Z \approx \operatorname{logsumexp}_k \left[\log\tfrac{h}{6}
            + \operatorname{logsumexp}\big(\log f(z_k),\, \log 4 + \log f(m_k),\,
            \log f(z_{k+1})\big)\right],

    so every weight is positive and the sum is an exact log-sum-exp. The cumulative sums of the
    same panel integrals give the CDF at the nodes. The rule's error is :math:`O(h^4)`: negligible
    where the density has fallen off at both ends, about :math:`10^{-11}` relative with the default
    grid where a support bound cuts it off at a finite value.

    Parameters
    ----------
    log_density : callable
        Vectorised unnormalised log-density :math:`\log f`, float64 array in, float64 array out.
        It is only evaluated inside ``[low, high]``.
    low, high : float
        Support bounds of the density (may be infinite).
    mode : float, optional
        The mode of :math:`\log f`. When omitted it is found by bounded Brent minimisation of
        :math:`-\log f` on a bracket grown outward from ``guess``.
    guess : float, optional
        Starting point for the mode search (default: 0 clipped into the support). ``log_density``
        must be finite there.
    scale : float
        Initial step for growing brackets outward; a rough width of the density is ideal but any
        positive value works (steps double until the density has fallen off).
    n_points : int
        Number of grid nodes (at least 3); the density is evaluated at ``2 * n_points - 1`` points.
    log_drop : float
        The grid stops where :math:`\log f` is ``log_drop`` nats below its maximum.

    Attributes
    ----------
    points : numpy.ndarray
        The grid nodes.
    mode : float
        The mode used to centre the grid.
    log_normalizer : float
        :math:`\log Z`; for a log joint :math:`\log p(x, z)` this is the log evidence.

    Raises
    ------
    ValueError
        On invalid arguments, a non-finite log-density at the starting point, or a log-density
        that does not fall off within about :math:`2^{200}` scales.
    """

    def __init__(
        self,
        log_density: LogDensity,
        *,
        low: float = -np.inf,
        high: float = np.inf,
        mode: float | None = None,
        guess: float | None = None,
        scale: float = 1.0,
        n_points: int = 4001,
        log_drop: float = 35.0,
    ) -> None:
        if not low < high:
            raise ValueError(f"need low < high, got low={low}, high={high}")
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        if int(n_points) != n_points or n_points < 3:
            raise ValueError(f"n_points must be an integer >= 3, got {n_points}")
        if not (np.isfinite(log_drop) and log_drop > 0):
            raise ValueError(f"log_drop must be a positive finite number, got {log_drop}")
        self._log_density = log_density
        self.low = float(low)
        self.high = float(high)
        self.log_drop = float(log_drop)

        if mode is None:
            start = float(np.clip(0.0 if guess is None else guess, self.low, self.high))
            mode = self._find_mode(start, float(scale))
        self.mode = float(mode)
        log_peak = self._logf(self.mode)
        if not np.isfinite(log_peak):
            raise ValueError(f"log_density must be finite at the mode {self.mode}, got {log_peak}")
        threshold = log_peak - self.log_drop
        left = self._edge(self.mode, -float(scale), threshold)
        right = self._edge(self.mode, float(scale), threshold)

        n = int(n_points)
        h = (right - left) / (n - 1)
        self.points = np.linspace(left, right, n)
        mids = 0.5 * (self.points[:-1] + self.points[1:])
        # Relative to the peak: accumulating logs of size |log f| ~ 1e5 would add a rounding
        # error of ulp(1e5) ~ 1e-11 per panel.
        log_nodes = self._logf(self.points) - log_peak
        log_mids = self._logf(mids) - log_peak
        log_panels = np.log(h / 6.0) + logsumexp(
            np.stack([log_nodes[:-1], log_mids, log_nodes[1:]]), b=_SIMPSON[:, None], axis=0
        )
        log_cumulative = np.concatenate([[-np.inf], np.logaddexp.accumulate(log_panels)])
        self.log_normalizer = float(log_peak + log_cumulative[-1])
        # Normalised from here on: log Z is subtracted before anything is exponentiated.
        self._log_cdf_nodes = log_cumulative - log_cumulative[-1]
        # The same rule as quadrature weights over nodes and midpoints: an interior node belongs
        # to two panels (2h/6), an end node to one (h/6), a midpoint gets 4h/6.
        node_w = np.full(n, 2.0 * h / 6.0)
        node_w[[0, -1]] = h / 6.0
        self._quad_points = np.concatenate([self.points, mids])
        self._weights = np.exp(
            np.log(np.concatenate([node_w, np.full(n - 1, 4.0 * h / 6.0)]))
            + np.concatenate([log_nodes, log_mids])
            - log_cumulative[-1]
        )

    # -- construction helpers -------------------------------------------------------------------

    def _logf(self, z: np.ndarray | float) -> np.ndarray:
        """``log f(z)``, and ``-inf`` outside ``[low, high]`` (where ``log f`` is never called).

        NaN counts as ``-inf``: log-densities evaluated on a support bound often come out as
        ``-inf + inf`` (e.g. a lognormal at 0) where the density is 0.
        """
        z = np.asarray(z, dtype=np.float64)
        inside = (z >= self.low) & (z <= self.high)
        out = np.full(z.shape, -np.inf)
        if np.any(inside):
            out[inside] = np.asarray(self._log_density(z[inside]), dtype=np.float64)
        return np.where(np.isnan(out), -np.inf, out)

    def _walk(self, start: float, step: float, threshold: float) -> tuple[float, float]:
        """Step ``start + step * 2**k`` until ``log f < threshold`` or a support bound.

        Returns the last point at or above the threshold and the first point past it (which is the
        support bound itself when the density is still above the threshold there).
        """
        inner = start
        for k in range(_MAX_DOUBLINGS):
            outer = float(np.clip(start + step * 2.0**k, self.low, self.high))
            if self._logf(outer) < threshold or outer in (self.low, self.high):
                return inner, outer
            inner = outer
        raise ValueError(
            f"log_density does not fall {self.log_drop} nats below its peak within "
            f"2**{_MAX_DOUBLINGS} steps of {step} from {start}; is it normalisable?"
        )

    def _find_mode(self, start: float, scale: float) -> float:
        log_start = self._logf(start)
        if not np.isfinite(log_start):
            raise ValueError(f"log_density must be finite at guess {start}, got {log_start}")
        threshold = log_start - self.log_drop
        # For a unimodal density the mode lies between the points where log f first falls
        # log_drop below its value at the start, walking left and right.
        _, lo = self._walk(start, -scale, threshold)
        _, hi = self._walk(start, scale, threshold)
        result = optimize.minimize_scalar(
            lambda z: -self._logf(z),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-12 * (hi - lo)},
        )
        # Bounded Brent never evaluates the bounds; a mode on a support bound is caught here.
        candidates = np.array([result.x, lo, hi])
        return float(candidates[np.argmax(self._logf(candidates))])

    def _edge(self, mode: float, step: float, threshold: float) -> float:
        """Where ``log f`` crosses ``threshold`` beyond ``mode`` (or the support bound first)."""
        inner, outer = self._walk(mode, step, threshold)
        if self._logf(outer) >= threshold:
            return outer
        # Clamp -inf (e.g. a density vanishing on the bound) so brentq sees finite signs.
        return float(
            optimize.brentq(
                lambda z: max(float(self._logf(z)), -1e300) - threshold,
                min(inner, outer),
                max(inner, outer),
                xtol=1e-9 * abs(outer - inner),
            )
        )

    # -- density, CDF and quantiles -------------------------------------------------------------

    def log_pdf(self, z: np.ndarray | float) -> np.ndarray:
        r"""Normalised log-density :math:`\log f(z) - \log Z`, exact anywhere in the support.

        Parameters
        ----------
        z : array_like
            Points (inside or outside the grid); ``-inf`` outside ``[low, high]``.
        """
        return self._logf(z) - self.log_normalizer

    def pdf(self, z: np.ndarray | float) -> np.ndarray:
        """Normalised density :math:`\\exp(\\log f(z) - \\log Z)`."""
        return np.exp(self.log_pdf(z))

    def cdf(self, z: np.ndarray | float) -> np.ndarray:
        r"""Cumulative distribution :math:`F(z) = \int_{\text{left}}^{z} p(t)\,dt`.

        Between nodes the partial panel :math:`[z_k, z]` is integrated by Simpson's rule with its
        own midpoint, so :math:`F` is continuous and accurate to :math:`O(h^5)` per panel. Mass
        outside the grid (below :math:`e^{-\text{log\_drop}}` relative) is treated as zero.
        """
        z = np.asarray(z, dtype=np.float64)
        zc = np.clip(z, self.points[0], self.points[-1])
        k = np.clip(np.searchsorted(self.points, zc, side="right") - 1, 0, self.points.size - 2)
        start = self.points[k]
        width = zc - start
        with np.errstate(divide="ignore"):
            log_partial = np.log(width / 6.0) + logsumexp(
                np.stack([self.log_pdf(start), self.log_pdf(0.5 * (start + zc)), self.log_pdf(zc)]),
                b=_SIMPSON.reshape((3,) + (1,) * z.ndim),
                axis=0,
            )
        return np.clip(np.exp(np.logaddexp(self._log_cdf_nodes[k], log_partial)), 0.0, 1.0)

    def quantile(self, q: np.ndarray | float) -> np.ndarray:
        r"""Inverse CDF :math:`F^{-1}(q)`.

        The node CDF locates the panel; linear interpolation of :math:`F` inside it gives a start
        that Newton's method :math:`z \leftarrow z - (F(z) - q) / p(z)` refines, kept inside the
        panel.

        Raises
        ------
        ValueError
            If any ``q`` lies outside ``[0, 1]``.
        """
        q = np.asarray(q, dtype=np.float64)
        if np.any(~((q >= 0) & (q <= 1))):
            raise ValueError(f"quantile levels must lie in [0, 1], got {q[~((q >= 0) & (q <= 1))]}")
        cdf_nodes = np.exp(self._log_cdf_nodes)
        k = np.clip(np.searchsorted(cdf_nodes, q, side="right") - 1, 0, self.points.size - 2)
        lo, hi = self.points[k], self.points[k + 1]
        span = cdf_nodes[k + 1] - cdf_nodes[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(span > 0, (q - cdf_nodes[k]) / span, 0.0)
            z = lo + np.clip(t, 0.0, 1.0) * (hi - lo)
            for _ in range(_NEWTON_STEPS):
                density = self.pdf(z)
                step = np.where(density > 0, (self.cdf(z) - q) / density, 0.0)
                z = np.clip(z - step, lo, hi)
        return z

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        r"""Draw ``n`` samples by inverse-CDF sampling, :math:`z = F^{-1}(u)` with uniform *u*."""
        return self.quantile(rng.random(n))

    # -- summaries ------------------------------------------------------------------------------

    @property
    def mean(self) -> float:
        r""":math:`\int z\,p(z)\,dz` by the same Simpson rule as :math:`\log Z`."""
        return float(np.sum(self._weights * self._quad_points))

    @property
    def variance(self) -> float:
        r""":math:`\int (z - \mu)^2 p(z)\,dz`, centred first to avoid cancellation."""
        return float(np.sum(self._weights * (self._quad_points - self.mean) ** 2))

    def kl_from(
        self,
        log_q: LogDensity,
        *,
        low: float | None = None,
        high: float | None = None,
        guess: float | None = None,
        scale: float | None = None,
        n_points: int = 20001,
        log_drop: float = 60.0,
    ) -> float:
        r"""KL divergence :math:`\mathrm{KL}(q \,\|\, p) = \int q(z) [\log q(z) - \log p(z)]\,dz`.

        The integral runs over *q*'s own range (a :class:`GridPosterior` built on ``log_q``), and
        :math:`\log p(z) = \log f(z) - \log Z` is evaluated exactly there, so a *q* whose mass lies
        far outside this posterior's grid is still handled correctly. The default ``log_drop`` is
        deeper and the default grid finer than the posterior's because :math:`-\log p` grows in
        *q*'s tails and can make the integrand large compared with *q*.

        Parameters
        ----------
        log_q : callable
            Vectorised *normalised* log-density of *q*, supported inside ``[low, high]``.
        low, high : float, optional
            Support of *q*; default: this posterior's support. Mass of *q* outside the posterior's
            support makes the KL infinite.
        guess, scale : float, optional
            Start and step of the search for *q*'s range; default: this posterior's mode and
            standard deviation, since *q* approximates it (``log_q`` must be finite at ``guess``).
        n_points, log_drop : optional
            Grid settings for *q*'s range, as for :class:`GridPosterior`.

        Raises
        ------
        ValueError
            If ``log_q`` does not integrate to 1 (to 1e-8) over ``[low, high]``.
        """
        q_grid = GridPosterior(
            log_q,
            low=self.low if low is None else low,
            high=self.high if high is None else high,
            guess=self.mode if guess is None else guess,
            scale=math.sqrt(self.variance) if scale is None else scale,
            n_points=n_points,
            log_drop=log_drop,
        )
        if abs(q_grid.log_normalizer) > 1e-8:
            raise ValueError(
                f"log_q integrates to exp({q_grid.log_normalizer:.3g}) over "
                f"[{q_grid.low}, {q_grid.high}]; it must be a log-density normalised there"
            )
        points = q_grid._quad_points
        with np.errstate(invalid="ignore"):
            integrand = np.asarray(log_q(points), dtype=np.float64) - self.log_pdf(points)
        mass = q_grid._weights
        return float(np.sum(np.where(mass > 0, mass * integrand, 0.0)))
