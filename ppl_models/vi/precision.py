r"""How many guide draws the diagnosis makes: as many as its answers need, in rounds.

The verdict holds PSIS-corrected means and sds to a tolerance of 0.1 sd, with an allowance of
two Monte Carlo standard errors; the draws are enough when that allowance is a small part of
the tolerance. :func:`draw_by_precision` makes ``min_draws`` draws, then doubles their number
until, for every element,

.. math:: 2\,\mathrm{mcse}(\hat\mu_{PSIS}) \le p\,\max(\hat\sigma_{PSIS}, \sigma_q), \qquad
          2\,\mathrm{mcse}(\hat\sigma_{PSIS}) \le p\,\hat\sigma_{PSIS}

(:math:`p` = ``precision``, 0.025: a quarter of the tolerance), PSIS's own sample-size
requirement :math:`S \ge 10^{1/(1-\hat k)}` holds (Vehtari et al. 2024, for :math:`\hat k < 1`),
and :math:`\hat k` moved by less than 0.05 between the last two rounds (its estimate is noisy at
small :math:`S`) -- or until the cap ``draws``. Where :math:`\hat k` is above the sample-size
threshold, the moments cannot be resolved by more draws, and the rounds stop once :math:`\hat
k` is stable.

Without a reference the verdict also needs an importance ESS of at least
:math:`\max(\mathrm{ESS}_{min}, f S)` (``ess_rules``, the verdict's
:class:`~ppl_models.vi.verdict.VerdictRules`). More draws raise the ESS towards its absolute
floor, but not its fraction :math:`\mathrm{ESS}/S`: its estimate does not grow with :math:`S` in
expectation (small samples miss the largest weights), and its limit is :math:`1/E_q[w^2]`
(:math:`E_q[w] = 1`), zero where the weights' variance is infinite. So once the fraction falls
short of :math:`f` in two rounds in a row, more draws would only confirm that the fit cannot
certify itself, and the rounds stop there: the verdict is ``not-trustworthy`` at this :math:`S`,
as it would be at the cap.

The draws stream through :class:`~ppl_models.vi.stream.MomentStream`, which keeps every element's
exact moments and the PSIS tail; only the first ``keep`` draws are kept whole (for the HDI, ESS,
KS distances, figures and ``posterior.nc``), and each chunk is streamed as it is drawn. Memory
stays :math:`O(d(\text{keep} + M + \text{chunk}))` whatever :math:`S` (under ``--nproc``, each
rank sends rank 0 its whole share of a round, so a round's draws are held there at once).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from .. import diagnostics, importance
from ..distributed import rank_seed
from .logweights import Drawer, LogWeights
from .stream import MomentStream
from .verdict import VerdictRules

KHAT_STABLE = 0.05  # k-hat's change between rounds below which it is taken as settled
# The numbers of whole draws kept: keep = clamp(this / d, 1,000, 20,000). 64 MiB of float64 a
# copy, of which the diagnosis holds a few (values, unconstrained, their matrix, ArviZ's copy)
KEEP_NUMBERS = 2**23


def keep_size(dimension: int, cap: int) -> int:
    """How many draws to keep whole for a posterior of ``dimension`` numbers per draw."""
    return int(min(cap, max(1000, min(20_000, KEEP_NUMBERS // max(dimension, 1)))))


def elements(values: dict[str, np.ndarray], sites: list[str]) -> np.ndarray:
    """The draws' scalar elements ``(n, E)``, site by site in ``sites``' order, each site
    flattened row-major (the order of :func:`ppl_models.vi.compare.flatten_sites`)."""
    n = len(next(iter(values.values()))) if values else 0
    parts = [values[site].reshape(n, -1) for site in sites]
    return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0))


def draws_for_khat(khat: float) -> float:
    r"""PSIS's sample-size requirement :math:`10^{1/(1-\hat k)}` (Vehtari et al. 2024): inf
    for :math:`\hat k \ge 1`, and where it exceeds a float (:math:`\hat k` within 1/308 of 1)."""
    exponent = 1 / (1 - khat) if khat < 1 else math.inf
    return 10.0**exponent if exponent <= 308 else math.inf


def resolution(
    stream: MomentStream,
    previous: dict | None,
    precision: float,
    ess_rules: VerdictRules | None = None,
) -> dict:
    """Whether the draws so far resolve the verdict's quantities (module docstring), and the
    numbers that say so; ``previous`` is the last round's answer (None in the first)."""
    log_w = stream.all_log_w
    s = len(log_w)
    smoothed, khat = diagnostics.psis_smooth(log_w)
    threshold = diagnostics.khat_threshold(s)
    stable = previous is not None and (
        abs(khat - previous["khat"]) <= KHAT_STABLE or not (math.isfinite(khat))
    )
    psis = stream.psis_moments(smoothed)
    _, q_sd = stream.q_moments()
    scale = np.maximum(psis.sd, q_sd)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_error = np.where(scale > 0, 2 * psis.mcse_mean / scale, 0.0)
        sd_error = np.where(psis.sd > 0, 2 * psis.mcse_sd / psis.sd, 0.0)
    worst = float(max(np.nanmax(mean_error, initial=0.0), np.nanmax(sd_error, initial=0.0)))
    needed = draws_for_khat(khat)
    ess = importance.importance_ess(log_w)
    fraction = ess_rules.min_ess_fraction if ess_rules is not None else None
    min_ess = ess_rules.min_importance_ess(s) if ess_rules is not None else None
    # the fraction alone: more draws can bring the ESS to its absolute floor, not to f S
    ess_short = fraction is not None and not ess >= fraction * s  # NaN falls short too
    ess_futile = ess_short and previous is not None and previous["ess_short"]
    if ess_futile:  # the fit cannot certify itself, whatever k-hat and the moments say
        done = True
    elif not khat <= threshold:  # PSIS is not reliable here: more draws only settle k-hat
        done = stable
    else:
        done = stable and worst <= precision and s >= needed
    return {
        "draws": s,
        "khat": float(khat),
        "khat_threshold": threshold,
        "reliable": bool(khat <= threshold),
        "khat_stable": bool(stable),
        "worst_mcse": worst,
        "needed_for_khat": needed,
        "ess": ess,
        "min_ess": min_ess,
        "ess_fraction": fraction,
        "ess_short": bool(ess_short),
        "ess_futile": bool(ess_futile),
        "resolved": bool(done),
    }


