r"""The escalation ladder: from a verdict that says no to a posterior the checks can certify.

:func:`fit_auto` climbs rungs, cheapest first, and stops at the first whose verdict is
``trustworthy``; each rung starts from the best fit before it, and the whole climb keeps to a
time budget.

1. ``guide``: the requested guide (default ``auto-normal``), fitted and diagnosed as
   :func:`~ppl_models.vi.fitting.fit_svi` and :func:`~ppl_models.vi.diagnose.diagnose` do.
2. ``psis``: after every variational rung, where its PSIS :math:`\hat k` is within the
   sample-size threshold :math:`\min(1 - 1/\log_{10} S, 0.7)`, the guide's draws resampled in
   proportion to their Pareto-smoothed importance weights are the answer (as Pathfinder does):
   their means and sds are the PSIS estimates from all :math:`S` draws, with the importance
   ESS and the PSIS Monte Carlo errors, and the verdict judges them, not q
   (:func:`~ppl_models.vi.answers.psis_diagnosis`).
3. ``reparam``: where the model has location-scale sites whose scale is another latent site
   (a funnel: ``theta ~ Normal(mu, tau)``), those sites are non-centred with Pyro's
   ``LocScaleReparam`` (``theta = mu + tau * theta_decentered``, Gorinova et al. 2020) and the
   requested guide is fitted again; the original sites come back as deterministic sites, so the
   draws, the report and the reference speak of the user's own sites
   (:func:`~ppl_models.vi.reparam.noncentred`). This rung costs what the first does, so it
   comes before the richer families, which then fit whichever parametrisation fitted better.
4. ``richer``: a full-rank Gaussian (``auto-mvn``) where the dimension allows it (at most
   :data:`~ppl_models.vi.guides.FULL_RANK_MAX`), ``auto-lowrank`` above; then ``flow``: an
   inverse autoregressive flow (``auto-iaf``). Each starts from the best Gaussian fit so far
   (:func:`~ppl_models.vi.guides.start_from_fit`): the flow starts as that Gaussian. A richer
   fit whose ELBO, averaged over the steps before step :data:`NO_GAIN_STEP`, is back at its
   start's, neither above it by :data:`NO_GAIN_NATS` nor below it by :data:`NO_GAIN_DIP` (each
   plus twice its noise), stops there: the richer family found nothing its start lacked, and
   the climb moves on (its fit is still diagnosed). A gain, however small, goes on: a banana's
   flow gains a fifth of a nat on the Gaussian, and that fifth is the tails that certify it;
   so does a fit still recovering from its first steps (:class:`_GainWatch`).
5. ``nuts``: NUTS preconditioned by the best guide (NeuTra, :mod:`ppl_models.vi.neutra`; a flow
   only where its ELBO beats the best Gaussian's by more than a nat), its chains vectorized and
   its potential compiled, with its own checks (split R-hat at most 1.01, bulk and tail ESS at
   least 400, no divergence, tails from which its draws can estimate each sd) and a verdict
   (:func:`~ppl_models.vi.answers.nuts_diagnosis`).
   Where that guide is a flow and its run fails its checks, a second run is preconditioned by
   the best Gaussian fit, whose affine map cannot bend the geometry as a poorly fitted flow
   can. A model's discrete latent sites are summed out of its potential, one chain's point at
   a time, as the diagnosis sums them out of :math:`\log p`.

A variational rung whose loss becomes NaN or infinite is fitted once more at a tenth of the
step size before it counts as failed.

The answer is the first certified rung; where none is, the rung that came closest (best verdict,
then fewest elements off, then the highest ELBO), with advice derived from the checks
(:func:`advise`). :class:`Ladder` holds every rung, and its :attr:`~Ladder.diagnosis` is the
answer's :class:`~ppl_models.vi.diagnose.Diagnosis` with the climb under ``summary["ladder"]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch

from .. import diagnostics
from ..runs import atomic_save, atomic_write_json, atomic_write_text
from .answers import (
    MEANS_ONLY,
    NOT_TRUSTWORTHY,
    TRUSTWORTHY,
    json_number,
    json_plain,
    nuts_diagnosis,
    psis_diagnosis,
)
from .reparam import funnel_sites, model_trace, noncentred
from .settings import RUNGS, FitSettings, LadderSettings

_RANK = {TRUSTWORTHY: 2, MEANS_ONLY: 1, NOT_TRUSTWORTHY: 0}
GAUSSIAN_GUIDES = ("auto-normal", "auto-mvn", "auto-lowrank")  # affine NeuTra maps
FLOW_ELBO_MARGIN = 1.0  # nats a flow must gain over the best Gaussian to precondition NUTS
NO_GAIN_STEP = 300  # where a richer fit's ELBO is first compared with its start's
NO_GAIN_NATS = 0.05  # what it must have gained there, beyond twice its noise, to go on
NO_GAIN_DIP = 0.5  # ... unless it is this far below its start: still recovering, it goes on
RETRY_LR_DIVISOR = 10  # a variational rung whose loss became NaN is fitted once more at lr / 10
DONE, SKIPPED, FAILED, CUT = "done", "skipped", "failed", "cut"
METHODS = {
    "guide": "the requested guide",
    "psis": "PSIS-resampled draws of the guide",
    "reparam": "non-centred model",
    "richer": "richer Gaussian",
    "flow": "normalizing flow",
    "nuts": "NeuTra NUTS",
}


# ----------------------------------------------------------------------------- rungs and result


@dataclass
class Rung:
    """One rung of the climb.

    Attributes
    ----------
    rung
        Its kind, one of :data:`~ppl_models.vi.settings.RUNGS`.
    method
        What it did, in words (``auto-mvn, started from auto-normal``).
    status
        ``done``, ``skipped`` (with the reason in ``stopped``), ``failed`` (the error in
        ``stopped``) or ``cut`` (the budget ran out while it ran).
    seconds, khat, verdict, elbo
        Its time (fit, diagnosis, sampling), its guide's PSIS k-hat, its verdict and its ELBO.
    stopped
        Why the climb moved on from it, or stopped there.
    model
        The parametrisation it fitted: ``as written`` or ``non-centred: theta, ...``.
    fit, diagnosis
        The :class:`~ppl_models.vi.fitting.SviFit` and :class:`~ppl_models.vi.diagnose.Diagnosis`
        (not recorded in ``summary.json``).
    """

    rung: str
    method: str
    status: str = DONE
    seconds: float = 0.0
    khat: float | None = None
    verdict: str | None = None
    elbo: float | None = None
    stopped: str = ""
    model: str = "as written"
    off: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    answer: bool = False
    fit: Any = field(default=None, repr=False)
    diagnosis: Any = field(default=None, repr=False)

    @property
    def certified(self) -> bool:
        return self.status == DONE and self.verdict == TRUSTWORTHY

    def rank(self) -> tuple:
        """How close the rung came: its verdict, then fewer elements off, then its ELBO."""
        if self.diagnosis is None or self.verdict is None:
            return (-1,)
        elbo = self.elbo if self.elbo is not None and math.isfinite(self.elbo) else -math.inf
        return (_RANK.get(self.verdict, 0), -len(self.off), elbo)

    def record(self) -> dict:
        """The rung as ``summary.json``'s ``ladder`` key lists it."""
        return {
            "rung": self.rung,
            "method": self.method,
            "model": self.model,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "khat": json_number(self.khat),
            "verdict": self.verdict,
            "elbo": json_number(self.elbo),
            "off": list(self.off[:20]),
            "stopped": self.stopped,
            "answer": self.answer,
            **({"facts": json_plain(self.facts)} if self.facts else {}),
        }


