r"""Posterior modes that q never visits: a multi-start mode search.

Every statistic computed from q's own draws (k-hat, :math:`d_2`, the error bounds, the
PSIS-corrected moments) weighs the posterior only where q puts mass. When q sits on one mode
of a multimodal posterior, :math:`\log w` is nearly constant on q's draws, so k-hat and
:math:`d_2` read as for an exact fit while a large share of the posterior is missing. Only a
search that looks elsewhere can see it; this module runs one (as Pathfinder's multiple paths
and Stan's dispersed initial values do):

1. L-BFGS (:func:`ppl_models.vi.initialization.lbfgs_minimum`) minimises the potential
   :math:`U(u) = -\log p(x, T(u)) - \log\lvert\det J_T(u)\rvert` in the guide's unconstrained
   space from ``starts`` points: half uniform in :math:`(-2, 2)^D` (Stan's initial values),
   half drawn from the prior (where it can be sampled);
2. every minimum :math:`\hat u_m` with a positive-definite Hessian :math:`H_m` is a mode,
   whose posterior mass is estimated by its Laplace approximation,
   :math:`\log M_m = -U(\hat u_m) + \frac D2 \log 2\pi - \frac12 \log\det H_m`; modes within
   each other's 99% Laplace ellipsoid are one;
3. a mode is **visited** by q when at least 1% of q's draws fall in its 99% ellipsoid
   :math:`(u - \hat u_m)^\top H_m (u - \hat u_m) \le \chi^2_{D}(0.99)`; the mass q does see is
   the importance-sampling estimate :math:`\hat Z_q = \frac1S \sum_s w_s`;
4. each unvisited mode gets the share :math:`f_m = M_m / (\hat Z_q + \sum_{m'} M_{m'})` of
   the posterior, and the posterior is approximated by the mixture of q (share
   :math:`1 - \sum f_m`, q's own moments) and the unvisited modes' Laplace approximations.
   For every unconstrained coordinate :math:`i` the result gives the mean shift
   :math:`|\mu^*_i - \mu_{q,i}| / \sigma^*_i` and the sd ratio :math:`\sigma_{q,i}/\sigma^*_i`
   that the verdict (:mod:`ppl_models.vi.verdict`) holds to its usual tolerances.

Under ``torchrun`` the starts of step 1 are split across the ranks: rank 0 makes them all (so
with the same seed they are one process's starts) and sends them with q's means and sds, each
rank runs its contiguous share (:func:`rank_starts`) under its own time budget, and rank 0
gathers the minima, in the order one process would have reached them, for steps 2-4.

A mode's mass counted both in :math:`\hat Z_q` and in :math:`M_m` (a mode that q half covers)
only makes the check stricter. A search finds no mode where the density has none (a funnel's
neck); what it cannot find, a reference must.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from pyro import poutine
from scipy import stats
from scipy.special import logsumexp

from ..distributed import Context
from ..svi import local_params
from .enumeration import Discrete, log_joint_at
from .initialization import Minimum, lbfgs_minimum
from .logweights import LogWeights
from .nuts import compiled_potential
from .settings import DiagnosisSettings
from .unconstrained import evaluate, parts

INIT_RADIUS = 2.0  # Stan's uniform(-2, 2) initial values in the unconstrained space
ELLIPSOID_LEVEL = 0.99
MIN_VISITED = 0.01
MODE_ITERATIONS = 100  # a mode of a 2-20-parameter model takes 10-50; a funnel has none
TRACE_CHECKS = 3  # starting points where a traced potential must agree with the model
MIN_STARTS = 2  # starts made whatever the budget ...
ALL_STARTS_UP_TO = 50  # ... and all of them up to this dimension: a small search is cheap, and
# its result must not depend on how busy the machine is


@dataclass
class Mode:
    """One posterior mode in the unconstrained space: location, Laplace covariance factor (or,
    at large dimension, its diagonal ``scale`` alone), log mass (Laplace), the share of q's
    draws in its 99% ellipsoid, and how many starts reached it."""

    loc: np.ndarray
    scale_tril: np.ndarray | None
    log_mass: float
    visited: float
    starts: int = 1
    scale: np.ndarray | None = None

    @property
    def variances(self) -> np.ndarray:
        """The Laplace variance of each coordinate."""
        if self.scale_tril is None:
            return self.scale**2
        return (self.scale_tril**2).sum(axis=1)


@dataclass
class ModeSearch:
    """The result of :func:`search_modes` (module docstring for the quantities)."""

    starts: int
    minima: int
    names: list[str]
    modes: list[Mode] = field(default_factory=list)
    log_mass_q: float = math.nan
    mean_shift: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sd_ratio: np.ndarray = field(default_factory=lambda: np.zeros(0))
    failures: list[str] = field(default_factory=list)
    run: int = 0
    in_q: int = 0
    seconds: float = 0.0
    ranks: int = 1

    @property
    def missed(self) -> list[Mode]:
        return [m for m in self.modes if m.visited < MIN_VISITED]

    def shares(self) -> np.ndarray:
        """:math:`f_m` of the unvisited modes, in the order of :attr:`missed`."""
        logs = np.array([m.log_mass for m in self.missed])
        if not len(logs):
            return logs
        return np.exp(logs - logsumexp(np.append(logs, self.log_mass_q)))

    def to_dict(self) -> dict:
        shares = self.shares()
        return {
            "starts": self.starts,
            "minima": self.minima,
            "failures": self.failures,
            "run": self.run,
            "stopped_in_q": self.in_q,
            "seconds": self.seconds,
            "ranks": self.ranks,
            "modes_found": len(self.modes),
            "missed": [
                {
                    "location": dict(zip(self.names, map(float, m.loc), strict=True)),
                    "share": float(f),
                    "starts": m.starts,
                }
                for m, f in zip(self.missed, shares, strict=True)
            ],
            "coordinates": [
                {"name": n, "mean_shift": float(s), "sd_ratio": float(r)}
                for n, s, r in zip(self.names, self.mean_shift, self.sd_ratio, strict=True)
            ],
        }


def _float64(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(torch.float64)
    return value


def potential(
    model: Callable, data: dict, lw: LogWeights, discrete: Discrete | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    r""":math:`U(u) = -\log p(x, T(u)) - \log\lvert\det J_T(u)\rvert` of a flat float64 vector
    laid out as :meth:`LogWeights.unconstrained_matrix`'s columns, each site's bijection as
    the model states its support at ``u`` (:func:`~ppl_models.vi.unconstrained.evaluate`),
    the ``discrete`` sites summed out."""
    data64 = {k: _float64(v) for k, v in data.items()}
    layout = [(site, tuple(lw.unconstrained[site].shape[1:]), 0) for site in lw.latent_sites]

    def energy(u: torch.Tensor) -> torch.Tensor:
        if not discrete:
            point = evaluate(model, layout, u, data64)
            return -(point.log_joint + point.log_jacobian)
        values, log_jacobian = {}, u.new_zeros(())
        for site, part in parts(layout, u).items():
            bijection = lw.bijections[site]
            values[site] = value = bijection(part)
            log_jacobian = log_jacobian + bijection.log_abs_det_jacobian(part, value).sum()
        return -(log_joint_at(model, values, data64, discrete) + log_jacobian)

    return energy


def traced(
    energy: Callable[[torch.Tensor], torch.Tensor], points: list[torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``energy`` compiled by ``torch.jit.trace`` at ``points[0]``, where the trace gives the
    eager function's value and gradient at every other point
    (:func:`~ppl_models.vi.nuts.compiled_potential`, on batches of one point): the model's
    Python and Pyro's handlers then run once, not at every L-BFGS evaluation. Otherwise (a
    model whose code branches on values, or one that cannot be traced) ``energy`` itself."""
    example, *others = (p.detach().to(torch.float64).unsqueeze(0) for p in points)
    compiled = compiled_potential(lambda v: energy(v[0]).reshape(1), example, others)
    if compiled.traced is None:
        return energy
    return lambda z: compiled.traced(z.unsqueeze(0))[0]


