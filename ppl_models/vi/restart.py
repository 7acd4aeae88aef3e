r"""The restart guard: a fit from a MAP start that is in doubt is fitted again from Pyro's start.

A MAP/Laplace start (:mod:`ppl_models.vi.initialization`) can hand SVI the mode of a funnel's
neck, where a group scale is near zero and the mean-field guide collapses there. A fit from such
a start is in doubt (:func:`doubt`) when it ran a bounded coordinate more than :math:`e^5`
towards its bound, did not converge, or rose more than :data:`START_GAIN_NATS` above the ELBO of
the Laplace approximation it started from. Where that approximation describes the posterior
(a near-Gaussian one), it is already close to q's optimum and the fit gains a fraction of a nat:
the gain is :math:`\mathrm{KL}(q_0 \| p) - \mathrm{KL}(q \| p)`. A larger gain says the mode
is not where the mass is (Neal's funnel's mode lies 1.5 sds down its neck), and a fit that
crept out of the neck on a decaying step size can still look converged: its ELBO is flat along
the neck. The fit is then fitted again from Pyro's own start, and :func:`better_of` keeps the
fit with the higher final ELBO

.. math:: \widehat{\mathcal L} = \frac1S \sum_{s=1}^S \big(\log p(x, z_s) - \log q(z_s)\big),
          \qquad z_s \sim q,

estimated from the same number :math:`S` of draws for both (:func:`final_elbo`), so that the
package's fit is never worse than the one plain Pyro would have made.

The gain is watched window by window during the fit (:func:`left_its_start`), so a fit that has
left its start behind is stopped there: its remaining steps would only be refitted. Where the
refit's final ELBO does not beat the stopped fit's, the fit from the MAP start is run again to
its end, and the two final fits decide as above.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .initialization import PYRO_INIT_SCALE, ran_to_boundary
from .logweights import draw_log_weights
from .vmapped import LOOP, VMAP

if TYPE_CHECKING:
    from .fitting import SviFit

FINAL_ELBO_DRAWS = 2048  # guide draws of each ELBO that decides between two fits
START_GAIN_NATS = 1.0  # a fit that rose more above its Laplace start left a poor start
START_ELBO_DRAWS = 256  # draws of the Laplace start's ELBO (16 steps' worth at 16 particles)


@dataclass(frozen=True)
class Doubt:
    """Why a fit from a MAP start is fitted again from Pyro's start: the bounded coordinates
    it ran towards their bounds, its failure to converge, or its rise above its start (by the
    step ``left_at`` where it was stopped for it, or by its end)."""

    collapsed: list[tuple[str, str]]
    converged: bool
    gain: tuple[float, float] | None = None  # ELBO gained over the start, its standard error
    left_at: int | None = None  # the step where the fit was stopped for its gain

    def words(self) -> str:
        if self.collapsed:
            names = ", ".join(n for n, _ in self.collapsed[:4])
            more = " ..." if len(self.collapsed) > 4 else ""
            their = "its" if len(self.collapsed) == 1 else "their"
            return (
                f"ran {names}{more} towards {their} bound (a collapsing scale, as in a "
                "funnel's neck)"
            )
        if self.gain is not None:
            gain, se = self.gain
            by = "" if self.left_at is None else f" by step {self.left_at}, where it was stopped,"
            return (
                f"rose {gain:.3g} ± {se:.2g} nats above the ELBO of the Laplace approximation it "
                f"started from{by} (more than {START_GAIN_NATS:g}: the mode is not where the "
                "posterior's mass is, as at the mode of a funnel's neck)"
            )
        return (
            "did not meet its convergence rule (the Laplace approximation at the mode was a "
            "poor start, as at the mode of a funnel's neck)"
        )


def doubt(fit: SviFit) -> Doubt | None:
    """A reason to doubt a fit that began at a MAP, or None: the bounded coordinates whose
    fitted location lies more than e^5 times nearer their bound than the feasible point the MAP
    search began from (more than 5 outwards in the unconstrained space), as a group scale
    collapses to zero in a funnel's neck; a convergence rule that failed; or an ELBO gain over
    the start beyond :data:`START_GAIN_NATS` (:func:`start_gain`), which stops the fit as soon
    as a window shows it (``fit.extras["left_start"]``: the step and the gain). Fits from other
    starts began at Pyro's start already: there is nothing else to try."""
    start = getattr(fit.guide, "start", None)
    if start is None or start.method != "laplace":
        return None
    origin = start.origin if start.origin is not None else start.loc
    loc = fit.guide.unconstrained_mean().to(origin)
    collapsed = ran_to_boundary(origin, loc, fit.guide.coordinates())
    left = fit.extras.get("left_start")
    if left is not None and not collapsed:  # stopped early for its gain: the rest was not run
        return Doubt([], False, tuple(left["gain"]), left["step"])
    assessed = len(fit.convergence.get("window_means", ())) >= 2  # a rule that could not be
    if collapsed or (assessed and not fit.converged):  # applied (too few steps) accuses nothing
        return Doubt(collapsed, fit.converged)
    gain = start_gain(fit)
    if left_its_start(gain):
        return Doubt([], True, gain)
    return None


def start_gain(fit: SviFit) -> tuple[float, float] | None:
    """The ELBO the fit gained over its Laplace start by its last step, with its standard error
    (:func:`gain_over_start` of its recorded losses)."""
    return gain_over_start(
        fit.losses, fit.extras.get("start_elbo"), fit.convergence.get("eval_every", 0)
    )