@dataclass
class Ladder:
    """The result of :func:`fit_auto`.

    Attributes
    ----------
    rungs
        Every rung tried or skipped, in order.
    answer
        The first certified rung, or None.
    closest
        The answer, or else the rung that came closest (None only when no rung finished).
    stopped
        ``certified``, ``budget`` (the time ran out), ``interrupted`` (Ctrl-C), or
        ``exhausted`` (every rung tried, none certified).
    advice
        What the user could change, derived from the checks (empty when certified).
    """

    rungs: list[Rung]
    answer: Rung | None
    closest: Rung | None
    stopped: str
    budget: float
    seconds: float
    advice: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str | None:
        return None if self.closest is None else self.closest.verdict

    @property
    def diagnosis(self):
        """The answer's (else the closest rung's) diagnosis, its summary holding ``ladder``."""
        if self.closest is None:
            return None
        diagnosis = self.closest.diagnosis
        diagnosis.summary["ladder"] = self.to_dict()
        return diagnosis

    def summary_sentence(self) -> str:
        """One sentence: where the climb ended and why."""
        if self.answer is not None:
            return (
                f"Certified at the {self.answer.rung} rung ({self.answer.method}) after "
                f"{self.seconds:.1f} s."
            )
        where = (
            f"the closest rung was {self.closest.rung} ({self.closest.method}, "
            f"{self.closest.verdict})"
            if self.closest is not None
            else "no rung finished"
        )
        why = {
            "budget": f"the budget of {self.budget:g} s ran out",
            "interrupted": "the climb was interrupted",
            "exhausted": "every rung was tried",
        }.get(self.stopped, self.stopped)
        return f"No rung was certified: {why}; {where}."

    def to_dict(self) -> dict:
        """``summary.json``'s ``ladder`` key."""
        return {
            "stopped": self.stopped,
            "sentence": self.summary_sentence(),
            "answer": None if self.answer is None else self.rungs.index(self.answer),
            "closest": None if self.closest is None else self.rungs.index(self.closest),
            "budget": self.budget,
            "seconds": round(self.seconds, 3),
            "rungs": [r.record() for r in self.rungs],
            "advice": list(self.advice),
        }