def _prior_starts(model: Callable, data: dict, lw: LogWeights, n: int) -> list[torch.Tensor]:
    """Up to ``n`` prior draws mapped to the unconstrained space (none when a prior cannot be
    sampled, as a flat prior cannot)."""
    starts = []
    for _ in range(n):
        try:
            with poutine.block(), torch.no_grad():
                trace = poutine.trace(model).get_trace(**data)
            parts = [
                lw.bijections[s].inv(trace.nodes[s]["value"]).reshape(-1) for s in lw.latent_sites
            ]
        except (NotImplementedError, RuntimeError, ValueError, KeyError):
            return starts
        u = torch.cat(parts).to(torch.float64)
        if bool(torch.isfinite(u).all()):
            starts.append(u)
    return starts


def rank_starts(n: int, least: int, rank: int, world_size: int) -> tuple[range, int]:
    """The starts that rank ``rank`` of ``world_size`` runs, and how many of them it runs
    whatever the budget.

    Its share is its contiguous block of the ``n`` starts
    (:meth:`~ppl_models.distributed.Context.share`): the blocks in rank order are ``0..n-1``
    once, so the minima gathered in rank order come in a single process's order, and a block
    of the interleaved starts holds prior and uniform ones alike. It must run those of its
    starts that are among the first ``least``: the starts a search always makes are the same
    whatever the number of ranks.
    """
    mine = range(n)[Context(rank, world_size).share(n)]
    return mine, max(0, min(mine.stop, least) - mine.start)


