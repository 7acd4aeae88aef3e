r"""NUTS for the escalation ladder's last rung: chains vectorized, the potential compiled.

The sampler is the multinomial No-U-Turn sampler of Betancourt (2017) in the iterative form of
NumPyro's ``build_tree`` (Phan et al. 2019): a trajectory doubles, in a random direction, until
its ends turn back towards each other (the generalised criterion, checked on every sub-trajectory
through checkpoints of the momenta), a step diverges (energy error above 1000), or it reaches
``max_tree_depth``. Within a new half the proposal is drawn in proportion to each state's
weight :math:`e^{-H}`; between halves by biased progressive sampling.

**Chains in lockstep.** All chains build their trees together: at every leapfrog step the
potential and its gradient are evaluated for the ``C`` chains at once (one batched call of the
model), and a chain whose tree has stopped is masked, not waited for. A step of four chains costs
about what a step of one does, which is what makes several chains cheap on a CPU where a small
model's cost is the interpreter's, not the arithmetic's.

**A compiled potential.** :func:`compiled_potential` traces the batched potential with
``torch.jit.trace`` (checked against the eager one at fresh points, and used only if they agree),
so that each evaluation replays recorded tensor operations instead of running the model's Python
and Pyro's handlers. The bookkeeping of the trees is NumPy on ``(C, D)`` arrays.

**Adaptation** as Stan's: a step size per chain by dual averaging towards a mean acceptance of
``target_accept``, and a diagonal inverse mass matrix from the pooled draws of every chain over
Stan's doubling windows (initial buffer 75, first window 25, terminal buffer 50, shrunk
proportionally for short warm-ups), regularised towards the identity as Stan does. Under the
ladder's NeuTra preconditioning the posterior is near a standard normal, so the identity is also
a good start.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

MAX_DELTA_ENERGY = 1000.0  # an energy error above this is a divergence (Stan's, NumPyro's)


# ----------------------------------------------------------------------------- the potential


PotentialGrad = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def potential_and_grad(potential: Callable[[torch.Tensor], torch.Tensor], dtype) -> PotentialGrad:
    """``f(z)`` for ``z`` ``(C, D)`` (NumPy): the potential ``(C,)`` and its gradient ``(C, D)``,
    from a torch function of a batch of points; non-finite values become ``inf`` potential with
    a zero gradient (the step is then a divergence)."""

    def f(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(z).to(dtype).requires_grad_(True)
        with torch.enable_grad():
            u = potential(x)
            (g,) = torch.autograd.grad(u.sum(), x)
        u_np = u.detach().double().numpy()
        g_np = g.detach().double().numpy()
        bad = ~np.isfinite(u_np) | ~np.isfinite(g_np).all(-1)
        if bad.any():
            u_np = np.where(bad, np.inf, u_np)
            g_np = np.where(bad[:, None], 0.0, g_np)
        return u_np, g_np

    return f


@dataclass
class Compiled:
    """A potential ready for the sampler: ``fn`` and how it was made (``"jit"`` or
    ``"eager"``, and why not jit); ``traced``, the torch function ``torch.jit.trace`` made and
    the checks accepted (None when eager)."""

    fn: PotentialGrad
    how: str
    note: str = ""
    traced: Callable[[torch.Tensor], torch.Tensor] | None = None


def compiled_potential(
    potential: Callable[[torch.Tensor], torch.Tensor],
    example: torch.Tensor,
    checks: list[torch.Tensor],
    *,
    jit: bool = True,
) -> Compiled:
    """The potential of a batch of points, compiled with ``torch.jit.trace`` where the trace
    agrees with the eager function (value and gradient, relative 1e-7 in float64, 1e-4 in
    float32) at each batch of ``checks`` (points other than ``example``, on which it was traced):
    a model whose Python code branches on a value would otherwise replay one branch everywhere.

    Parameters
    ----------
    potential
        ``(C, D)`` tensor -> ``(C,)`` tensor.
    example
        A ``(C, D)`` batch to trace on (the batch size is fixed by it).
    checks
        ``(C, D)`` batches to compare the trace and the eager function on.
    """
    dtype = example.dtype
    eager = potential_and_grad(potential, dtype)
    if not jit:
        return Compiled(eager, "eager", "compilation turned off")
    try:
        with warnings.catch_warnings(), _quiet_jit():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(
                potential, (example.detach().clone().requires_grad_(True),), check_trace=False
            )
    except Exception as err:  # noqa: BLE001 - any failure to trace: run the model eagerly
        return Compiled(eager, "eager", f"the potential could not be traced ({_first_line(err)})")
    compiled = potential_and_grad(traced, dtype)
    rtol = 1e-7 if dtype == torch.float64 else 1e-4
    for batch in checks:
        z = batch.detach().double().numpy()
        u0, g0 = eager(z)
        try:
            u1, g1 = compiled(z)
        except Exception as err:  # noqa: BLE001
            return Compiled(eager, "eager", f"the traced potential failed ({_first_line(err)})")
        finite = np.isfinite(u0)
        same = np.array_equal(finite, np.isfinite(u1)) and np.allclose(
            u0[finite], u1[finite], rtol=rtol, atol=rtol
        )
        same = same and np.allclose(g0[finite], g1[finite], rtol=rtol, atol=rtol)
        if not same:
            return Compiled(
                eager,
                "eager",
                "the traced potential disagreed with the model at fresh points (its Python code "
                "branches on values), so the model runs eagerly",
            )
    return Compiled(compiled, "jit", traced=traced)


@contextlib.contextmanager
def _quiet_jit():
    """``torch.jit.trace`` prints tracer warnings through ``warnings``; nothing else to mute."""
    yield


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


# ----------------------------------------------------------------------------- adaptation


def adaptation_windows(warmup: int) -> list[tuple[int, int]]:
    """Stan's warm-up schedule as ``(first, last)`` iterations: an initial buffer (step size
    only), doubling windows (each ends with a new mass matrix), a terminal buffer (step size
    only); NumPyro's ``build_adaptation_schedule``."""
    if warmup < 20:
        return [(0, warmup - 1)] if warmup > 0 else []
    init, term, base = 75, 50, 25
    if init + base + term > warmup:
        init, term = int(0.15 * warmup), int(0.1 * warmup)
        base = warmup - init - term
    out = [(0, init - 1)]
    end = warmup - term
    size, start = base, init
    while start < end:
        cur_start, cur_size = start, size
        if 3 * cur_size <= end - cur_start:
            size = 2 * cur_size
        else:
            cur_size = end - cur_start
        start = cur_start + cur_size
        out.append((cur_start, start - 1))
    out.append((end, warmup - 1))
    return out


