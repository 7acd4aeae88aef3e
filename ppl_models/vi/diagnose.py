r"""``diagnose(fit, reference=None)``: every number of a variational fit's report.

One log-weight engine (:mod:`ppl_models.vi.logweights`) draws :math:`S` samples from the guide;
from their :math:`\log w = \log p(x, z) - \log q(z)` and values come PSIS k-hat, the importance
ESS, PSIS-corrected moments, importance-weighted bounds, CUBO, :math:`d_2` and VIABEL's error
bounds (:mod:`ppl_models.vi.bounds`), the per-element comparison with a reference
(:mod:`ppl_models.vi.compare`), a multi-start search for posterior modes that q never visits
(:mod:`ppl_models.vi.modes`) and the verdict (:mod:`ppl_models.vi.verdict`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import diagnostics, importance
from ..svi import default_dtype
from . import bounds as vb
from .compare import SUMMARY_DRAWS, compare
from .enumeration import enumerated
from .logweights import LogWeights, discrete_conditionals, element_names
from .modes import search_modes
from .precision import draw_by_precision
from .references import Reference, load_reference, match_sites, nuts_reference
from .settings import DiagnosisSettings
from .stream import own_khats
from .verdict import VerdictRules, decide

POSTERIOR_DRAWS = 10_000
POSTERIOR_CHAINS = 4
BOUNDS_SPACE = (
    "the guide's unconstrained space: each latent site's values mapped by the inverse of "
    "biject_to(support) (log for positive sites, identity for real ones)"
)


@dataclass
class Diagnosis:
    """The result of :func:`diagnose`.

    Attributes
    ----------
    summary
        The content of ``summary.json``: every number of the report.
    idata
        ArviZ InferenceData: ``posterior`` (variational draws, one variable per latent and
        deterministic site, ``(chain, draw, *shape)``, thinned to at most 10,000 draws),
        ``sample_stats`` (``log_joint`` and ``log_q`` of all :math:`S` draws) and, with a
        reference, ``reference_posterior``.
    fit
        The fit that was diagnosed.
    reference
        The matched reference, or None.
    """

    summary: dict
    idata: Any
    fit: Any
    reference: Reference | None = None

    @property
    def verdict(self) -> str:
        return self.summary["verdict"]


def _resolve_reference(reference, fit, nuts: dict | None) -> Reference | None:
    if reference is None:
        return None
    if isinstance(reference, Reference):
        return reference
    if isinstance(reference, str) and reference.lower() == "none":
        return None
    if isinstance(reference, str) and reference.lower() == "nuts":
        settings = {"max_plate_nesting": getattr(fit, "max_plate_nesting", None)}
        settings.update(nuts or {})
        discrete = getattr(fit, "discrete", None)
        model = enumerated(fit.model, discrete) if discrete else fit.model  # NUTS sums them out
        return nuts_reference(model, fit.data, **settings)
    if isinstance(reference, (str, Path)):
        return load_reference(reference)
    raise ValueError(
        f"reference must be None, 'none', 'nuts', a file path or a Reference, got {reference!r}"
    )


def _coordinates(lw: LogWeights, d2: float) -> tuple[list[dict], dict]:
    u, names = lw.unconstrained_matrix()
    if u.shape[1] == 0:
        return [], {"w1": 0.0, "w2": 0.0, "mean_error": 0.0, "sd_error": 0.0}
    joint = vb.wasserstein_bounds(d2, u)
    per = vb.coordinate_bounds(d2, u)
    site_of = []
    for site in lw.latent_sites:
        site_of += [site] * len(element_names(site, lw.unconstrained[site].shape[1:]))
    coords = [
        {
            "name": name,
            "site": site,
            "transform": lw.transforms.get(site, "identity"),
            "mean": float(u[:, j].mean()),
            "sd": float(per["sd"][j]),
            "mean_error": float(per["mean_error"][j]),
            "sd_error": float(per["sd_error"][j]),
        }
        for j, (name, site) in enumerate(zip(names, site_of, strict=True))
    ]
    return coords, joint


def _measured_unconstrained_errors(coords: list[dict], lw: LogWeights, ref: Reference) -> None:
    """Add ``measured_mean_error`` and ``measured_sd_error`` (|q - reference| in the guide's
    unconstrained space) to the coordinates of latent sites that have reference draws."""
    import torch

    by_site: dict[str, list[dict]] = {}
    for c in coords:
        by_site.setdefault(c["site"], []).append(c)
    for site, entries in by_site.items():
        if site not in ref.draws or lw.bijections.get(site) is None:
            continue
        try:
            with torch.no_grad():
                y = torch.as_tensor(ref.draws[site].reshape(-1, *ref.draws[site].shape[2:]))
                u = lw.bijections[site].inv(y).double().numpy().reshape(len(y), -1)
        except (RuntimeError, ValueError):
            continue
        if u.shape[1] != len(entries) or not np.isfinite(u).all():
            continue
        for j, c in enumerate(entries):
            c["measured_mean_error"] = abs(c["mean"] - float(u[:, j].mean()))
            c["measured_sd_error"] = abs(c["sd"] - float(u[:, j].std()))


DISCRETE_ELEMENTS = 2**23  # numbers of p(k | x, z_s) held at once: draws x elements x support


DISCRETE_DRAWS = 2000  # guide draws of the discrete marginals, at most (and at most S)
DISCRETE_LOOP_DRAWS = 200  # the same for a model scored one draw at a time


def discrete_marginals(fit, *, draws: int = DISCRETE_DRAWS, seed: int = 0) -> dict[str, dict]:
    r"""The posterior marginal :math:`p(k \mid x)` of each discrete site summed out by the fit:
    the PSIS-weighted average, over guide draws :math:`z_s`, of the exact conditionals
    :math:`p(k \mid x, z_s)` (:func:`~ppl_models.vi.logweights.discrete_conditionals`).

    Returns site -> ``probabilities`` ``(*plate_shape, support)``, ``draws`` and ``ess`` (the
    importance ESS of these draws). ``draws`` is at most the diagnosis's own :math:`S`, and
    :data:`DISCRETE_LOOP_DRAWS` for a model scored one draw at a time; fewer are used where a
    site's conditionals are large (at most :data:`DISCRETE_ELEMENTS` numbers at once).
    """
    discrete = fit.discrete
    per_draw = sum(int(np.prod(shape)) for shape in discrete.supports.values()) * max(
        1, _largest_plate(fit)
    )
    vectorized = bool(getattr(fit, "vectorized", True))
    draws = draws if vectorized else min(draws, DISCRETE_LOOP_DRAWS)
    n = int(max(min(100, draws), min(draws, DISCRETE_ELEMENTS // max(per_draw, 1))))
    log_w, conditionals = discrete_conditionals(
        fit.model,
        fit.guide,
        fit.data,
        discrete,
        draws=n,
        vectorized=vectorized,
        seed=seed + 1,
    )
    smoothed, _ = diagnostics.psis_smooth(log_w)
    weights = np.exp(smoothed)
    ess = importance.importance_ess(log_w)
    return {
        site: {"probabilities": np.tensordot(weights, probs, axes=1), "draws": n, "ess": ess}
        for site, probs in conditionals.items()
    }


def _largest_plate(fit) -> int:
    sizes = [v.shape[0] for v in fit.data.values() if hasattr(v, "shape") and len(v.shape)]
    return max(sizes, default=1)


MODE_BUDGET_SECONDS = 2.0  # the mode search's time at least, whatever the fit took
MODE_BUDGET_SHARE = 0.25  # and at most this share of the fit's time beyond that


def mode_budget(fit) -> float:
    """Seconds the search for missed modes may take: :data:`MODE_BUDGET_SECONDS`, or a quarter
    of what the fit took when that is more (the search's L-BFGS runs cost about what the fit's
    steps do, and a large model's fit says how dear each is)."""
    return max(MODE_BUDGET_SECONDS, MODE_BUDGET_SHARE * float(getattr(fit, "seconds", 0.0)))


def unconstrained_mode(fit) -> str | None:
    """How the diagnosis evaluates the model at the guide's flat unconstrained draws
    (:func:`~ppl_models.vi.vmapped.log_joint_fn`): as the fit did for a vmapped model or one
    with dynamic supports; None (from traces) otherwise."""
    mode = getattr(fit, "vectorization", None)
    if mode == "vmap" or getattr(fit, "dynamic", None):
        return mode
    return None


def _json_number(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None  # strict JSON has no inf/NaN; the notes explain


def diagnose(
    fit,
    reference=None,
    *,
    draws: int = DiagnosisSettings.draws,
    chunk: int | None = None,
    seed: int = 0,
    progress: bool = True,
    rules: VerdictRules | None = None,
    nuts: dict | None = None,
    min_draws: int = DiagnosisSettings.min_draws,
    precision: float = DiagnosisSettings.precision,
    loop_draws: int = DiagnosisSettings.loop_draws,
    mode_starts: int = DiagnosisSettings.mode_starts,
    context=None,
) -> Diagnosis | None:
    r"""Diagnose a variational fit.

    Parameters
    ----------
    fit
        An :class:`~ppl_models.vi.fitting.SviFit` (or any object with its attributes ``model``,
        ``guide``, ``data``, ``guide_name``, ``losses``, ``converged``, ``convergence``,
        ``vectorized``, ``max_plate_nesting``, ``notes``, ``settings``, ``device``).
    reference
        None or ``"none"`` (no reference), a :class:`~ppl_models.vi.references.Reference`, a
        path for :func:`~ppl_models.vi.references.load_reference`, or ``"nuts"`` (Pyro's NUTS on
        the model, with keyword arguments ``nuts`` for
        :func:`~ppl_models.vi.references.nuts_reference`).
    draws, min_draws, precision
        The most guide draws :math:`S` for every statistic, the draws of the first round, and
        the Monte Carlo allowance at which the draws are enough: the draws double in rounds
        until the verdict's quantities are resolved (:mod:`ppl_models.vi.precision`; a model
        that cannot be vectorized gets at most ``loop_draws``, made one by one).
    chunk
        Draws per vectorized chunk (default: memory-bounded).
    seed
        Seed of the draws (the caller's random state is left as it was).
    rules
        Tolerances of the verdict (:class:`~ppl_models.vi.verdict.VerdictRules`).
    mode_starts
        L-BFGS starts of the search for modes q never visits
        (:func:`~ppl_models.vi.modes.search_modes`); 0 skips it, and the verdict then cannot
        see a missed mode without a reference.
    context
        A ``torchrun`` job's :class:`~ppl_models.distributed.Context`: every rank makes its
        share of the draws and runs its share of the mode search's starts, and rank 0 alone
        does the rest (reference, statistics, verdict).

    Returns
    -------
    Diagnosis or None
        None on ranks other than 0.

    Raises
    ------
    ValueError
        For reference names matching no site, a corrupt reference file, or a model whose log
        densities are not finite on the guide's draws.
    """
    with default_dtype(getattr(fit, "dtype", None)):  # constants the model makes agree
        return _diagnosis(
            fit,
            reference,
            draws=draws,
            chunk=chunk,
            seed=seed,
            progress=progress,
            rules=rules,
            nuts=nuts,
            loop_draws=loop_draws,
            min_draws=min_draws,
            precision=precision,
            mode_starts=mode_starts,
            context=context,
        )


def _diagnosis(
    fit,
    reference=None,
    *,
    draws: int = DiagnosisSettings.draws,
    chunk: int | None = None,
    seed: int = 0,
    progress: bool = True,
    rules: VerdictRules | None = None,
    nuts: dict | None = None,
    min_draws: int = DiagnosisSettings.min_draws,
    precision: float = DiagnosisSettings.precision,
    loop_draws: int = DiagnosisSettings.loop_draws,
    mode_starts: int = DiagnosisSettings.mode_starts,
    context=None,
) -> Diagnosis | None:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rules = rules or VerdictRules()
    fit_settings = getattr(fit, "settings", None) or {}
    # without a reference the fit must certify itself: the draws stop early where the
    # importance ESS cannot reach the verdict's minimum
    self_certifying = reference is None or (
        isinstance(reference, str) and reference.lower() == "none"
    )
    lw = draw_by_precision(
        fit.model,
        fit.guide,
        fit.data,
        draws=draws,
        min_draws=min(min_draws, draws),
        precision=precision,
        loop_draws=loop_draws,
        ess_rules=rules if self_certifying else None,
        context=context,
        seed=seed,
        vectorized=bool(getattr(fit, "vectorized", True)),
        unconstrained=unconstrained_mode(fit),
        discrete=getattr(fit, "discrete", None),
        max_plate_nesting=int(getattr(fit, "max_plate_nesting", 1) or 0),
        chunk=chunk,
        device=getattr(fit, "device", None),
        data_plate=fit_settings.get("data_plate"),
        validate=fit_settings.get("validate", True),  # a fit without Pyro's checks: none here
    )
    timings["draws"] = time.perf_counter() - t0

    t = time.perf_counter()  # first: the other ranks share it, and need not wait for the rest
    modes = search_modes(
        fit.model,
        fit.data,
        lw,
        starts=mode_starts,
        seed=seed,
        discrete=getattr(fit, "discrete", None),
        budget=mode_budget(fit),
        context=context,
    )
    if modes is None:  # a rank other than 0: its draws and minima went to rank 0
        return None
    timings["mode_search"] = time.perf_counter() - t

    t = time.perf_counter()
    site_shapes = {k: tuple(v.shape[1:]) for k, v in lw.values.items()}
    ref = _resolve_reference(reference, fit, nuts)
    timings["reference"] = time.perf_counter() - t
    if ref is not None:
        ref = match_sites(ref, site_shapes)

    t = time.perf_counter()
    log_w = lw.log_weights
    s = len(log_w)
    smoothed, khat = diagnostics.psis_smooth(log_w)
    threshold = diagnostics.khat_threshold(s)
    ess = importance.importance_ess(log_w)
    elbo = importance.elbo(log_w)
    cubo = importance.cubo2(log_w)
    d2 = importance.d2_bound(log_w)
    iw, iw_se = importance.iw_bounds(log_w)
    coords, joint = _coordinates(lw, d2)
    if ref is not None:
        _measured_unconstrained_errors(coords, lw, ref)
    khat_mean, khat_sd = lw.moments.function_khats(khat)
    own_mean, own_sd = own_khats(lw.values)
    psis = dataclasses.replace(
        lw.moments.psis_moments(smoothed),
        khat_mean=khat_mean,
        khat_sd=khat_sd,
        own_khat_mean=own_mean,
        own_khat_sd=own_sd,
    )
    timings["weights_and_bounds"] = time.perf_counter() - t

    t = time.perf_counter()
    kinds = {k: "latent" for k in lw.latent_sites} | {
        k: "deterministic" for k in lw.deterministic_sites
    }
    rows = compare(lw.values, kinds, psis, ref, lw.moments.q_moments(), s)
    timings["compare"] = time.perf_counter() - t

    converged = bool(getattr(fit, "converged", False))
    verdict = decide(
        rows,
        converged=converged,
        khat=khat,
        khat_threshold=threshold,
        d2=d2,
        importance_ess=ess,
        draws=s,
        coordinates=coords,
        has_reference=ref is not None,
        rules=rules,
        mode_search=modes.to_dict() if mode_starts > 0 else None,
    )

    t = time.perf_counter()
    marginals = None
    if getattr(fit, "discrete", None):
        t = time.perf_counter()
        marginals = discrete_marginals(fit, draws=min(DISCRETE_DRAWS, s), seed=seed)
        timings["discrete_marginals"] = time.perf_counter() - t
    idata = _inference_data(lw, ref, marginals)
    timings["inference_data"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    convergence = dict(getattr(fit, "convergence", {}) or {})
    notes = list(getattr(fit, "notes", []) or []) + list(lw.notes)
    if ref is not None:
        notes += ref.notes
    if mode_starts > 0:
        split, each = (
            (f", split across {modes.ranks} processes", " on each") if modes.ranks > 1 else ("", "")
        )
        looked = modes.minima or modes.in_q  # some start reached a minimum or q's own region
        notes.append(
            f"Mode search: {modes.run} of {modes.starts} L-BFGS starts (half uniform in (-2, 2) "
            f"in the unconstrained space, half from the prior{split}) in {modes.seconds:.1f} s "
            f"(its budget: {mode_budget(fit):.1f} s{each}), {modes.in_q} of them stopped inside "
            f"q's own region, {modes.minima} reached a minimum, {len(modes.modes)} distinct "
            f"mode(s), {len(modes.missed)} of them outside q's draws."
            + (
                f" The budget left {modes.starts - modes.run} start(s) unrun: a mode only they "
                "would have found is not ruled out."
                if modes.run < modes.starts
                else ""
            )
            + (
                ""
                if looked
                else " No start reached a minimum (the density may have none, as in a funnel), "
                "so the search could not look for missed modes."
            )
            + (
                f" Starts stopped on: {'; '.join(modes.failures[:3])}."
                if modes.failures and not looked
                else ""
            )
        )
    kept = lw.values_draws
    notes.append(
        f"{lw.draws_reason} Means, sds and every importance-sampling quantity use all {s:,} "
        f"draws; the HDI, ESS and distances to a reference use the first "
        f"{min(kept, SUMMARY_DRAWS):,}, and posterior.nc keeps {min(kept, POSTERIOR_DRAWS):,} "
        f"draws with their log densities (the group importance holds those of all {s:,})."
    )
    if khat == -math.inf:
        notes.append(
            "All importance weights are equal (q equals the posterior up to rounding): k-hat "
            "tends to -infinity and is stored as null."
        )
    elif not math.isfinite(khat):
        notes.append(
            f"PSIS k-hat could not be estimated ({khat}); it is stored as null and the verdict "
            "treats it as above every threshold."
        )
    if not math.isfinite(d2) or not all(math.isfinite(v) for v in joint.values()):
        notes.append("Infinite error bounds are stored as null.")
    losses = np.asarray(getattr(fit, "losses", []), dtype=np.float64)
    summary = {
        "status": "complete",
        "model": "fit",
        "guide": getattr(fit, "guide_name", "custom"),
        "elbo": elbo,
        "elbo_se": float(np.std(log_w) / math.sqrt(s)),
        "averaged_elbo": _json_number(getattr(fit, "averaged_elbo", None)),
        "psis_khat": _json_number(khat),
        "psis_khat_threshold": threshold,
        "importance_ess": ess,
        "iw_bounds": iw,
        "iw_bounds_se": iw_se,
        "cubo2": cubo,
        "d2": d2,
        "error_bounds": {k: _json_number(joint[k]) for k in ("w1", "w2", "mean_error", "sd_error")},
        "error_bounds_space": BOUNDS_SPACE,
        "error_bounds_per_coordinate": [
            {k: _json_number(v) if isinstance(v, float) else v for k, v in c.items()}
            for c in coords
        ],
        "parameters": [
            {k: _json_number(v) if isinstance(v, float) else v for k, v in row.items()}
            for row in rows
        ],
        "verdict": verdict.label,
        "verdict_reasons": verdict.reasons,
        "verdict_rules": verdict.rules,
        "verdict_off": verdict.off,
        "verdict_checks": verdict.checks,
        "mode_search": modes.to_dict() if mode_starts > 0 else None,
        "discrete_sites": list(fit.discrete.sites) if getattr(fit, "discrete", None) else [],
        "point_estimates": (getattr(fit, "extras", None) or {}).get("point_estimates"),
        "fit_restart": (getattr(fit, "extras", None) or {}).get("restart"),
        "discrete_marginals": None
        if marginals is None
        else {
            site: {
                "probabilities": m["probabilities"].tolist(),
                **{k: v for k, v in m.items() if k != "probabilities"},
            }
            for site, m in marginals.items()
        },
        "converged": converged,
        "convergence": convergence,
        "convergence_rule": convergence.get("rule"),
        "draws": s,
        "draws_requested": draws,
        "draws_kept": kept,
        "draws_reason": lw.draws_reason,
        "vectorized": lw.vectorized,
        "seed": seed,
        "latent_sites": lw.latent_sites,
        "deterministic_sites": lw.deterministic_sites,
        "site_shapes": {k: list(v) for k, v in site_shapes.items()},
        "reference": None if ref is None else ref.source,
        "reference_sites": [] if ref is None else list(ref.draws),
        "fit_settings": dict(getattr(fit, "settings", {}) or {}),
        "fit_seconds": _json_number(getattr(fit, "seconds", None)),
        "steps": int(len(losses)),
        "notes": notes,
        "timings": timings,
    }
    return Diagnosis(summary=summary, idata=idata, fit=fit, reference=ref)


def _inference_data(lw: LogWeights, ref: Reference | None, marginals: dict | None = None):
    kept = lw.values_draws
    keep = min(kept, POSTERIOR_DRAWS) // POSTERIOR_CHAINS * POSTERIOR_CHAINS
    # posterior[c, d] is kept draw c * (keep / 4) + d, the same draw as sample_stats[c, d]
    posterior = {
        name: v[:keep].reshape(POSTERIOR_CHAINS, -1, *v.shape[1:]) for name, v in lw.values.items()
    }
    stats = {
        "log_joint": lw.log_joint[:keep].reshape(POSTERIOR_CHAINS, -1),
        "log_q": lw.log_q[:keep].reshape(POSTERIOR_CHAINS, -1),
    }
    n_all = lw.draws // POSTERIOR_CHAINS * POSTERIOR_CHAINS  # every draw's log densities
    importance = {
        "log_joint": lw.log_joint[:n_all].reshape(POSTERIOR_CHAINS, -1),
        "log_q": lw.log_q[:n_all].reshape(POSTERIOR_CHAINS, -1),
    }
    return diagnostics.from_dict(
        posterior=posterior,
        sample_stats=stats,
        importance=importance,
        reference_posterior=None if ref is None else dict(ref.draws),
        # each discrete site's posterior marginal p(k | x): (1, 1, *plate_shape, support)
        discrete_marginals=None
        if not marginals
        else {site: m["probabilities"][None, None] for site, m in marginals.items()},
    )
