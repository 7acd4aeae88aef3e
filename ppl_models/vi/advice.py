"""What the verdict means for its reader: one sentence on why, and the steps to take next.

Both come from the verdict's findings (:class:`~ppl_models.vi.verdict.Finding`: a ``kind`` and
its ``facts``), never from parsing the sentences that word them, and from two facts about the
fit that the report records beside the summary:

- the model's structure (:func:`model_structure`): which latent sites take another latent
  site as their scale (``theta ~ Normal(mu, tau)``: a funnel between ``tau`` and ``theta``
  when ``tau`` can go to zero), found by tracking the provenance of each distribution's
  parameters through one run of the model (Pyro's :class:`~pyro.infer.inspect.TrackProvenance`);
- how the fit started (:func:`fit_start`): a proper MAP, or Pyro's start because the density
  kept rising as a bounded site ran to its bound, and which sites a refit found collapsing.

:func:`findings_of` recovers the findings of a finished run from ``summary.json`` alone, by
applying :func:`~ppl_models.vi.verdict.decide` again to the numbers it was applied to (a pure
function of them), so ``ppl-models report`` redraws the first screen without the fit.
"""

from __future__ import annotations

import math

from .verdict import MEANS_ONLY, NOT_TRUSTWORTHY, TRUSTWORTHY, Finding, decide
from .verdict_text import names, sentence

LABELS = {
    TRUSTWORTHY: ("TRUSTWORTHY", "good", "q's means, sds and marginal shapes can be used."),
    MEANS_ONLY: ("MEANS ONLY", "warn", "q's means can be used; its sds and intervals cannot."),
    NOT_TRUSTWORTHY: ("NOT TRUSTWORTHY", "bad", "do not use q's summaries as the posterior's."),
}
# findings that say q cannot represent the posterior's dependence or tails
_SHAPE_KINDS = {
    "khat_cap",
    "reference_means",
    "reference_sds",
    "reference_shapes",
    "self_khat",
    "psis_means",
    "psis_sds",
    "psis_unsettled",
    "uncompared_off",
}
RICHER_GUIDE = {"auto-normal": "auto-mvn", "auto-lowrank": "auto-mvn", "custom": "auto-mvn"}
RICHER_GUIDE["auto-mvn"] = "auto-iaf"


# ----------------------------------------------------------------------------- facts of the fit


MAX_STRUCTURE_SITES = 64  # latent sites nudged in turn by model_structure (one run each)


def _location_and_scale(fn) -> dict:
    while hasattr(fn, "base_dist"):  # Independent, expand, masks: the same parameters
        fn = fn.base_dist
    return {role: getattr(fn, role, None) for role in ("loc", "scale")}


def model_structure(model, data: dict, guide=None) -> dict:
    """Which latent sites take other latent sites as their scale, and as their location.

    Returns ``{"scale_parents": {site: [parents]}, "loc_parents": {site: [parents]}}``. The
    model runs once with values drawn from ``guide`` (else from its prior: a flat prior
    cannot be drawn from, a guide can), then once per latent site with that site's
    value nudged (by 0.5 in its unconstrained space) and every other latent value held: a site
    whose distribution's ``scale`` (after unwrapping ``Independent``, ``expand`` and masks)
    changes takes the nudged site as a scale parent. (Tracking provenance would not tell the
    parameters apart: a distribution broadcasts its location and scale together.) The caller's
    random state is kept; raises what the model raises.
    """
    import pyro
    import torch
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample
    from torch.distributions import biject_to

    def traced(values=None):
        run = model if values is None else poutine.condition(model, data=values)
        return poutine.trace(run).get_trace(**data)

    from ..svi import local_params

    structure: dict = {"scale_parents": {}, "loc_parents": {}}
    with torch.random.fork_rng(), torch.no_grad(), pyro.validation_enabled(False):
        # local_params: a fitted autoguide's parameters stay in it, out of Pyro's global store
        with poutine.block(), local_params():
            if guide is not None:
                drawn = poutine.trace(guide).get_trace(**data)
                held = {
                    name: site["value"]
                    for name, site in drawn.nodes.items()
                    if site["type"] == "sample" and not site_is_subsample(site)
                }
                base = traced(held)
                latent = [name for name in held if name in base.nodes]
            else:
                base = traced()
                latent = [
                    name
                    for name, site in base.nodes.items()
                    if site["type"] == "sample"
                    and not site["is_observed"]
                    and not site_is_subsample(site)
                ]
            values = {name: base.nodes[name]["value"] for name in latent}
            before = {name: _location_and_scale(base.nodes[name]["fn"]) for name in latent}
            for parent in latent[:MAX_STRUCTURE_SITES]:
                transform = biject_to(base.nodes[parent]["fn"].support)
                nudged = transform(transform.inv(values[parent]) + 0.5)
                after = traced({**values, parent: nudged})
                for child in latent:
                    if child == parent or child not in after.nodes:
                        continue
                    now = _location_and_scale(after.nodes[child]["fn"])
                    for role, key in (("scale", "scale_parents"), ("loc", "loc_parents")):
                        old, new = before[child][role], now[role]
                        if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor):
                            if old.shape != new.shape or not torch.equal(old, new):
                                structure[key].setdefault(child, []).append(parent)
    return structure