def gain_over_start(losses, start, window: int) -> tuple[float, float] | None:
    r"""The ELBO gained over a Laplace start, with its standard error: the mean of the last
    ``window`` ELBO estimates (negated ``losses``) less the start's own ``start`` (mean and
    standard error of :data:`START_ELBO_DRAWS` draws of the start before the first step),
    :math:`\bar L_{\rm end} - \hat L_0`, standard error
    :math:`\sqrt{s_{\rm end}^2 / n + se_0^2}`. None without a start's ELBO or enough finite
    losses."""
    last = -np.asarray(losses[-window:], dtype=np.float64) if window else np.empty(0)
    if start is None or len(last) < 2 or not np.isfinite(last).all():
        return None
    se = math.hypot(last.std(ddof=1) / math.sqrt(len(last)), start[1])
    return float(last.mean() - start[0]), float(se)


def left_its_start(gain: tuple[float, float] | None) -> bool:
    """Whether a gain over the Laplace start (:func:`gain_over_start`) exceeds
    :data:`START_GAIN_NATS` by more than two standard errors: the start was not where the
    posterior's mass is."""
    return gain is not None and gain[0] - 2 * gain[1] > START_GAIN_NATS


def final_elbos(
    first: SviFit, retry: SviFit, before: tuple[Callable[[], None], ...] = ()
) -> tuple[int, list[tuple[float, float]]]:
    """The number of guide draws (:data:`FINAL_ELBO_DRAWS`, an eighth of it for a model run
    one draw at a time) and both fits' final ELBOs from that many (:func:`final_elbo`);
    ``before``, one call for each fit, puts its own point estimates back in the model first."""
    draws = FINAL_ELBO_DRAWS if first.vectorized else FINAL_ELBO_DRAWS // 8
    elbos = []
    for i, fit in enumerate((first, retry)):
        if before:
            before[i]()
        elbos.append(final_elbo(fit, draws))
    return draws, elbos


def better_of(
    first: SviFit,
    retry: SviFit,
    doubt: Doubt,
    scored: tuple[int, list[tuple[float, float]]] | None = None,
) -> SviFit:
    """The fit with the higher final ELBO (estimated from the same number of guide draws, with
    its standard error: ``scored``, :func:`final_elbos` where the caller has them), with a note
    on both."""
    draws, elbos = scored or final_elbos(first, retry)
    keep = 1 if elbos[1][0] > elbos[0][0] else 0
    (m0, se0), (m1, se1) = elbos
    words = "the refit" if keep else "the fit from the MAP start"
    note = (
        f"The fit from the MAP start {doubt.words()}, so the guide was fitted again from "
        f"Pyro's start (the prior's mean or median, scale {PYRO_INIT_SCALE:g}). Final ELBOs "
        f"({draws} draws each): MAP start {m0:.6g} ± {se0:.2g}, Pyro's start "
        f"{m1:.6g} ± {se1:.2g}; {words} is kept."
    )
    kept = retry if keep else first
    kept.notes = [note, *kept.notes]
    kept.init_seconds = first.init_seconds + (retry.init_seconds if keep else 0.0)
    kept.extras["restart"] = {
        "collapsed": [name for name, _ in doubt.collapsed],
        "converged_from_map": doubt.converged,
        "start_gain": None if doubt.gain is None else list(doubt.gain),
        "stopped_at_step": doubt.left_at,
        "elbo_map_start": [m0, se0],
        "elbo_pyro_start": [m1, se1],
        "kept": "pyro-start" if keep else "map-start",
    }
    return kept


def final_elbo(fit: SviFit, draws: int = 0, seed: int = 0) -> tuple[float, float]:
    r"""The ELBO of the fitted guide, :math:`E_q[\log p(x, z) - \log q(z)]`, estimated from
    ``draws`` guide draws (default :data:`FINAL_ELBO_DRAWS`, an eighth of it for a model run
    one draw at a time), and its standard error."""
    draws = draws or (FINAL_ELBO_DRAWS if fit.vectorized else FINAL_ELBO_DRAWS // 8)
    return elbo_estimate(
        fit.model,
        fit.guide,
        fit.data,
        draws=draws,
        vectorization=fit.vectorization,
        dynamic=fit.dynamic,
        discrete=fit.discrete,
        max_plate_nesting=fit.max_plate_nesting,
        device=fit.device,
        seed=seed,
    )


def elbo_estimate(
    model,
    guide,
    data,
    *,
    draws: int,
    vectorization: str,
    dynamic: bool,
    discrete,
    max_plate_nesting: int,
    device,
    seed: int = 0,
) -> tuple[float, float]:
    r"""The mean of :math:`\log p(x, z_s) - \log q(z_s)` over ``draws`` draws of ``guide`` as
    it stands, and its standard error; the caller's random state is left as it was."""
    lw = draw_log_weights(
        model,
        guide,
        data,
        draws=draws,
        vectorized=vectorization != LOOP,
        unconstrained=vectorization if vectorization == VMAP or dynamic else None,
        discrete=discrete or None,
        max_plate_nesting=max_plate_nesting,
        seed=seed,
        device=device,
    )
    log_w = lw.log_weights
    return float(log_w.mean()), float(log_w.std(ddof=1) / math.sqrt(len(log_w)))