def draw_by_precision(
    model,
    guide,
    data: dict,
    *,
    draws: int,
    min_draws: int,
    precision: float,
    loop_draws: int,
    ess_rules: VerdictRules | None = None,
    context=None,
    seed: int = 0,
    **drawer_options,
) -> LogWeights:
    """Draw in rounds until the verdict's quantities are resolved or ``draws`` are made
    (module docstring); ``loop_draws`` caps a model run one draw at a time, and ``ess_rules``
    (None where a reference judges the fit) say the importance ESS the verdict requires.

    Returns :class:`~ppl_models.vi.logweights.LogWeights` whose ``log_joint``/``log_q`` hold
    every draw, ``values``/``unconstrained`` the kept ones, ``moments`` the stream of all of
    them and ``draws_reason`` why :math:`S` is what it is. Each rank draws its share of every
    round and rank 0 decides for all: the other ranks get the draws' layout alone
    (:meth:`~ppl_models.vi.logweights.Drawer.layout`, no draws), for the mode search they share.
    """
    start = time.perf_counter()
    parallel = context is not None and context.parallel
    drawer = Drawer(
        model,
        guide,
        data,
        seed=rank_seed(seed, context.rank) if parallel else seed,
        **drawer_options,
    )
    cap = draws if drawer.vectorized else min(draws, loop_draws)
    notes: list[str] = []
    if cap < draws:
        notes.append(
            f"The model is not vectorizable over draws, so at most {cap:,} guide draws were "
            f"made one at a time (instead of up to {draws:,})."
        )
    stream = MomentStream(cap)
    kept = None
    # every draw's log densities, in arrays made once: small arrays kept per chunk would pin
    # the heap's free blocks between a chunk's temporaries (and it grows by chunks' sizes)
    log_joint, log_q = np.empty(cap), np.empty(cap)
    target = min(max(min_draws, 10), cap)
    previous, state = None, None
    with drawer:
        while True:
            need = target - stream.count
            share = len(range(need)[context.share(need)]) if parallel else need
            # one process takes each chunk as it is drawn; ranks send rank 0 their whole share
            mine = drawer.chunks(share)
            parts = (context.gather(list(mine)) if parallel else [mine]) or []
            for part in (p for rank_parts in parts for p in rank_parts):
                if kept is None:
                    dimension = sum(v[0].size for v in part[2].values())
                    numbers = dimension + sum(v[0].size for v in part[3].values())
                    kept = _KeptDraws(part, keep_size(numbers, cap))
                at, n = stream.count, len(part[0])
                log_joint[at : at + n], log_q[at : at + n] = part[0], part[1]
                stream.add(part[0] - part[1], elements(part[2], list(part[2])))
                kept.add(part)
            stop = None
            if not parallel or context.is_main:
                state = previous = resolution(stream, previous, precision, ess_rules)
                stop = state["resolved"] or stream.count >= cap or state["draws"] == 0
            if parallel:
                stop = context.broadcast(stop)
            if stop:
                break
            target = min(cap, 2 * target)
    if parallel and not context.is_main:
        return drawer.layout()
    mine = parts = part = None  # the last round's chunks: what is kept of them is in kept
    seconds = time.perf_counter() - start
    parts = [kept.draws(log_joint, log_q)] if kept is not None else []
    lw = drawer.log_weights(parts, seconds, notes)
    return dataclasses.replace(
        lw,
        log_joint=log_joint[: stream.count].copy(),
        log_q=log_q[: stream.count].copy(),
        moments=stream,
        draws_reason=_reason(state, cap, precision),
    )