def fit_start(fit) -> dict:
    """How the fit started: ``method`` (``laplace``, ``prior``, ``feasible`` or None for a
    custom guide) and ``collapsed``: the sites a fit from the MAP ran towards their bounds (the
    fit was then repeated from Pyro's start)."""
    start = getattr(getattr(fit, "guide", None), "start", None)
    restart = (getattr(fit, "extras", None) or {}).get("restart") or {}
    return {
        "method": getattr(start, "method", None),
        "collapsed": list(restart.get("collapsed", [])),
    }


# ----------------------------------------------------------------------------- the findings


def findings_of(summary: dict) -> list[Finding] | None:
    """The verdict's findings for a finished run, from ``summary.json``'s numbers, or None when
    they cannot be recovered (a run from before the findings, or custom tolerances: the label
    found again must be the label recorded)."""
    try:
        rows = summary["parameters"]
        coords = [
            {
                **c,
                "mean_error": math.inf if c.get("mean_error") is None else c["mean_error"],
                "sd_error": math.inf if c.get("sd_error") is None else c["sd_error"],
            }
            for c in summary.get("error_bounds_per_coordinate") or []
        ]
        khat = summary.get("psis_khat")
        tries = [khat] if khat is not None else [None, -math.inf]  # null: not finite, or -inf
        for k in tries:
            verdict = decide(
                rows,
                converged=bool(summary.get("converged")),
                khat=k,
                khat_threshold=summary["psis_khat_threshold"],
                d2=summary["d2"] if summary.get("d2") is not None else math.inf,
                importance_ess=summary["importance_ess"],
                draws=summary["draws"],
                coordinates=coords,
                has_reference=summary.get("reference") is not None,
                mode_search=summary.get("mode_search"),
            )
            if verdict.label == summary.get("verdict"):
                return verdict.findings
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return None


_CERTIFYING = ("self_certified", "reference_agrees", "uncompared_certified")


def _decisive(findings: list[Finding], label: str) -> list[Finding]:
    """The findings that allow exactly the verdict's label; for ``trustworthy``, those that
    certify first (a mode holding no mass to speak of allows it too, but says less)."""
    found = [f for f in findings if f.allows == label and f.kind in _HEADLINES]
    return sorted(found, key=lambda f: f.kind not in _CERTIFYING)


def _worst(details: list, key=lambda d: abs(d[1])):
    return max(details, key=key) if details else None


def _count(names_: list) -> str:
    n = len(names_)
    return f"{names_[0]}" if n == 1 else f"{n} elements"


def _h_reference_means(x: dict) -> str:
    name, error, _ = _worst(x["details"])
    if len(x["names"]) == 1:
        return f"The mean of `{name}` is off the reference by {error:+.2f} sd."
    return (
        f"The means of {len(x['names'])} elements are off the reference (worst: `{name}`, "
        f"{error:+.2f} sd)."
    )


def _h_reference_sds(x: dict) -> str:
    name, ratio, _ = _worst(x["details"], key=lambda d: abs(math.log(max(d[1], 1e-12))))
    if len(x["names"]) == 1:
        return f"q's sd of `{name}` is off the reference (sd ratio {ratio:.2f})."
    return (
        f"q's sds are off the reference for {len(x['names'])} elements (worst: `{name}`, sd "
        f"ratio {ratio:.2f})."
    )


def _h_reference_shapes(x: dict) -> str:
    name, ks, _ = _worst(x["details"])
    if len(x["names"]) == 1:
        return f"q's marginal shape of `{name}` differs from the reference (KS {ks:.2f})."
    return (
        f"q's marginal shapes differ from the reference for {len(x['names'])} elements "
        f"(worst: `{name}`, KS {ks:.2f})."
    )


def _h_khat_cap(x: dict) -> str:
    k = "not finite" if x["khat"] is None else f"{x['khat']:.2f}"
    return (
        f"PSIS k-hat is {k}, above the threshold {x['threshold']:.2g}: q misses posterior "
        "mass (tails or dependence it cannot represent)."
    )