def search_modes(
    model: Callable,
    data: dict,
    lw: LogWeights,
    *,
    starts: int = DiagnosisSettings.mode_starts,
    seed: int = 0,
    iterations: int = MODE_ITERATIONS,
    discrete: Discrete | None = None,
    budget: float | None = None,
    context: Context | None = None,
) -> ModeSearch | None:
    """Search the posterior for modes from ``starts`` points and measure what q misses.

    Parameters
    ----------
    model, data
        The model and its (converted) data.
    lw
        The log-weight engine's draws of q (:func:`ppl_models.vi.logweights.draw_log_weights`);
        on ranks other than 0, their layout is enough (:meth:`.Drawer.layout`).
    starts
        Number of L-BFGS runs (half uniform in :math:`(-2, 2)^D`, half from the prior).
    seed
        Seeds the starting points (the caller's random state is left as it was).
    discrete
        The model's discrete sites, summed out of the potential.
    budget
        Seconds the search may take (on each rank): no start begins after they are spent (but
        at least :data:`MIN_STARTS` run, and every one up to :data:`ALL_STARTS_UP_TO`
        dimensions). A start that enters q's own 99% region (q's draws' means and sds, as a
        diagonal Gaussian) stops there: it is climbing to the mode q already covers.
    context
        A ``torchrun`` job's :class:`~ppl_models.distributed.Context`, on every rank: rank 0
        makes the starting points and sends them with q's means and sds, every rank runs its
        share of the starts (:func:`rank_starts`), and rank 0 gathers the minima, in the
        order of one process, and does the rest. With the same seed the starts are those of
        one process.

    Returns
    -------
    ModeSearch or None
        None on ranks other than 0.
    """
    ctx = context or Context()
    u, names = lw.unconstrained_matrix()
    d = u.shape[1]
    result = ModeSearch(
        starts=starts,
        minima=0,
        names=names,
        mean_shift=np.zeros(d),
        sd_ratio=np.ones(d),
        ranks=ctx.world_size,
    )
    if d == 0 or starts < 1:  # the same on every rank (one model, one setting): no collective
        return result if ctx.is_main else None
    energy = potential(model, data, lw, discrete)
    level = stats.chi2.ppf(ELLIPSOID_LEVEL, d)
    began = time.perf_counter()
    with local_params(), torch.random.fork_rng():
        points, q_mean, q_sd = ctx.on_main(
            lambda: _starting_points(model, data, lw, u, starts, seed)
        )

        def in_q(z: torch.Tensor) -> bool:
            return float((((z - q_mean) / q_sd) ** 2).sum()) <= level

        always = len(points) if d <= ALL_STARTS_UP_TO else MIN_STARTS
        share, least = rank_starts(len(points), always, ctx.rank, ctx.world_size)
        fast = traced(energy, [q_mean, *points[:TRACE_CHECKS]])
        mine = []
        for i in share:
            spent = time.perf_counter() - began
            if budget is not None and len(mine) >= least and spent > budget:
                break
            mine.append(_portable(lbfgs_minimum(fast, points[i], iterations, stop=in_q)))
    parts = ctx.gather(mine)
    if parts is None:
        return None
    minima = [m for part in parts for m in part]
    result.seconds = time.perf_counter() - began
    result.run = len(minima)
    result.in_q = sum(m.stopped for m in minima)
    result.failures = sorted({m.failure for m in minima if m.failure is not None})
    minima = [m for m in minima if m.converged]
    result.minima = len(minima)
    for m in minima:
        loc = m.point.cpu().numpy()
        tril = None if m.scale_tril is None else m.scale_tril.cpu().numpy()
        scale = m.diag_scale.cpu().numpy()
        with torch.no_grad():
            log_mass = float(-energy(m.point)) + 0.5 * d * math.log(2 * math.pi)
        log_mass += float(np.log(np.diagonal(tril) if tril is not None else scale).sum())
        new = Mode(loc, tril, log_mass, visited=0.0, scale=scale)
        same = next(
            (k for k in result.modes if _inside(k, loc, level) or _inside(new, k.loc, level)),
            None,
        )
        if same is not None:
            same.starts += 1
            continue
        z = _whitened(new, u)
        new.visited = float(np.mean(np.sum(z**2, axis=1) <= level))
        result.modes.append(new)
    log_w = lw.log_weights
    result.log_mass_q = float(logsumexp(log_w) - math.log(len(log_w)))
    mean_q, var_q = u.mean(axis=0), u.var(axis=0)
    shares = result.shares()
    rest = 1.0 - shares.sum()
    mean = rest * mean_q + sum(f * m.loc for f, m in zip(shares, result.missed, strict=True))
    second = rest * (var_q + mean_q**2) + sum(
        f * (m.variances + m.loc**2) for f, m in zip(shares, result.missed, strict=True)
    )
    sd = np.sqrt(np.maximum(second - mean**2, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        result.mean_shift = np.where(sd > 0, np.abs(mean - mean_q) / sd, 0.0)
        result.sd_ratio = np.where(sd > 0, np.sqrt(var_q) / sd, 1.0)
    return result


def _inside(mode: Mode, loc: np.ndarray, level: float) -> bool:
    """Whether ``loc`` lies in ``mode``'s ellipsoid at ``level`` (chi-square quantile)."""
    z = _whitened(mode, loc[None, :])[0]
    return float(z @ z) <= level


def _whitened(mode: Mode, x: np.ndarray) -> np.ndarray:
    r"""Rows of ``x`` in the mode's Laplace coordinates, :math:`L^{-1}(x - \hat u)`."""
    if mode.scale_tril is None:
        return (x - mode.loc) / mode.scale
    return np.linalg.solve(mode.scale_tril, (x - mode.loc).T).T


def _starting_points(
    model: Callable, data: dict, lw: LogWeights, u: np.ndarray, n: int, seed: int
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The ``n`` starting points (prior draws and uniform ones in turns, seeded by ``seed``)
    and q's means and sds in the unconstrained space (from ``u``, q's draws there): what every
    rank's starts need."""
    torch.manual_seed(seed)
    prior = _prior_starts(model, data, lw, n // 2)
    uniform = (torch.rand(n - len(prior), u.shape[1], dtype=torch.float64) * 2 - 1) * INIT_RADIUS
    q_mean, q_sd = torch.as_tensor(u.mean(axis=0)), torch.as_tensor(u.std(axis=0) + 1e-300)
    return _interleave(prior, list(uniform)), q_mean, q_sd


def _portable(m: Minimum) -> Minimum:
    """``m`` as rank 0 needs it, small and on the CPU: its last point (not its path), its
    Laplace factors and how it ended."""

    def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().cpu()

    return dataclasses.replace(
        m,
        path=[cpu(m.point)],
        precision=None,
        scale_tril=cpu(m.scale_tril),
        diag_scale=cpu(m.diag_scale),
    )


def _interleave(first: list, second: list) -> list:
    """``first`` and ``second`` taken in turns (a budget that stops early keeps both kinds)."""
    out = []
    for i in range(max(len(first), len(second))):
        out += first[i : i + 1] + second[i : i + 1]
    return out