class _KeptDraws:
    """The sites' values of the first ``keep`` draws, copied into arrays made once at the first
    chunk ``part`` (their log densities are the first of every draw's): each chunk's small
    arrays, kept between the next chunks' temporaries, would split the heap's free blocks and
    make it grow by the temporaries' size."""

    def __init__(self, part, keep: int):
        self.count, self.keep = 0, keep
        self.sites = tuple(
            {k: np.empty((keep, *v.shape[1:]), dtype=v.dtype) for k, v in arrays.items()}
            for arrays in part[2:]
        )

    def add(self, part) -> None:
        """Copy the draws of ``part`` that are still wanted."""
        n = min(self.keep - self.count, len(part[0]))
        if n <= 0:
            return
        at = slice(self.count, self.count + n)
        for mine, theirs in zip(self.sites, part[2:], strict=True):
            for name, array in mine.items():
                array[at] = theirs[name][:n]
        self.count += n

    def draws(self, log_joint: np.ndarray, log_q: np.ndarray):
        """The kept draws as one chunk of :meth:`~ppl_models.vi.logweights.Drawer.chunks`,
        with their log densities from every draw's ``log_joint`` and ``log_q``."""
        first = slice(0, self.count)
        values, unconstrained = ({k: v[first] for k, v in d.items()} for d in self.sites)
        return log_joint[first], log_q[first], values, unconstrained


def _reason(state: dict, cap: int, precision: float) -> str:
    """Why the diagnosis made the draws it made, in words."""
    s = state["draws"]
    khat = f"k-hat {state['khat']:.2f}" + (
        " (settled between rounds)" if state["khat_stable"] else ""
    )
    if state["ess_futile"]:
        return (
            f"S = {s:,}: the importance ESS ({state['ess']:.0f}) is below the verdict's minimum "
            f"({state['min_ess']:.0f}), and below {state['ess_fraction']:.0%} of S for the second "
            "round in a row; that share does not grow with more draws, so the fit cannot certify "
            f"itself however many are made; {khat}."
        )
    if state["resolved"] and not state["reliable"]:
        return (
            f"S = {s:,}: {khat}, above its threshold {state['khat_threshold']:.2f}, so PSIS "
            "cannot resolve the moments however many draws are made."
        )
    if state["resolved"]:
        return (
            f"S = {s:,}: the PSIS-corrected means and sds are resolved to {precision:g} sd "
            f"(their largest Monte Carlo allowance, 2 MCSE, is {state['worst_mcse']:.3g} sd) and "
            f"{khat}; more draws would not change the verdict's inputs."
        )
    return (
        f"S = {s:,}, the cap: {khat}, and the largest Monte Carlo allowance of the "
        f"PSIS-corrected moments is {state['worst_mcse']:.3g} sd (wanted {precision:g})."
    )