def _h_missed(x: dict) -> str:
    n = len(x["missed"])
    return (
        f"q misses {n} posterior mode{'s' if n > 1 else ''} holding about {x['share']:.0%} of "
        "the mass, found by the mode search."
    )


_HEADLINES = {
    "not_converged": lambda x: "The fit did not meet its convergence rule.",
    "khat_cap": _h_khat_cap,
    "missed_modes": _h_missed,
    "reference_means": _h_reference_means,
    "reference_sds": _h_reference_sds,
    "reference_shapes": _h_reference_shapes,
    "reference_degenerate": lambda x: (
        f"The reference's draws of {names(x['names'], 3)} are constant or not finite."
    ),
    "reference_agrees": lambda x: (
        f"All {x['count']} compared elements agree with the reference within their bands."
    ),
    "self_khat": lambda x: (
        "Without a reference nothing certifies the fit: PSIS k-hat "
        + ("is not finite" if x["khat"] is None else f"{x['khat']:.2f} is above {x['limit']:g}")
        + "."
    ),
    "self_ess": lambda x: (
        f"Too few effective importance draws ({x['ess']:.0f}, below {x['min_ess']:.0f}) to "
        "check q without a reference."
    ),
    "psis_means": lambda x: f"Importance sampling moves the means of {_count(x['names'])}.",
    "psis_sds": lambda x: f"Importance sampling changes the sds of {_count(x['names'])}.",
    "psis_unsettled": lambda x: (
        f"Importance sampling finds {_count(x['names'])} just off the tolerances, within its "
        "Monte Carlo error: not certified."
    ),
    "uncompared_off": lambda x: (
        f"Importance sampling finds {_count(x['names'])} that the reference lacks off."
    ),
    "self_certified": lambda x: (
        f"q's own draws certify it: k-hat {x['khat']:.2f}, and importance sampling confirms "
        "its means and sds."
    ),
    "no_shared_element": lambda x: "The reference shares no element with the model.",
}


def headline(findings: list[Finding] | None, summary: dict) -> str:
    """One sentence on why the verdict is what it is: the finding that set the label (and, when
    another one did not, k-hat above its threshold)."""
    label = summary.get("verdict")
    if not findings:
        reasons = summary.get("verdict_reasons") or []
        return reasons[0] if reasons else ""
    decisive = _decisive(findings, label)
    if not decisive:
        return sentence(findings[0]) if findings[0].kind in _HEADLINES else ""
    first = decisive[0]
    text = _HEADLINES[first.kind](first.facts)
    cap = next((f for f in findings if f.kind == "khat_cap"), None)
    if cap is not None and cap is not first and cap.facts.get("khat") is not None:
        text = (
            text[:-1]
            + f"; PSIS k-hat {cap.facts['khat']:.2f} is above {cap.facts['threshold']:.2g}."
        )
    return text


# ----------------------------------------------------------------------------- next steps


def _funnels(findings: list[Finding], summary: dict) -> list[tuple[str, list[str], list[str]]]:
    """(site, scale parents, location parents) of each site whose scale is another latent site,
    where the checks blame that pair or the fit found no proper MAP because a scale ran to its
    bound."""
    structure = summary.get("model_structure") or {}
    scales = structure.get("scale_parents") or {}
    if not scales or summary.get("verdict") == TRUSTWORTHY:
        return []
    start = summary.get("fit_start") or {}
    collapsed = set(start.get("collapsed") or [])
    blamed = {n.split("[")[0] for f in findings for n in f.off}
    shape_trouble = any(f.kind in _SHAPE_KINDS for f in findings)
    search = summary.get("mode_search") or {}
    no_minimum = search.get("minima") == 0 and not search.get("stopped_in_q")
    out = []
    for site, parents in scales.items():
        ran = any(p in collapsed or p.split("[")[0] in collapsed for p in parents)
        if (
            ran
            or start.get("method") == "prior"
            or no_minimum
            or (shape_trouble and (site in blamed or any(p in blamed for p in parents)))
        ):
            out.append((site, parents, (structure.get("loc_parents") or {}).get(site, [])))
    return out


def next_steps(findings: list[Finding] | None, summary: dict) -> list[str]:
    """Concrete steps derived from the findings, most useful first; ```...``` marks code."""
    label = summary.get("verdict")
    findings = findings or []
    kinds = {f.kind: f for f in findings}
    steps: list[str] = []
    ladder = summary.get("ladder")
    if ladder:
        steps += _ladder_steps(ladder, summary)
        if label == TRUSTWORTHY:
            return steps
    for site, scales, locs in _funnels(findings, summary):
        scale = " * ".join(f"`{p}`" for p in scales)
        loc = (" + ".join(locs) + " + ") if locs else ""
        steps.append(
            f"Non-centre `{site}` (a funnel between {scale} and `{site}`): draw "
            f"`{site}_raw ~ Normal(0, 1)` and set `{site} = {loc}{' * '.join(scales)} * "
            f"{site}_raw` (a `pyro.deterministic` site), as `runs/eight_schools_noncentered.py` "
            "does."
        )
    if "missed_modes" in kinds and kinds["missed_modes"].allows != TRUSTWORTHY:
        steps.append(
            "q sits in one of several modes: remove the symmetry that makes them (order "
            "exchangeable components), or fit a guide that can hold every mode."
        )
    guide = summary.get("guide")
    shape_trouble = [f for f in findings if f.kind in _SHAPE_KINDS and f.allows != TRUSTWORTHY]
    if shape_trouble and guide in RICHER_GUIDE:
        richer = RICHER_GUIDE[guide]
        why = (
            "a full-rank Gaussian holds correlations"
            if richer == "auto-mvn"
            else ("a normalising flow holds skewed and curved posteriors")
        )
        steps.append(f"Try `--guide {richer}` ({why} that `{guide}` cannot).")
    if label != TRUSTWORTHY and not ladder:
        steps.append(
            "Run `ppl-models fit SCRIPT --auto`: it climbs from this guide through its PSIS "
            "correction, a non-centred model and richer guides to NUTS until a fit is certified."
        )
    if "not_converged" in kinds:
        current = (summary.get("fit_settings") or {}).get("steps") or summary.get("steps") or 0
        more = f"`--steps {2 * current}`" if current else "more `--steps`"
        steps.append(f"Run longer ({more}): the ELBO was still moving when the fit stopped.")
    for kind in ("reference_unresolved", "reference_marginal"):
        if kind in kinds:
            who = names(kinds[kind].facts["names"], 4)
            if kind == "reference_unresolved":
                steps.append(
                    f"Lengthen the reference: its Monte Carlo error cannot resolve {who} "
                    "(with `--reference nuts`, raise `--set nuts_draws=...`)."
                )
            else:
                steps.append(f"More draws would settle {who}: `--draws {4 * summary['draws']}`.")
    if "reference_degenerate" in kinds:
        bad = names(kinds["reference_degenerate"].facts["names"], 4)
        steps.append(f"Check the reference's draws of {bad}: they are constant or not finite.")
    if "no_shared_element" in kinds:
        steps.append("Check the reference: none of its names matches a site of the model.")
    if "self_ess" in kinds:
        steps.append(
            f"Draw more: `--draws {4 * summary.get('draws', 0)}` (too few effective importance "
            "draws)."
        )
    if summary.get("reference") is None and label != TRUSTWORTHY:
        steps.append(
            "Supply a reference to compare against: `--reference nuts` (Pyro's NUTS on the "
            "model) or reference draws (`--reference FILE`)."
        )
    if not steps:
        if label == TRUSTWORTHY:
            steps.append("Nothing to fix: use q's means, sds and intervals as the posterior's.")
            if summary.get("reference") is None:
                steps.append(
                    "Optionally confirm with a reference (`--reference nuts`): q's own draws "
                    "cannot see posterior mass far from them that the mode search missed."
                )
        else:
            steps.append("Read every finding below: no single change is indicated.")
    return steps


def _ladder_steps(ladder: dict, summary: dict) -> list[str]:
    """What the escalation ladder's climb means for the reader: where the answer came from, or
    (none certified) the advice derived from its checks and what to try next."""
    rungs = ladder.get("rungs") or []
    answer = ladder.get("answer")
    if answer is not None and answer < len(rungs):
        r = rungs[answer]
        words = (summary.get("answer") or {}).get("words")
        return [
            f"Use this posterior: the ladder certified its {r['rung']} rung ({r['method']})"
            + (f": {words}" if words else "")
            + ". The table below lists every rung it climbed."
        ]
    steps = list(ladder.get("advice") or [])
    if ladder.get("stopped") == "budget":
        steps.append(
            f"The budget ({ladder.get('budget', 0):g} s) ran out before every rung was tried: "
            "rerun with a larger `--budget`."
        )
    elif ladder.get("stopped") == "interrupted":
        steps.append("The climb was interrupted: rerun `--auto` to finish it.")
    return steps


def badge_words(label: str) -> tuple[str, str, str]:
    """(words, level, meaning) of a verdict label."""
    return LABELS.get(label, (label.upper(), "info", ""))