@dataclass
class _DualAveraging:
    """Nesterov dual averaging of log step sizes, one per chain (Hoffman and Gelman 2014)."""

    log_eps: np.ndarray
    target: float
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75

    def __post_init__(self):
        self.restart(self.log_eps)

    def restart(self, log_eps: np.ndarray) -> None:
        self.mu = np.log(10.0) + log_eps
        self.h_bar = np.zeros_like(log_eps)
        self.log_eps_bar = np.zeros_like(log_eps)
        self.t = 0
        self.log_eps = log_eps.copy()

    def update(self, accept: np.ndarray) -> None:
        self.t += 1
        t = self.t
        w = 1.0 / (t + self.t0)
        self.h_bar = (1 - w) * self.h_bar + w * (self.target - accept)
        self.log_eps = self.mu - math.sqrt(t) / self.gamma * self.h_bar
        eta = t**-self.kappa
        self.log_eps_bar = eta * self.log_eps + (1 - eta) * self.log_eps_bar


# ----------------------------------------------------------------------------- the sampler


@dataclass
class NutsRun:
    """Draws and statistics of a vectorized NUTS run.

    Attributes
    ----------
    draws
        ``(C, N, D)``: the kept states of each chain.
    diverging, tree_depth, steps, accept, energy
        ``(C, N)`` per kept iteration: a divergent trajectory, its depth, its leapfrog steps,
        its mean acceptance statistic, its energy (potential plus kinetic).
    step_size, inverse_mass
        ``(C,)`` and ``(D,)``: the adapted step sizes and diagonal inverse mass matrix.
    warmup_seconds, sampling_seconds, gradient_calls
        Wall time of the warm-up and of the kept draws; batched potential-and-gradient calls.
    stopped_early
        True when a deadline cut the run short (fewer draws than asked).
    """

    draws: np.ndarray
    diverging: np.ndarray
    tree_depth: np.ndarray
    steps: np.ndarray
    accept: np.ndarray
    energy: np.ndarray
    step_size: np.ndarray
    inverse_mass: np.ndarray
    warmup: int
    warmup_seconds: float = 0.0
    sampling_seconds: float = 0.0
    gradient_calls: int = 0
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def chains(self) -> int:
        return self.draws.shape[0]

    @property
    def kept(self) -> int:
        return self.draws.shape[1]


class VectorizedNuts:
    """Multinomial NUTS on ``C`` chains at once (module docstring).

    Parameters
    ----------
    potential
        ``f(z)`` for ``z`` ``(C, D)``: the potential ``(C,)`` and its gradient (NumPy).
    init
        ``(C, D)`` starting points.
    seed
        Seed of the sampler's NumPy generator (momenta, directions, proposals).
    max_tree_depth, target_accept
        NUTS's depth limit (2^depth leapfrog steps at most) and the dual averaging's target.
    """

    def __init__(
        self,
        potential: PotentialGrad,
        init: np.ndarray,
        *,
        seed: int = 0,
        max_tree_depth: int = 10,
        target_accept: float = 0.8,
    ):
        self.potential = potential
        self.rng = np.random.default_rng(seed)
        self.max_depth = int(max_tree_depth)
        self.target = float(target_accept)
        self.z = np.array(init, dtype=np.float64)
        c, d = self.z.shape
        self.u, self.g = potential(self.z)
        self.calls = 1
        if not np.isfinite(self.u).all():
            raise ValueError(
                "NUTS: the potential is not finite at every chain's starting point "
                f"(chains {np.flatnonzero(~np.isfinite(self.u)).tolist()})"
            )
        self.inverse_mass = np.ones(d)
        self.eps = np.full(c, self._initial_step_size())
        self.warmed = 0
        self._draws: list[np.ndarray] = []
        self._stats: list[tuple] = []

    # -- one transition

    def _kinetic(self, r: np.ndarray) -> np.ndarray:
        return 0.5 * np.einsum("cd,d,cd->c", r, self.inverse_mass, r)

    def _momentum(self, c: int, d: int) -> np.ndarray:
        return self.rng.standard_normal((c, d)) / np.sqrt(self.inverse_mass)

    def _turning(self, r_left, r_right, r_sum) -> np.ndarray:
        # the generalised criterion (Betancourt 2017, A.4.2), as NumPyro's _is_turning
        r_sum = r_sum - 0.5 * (r_left + r_right)
        m = self.inverse_mass
        left = np.einsum("cd,d,cd->c", r_left, m, r_sum) <= 0
        right = np.einsum("cd,d,cd->c", r_right, m, r_sum) <= 0
        return left | right

    def _leapfrog(self, z, r, g, step):
        r_half = r - 0.5 * step[:, None] * g
        z_new = z + step[:, None] * (self.inverse_mass * r_half)
        u_new, g_new = self.potential(z_new)
        self.calls += 1
        r_new = r_half - 0.5 * step[:, None] * g_new
        return z_new, r_new, u_new, g_new

    def transition(self) -> tuple[np.ndarray, ...]:
        """One NUTS iteration of every chain; returns per chain the mean acceptance statistic,
        whether it diverged, the tree depth, the number of leapfrog steps and the trajectory's
        energy (the Hamiltonian at its start, after the momentum is drawn)."""
        rng, where = self.rng, np.where
        z0, u0, g0 = self.z, self.u, self.g
        c, d = z0.shape
        r0 = self._momentum(c, d)
        h0 = u0 + self._kinetic(r0)
        zl, rl, gl = z0.copy(), r0.copy(), g0.copy()
        zr, rr, gr = z0.copy(), r0.copy(), g0.copy()
        zp, up, gp = z0.copy(), u0.copy(), g0.copy()
        log_w = np.zeros(c)
        r_sum = r0.copy()
        depth = np.zeros(c, dtype=np.int64)
        turning = np.zeros(c, dtype=bool)
        diverging = np.zeros(c, dtype=bool)
        accept_sum = np.zeros(c)
        leaves = np.zeros(c, dtype=np.int64)
        active = np.ones(c, dtype=bool)
        r_ckpt = np.zeros((self.max_depth + 1, c, d))
        r_sum_ckpt = np.zeros((self.max_depth + 1, c, d))
        for level in range(self.max_depth):
            if not active.any():
                break
            right = rng.random(c) < 0.5
            step = where(right, self.eps, -self.eps)
            ze = where(right[:, None], zr, zl)
            re = where(right[:, None], rr, rl)
            ge = where(right[:, None], gr, gl)
            # the new half: built leaf by leaf, its proposal drawn uniformly by weight
            s_log_w = np.full(c, -np.inf)
            s_zp, s_up, s_gp = ze.copy(), np.zeros(c), ge.copy()
            s_r_sum = np.zeros((c, d))
            s_turn = np.zeros(c, dtype=bool)
            s_div = np.zeros(c, dtype=bool)
            s_active = active.copy()
            for n in range(2**level):
                if not s_active.any():
                    break
                m = s_active
                z_new, r_new, u_new, g_new = self._leapfrog(ze, re, ge, step)
                delta = u_new + self._kinetic(r_new) - h0
                delta = where(np.isnan(delta), np.inf, delta)
                ze = where(m[:, None], z_new, ze)
                re = where(m[:, None], r_new, re)
                ge = where(m[:, None], g_new, ge)
                with np.errstate(over="ignore"):
                    accept_sum += where(m, np.minimum(1.0, np.exp(-delta)), 0.0)
                leaves += m
                leaf_log_w = -delta
                new_log_w = np.logaddexp(s_log_w, leaf_log_w)
                with np.errstate(invalid="ignore"):
                    p = np.exp(leaf_log_w - new_log_w)
                take = m & (rng.random(c) < np.nan_to_num(p, nan=0.0))
                s_zp = where(take[:, None], z_new, s_zp)
                s_up = where(take, u_new, s_up)
                s_gp = where(take[:, None], g_new, s_gp)
                s_log_w = where(m, new_log_w, s_log_w)
                s_r_sum = where(m[:, None], s_r_sum + r_new, s_r_sum)
                s_div |= m & (delta > MAX_DELTA_ENERGY)
                if n % 2 == 0:  # a checkpoint at index popcount(n >> 1)
                    i = bin(n >> 1).count("1")
                    r_ckpt[i] = where(m[:, None], r_new, r_ckpt[i])
                    r_sum_ckpt[i] = where(m[:, None], s_r_sum, r_sum_ckpt[i])
                else:  # the sub-trajectories that end here: check each for a U-turn
                    hi = bin(n >> 1).count("1")
                    trailing = 0
                    k = n
                    while k & 1:
                        trailing += 1
                        k >>= 1
                    for i in range(hi, hi - trailing, -1):
                        sub_sum = s_r_sum - r_sum_ckpt[i] + r_ckpt[i]
                        s_turn |= m & self._turning(r_ckpt[i], r_new, sub_sum)
                s_active = m & ~s_turn & ~s_div
            # join the half to the trajectory (biased progressive sampling)
            m = active
            zr = where((m & right)[:, None], ze, zr)
            rr = where((m & right)[:, None], re, rr)
            gr = where((m & right)[:, None], ge, gr)
            zl = where((m & ~right)[:, None], ze, zl)
            rl = where((m & ~right)[:, None], re, rl)
            gl = where((m & ~right)[:, None], ge, gl)
            ok = ~s_turn & ~s_div
            with np.errstate(over="ignore", invalid="ignore"):
                p = np.where(ok, np.minimum(1.0, np.exp(s_log_w - log_w)), 0.0)
            take = m & (rng.random(c) < np.nan_to_num(p, nan=0.0))
            zp = where(take[:, None], s_zp, zp)
            up = where(take, s_up, up)
            gp = where(take[:, None], s_gp, gp)
            log_w = where(m, np.logaddexp(log_w, s_log_w), log_w)
            r_sum = where(m[:, None], r_sum + s_r_sum, r_sum)
            depth = where(m, depth + 1, depth)
            whole = self._turning(rl, rr, r_sum)
            turning = where(m, s_turn | whole, turning)
            diverging = where(m, s_div, diverging)
            active = m & ~turning & ~diverging
        self.z, self.u, self.g = zp, up, gp
        accept = accept_sum / np.maximum(leaves, 1)
        return accept, diverging, depth, leaves, h0

    def _initial_step_size(self) -> float:
        """The largest power-of-two step (from 1) whose single leapfrog step keeps the mean
        acceptance across chains near one half (Hoffman and Gelman's heuristic)."""
        c, d = self.z.shape
        eps = 1.0
        direction = None
        for _ in range(40):
            r = self._momentum(c, d)
            h0 = self.u + self._kinetic(r)
            _, r_new, u_new, _ = self._leapfrog(self.z, r, self.g, np.full(c, eps))
            delta = u_new + self._kinetic(r_new) - h0
            with np.errstate(over="ignore", invalid="ignore"):
                accept = float(np.mean(np.exp(np.minimum(0.0, -np.nan_to_num(delta, nan=np.inf)))))
            up = accept > 0.5
            if direction is None:
                direction = up
            if up != direction:
                break
            eps = eps * 2.0 if up else eps / 2.0
        return eps

    # -- warm-up and draws

    def warmup(self, iterations: int, deadline: float | None = None) -> bool:
        """Adapt the step sizes and the diagonal inverse mass matrix (module docstring); False
        when the deadline passed first."""
        windows = adaptation_windows(iterations)
        averaging = _DualAveraging(np.log(self.eps), self.target)
        last = len(windows) - 1
        for w, (first, end) in enumerate(windows):
            adapt_mass = 0 < w < last
            samples = []
            for _ in range(first, end + 1):
                if deadline is not None and time.perf_counter() > deadline:
                    self.eps = np.exp(averaging.log_eps_bar if averaging.t else averaging.log_eps)
                    return False
                accept, *_ = self.transition()
                averaging.update(accept)
                self.eps = np.exp(averaging.log_eps)
                if adapt_mass:
                    samples.append(self.z.copy())
            if adapt_mass and samples:
                x = np.concatenate(samples)  # every chain's draws of the window, pooled
                n = len(x)
                var = x.var(axis=0, ddof=1) if n > 1 else np.ones(x.shape[1])
                var = (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0))
                self.inverse_mass = var
                self.eps = np.full_like(self.eps, self._initial_step_size())
                averaging.restart(np.log(self.eps))
            self.warmed += end - first + 1
        if averaging.t:
            self.eps = np.exp(averaging.log_eps_bar)
        return True

    def sample(self, iterations: int, deadline: float | None = None) -> int:
        """Draw ``iterations`` more kept states per chain (appended to earlier ones); returns
        how many were drawn before the deadline."""
        for i in range(iterations):
            if deadline is not None and time.perf_counter() > deadline:
                return i
            accept, diverging, depth, steps, energy = self.transition()
            self._draws.append(self.z.copy())
            self._stats.append((diverging, depth, steps, accept, energy))
        return iterations

    def discard(self) -> None:
        """Forget the kept draws (before warming up again)."""
        self._draws, self._stats = [], []

    def result(self, **timing) -> NutsRun:
        """The kept draws so far as a :class:`NutsRun`."""
        c, d = self.z.shape
        if self._draws:
            draws = np.stack(self._draws, axis=1)
            columns = zip(*self._stats, strict=True)
            div, depth, steps, accept, energy = (np.stack(s, axis=1) for s in columns)
        else:
            draws = np.zeros((c, 0, d))
            div = depth = steps = accept = energy = np.zeros((c, 0))
        return NutsRun(
            draws=draws,
            diverging=div.astype(bool),
            tree_depth=depth,
            steps=steps,
            accept=accept,
            energy=energy,
            step_size=self.eps.copy(),
            inverse_mass=self.inverse_mass.copy(),
            warmup=self.warmed,
            gradient_calls=self.calls,
            **timing,
        )