# ----------------------------------------------------------------------------- the climb


@dataclass
class _Climb:
    model: Callable
    data: dict
    guide: str | Callable
    settings: FitSettings
    ladder: LadderSettings
    reference: Any
    seed: int
    deadline: float
    progress: bool
    on_rung: Callable | None
    rungs: list[Rung] = field(default_factory=list)
    structure: dict | None = None

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def add(self, rung: Rung) -> Rung:
        self.rungs.append(rung)
        if self.on_rung is not None:
            self.on_rung(rung, len(self.rungs) - 1)
        return rung

    def best_fit(self, model_label: str | None = None) -> Rung | None:
        """The variational rung with the highest ELBO (on ``model_label``'s parametrisation)."""
        fits = [
            r
            for r in self.rungs
            if r.status == DONE
            and r.fit is not None
            and r.rung != "psis"
            and r.elbo is not None
            and (model_label is None or r.model == model_label)
        ]
        return max(fits, key=lambda r: r.elbo) if fits else None

    def certified(self) -> bool:
        return any(r.certified for r in self.rungs)


def fit_auto(
    model: Callable,
    data: Mapping[str, Any] | None = None,
    *,
    guide: str | Callable = "auto-normal",
    budget: float | None = None,
    reference=None,
    settings: FitSettings | None = None,
    ladder: LadderSettings | None = None,
    seed: int | None = None,
    progress: bool = False,
    on_rung: Callable[[Rung, int], None] | None = None,
    **overrides: Any,
) -> Ladder:
    r"""Climb the escalation ladder (module docstring) until a rung's verdict is ``trustworthy``.

    Parameters
    ----------
    model, data
        As for :func:`~ppl_models.vi.fitting.fit_svi`.
    guide
        The first rung's guide (a name, or the model script's guide function); the
        reparametrised rung uses the same family (``auto-normal`` for a custom guide).
    budget
        Seconds for the whole climb (default :class:`~ppl_models.vi.settings.LadderSettings`'s);
        a rung still running when they are spent stops, and the ladder ends with the best rung
        so far. The first rung is always diagnosed, so there is always an answer.
    reference
        As for :func:`~ppl_models.vi.diagnose.diagnose` (loaded once, used by every rung's
        verdict).
    settings
        The fits' :class:`~ppl_models.vi.settings.FitSettings`; ``overrides`` replace fields.
    ladder
        :class:`~ppl_models.vi.settings.LadderSettings` (rungs, diagnosis draws, NUTS settings).
    seed
        Seed of every fit, diagnosis and NUTS run (default: ``settings.seed``).
    on_rung
        Called with each rung (and its index) as soon as it is done, skipped or failed: the
        command line writes it to disk there, so that an interrupted climb keeps it.

    Returns
    -------
    Ladder
        Its :attr:`~Ladder.diagnosis` is the answer's (or the closest rung's), for
        :func:`~ppl_models.vi.report.write_report`.
    """
    ladder = ladder or LadderSettings()
    if budget is not None:
        ladder = dataclasses.replace(ladder, budget=budget)
    settings = (settings or FitSettings()).replace(**overrides)
    if seed is not None:
        settings = settings.replace(seed=seed)
    start = time.perf_counter()
    climb = _Climb(
        model=model,
        data=dict(data or {}),
        guide=guide,
        settings=settings,
        ladder=ladder,
        reference=None,
        seed=settings.seed,
        deadline=start + ladder.budget,
        progress=progress,
        on_rung=on_rung,
    )
    stopped = "exhausted"
    try:
        climb.reference = _load_reference(reference, model, climb)
        stopped = _climb(climb)
    except KeyboardInterrupt:
        stopped = "interrupted"
    done = [r for r in climb.rungs if r.status == DONE and r.diagnosis is not None]
    answer = next((r for r in done if r.certified), None)
    closest = answer or (max(done, key=Rung.rank) if done else None)
    result = Ladder(
        rungs=climb.rungs,
        answer=answer,
        closest=closest,
        stopped="certified" if answer is not None else stopped,
        budget=ladder.budget,
        seconds=time.perf_counter() - start,
    )
    if answer is None:
        result.advice = advise(climb, result)
    if closest is not None:
        closest.answer = True
    return result


