r"""The verdict: can the variational posterior be used in place of the posterior?

Three answers:

``trustworthy``
    q's means, sds and marginal shapes can be used as the posterior's.
``means-only``
    q's means can be used; its uncertainty (sds, intervals, tails) cannot.
``not-trustworthy``
    not even q's means can be used.

:func:`decide` applies the rules and records each conclusion as a :class:`Finding`; the worst
label any finding allows is the verdict. The rules, with the tolerances of
:class:`VerdictRules`, are stated in words by :func:`ppl_models.vi.verdict_text.describe_rules`
(the report prints them) and each finding by :func:`ppl_models.vi.verdict_text.sentence`. In
outline:

- **always**: a fit that did not meet its convergence rule, or whose PSIS k-hat exceeds the
  sample-size threshold :math:`\min(1 - 1/\log_{10} S, 0.7)` (Vehtari et al. 2024), is never
  ``trustworthy``;
- **with a reference**, each element's mean, sd and marginal shape is held to a band: the core
  tolerance plus an allowance for the Monte Carlo error of both sides (:func:`reference_checks`).
  The allowance keeps noise from being called an error but never certifies: an element within
  its band only thanks to it, or compared with reference chains that disagree, is judged by q's
  own diagnostics instead;
- **without a reference** the fit must certify itself from q's draws: k-hat within its
  sample-size threshold, where Pareto-smoothed importance sampling is reliable (Vehtari et al.
  2024), enough importance ESS, and every element's PSIS-corrected mean and sd, which then
  measure the posterior's, agreeing with q's within the tolerances (the diagnosis makes draws
  until their Monte Carlo error is a quarter of the tolerance: :mod:`ppl_models.vi.precision`).
  Each of those estimates must itself be reliable: the :math:`\hat k` of the tail of
  :math:`w\,(f - c)` (a mean) or :math:`w\,(f - c)^2` (a variance) within the same threshold
  (Vehtari et al. 2024, section 2.4), plus an allowance for the largest of many noisy
  estimates (:func:`ppl_models.pareto.family_threshold`), unless q's own draws of the function
  have as heavy a tail (:func:`ppl_models.pareto.weights_margin`): where the posterior's tails are
  heavier than q's, the weights' :math:`\hat k` can pass while the PSIS sd still falls short of
  the posterior's;
  VIABEL's mean- and sd-error bounds (Huggins et al. 2020) are worst cases, far looser than the
  errors they bound at many dimensions: they are reported, not required;
- **modes q never visits**: a multi-start mode search (:mod:`ppl_models.vi.modes`) adds the
  modes it finds outside q's draws, with their Laplace masses; a mean or sd that this moves
  beyond tolerance condemns the fit even where a reference agrees (a sampler stuck in one mode
  agrees with q there).

k-hat alone is not enough: q = N(mu + delta, 1) for p = N(mu, 1) has normal log weights
(k-hat stays low) but :math:`d_2 = 2\delta^2`, and the bounds and the PSIS-corrected means
expose the shift. No diagnostic computed from q's draws can see posterior mass that q never
visits (a missed mode: there :math:`d_2` and k-hat read as for an exact fit): only the mode
search or a reference can.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import numpy as np

from ..pareto import family_threshold, weights_margin
from . import verdict_text

TRUSTWORTHY = "trustworthy"
MEANS_ONLY = "means-only"
NOT_TRUSTWORTHY = "not-trustworthy"
_ORDER = {TRUSTWORTHY: 2, MEANS_ONLY: 1, NOT_TRUSTWORTHY: 0}


@dataclass(frozen=True)
class VerdictRules:
    """Tolerances of the verdict (the module docstring says how each is used; the report states
    them through :func:`ppl_models.vi.verdict_text.describe_rules`)."""

    mean_tolerance: float = 0.1
    sd_tolerance: float = 0.1
    ks_tolerance: float = 0.05
    mcse_factor: float = 2.0
    ks_critical: float = 1.36
    bound_mean_tolerance: float = 0.25  # reported where VIABEL's bound is looser (not a rule)
    min_ess: float = 100.0
    min_ess_fraction: float = 0.01
    max_r_hat: float = 1.01

    def min_importance_ess(self, draws: int) -> float:
        """The importance ESS self-certification needs from ``draws`` draws: at least
        ``min_ess``, and at least ``min_ess_fraction`` of them."""
        return max(self.min_ess, self.min_ess_fraction * draws)

    def describe(self) -> list[str]:
        """The rules in words, for the report."""
        return verdict_text.describe_rules(self)


@dataclass(frozen=True)
class Finding:
    """One conclusion of a rule: which rule spoke (``kind``), the best label it leaves
    (``allows``), the elements it measured off, and the facts its sentence states
    (:func:`ppl_models.vi.verdict_text.sentence`)."""

    kind: str
    allows: str = TRUSTWORTHY
    off: tuple[str, ...] = ()
    facts: dict = field(default_factory=dict)


@dataclass
class Verdict:
    """The label, the reasons in words (naming the parameters that are off), and the checks."""

    label: str
    reasons: list[str]
    rules: list[str]
    checks: dict = field(default_factory=dict)
    off: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "reasons": self.reasons,
            "rules": self.rules,
            "off": self.off,
            "checks": self.checks,
        }


def worse_label(a: str, b: str) -> str:
    """The less trusting of two verdict labels."""
    return a if _ORDER[a] <= _ORDER[b] else b


def reference_checks(row: dict, draws: int, rules: VerdictRules) -> dict | None:
    """Tolerances and pass/fail of one compared element (None when it has no reference).

    ``*_ok`` say whether the element is within its band *including* the Monte Carlo allowance
    (outside it the element is off); ``certified`` whether the reference certifies it: the
    allowance is no larger than the core tolerance (``resolved``) and the measured errors are
    within the core tolerances themselves. The allowance excuses noise from being called an
    error; it never turns a measured error above the tolerance into a certificate, so a
    borderline fit errs towards "not certified" whatever the seed. A reference whose draws of
    the element are constant or not finite (while q's are not) certifies nothing and counts as
    off (``degenerate``).
    """
    if row.get("ref_mean") is None or row.get("ref_sd") is None:
        return None
    f = rules.mcse_factor
    ref_sd, sd = row["ref_sd"], row["sd"]
    if not (ref_sd > 0 and math.isfinite(ref_sd) and math.isfinite(row["ref_mean"])):
        scale = max(1.0, abs(row["ref_mean"]))  # q's moments of a constant: sums of S copies
        same = (
            ref_sd == 0
            and sd <= 1e-9 * scale
            and abs(row["mean"] - row["ref_mean"]) <= 1e-9 * scale
        )
        return {
            "degenerate": True,
            "resolved": same,
            "certified": same,
            "mean_tolerance": 0.0,
            "mean_ok": same,
            "sd_tolerance": 0.0,
            "sd_ok": same,
            "ks_tolerance": 0.0,
            "ks_ok": same,
        }
    mcse_m = math.hypot(row.get("ref_mcse_mean") or 0.0, row.get("mcse_mean") or 0.0)
    mean_tol = rules.mean_tolerance + f * mcse_m / ref_sd
    rel_ref = (row.get("ref_mcse_sd") or 0.0) / ref_sd
    rel_q = (row.get("mcse_sd") or 0.0) / sd if sd > 0 else 0.0
    sd_tol = rules.sd_tolerance + f * math.hypot(rel_ref, rel_q)
    ess = row.get("ref_ess") or 1.0
    ks_draws = row.get("ks_draws") or draws  # the KS distance may use the kept draws only
    ks_tol = rules.ks_tolerance + rules.ks_critical * math.sqrt(1.0 / ks_draws + 1.0 / ess)
    # The Monte Carlo allowance may not outgrow the tolerance itself: a reference too short to
    # resolve 0.1 sd cannot certify an element, however well q agrees with it; nor can a
    # reference whose chains disagree (R-hat above 1.01, Vehtari et al. 2021): its Monte Carlo
    # errors then mean nothing (chains stuck in different modes, say)
    r_hat = row.get("ref_r_hat")
    resolved = (
        f * mcse_m / ref_sd <= rules.mean_tolerance
        and f * math.hypot(rel_ref, rel_q) <= rules.sd_tolerance
        and (r_hat is None or r_hat <= rules.max_r_hat)
    )
    mean_err, sd_err = abs(row["std_mean_error"]), abs(row["sd_ratio"] - 1.0)
    ks_ok = row["ks"] <= ks_tol
    return {
        "degenerate": False,
        "resolved": resolved,
        "certified": bool(
            resolved and mean_err <= rules.mean_tolerance and sd_err <= rules.sd_tolerance and ks_ok
        ),
        "mean_tolerance": mean_tol,
        "mean_ok": mean_err <= mean_tol,
        "sd_tolerance": sd_tol,
        "sd_ok": sd_err <= sd_tol,
        "ks_tolerance": ks_tol,
        "ks_ok": ks_ok,
    }


# ----------------------------------------------------------------------------- with a reference


def _reference_findings(rows, draws, rules) -> tuple[list[Finding], dict]:
    """Each compared element against its bands: a mean off or a degenerate reference ->
    ``not-trustworthy``, an sd or shape off -> ``means-only``."""
    checked = {}
    for row in rows:
        c = reference_checks(row, draws, rules)
        if c is not None:
            checked[row["name"]] = (row, c)
    degenerate = [n for n, (_, c) in checked.items() if c["degenerate"] and not c["certified"]]
    measured = {n: rc for n, rc in checked.items() if not rc[1]["degenerate"]}
    bad_mean = [n for n, (_, c) in measured.items() if not c["mean_ok"]]
    bad_sd = [n for n, (_, c) in measured.items() if not c["sd_ok"]]
    bad_ks = [n for n, (_, c) in measured.items() if not c["ks_ok"]]

    def details(names, value, tolerance):
        return [(n, checked[n][0][value], checked[n][1][tolerance]) for n in names]

    findings = []
    if degenerate:
        findings.append(
            Finding(
                "reference_degenerate", NOT_TRUSTWORTHY, tuple(degenerate), {"names": degenerate}
            )
        )
    if bad_mean:
        facts = {
            "names": bad_mean,
            "details": details(bad_mean, "std_mean_error", "mean_tolerance"),
        }
        findings.append(Finding("reference_means", NOT_TRUSTWORTHY, tuple(bad_mean), facts))
    if bad_sd:
        facts = {"names": bad_sd, "details": details(bad_sd, "sd_ratio", "sd_tolerance")}
        findings.append(Finding("reference_sds", MEANS_ONLY, tuple(bad_sd), facts))
    if bad_ks:
        facts = {"names": bad_ks, "details": details(bad_ks, "ks", "ks_tolerance")}
        findings.append(Finding("reference_shapes", MEANS_ONLY, tuple(bad_ks), facts))
    unmixed = {  # off, where the reference's own chains disagree: say so, and keep the finding
        n: checked[n][0]["ref_r_hat"]
        for n in dict.fromkeys(bad_mean + bad_sd + bad_ks)
        if (checked[n][0].get("ref_r_hat") or 0.0) > rules.max_r_hat
    }
    if unmixed:
        facts = {"names": list(unmixed), "r_hat": max(unmixed.values()), "max": rules.max_r_hat}
        findings.append(Finding("reference_unmixed", TRUSTWORTHY, (), facts))
    if not findings:
        facts = {"count": len(checked), "worst_mean": None, "worst_sd": None}
        if measured:
            worst = max(measured.values(), key=lambda rc: abs(rc[0]["std_mean_error"]))[0]
            worst_sd = max(measured.values(), key=lambda rc: abs(rc[0]["sd_ratio"] - 1))[0]
            facts["worst_mean"] = (worst["name"], worst["std_mean_error"])
            facts["worst_sd"] = (worst_sd["name"], worst_sd["sd_ratio"])
        findings.append(Finding("reference_agrees", TRUSTWORTHY, (), facts))
    return findings, {n: c for n, (_, c) in checked.items()}


# ----------------------------------------------------------------------------- without a reference


def _psis_discrepancies(rows, rules: VerdictRules) -> tuple[list[str], list[str]]:
    """Elements whose PSIS-corrected mean or sd differs from q's beyond the tolerances plus
    the Monte Carlo allowance: measured off."""
    off = _psis_agreement(rows, rules)
    return off["mean_off"], off["sd_off"]


def _psis_agreement(rows, rules: VerdictRules) -> dict[str, list[str]]:
    r"""Per element, how q's mean and sd compare with their PSIS-corrected estimates: ``*_off``
    (the difference exceeds the tolerance plus :math:`2\,\mathrm{mcse}`: measured off) and
    ``*_unsettled`` (within that, but above the tolerance itself: not certified)."""
    f = rules.mcse_factor
    out = {"mean_off": [], "sd_off": [], "mean_unsettled": [], "sd_unsettled": []}
    for r in rows:
        pm, ps = r.get("psis_mean"), r.get("psis_sd")
        if pm is None or ps is None:
            out["mean_off"].append(r["name"])  # nothing measured: nothing certified
            continue
        scale = max(ps, r["sd"])
        if scale == 0:  # q and PSIS agree on a constant
            continue
        # written as "not within" so that a NaN anywhere is off, never within
        mean_error = abs(r["mean"] - pm)
        if not mean_error <= rules.mean_tolerance * scale + f * (r.get("psis_mcse_mean") or 0):
            out["mean_off"].append(r["name"])
        elif not mean_error <= rules.mean_tolerance * scale:
            out["mean_unsettled"].append(r["name"])
        if not ps > 0:
            out["sd_off"].append(r["name"])
            continue
        sd_error = abs(r["sd"] / ps - 1.0)
        if not sd_error <= rules.sd_tolerance + f * ((r.get("psis_mcse_sd") or 0.0) / ps):
            out["sd_off"].append(r["name"])
        elif not sd_error <= rules.sd_tolerance:
            out["sd_unsettled"].append(r["name"])
    return out


def _psis_unreliable(rows, threshold: float, draws: int) -> dict[str, list[str]]:
    r"""Elements whose PSIS-corrected mean (``mean``) or sd (``sd``) is not a reliable
    estimate: the Pareto :math:`\hat k` of :math:`w\,(f - c)`, resp. :math:`w\,(f - c)^2`
    (:meth:`ppl_models.vi.stream.MomentStream.function_khats`), above ``threshold`` (the
    sample-size threshold with :func:`ppl_models.pareto.family_threshold`'s allowance for the
    largest of many estimates) and heavier than the same tail over q's own draws by more than
    :func:`ppl_models.pareto.weights_margin`: the weights, not :math:`f`'s own tails, make it
    so. The weights' own :math:`\hat k` can be within its threshold while these are not, where
    the posterior's tails are heavier than q's: the PSIS sd then falls short of the
    posterior's."""
    out: dict[str, list[str]] = {"mean": [], "sd": []}
    for r in rows:
        for key in ("mean", "sd"):
            k, own = r.get(f"psis_khat_{key}"), r.get(f"q_khat_{key}")
            if k is None or k <= threshold:
                continue
            if own is None or not k - own <= weights_margin(k, draws):  # NaN: unreliable
                out[key].append(r["name"])
    return out


def _tail_facts(rows, names: list[str], key: str, threshold: float) -> dict:
    khats = {r["name"]: r[f"psis_khat_{key}"] for r in rows if r["name"] in names}
    return {
        "names": names,
        "khat": max(khats.values()),
        "threshold": threshold,
        "elements": len(rows),
    }


def _self_findings(
    rows, coords, *, khat, khat_threshold, d2, importance_ess, draws, rules
) -> tuple[list[Finding], dict]:
    """The rules without a reference, on ``rows`` (elements) and ``coords`` (unconstrained
    coordinates with VIABEL's bounds, reported, not required). Where PSIS is reliable (k-hat
    within its sample-size threshold, Vehtari et al. 2024) the PSIS-corrected means and sds
    measure the posterior's: q is certified where its own agree with them within the
    tolerances. Elements *measured* off are off; elements merely not settled are not
    certified, which the findings say, but are not called off."""
    checks: dict = {}
    min_ess = rules.min_importance_ess(draws)
    if khat is None or math.isnan(khat) or khat > khat_threshold:
        facts = {"khat": khat, "limit": khat_threshold}
        return [Finding("self_khat", NOT_TRUSTWORTHY, (), facts)], checks
    if not importance_ess >= min_ess:  # NaN fails too
        facts = {"ess": importance_ess, "min_ess": min_ess}
        return [Finding("self_ess", NOT_TRUSTWORTHY, (), facts)], checks
    agreement = _psis_agreement(rows, rules)
    tail_threshold = family_threshold(khat_threshold, len(rows), draws)
    unreliable = _psis_unreliable(rows, tail_threshold, draws)
    checks.update(
        psis_mean_off=agreement["mean_off"],
        psis_sd_off=agreement["sd_off"],
        psis_mean_unsettled=agreement["mean_unsettled"],
        psis_sd_unsettled=agreement["sd_unsettled"],
        psis_mean_unreliable=unreliable["mean"],
        psis_sd_unreliable=unreliable["sd"],
        bound_mean_loose=[
            c["name"] for c in coords if not c["mean_error"] <= rules.bound_mean_tolerance * c["sd"]
        ],
    )
    by_name = {r["name"]: r for r in rows}

    def details(names, key):
        return [(n, by_name[n][key], by_name[n].get(f"psis_{key}")) for n in names[:8]]

    # estimates too unreliable to check q by, where they did not already measure it off
    tails = {
        key: [n for n in unreliable[key] if n not in agreement[f"{key}_off"]]
        for key in ("mean", "sd")
    }
    findings = []  # the worst first: what condemns the means, then what withholds the sds
    if agreement["mean_off"]:
        names = agreement["mean_off"]
        facts = {"names": names, "details": details(names, "mean")}
        findings.append(Finding("psis_means", NOT_TRUSTWORTHY, tuple(names), facts))
    if tails["mean"]:
        facts = _tail_facts(rows, tails["mean"], "mean", tail_threshold)
        findings.append(Finding("psis_mean_tails", NOT_TRUSTWORTHY, (), facts))
    if agreement["sd_off"]:
        names = agreement["sd_off"]
        facts = {"names": names, "details": details(names, "sd")}
        findings.append(Finding("psis_sds", MEANS_ONLY, tuple(names), facts))
    if tails["sd"]:
        facts = _tail_facts(rows, tails["sd"], "sd", tail_threshold)
        findings.append(Finding("psis_sd_tails", MEANS_ONLY, (), facts))
    unsettled = agreement["mean_unsettled"] + agreement["sd_unsettled"]
    if unsettled and not findings:
        facts = {
            "names": list(dict.fromkeys(unsettled)),
            "mean_tolerance": rules.mean_tolerance,
            "sd_tolerance": rules.sd_tolerance,
        }
        findings.append(Finding("psis_unsettled", MEANS_ONLY, (), facts))
    if findings:
        return findings, checks
    measured = [r for r in rows if r.get("psis_sd")]
    facts = {
        "khat": khat,
        "threshold": khat_threshold,
        "elements": len(rows),
        "worst_mean": max(
            (abs(r["mean"] - r["psis_mean"]) / max(r["psis_sd"], r["sd"]) for r in measured),
            default=0.0,
        ),
        "worst_sd": max((abs(r["sd"] / r["psis_sd"] - 1) for r in measured), default=0.0),
        "khat_sd": max(
            (r["psis_khat_sd"] for r in rows if r.get("psis_khat_sd") is not None), default=None
        ),
        "d2": d2,
        "bound_mean": max((c["mean_error"] / c["sd"] for c in coords if c["sd"] > 0), default=0.0),
    }
    return [Finding("self_certified", TRUSTWORTHY, (), facts)], checks


def _label(findings: list[Finding]) -> str:
    label = TRUSTWORTHY
    for f in findings:
        label = worse_label(label, f.allows)
    return label


# ----------------------------------------------------------------------------- modes


def _mode_findings(search: dict, rules: VerdictRules) -> list[Finding]:
    """The rule on modes q never visits (module docstring), from a mode search's dict."""
    missed = search.get("missed") or []
    if not missed:
        return []
    coords = search.get("coordinates") or []
    mean_off = [c["name"] for c in coords if not c["mean_shift"] <= rules.mean_tolerance]
    sd_off = [c["name"] for c in coords if not abs(c["sd_ratio"] - 1.0) <= rules.sd_tolerance]
    worst = max(coords, key=lambda c: c["mean_shift"]) if coords else None
    facts = {
        "starts": search["starts"],
        "ranks": search.get("ranks", 1),
        "missed": missed,
        "share": sum(m["share"] for m in missed),
        "mean_off": mean_off,
        "sd_off": sd_off,
        "worst": worst["name"] if worst else None,
        "worst_shift": worst["mean_shift"] if worst else 0.0,
        "sd_tolerance": rules.sd_tolerance,
    }
    if mean_off:
        return [Finding("missed_modes", NOT_TRUSTWORTHY, tuple(mean_off + sd_off), facts)]
    if sd_off:
        return [Finding("missed_modes", MEANS_ONLY, tuple(sd_off), facts)]
    return [Finding("missed_modes", TRUSTWORTHY, (), facts)]


# ----------------------------------------------------------------------------- the verdict


def decide(
    rows: list[dict],
    *,
    converged: bool,
    khat: float,
    khat_threshold: float,
    d2: float,
    importance_ess: float,
    draws: int,
    coordinates: list[dict],
    has_reference: bool,
    rules: VerdictRules | None = None,
    mode_search: dict | None = None,
) -> Verdict:
    """Apply the rules of this module.

    Parameters
    ----------
    rows
        :func:`ppl_models.vi.compare.compare`'s entries.
    coordinates
        One dict per unconstrained coordinate: ``name``, ``site``, ``sd`` (q's sd),
        ``mean_error`` and ``sd_error`` (its VIABEL bounds).
    has_reference
        Whether a reference was given (elements it lacks are judged without one).
    mode_search
        :meth:`ppl_models.vi.modes.ModeSearch.to_dict` (None: no search was run).
    """
    rules = rules or VerdictRules()
    # the rules without a reference, for whichever elements need them
    judge = functools.partial(
        _self_findings,
        khat=khat,
        khat_threshold=khat_threshold,
        d2=d2,
        importance_ess=importance_ess,
        draws=draws,
        rules=rules,
    )
    checks: dict = {}
    compared = [r for r in rows if r.get("ref_mean") is not None]
    if has_reference and compared:
        findings, checks["reference"] = _reference_findings(compared, draws, rules)
        findings += _uncompared_findings(
            rows, compared, coordinates, judge, khat, khat_threshold, rules, checks
        )
        findings += _noisy_reference_findings(compared, coordinates, judge, rules, checks)
    else:
        findings = [Finding("no_shared_element")] if has_reference else []
        self_findings, checks["self"] = judge(rows, coordinates)
        findings += self_findings
    if mode_search is not None:
        findings = _mode_findings(mode_search, rules) + findings
    caps = []  # the "always" rules, stated first
    if not converged:
        caps.append(Finding("not_converged", MEANS_ONLY if compared else NOT_TRUSTWORTHY))
    if khat is None or not (khat <= khat_threshold):
        facts = {"khat": khat, "threshold": khat_threshold}
        caps.append(Finding("khat_cap", MEANS_ONLY if compared else NOT_TRUSTWORTHY, (), facts))
    findings = caps + findings
    checks.update(converged=bool(converged), khat=khat, khat_threshold=khat_threshold, d2=d2)
    return Verdict(
        label=_label(findings),
        reasons=verdict_text.sentences(findings),
        rules=rules.describe(),
        checks=_plain(checks),
        # the elements the modes put off come last, after those each element's checks put off
        off=list(
            dict.fromkeys(
                name
                for f in sorted(findings, key=lambda f: f.kind == "missed_modes")
                for name in f.off
            )
        ),
        findings=findings,
    )


def _uncompared_findings(rows, compared, coordinates, judge, khat, khat_threshold, rules, checks):
    """Latent sites the reference lacks (a non-centred model's raw parameters, say) cannot be
    compared: what q's own draws measure about them still counts, but a failure to certify
    them does not overrule the reference's checks of everything else."""
    compared_sites = {r["site"] for r in compared}
    sites = sorted(
        {r["site"] for r in rows if r["kind"] == "latent" and r["site"] not in compared_sites}
    )
    if not sites:
        return []
    sub_rows = [r for r in rows if r["site"] in sites]
    sub_coords = [c for c in coordinates if c["site"] in sites]
    self_findings, checks["self"] = judge(sub_rows, sub_coords)
    mean_off, sd_off = _psis_discrepancies(sub_rows, rules)
    if khat is not None and khat <= khat_threshold and (mean_off or sd_off):
        facts = {"sites": sites, "names": mean_off + sd_off, "means": bool(mean_off)}
        allows = NOT_TRUSTWORTHY if mean_off else MEANS_ONLY
        return [Finding("uncompared_off", allows, tuple(mean_off + sd_off), facts)]
    if _label(self_findings) != TRUSTWORTHY:
        return [Finding("uncompared_uncertified", facts={"sites": sites, "why": self_findings[0]})]
    return [Finding("uncompared_certified", facts={"sites": sites})]


def _noisy_reference_findings(compared, coordinates, judge, rules, checks):
    """Elements within their bands only thanks to the Monte Carlo allowance (a reference too
    short to resolve the tolerance, or a measured error between the tolerance and the tolerance
    plus the allowance) are judged as if there were no reference: noise must not turn "not
    measured" into "certified"."""
    within = {
        name: c
        for name, c in checks["reference"].items()
        if not c["certified"] and c["mean_ok"] and c["sd_ok"] and c["ks_ok"]
    }
    if not within:
        return []
    sub_rows = [r for r in compared if r["name"] in within]
    sites = {r["site"] for r in sub_rows}
    sub_coords = [c for c in coordinates if c["site"] in sites]
    self_findings, checks["noisy_reference"] = judge(sub_rows, sub_coords)
    findings = []
    short = [n for n, c in within.items() if not c["resolved"]]
    marginal = [n for n, c in within.items() if c["resolved"]]
    if short:
        facts = {
            "names": short,
            "mean_tolerance": rules.mean_tolerance,
            "max_r_hat": rules.max_r_hat,
        }
        findings.append(Finding("reference_unresolved", facts=facts))
    if marginal:
        facts = {
            "names": marginal,
            "mean_tolerance": rules.mean_tolerance,
            "sd_tolerance": rules.sd_tolerance,
        }
        findings.append(Finding("reference_marginal", facts=facts))
    label = _label(self_findings)
    if label != TRUSTWORTHY:
        # what q measures off condemns; what it merely cannot certify leaves the means
        measured_off = any(f.off for f in self_findings)
        cap = label if measured_off and label == NOT_TRUSTWORTHY else MEANS_ONLY
        findings += [dataclasses.replace(f, allows=cap) for f in self_findings]
    return findings


def _plain(obj):
    """Checks as JSON-ready values (NumPy scalars and booleans to Python ones)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj
