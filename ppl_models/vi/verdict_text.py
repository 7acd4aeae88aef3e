"""The verdict in words: one sentence per finding, and the rules as the report states them.

:mod:`ppl_models.vi.verdict` decides and records each finding as data
(:class:`~ppl_models.vi.verdict.Finding`); this module alone writes them as sentences, and
writes the rules from the tolerances of :class:`~ppl_models.vi.verdict.VerdictRules`, so that
every rule is stated once, in the code that applies it and in the words built from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # verdict.py imports this module to word its findings
    from .verdict import Finding, VerdictRules


def names(items: list[str] | tuple[str, ...], limit: int = 8) -> str:
    """``a, b, c`` (at most ``limit`` names, then ``and N more``)."""
    items = list(items)
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def sentence(f: Finding) -> str:
    """The sentence that states finding ``f``."""
    return _SENTENCES[f.kind](f.facts)


def sentences(findings: list[Finding]) -> list[str]:
    """The sentences of ``findings``, in order (findings without words are skipped)."""
    return [sentence(f) for f in findings if f.kind in _SENTENCES]


# ----------------------------------------------------------------------------- the "always" rules


def _not_converged(_: dict) -> str:
    return "The optimisation did not meet its convergence rule: the guide may still be moving."


def _khat_cap(x: dict) -> str:
    return (
        f"PSIS k-hat = {_fmt(x['khat'])} is above the threshold {x['threshold']:.3g}: q misses "
        "posterior mass (tails or dependence it cannot represent), so its uncertainty "
        "statements are not reliable."
    )


# ----------------------------------------------------------------------------- with a reference


def _reference_degenerate(x: dict) -> str:
    return (
        f"The reference's draws of {names(x['names'])} are constant or not finite while "
        "q's are not: the reference cannot judge them, so they count as off (check the "
        "reference: a stuck chain, or draws of another quantity)."
    )


def _reference_means(x: dict) -> str:
    detail = "; ".join(f"{n}: {e:+.3g} sd (tolerance {t:.3g})" for n, e, t in x["details"][:8])
    return f"The means of {names(x['names'])} are off the reference: {detail}."


def _reference_sds(x: dict) -> str:
    detail = "; ".join(
        f"{n}: sd ratio {r:.3g} (allowed 1 ± {t:.3g})" for n, r, t in x["details"][:8]
    )
    return f"The sds of {names(x['names'])} are off the reference: {detail}."


def _reference_shapes(x: dict) -> str:
    detail = "; ".join(f"{n}: KS {k:.3g} (allowed {t:.3g})" for n, k, t in x["details"][:8])
    return f"The marginal shapes of {names(x['names'])} differ from the reference: {detail}."


def _reference_unmixed(x: dict) -> str:
    return (
        f"The reference's own chains disagree for {names(x['names'])} (split R-hat up to "
        f"{x['r_hat']:.3g}, above {x['max']:g}): they may be stuck in different modes, so "
        "these elements may be off because of the reference, not q; a longer reference run "
        "from several starts would tell."
    )


def _reference_agrees(x: dict) -> str:
    text = f"All {x['count']} compared elements are within their bands"
    if x.get("worst_mean") is not None:
        (mean_name, mean_error), (sd_name, sd_ratio) = x["worst_mean"], x["worst_sd"]
        text += (
            f": the largest standardised mean error is {mean_error:+.3g} ({mean_name}), the sd "
            f"ratio furthest from 1 is {sd_ratio:.3g} ({sd_name})"
        )
    return text + "."


def _no_shared_element(_: dict) -> str:
    return "The reference shares no element with the model: nothing compared."


def _uncompared_off(x: dict) -> str:
    return (
        f"The reference has no draws of {names(x['sites'])}; importance sampling from q "
        f"finds {names(x['names'])} off (PSIS-corrected "
        f"{'means' if x['means'] else 'sds'} differ from q's)."
    )


def _uncompared_uncertified(x: dict) -> str:
    why = sentence(x["why"]) if x.get("why") is not None else ""
    return (
        f"The reference has no draws of {names(x['sites'])}: they are summarised but neither "
        f"compared nor certified by q's own diagnostics ({why})"
    )


def _uncompared_certified(x: dict) -> str:
    return f"The reference has no draws of {names(x['sites'])}; q's own diagnostics certify them."


def _reference_unresolved(x: dict) -> str:
    return (
        f"The reference cannot resolve {x['mean_tolerance']:g} sd for "
        f"{names(x['names'])} (its Monte Carlo error allows more, or its chains "
        f"disagree: R-hat above {x['max_r_hat']:g}): a longer, converged "
        "reference run would settle them; meanwhile q's own diagnostics judge them."
    )


def _reference_marginal(x: dict) -> str:
    return (
        f"The measured errors of {names(x['names'])} exceed {x['mean_tolerance']:g} "
        f"sd (means) or {x['sd_tolerance']:g} (sd ratios) but are within the "
        "Monte Carlo error of the comparison: not certified; more draws or a "
        "longer reference would settle them; meanwhile q's own diagnostics judge "
        "them."
    )


# ----------------------------------------------------------------------------- without a reference


def _self_khat(x: dict) -> str:
    return (
        f"Without a reference nothing certifies the fit: k-hat = {_fmt(x['khat'])} is above "
        f"its threshold {x['limit']:.2g}, so Pareto-smoothed importance sampling cannot measure "
        "the posterior's moments from q's draws."
    )


def _self_ess(x: dict) -> str:
    return (
        f"Without a reference nothing certifies the fit: the importance ESS "
        f"({x['ess']:.0f}) is below {x['min_ess']:.0f}, too few for the importance-"
        "sampling checks."
    )


def _psis_means(x: dict) -> str:
    detail = "; ".join(f"{n}: q {m:.4g} vs PSIS {_fmt(p)}" for n, m, p in x["details"][:8])
    return f"Importance sampling moves the means of {names(x['names'])}: {detail}."


def _psis_sds(x: dict) -> str:
    detail = "; ".join(f"{n}: q {s:.4g} vs PSIS {_fmt(p)}" for n, s, p in x["details"][:8])
    return f"Importance sampling changes the sds of {names(x['names'])}: {detail}."


def _tail_threshold(x: dict) -> str:
    many = x.get("elements", 1) > 1
    return f"{x['threshold']:.2g}" + (
        f" for the largest of {x['elements']} elements" if many else ""
    )


def _psis_tails(x: dict, moments: str, function: str, after: str = "") -> str:
    return (
        f"PSIS cannot check the {moments} of {names(x['names'])}: the tail of {function} has "
        f"k-hat up to {_fmt(x['khat'])}, above the threshold {_tail_threshold(x)} (the "
        f"posterior's tails are heavier than q's there), so their PSIS-corrected {moments} are "
        f"not reliable and q's cannot be certified{after}."
    )


def _psis_mean_tails(x: dict) -> str:
    return _psis_tails(x, "means", "w (theta - c)")


def _psis_sd_tails(x: dict) -> str:
    return _psis_tails(x, "sds", "w (theta - c)^2", "; the means can be used")


def _psis_unsettled(x: dict) -> str:
    return (
        f"The PSIS-corrected moments of {names(x['names'])} differ from q's by more than "
        f"{x['mean_tolerance']:g} sd (means) or {x['sd_tolerance']:g} (sd ratios), though within "
        "their Monte Carlo error: not certified; the means can be used."
    )


def _khat_sd(k: float | None) -> str:
    return "" if k is None else f"; the sds' estimates have k-hat at most {k:.2g}"


def _self_certified(x: dict) -> str:
    return (
        f"Where q puts mass, its own draws certify it: k-hat = {x['khat']:.3g} (threshold "
        f"{x['threshold']:.2g}), and the PSIS-corrected means and sds of all {x['elements']} "
        f"elements agree with q's (largest differences {x['worst_mean']:.2g} sd in a mean and "
        f"{x['worst_sd']:.1%} in an sd{_khat_sd(x.get('khat_sd'))}). VIABEL's worst-case bound "
        "on a mean error is "
        f"{x['bound_mean']:.2g} sd (d_2 = {x['d2']:.3g})."
    )


# ----------------------------------------------------------------------------- modes


def _missed_modes(x: dict) -> str:
    missed = x["missed"]
    where = "; ".join(
        ", ".join(f"{k} = {v:.3g}" for k, v in list(m["location"].items())[:4])
        + (" ..." if len(m["location"]) > 4 else "")
        + f" ({m['share']:.2%})"
        for m in missed[:3]
    )
    split = f" split across {x['ranks']} processes" if x["ranks"] > 1 else ""
    found = (
        f"A mode search ({x['starts']} L-BFGS starts{split}) found {len(missed)} posterior "
        f"mode{'s' if len(missed) > 1 else ''} that q never visits, holding an estimated "
        f"{x['share']:.2%} of the posterior mass (Laplace approximation); unconstrained space: "
        f"{where}."
    )
    if x["mean_off"]:
        return found + (
            f" With it the means of {names(x['mean_off'])} move by up to "
            f"{x['worst_shift']:.3g} sd ({x['worst']}): q's means and sds describe one mode, "
            "not the posterior; fit a guide that can hold every mode, or reparametrise the "
            "model to remove the symmetry."
        )
    if x["sd_off"]:
        return found + (
            f" With it the sds of {names(x['sd_off'])} change by more than "
            f"{x['sd_tolerance']:g} relative: q's uncertainty misses that mass."
        )
    return f"{found} Too little mass to move a mean or sd beyond tolerance."


_SENTENCES: dict[str, Callable[[dict], str]] = {
    "not_converged": _not_converged,
    "khat_cap": _khat_cap,
    "missed_modes": _missed_modes,
    "reference_degenerate": _reference_degenerate,
    "reference_means": _reference_means,
    "reference_sds": _reference_sds,
    "reference_shapes": _reference_shapes,
    "reference_agrees": _reference_agrees,
    "reference_unmixed": _reference_unmixed,
    "no_shared_element": _no_shared_element,
    "uncompared_off": _uncompared_off,
    "uncompared_uncertified": _uncompared_uncertified,
    "uncompared_certified": _uncompared_certified,
    "reference_unresolved": _reference_unresolved,
    "reference_marginal": _reference_marginal,
    "self_khat": _self_khat,
    "self_ess": _self_ess,
    "psis_means": _psis_means,
    "psis_sds": _psis_sds,
    "psis_mean_tails": _psis_mean_tails,
    "psis_sd_tails": _psis_sd_tails,
    "psis_unsettled": _psis_unsettled,
    "self_certified": _self_certified,
}


# ----------------------------------------------------------------------------- the rules


def describe_rules(rules: VerdictRules) -> list[str]:
    """The rules in words, for the report, from the tolerances in ``rules``."""
    f = rules.mcse_factor
    return [
        "Never trustworthy when the fit did not meet its convergence rule, or when PSIS "
        "k-hat exceeds the sample-size threshold min(1 - 1/log10 S, 0.7).",
        f"With a reference, per element: |mean_q - mean_ref| / sd_ref <= "
        f"{rules.mean_tolerance:g} + {f:g} x (combined MCSE of both means) / sd_ref; "
        f"|sd_q / sd_ref - 1| <= {rules.sd_tolerance:g} + {f:g} x (combined relative MCSE "
        f"of both sds); KS <= {rules.ks_tolerance:g} + {rules.ks_critical:g} x "
        "sqrt(1/S + 1/ESS_ref). A mean outside -> not-trustworthy; an sd or shape outside "
        "-> means-only. The reference's MCSE and ESS come from its own chains (ArviZ). "
        "Latent sites the reference lacks: their PSIS-corrected means and sds must agree "
        "with q's when k-hat is within its threshold. The MCSE allowance keeps noise from "
        "being called an error but never certifies: elements within their bands only "
        "thanks to it (a reference too short to resolve the tolerance, or a measured error "
        f"above the core tolerance) or compared with reference chains whose R-hat exceeds "
        f"{rules.max_r_hat:g} are judged by q's own diagnostics instead.",
        f"Without a reference: converged, PSIS k-hat within its sample-size threshold (where "
        f"Pareto-smoothed importance sampling is reliable) and an importance ESS >= "
        f"max({rules.min_ess:g}, {rules.min_ess_fraction:g} S), else not-trustworthy; every "
        f"PSIS-corrected mean within {rules.mean_tolerance:g} sd + {f:g} MCSE of q's, else "
        f"not-trustworthy; every PSIS-corrected sd within {rules.sd_tolerance:g} + {f:g} relative "
        "MCSE of q's, else means-only; trustworthy needs the measured differences within "
        f"{rules.mean_tolerance:g} sd and {rules.sd_tolerance:g} themselves. Each PSIS estimate "
        "must be reliable: the k-hat of the tail of w (theta - c) for a mean (else "
        "not-trustworthy) and of w (theta - c)^2 for an sd (else means-only) within the same "
        "threshold, plus (z(1 - 0.05/E) - z(0.95)) (1 + threshold) / sqrt(M) for the largest of "
        "E elements' estimates from M tail draws, unless the same tail over q's own draws is "
        "as heavy (within 2 sqrt(2) (1 + k) / sqrt(M)): then the weights add nothing to it. "
        "VIABEL's error bounds are reported, not required.",
        "With or without a reference: posterior modes that a multi-start L-BFGS search finds "
        "and q never visits are added to q with their Laplace masses; if that moves an "
        f"unconstrained coordinate's mean by more than {rules.mean_tolerance:g} sd -> "
        f"not-trustworthy, if it changes an sd by more than {rules.sd_tolerance:g} relative "
        "-> at most means-only.",
    ]