def _load_reference(reference, model, climb: _Climb):
    """A reference loaded once for every rung (``nuts``: Pyro's NUTS on the model)."""
    from .diagnose import _resolve_reference

    if reference is None or isinstance(reference, str) and reference.lower() == "none":
        return None
    if isinstance(reference, str) and reference.lower() == "nuts":
        from .fitting import fit_svi  # the reference needs the data converted as a fit has it

        probe = fit_svi(model, "auto-normal", climb.data, climb.settings.replace(steps=1))
        return _resolve_reference("nuts", probe, {"seed": climb.seed})
    return _resolve_reference(reference, None, None)


def _climb(climb: _Climb) -> str:
    """Climb until a rung is certified; returns why the climb ended."""
    wanted = set(climb.ladder.rungs)
    family = climb.guide if isinstance(climb.guide, str) else "auto-normal"
    steps = [
        ("guide", lambda: _vi_rung(climb, "guide", climb.model, "as written", climb.guide)),
        ("reparam", lambda: _reparam_rung(climb, family)),
        ("richer", lambda: _richer_rung(climb, family)),
        ("flow", lambda: _flow_rung(climb)),
        ("nuts", lambda: _nuts_rung(climb)),
    ]
    for name, run in steps:
        if name not in wanted:
            continue
        if climb.left() <= 0:
            return "budget"
        rung = run()
        if rung is None:
            continue
        if rung.certified:
            return "certified"
        if rung.status == CUT:
            return "budget"
        if "psis" in wanted and rung.rung != "nuts" and rung.status == DONE:
            if climb.left() <= 0:
                return "budget"
            if _psis_rung(climb, rung).certified:
                return "certified"
    return "exhausted"


# ----------------------------------------------------------------------------- variational rungs


def _deadline_hook(climb: _Climb):
    """``on_step`` that stops a fit when the budget is spent."""

    def on_step(step, loss, guide) -> bool:
        return time.perf_counter() > climb.deadline

    return on_step


class _GainWatch:
    """``on_step`` of a fit started from another whose ELBO is ``start_elbo``: stops it at
    :data:`NO_GAIN_STEP` where the mean ELBO estimate (minus the loss) over the last ``window``
    steps is within ``start_elbo`` - :data:`NO_GAIN_DIP` and ``start_elbo`` +
    :data:`NO_GAIN_NATS`, each widened by two standard errors (and, like
    :func:`_deadline_hook`, when the budget is spent). A fit further below its start is still
    recovering from the first steps' large step size (a full-rank fit of a 43-dimensional
    stochastic volatility model sat 2 nats below its start at step 300, and 1,000 steps later
    above it, its map then the preconditioner NUTS needed), so it goes on."""

    def __init__(self, climb: _Climb, start_elbo: float, window: int):
        self.climb, self.start_elbo, self.window = climb, start_elbo, window
        self.elbos: list[float] = []
        self.note: str | None = None

    def __call__(self, step, loss, guide) -> bool:
        self.elbos.append(-loss)
        if step + 1 == NO_GAIN_STEP and math.isfinite(self.start_elbo):
            recent = np.asarray(self.elbos[-self.window :])
            noise = 2 * recent.std(ddof=1) / math.sqrt(len(recent)) if len(recent) > 1 else 0.0
            gain = float(recent.mean()) - self.start_elbo
            if -NO_GAIN_DIP - noise < gain < NO_GAIN_NATS + noise:
                self.note = (
                    f"stopped at step {NO_GAIN_STEP}: its ELBO over the last {len(recent)} steps "
                    f"had gained {gain:+.2f} nats on its start's, between -{NO_GAIN_DIP:g} and "
                    f"+{NO_GAIN_NATS:g} widened by {noise:.2f} (twice its noise): back where it "
                    "started, so the richer family found nothing its start lacked"
                )
                return True
        return time.perf_counter() > self.climb.deadline


def _vi_rung(
    climb: _Climb,
    name: str,
    model: Callable,
    model_label: str,
    guide,
    *,
    method: str | None = None,
    options: dict | None = None,
    start_elbo: float | None = None,
) -> Rung:
    """Fit ``guide`` to ``model`` and diagnose it; the rung records what happened. A fit
    started from one whose ELBO is ``start_elbo`` stops where it gains nothing on it
    (:class:`_GainWatch`)."""
    from ..svi import NonFiniteLossError
    from .diagnose import diagnose
    from .fitting import fit_svi, saved_point_estimates

    guide_name = guide if isinstance(guide, str) else "custom"
    rung = Rung(name, method or guide_name, model=model_label)
    t = time.perf_counter()
    settings = climb.settings
    if options:
        settings = settings.replace(guide_options={**settings.guide_options, **options})

    watch = None

    def fitted(settings):
        nonlocal watch
        if start_elbo is not None and settings.steps > NO_GAIN_STEP:
            watch = _GainWatch(climb, start_elbo, settings.eval_every)
        return fit_svi(
            model,
            guide,
            climb.data,
            settings,
            on_step=watch or _deadline_hook(climb),
            progress=climb.progress,
        )

    retried = None
    try:
        restore = saved_point_estimates(model, guide)
        try:
            fit = fitted(settings)
        except NonFiniteLossError as err:  # a second attempt at a tenth of the step size
            if time.perf_counter() > climb.deadline:
                raise
            restore()  # from where the first attempt started, not from its non-finite values
            settings = settings.replace(
                lr=settings.lr / RETRY_LR_DIVISOR, lr_final=settings.lr_final / RETRY_LR_DIVISOR
            )
            retried = (
                f"The first attempt failed ({_one_line(err)}); this fit is a second one at a "
                f"tenth of the step size (lr {settings.lr:g})."
            )
            fit = fitted(settings)
            fit.notes.append(retried)
        cut = time.perf_counter() > climb.deadline
        if cut and climb.rungs:  # the first rung is always diagnosed: there is an answer
            rung.status, rung.fit = CUT, fit
            rung.stopped = "cut: the budget ran out during the fit"
            return _finish(climb, rung, t)
        diagnosis = diagnose(
            fit,
            climb.reference,
            draws=climb.ladder.draws,
            seed=climb.seed,
            progress=False,
            mode_starts=climb.ladder.mode_starts,
        )
    except (ValueError, NonFiniteLossError, RuntimeError) as err:
        rung.status, rung.stopped = FAILED, f"failed: {_one_line(err)}"
        return _finish(climb, rung, t)
    s = diagnosis.summary
    rung.fit, rung.diagnosis = fit, diagnosis
    rung.khat, rung.verdict, rung.elbo = s.get("psis_khat"), s["verdict"], s.get("elbo")
    rung.off = list(s.get("verdict_off") or [])
    rung.facts = {"khat_threshold": s.get("psis_khat_threshold"), "draws": s.get("draws")}
    if retried:
        rung.facts["retried"] = retried
    if time.perf_counter() > climb.deadline:
        rung.facts["cut"] = True
    rung.stopped = _why(s)
    if watch is not None and watch.note:
        rung.facts["no_gain"] = watch.note
        rung.stopped += f" (its fit {watch.note})"
    return _finish(climb, rung, t)


def _finish(climb: _Climb, rung: Rung, t: float) -> Rung:
    rung.seconds = time.perf_counter() - t
    return climb.add(rung)


def _why(summary: dict) -> str:
    """Why a diagnosed rung did or did not certify, in one line."""
    if summary["verdict"] == TRUSTWORTHY:
        return "certified"
    reasons = summary.get("verdict_reasons") or []
    return f"{summary['verdict']}: " + (reasons[0] if reasons else "no reason recorded")


def _one_line(err: BaseException) -> str:
    from ..errors import one_line

    return (one_line(str(err)) or type(err).__name__)[:300]


def _skip(climb: _Climb, name: str, method: str, why: str, model: str = "as written") -> Rung:
    return climb.add(Rung(name, method, status=SKIPPED, stopped=f"skipped: {why}", model=model))


def _reparam_rung(climb: _Climb, family: str) -> Rung | None:
    base = climb.best_fit("as written")
    method = f"{family} on the non-centred model"
    if base is None:
        return _skip(climb, "reparam", method, "no fit of the model as written to start from")
    try:
        sites = funnel_sites(climb.model, base.fit.data, base.fit.guide)
    except Exception as err:  # noqa: BLE001 - the user's model; the rung is skipped
        return _skip(climb, "reparam", method, f"the model's structure is unknown ({err})")
    if not sites:
        return _skip(
            climb,
            "reparam",
            method,
            "no location-scale latent site has another latent site as its scale",
        )
    names = sorted(sites)
    label = "non-centred: " + ", ".join(names)
    model = noncentred(climb.model, names)
    rung = _vi_rung(
        climb,
        "reparam",
        model,
        label,
        family,
        method=f"{family} on the model with {', '.join(names)} non-centred",
    )
    rung.facts["non_centred"] = {site: sites[site] for site in names}
    return rung


# -- richer families


def _gaussian_start(climb: _Climb) -> tuple[Rung | None, str]:
    """The best Gaussian fit (its parametrisation wins: the highest ELBO of all fits)."""
    from .guides import WhitenedGuide

    best = climb.best_fit()
    if best is None or not isinstance(best.fit.guide, WhitenedGuide):
        return None, "as written"
    return best, best.model


def _model_of(climb: _Climb, label: str) -> Callable:
    if label == "as written":
        return climb.model
    return noncentred(climb.model, label.split(": ", 1)[1].split(", "))


def _richer_rung(climb: _Climb, family: str) -> Rung | None:
    from .guides import FULL_RANK_MAX, start_from_fit

    best, label = _gaussian_start(climb)
    if family in ("auto-mvn", "auto-iaf"):
        return _skip(climb, "richer", "auto-mvn", f"the requested guide is already {family}")
    if best is None:
        return _skip(climb, "richer", "auto-mvn", "no Gaussian fit to start from")
    d = best.fit.guide.latent_dim
    name = "auto-mvn" if d <= FULL_RANK_MAX else "auto-lowrank"
    start = start_from_fit(best.fit.guide) if name == "auto-mvn" else None
    how = f", started from the {best.fit.guide_name} fit" if start is not None else ""
    method = f"{name}{how}" + ("" if label == "as written" else f" ({label})")
    return _vi_rung(
        climb,
        "richer",
        _model_of(climb, label),
        label,
        name,
        method=method,
        options={"start": start} if start is not None else None,
        start_elbo=best.elbo if start is not None else None,
    )


def _flow_rung(climb: _Climb) -> Rung | None:
    from .guides import FULL_RANK_MAX, start_from_fit

    if climb.guide == "auto-iaf":
        return _skip(climb, "flow", "auto-iaf", "the requested guide is already auto-iaf")
    best, label = _gaussian_start(climb)
    if best is None:
        return _skip(climb, "flow", "auto-iaf", "no Gaussian fit to start from")
    d = best.fit.guide.latent_dim
    if d > FULL_RANK_MAX:
        return _skip(
            climb, "flow", "auto-iaf", f"dimension {d:,} is above {FULL_RANK_MAX:,} for a flow"
        )
    method = f"auto-iaf, started from the {best.fit.guide_name} fit" + (
        "" if label == "as written" else f" ({label})"
    )
    return _vi_rung(
        climb,
        "flow",
        _model_of(climb, label),
        label,
        "auto-iaf",
        method=method,
        options={"start": start_from_fit(best.fit.guide)},
        start_elbo=best.elbo,
    )


# ----------------------------------------------------------------------------- PSIS rung


def _psis_rung(climb: _Climb, base: Rung) -> Rung:
    method = f"PSIS-resampled draws of {base.method}"
    s = base.diagnosis.summary
    k, threshold = s.get("psis_khat"), s["psis_khat_threshold"]
    if k is None or not k <= threshold:
        words = "not finite" if k is None else f"{k:.2f}"
        return _skip(
            climb,
            "psis",
            method,
            f"k-hat {words} is above {threshold:.2g}: importance weights cannot correct q",
            base.model,
        )
    t = time.perf_counter()
    rung = Rung("psis", method, model=base.model, fit=base.fit)
    try:
        diagnosis = psis_diagnosis(base.diagnosis, seed=climb.seed)
    except (ValueError, RuntimeError) as err:
        rung.status, rung.stopped = FAILED, f"failed: {_one_line(err)}"
        return _finish(climb, rung, t)
    ds = diagnosis.summary
    rung.diagnosis = diagnosis
    rung.khat, rung.verdict, rung.elbo = k, ds["verdict"], s.get("elbo")
    rung.off = list(ds.get("verdict_off") or [])
    rung.facts = dict(ds["psis_resampling"])
    rung.stopped = _why(ds)
    return _finish(climb, rung, t)


def _nuts_rung(climb: _Climb) -> Rung:
    from .guides import WhitenedGuide
    from .neutra import run_nuts

    fits = [
        r
        for r in climb.rungs
        if r.status == DONE
        and r.rung != "psis"
        and r.fit is not None
        and isinstance(r.fit.guide, WhitenedGuide)
        and r.elbo is not None
    ]
    method = f"NeuTra NUTS, {climb.ladder.nuts.chains} chains"
    if not fits:
        return _skip(climb, "nuts", method, "no fitted autoguide to precondition NUTS with")
    base = _preconditioner(fits)
    rung = Rung("nuts", f"{method}, preconditioned by {base.method}", model=base.model)
    t = time.perf_counter()
    try:
        draws = run_nuts(base.fit, climb.ladder.nuts, seed=climb.seed, deadline=climb.deadline)
        gaussian = _gaussian_preconditioner(fits, base)
        if not draws.checks.get("passed") and gaussian is not None and not draws.run.stopped_early:
            # a flow can bend the geometry where it fits poorly: the Gaussian's affine map cannot
            first = "; ".join(draws.checks.get("failed") or [])
            base = gaussian
            draws = run_nuts(base.fit, climb.ladder.nuts, seed=climb.seed, deadline=climb.deadline)
            draws.notes.insert(
                0,
                f"The run preconditioned by the flow failed its checks ({first}); these draws "
                f"are a second run, preconditioned by {base.method}.",
            )
            rung.method = f"{method}, preconditioned by {base.method} (the flow's run failed)"
        diagnosis = nuts_diagnosis(base.diagnosis, draws, climb.reference)
    except (ValueError, RuntimeError) as err:
        rung.status, rung.stopped = FAILED, f"failed: {_one_line(err)}"
        return _finish(climb, rung, t)
    rung.model, rung.fit = base.model, base.fit
    ds = diagnosis.summary
    rung.diagnosis = diagnosis
    rung.verdict, rung.elbo, rung.khat = ds["verdict"], base.elbo, None
    rung.off = list(ds.get("verdict_off") or [])
    rung.facts = {k: v for k, v in draws.checks.items() if k not in ("rules",)}
    if draws.run.stopped_early:
        rung.status = CUT if not draws.run.kept else DONE
    rung.stopped = _why(ds)
    return _finish(climb, rung, t)


def _preconditioner(fits: list[Rung]) -> Rung:
    """The fit with the highest ELBO; a flow only where it beats the best Gaussian by more than
    :data:`FLOW_ELBO_MARGIN` nats, since each of its gradients costs several of an affine map's
    and a fraction of a nat of KL divergence is not worth that."""
    best = max(fits, key=lambda r: r.elbo)
    gaussian = _gaussian_preconditioner(fits, best)
    if gaussian is not None and best.elbo - gaussian.elbo <= FLOW_ELBO_MARGIN:
        return gaussian
    return best


def _gaussian_preconditioner(fits: list[Rung], base: Rung) -> Rung | None:
    """The best Gaussian fit, where ``base`` (the NUTS rung's first preconditioner) is a flow."""
    if base.fit.guide_name in GAUSSIAN_GUIDES:
        return None
    gaussian = [r for r in fits if r.fit.guide_name in GAUSSIAN_GUIDES]
    return max(gaussian, key=lambda r: r.elbo) if gaussian else None


def advise(climb: _Climb, result: Ladder) -> list[str]:
    """What the user could change, from the checks of every rung: a funnel between a scale and
    its group effects, a flat direction (a ridge, a flat prior), a mode the guide never visits,
    chains that disagree."""
    out: list[str] = []
    done = [r for r in climb.rungs if r.status == DONE and r.diagnosis is not None]
    funnels = {}
    for r in climb.rungs:
        funnels.update((r.facts or {}).get("non_centred") or {})
    if not funnels and done:
        with contextlib.suppress(Exception):
            first = done[0]
            funnels = funnel_sites(first.fit.model, first.fit.data, first.fit.guide)
    reparam = next((r for r in done if r.rung == "reparam"), None)
    for site, parents in sorted(funnels.items()):
        scale = " * ".join(parents)
        tried = (
            f" (the ladder's non-centred rung reached {reparam.verdict})"
            if reparam is not None
            else ""
        )
        out.append(
            f"A funnel between {', '.join(parents)} and {site}: write {site} non-centred, "
            f"{site}_raw ~ Normal(0, 1) and {site} = loc + {scale} * {site}_raw as a "
            f"pyro.deterministic site{tried}; if the data inform {site} strongly, the centred "
            "form may be the better one: compare both."
        )
    missed = [
        r for r in done if ((r.diagnosis.summary.get("mode_search") or {}).get("missed") or [])
    ]
    if missed:
        share = max(
            sum(m["share"] for m in r.diagnosis.summary["mode_search"]["missed"]) for r in missed
        )
        out.append(
            f"The mode search found posterior modes the guide never visits (up to {share:.0%} "
            "of the mass): the posterior is multimodal. Remove the symmetry that makes the "
            "modes (order exchangeable components, fix signs), or report the modes separately."
        )
    nuts = next((r for r in done if r.rung == "nuts"), None)
    if nuts is not None and (nuts.facts.get("max_r_hat") or 0) > 1.1:
        out.append(
            f"NUTS's chains disagree (R-hat {nuts.facts['max_r_hat']:.2f} for "
            f"{nuts.facts.get('max_r_hat_element')}): chains stuck in different modes, or a "
            "region they cannot cross; look at the chains one by one."
        )
    ridge = _flat_direction(done)
    if ridge:
        out.append(ridge)
    flat = _flat_priors(climb)
    if flat:
        out.append(
            f"{', '.join(flat)} {'has' if len(flat) == 1 else 'have'} a flat (improper) prior: "
            "a weakly informative prior on the scale you expect (say Normal(0, 10) on "
            "standardised predictors) bounds the directions the data leave flat."
        )
    if nuts is not None and nuts.facts.get("divergences"):
        out.append(
            f"NUTS diverged {nuts.facts['divergences']} time(s) after warm-up: a region of high "
            "curvature (a funnel's neck, a boundary) the sampler cannot follow; "
            "reparametrise there, or raise the target acceptance."
        )
    if not out:
        closest = result.closest
        if result.stopped == "budget":
            out.append("The budget ran out before the later rungs: rerun with a larger --budget.")
        elif closest is not None:
            out.append(
                f"No check points at one cause; the closest rung was {closest.rung} "
                f"({closest.verdict}): read its findings."
            )
    return out


def _flat_direction(done: list[Rung]) -> str | None:
    """A ridge: the best fit's correlation matrix (unconstrained space) nearly singular."""
    from .guides import WhitenedGuide

    fits = [r for r in done if r.fit is not None and isinstance(r.fit.guide, WhitenedGuide)]
    fits = [r for r in fits if r.fit.guide.latent_dim >= 2 and r.fit.guide.latent_dim <= 2000]
    if not fits:
        return None
    best = max(fits, key=lambda r: r.elbo if r.elbo is not None else -math.inf)
    try:
        with torch.no_grad():
            posterior = best.fit.guide.get_posterior()
            cov = getattr(posterior, "covariance_matrix", None)
            if cov is None:
                return None
            cov = cov.double().cpu()
        sd = cov.diagonal().sqrt()
        corr = cov / sd[:, None] / sd[None, :]
        lam, vec = torch.linalg.eigh(corr)
    except (RuntimeError, AttributeError, NotImplementedError):
        return None
    if not float(lam[0]) < 1e-3 * float(lam[-1]):
        return None
    loading = vec[:, 0].abs()
    names = [n for n, _ in best.fit.guide.coordinates()]
    top = [names[i] for i in torch.argsort(loading, descending=True)[:3].tolist()]
    return (
        f"A nearly flat direction: the posterior's correlation matrix has an eigenvalue "
        f"{float(lam[0]):.1e} times its largest, along {', '.join(top)} (a ridge the data "
        "hardly constrain, such as collinear predictors or a sum of effects): a weakly "
        "informative prior on those parameters, or dropping one of the collinear terms, "
        "bounds it."
    )


def _flat_priors(climb: _Climb) -> list[str]:
    """Latent sites with an improper flat prior (``ImproperUniform``)."""
    first = next((r for r in climb.rungs if r.fit is not None and r.model == "as written"), None)
    if first is None:
        return []
    try:
        trace = model_trace(climb.model, first.fit.data, first.fit.guide)
    except Exception:  # noqa: BLE001 - the user's model; the advice does without
        return []
    out = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        fn = site["fn"]
        while hasattr(fn, "base_dist"):
            fn = fn.base_dist
        if isinstance(fn, dist.ImproperUniform):
            out.append(name)
    return out


# ----------------------------------------------------------------------------- files


def write_rung(rung: Rung, index: int, folder: str | Path) -> Path | None:
    """Write a finished rung to ``folder/NN-<rung>/`` (``summary.json`` with its record and its
    diagnosis's summary, and ``posterior.nc``), each file atomically, so that a climb that is
    interrupted or killed keeps every rung it finished. Returns the rung's folder."""
    out = Path(folder) / f"{index + 1:02d}-{rung.rung}"
    out.mkdir(parents=True, exist_ok=True)
    if rung.diagnosis is not None:
        atomic_save(
            out / "posterior.nc", lambda tmp: diagnostics.to_netcdf(rung.diagnosis.idata, tmp)
        )
    if rung.fit is not None and rung.rung != "psis":
        losses = getattr(rung.fit, "losses", None)
        if losses is not None:
            atomic_write_text(
                out / "metrics.jsonl",
                "".join(f'{{"step": {i}, "loss": {float(v)!r}}}\n' for i, v in enumerate(losses)),
            )
    summary = {"status": "complete", "rung": rung.record()}
    if rung.diagnosis is not None:
        summary["diagnosis"] = json_plain(rung.diagnosis.summary)
    atomic_write_json(out / "summary.json", summary)
    return out


__all__ = ["RUNGS", "Ladder", "Rung", "fit_auto", "write_rung"]
