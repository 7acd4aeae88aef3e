r"""The verdict: can the variational posterior be used in place of the posterior?

Three answers:

``trustworthy``
    q's means, sds and marginal shapes can be used as the posterior's.
``means-only``
    q's means can be used; its uncertainty (sds, intervals, tails) cannot.
``not-trustworthy``
    not even q's means can be used.

The rules (defaults in :class:`VerdictRules`; every threshold is stated in the report):

**Always.** A fit that did not meet its convergence rule is never ``trustworthy``. A PSIS
k-hat above the sample-size threshold :math:`\min(1 - 1/\log_{10} S, 0.7)` means q misses
posterior mass (Vehtari et al. 2024): never ``trustworthy``.

**With a reference** (per compared element, :math:`m, s` = mean, sd; :math:`r` = reference):

- mean: :math:`|m_q - m_r| / s_r \le 0.1 + 2\sqrt{e_r(m)^2 + e_q(m)^2}/s_r`;
- sd: :math:`|s_q/s_r - 1| \le 0.1 + 2\sqrt{(e_r(s)/s_r)^2 + (e_q(s)/s_q)^2}`, where
  :math:`e` is a Monte Carlo standard error;
- shape: :math:`\mathrm{KS} \le 0.05 + 1.36\sqrt{1/S + 1/\mathrm{ESS}_r}` (the 5% critical
  value of the two-sample KS distance for samples of those effective sizes).

The Monte Carlo terms use the reference's own MCSE and ESS (ArviZ, chains accounted for), so a
correct fit is not condemned by the noise of a short NUTS run, while an error larger than the
core tolerance plus the noise is always caught. Any mean off -> ``not-trustworthy``; else any
sd or shape off -> ``means-only``; else ``trustworthy`` (subject to the "always" rules:
non-convergence or a high k-hat cap a reference-validated fit at ``means-only``). Latent sites
without reference draws (a non-centred model's raw parameters, when the reference holds the
derived ones) are summarised, not compared: when k-hat is within its threshold their
PSIS-corrected means and sds must agree with q's (a mean off -> ``not-trustworthy``, an sd off
-> ``means-only``); when q's own diagnostics cannot certify them the report says so.
The Monte Carlo allowance only keeps noise from being called an error; it never certifies. An
element is certified by the reference only when its measured errors are within the core
tolerances themselves (0.1 sd, 0.1 sd ratio) and the allowance is no larger than they are. An
element within its band only thanks to the allowance (a reference too short to resolve 0.1 sd,
or a measured error between 0.1 sd and 0.1 sd plus the allowance), or compared with reference
chains that disagree (R-hat above 1.01, Vehtari et al. 2021), is judged by q's own
diagnostics instead, and unless they certify it the verdict is at most ``means-only``: a
borderline fit errs towards "not trustworthy", whatever the seed. A reference whose draws of an
element are constant or not finite while q's are not counts that element as off.

**Without a reference** the fit must certify itself, from q's draws alone:

1. converged, and k-hat :math:`\le 0.5` (then :math:`E_q[w^2] < \infty`, so CUBO, :math:`d_2`
   and the bounds are finite and estimable; Huggins et al. 2020), and an importance ESS of at
   least :math:`\max(100, 0.01 S)`; otherwise ``not-trustworthy`` (nothing is certified);
2. means, measured: every element's PSIS-corrected mean (importance sampling is reliable at
   k-hat :math:`\le 0.5`) agrees with q's mean within :math:`0.1\,\hat\sigma + 2\,
   \mathrm{mcse}`; otherwise ``not-trustworthy``;
3. means, guaranteed: for every coordinate :math:`i` of the guide's unconstrained space,
   VIABEL's bound :math:`|\mu_{q,i} - \mu_{\pi,i}| \le 2\sigma_{q,i}\sqrt{e^{d_2}-1}`
   (tightened by :math:`W_2`) is at most :math:`0.25\,\sigma_{q,i}`; otherwise
   ``means-only`` (measured right, not certified);
4. sds: every unconstrained coordinate's sd-error bound (:math:`W_2`) is at most
   :math:`0.5\,\sigma_{q,i}` and every element's sd agrees with its PSIS-corrected sd within
   :math:`0.1 + 2\,\mathrm{mcse}` relative; otherwise ``means-only``; else ``trustworthy``.

So ``trustworthy`` without a reference needs both the measurement and the guarantee.

**Modes q never visits** (with or without a reference): a multi-start mode search
(:mod:`ppl_models.vi.modes`) looks for posterior modes outside q's draws and approximates the
posterior by the mixture of q and their Laplace approximations, each weighted by its estimated
mass. Where that mixture moves an unconstrained coordinate's mean by more than
``mean_tolerance`` of its sd -> ``not-trustworthy``; where it changes an sd by more than
``sd_tolerance`` -> at most ``means-only``. A reference drawn by a sampler that stayed in one
mode (short NUTS chains often do) agrees with q there, so this check is not overruled by one.

k-hat alone is not enough: q = N(mu + delta, 1) for p = N(mu, 1) has normal log weights
(k-hat stays low) but :math:`d_2 = 2\delta^2`, and the bounds and the PSIS-corrected means
expose the shift. No diagnostic computed from q's draws can see posterior mass that q never
visits (a missed mode: there :math:`d_2` and k-hat read as for an exact fit): only the mode
search or a reference can.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

TRUSTWORTHY = "trustworthy"
MEANS_ONLY = "means-only"
NOT_TRUSTWORTHY = "not-trustworthy"
_ORDER = {TRUSTWORTHY: 2, MEANS_ONLY: 1, NOT_TRUSTWORTHY: 0}


@dataclass(frozen=True)
class VerdictRules:
    """Tolerances of the verdict (see the module docstring for how each is used)."""

    mean_tolerance: float = 0.1
    sd_tolerance: float = 0.1
    ks_tolerance: float = 0.05
    mcse_factor: float = 2.0
    ks_critical: float = 1.36
    khat_bounds: float = 0.5
    bound_mean_tolerance: float = 0.25
    bound_sd_tolerance: float = 0.5
    min_ess: float = 100.0
    min_ess_fraction: float = 0.01
    max_r_hat: float = 1.01

    def describe(self) -> list[str]:
        """The rules in words, for the report."""
        f = self.mcse_factor
        return [
            "Never trustworthy when the fit did not meet its convergence rule, or when PSIS "
            "k-hat exceeds the sample-size threshold min(1 - 1/log10 S, 0.7).",
            f"With a reference, per element: |mean_q - mean_ref| / sd_ref <= "
            f"{self.mean_tolerance:g} + {f:g} x (combined MCSE of both means) / sd_ref; "
            f"|sd_q / sd_ref - 1| <= {self.sd_tolerance:g} + {f:g} x (combined relative MCSE "
            f"of both sds); KS <= {self.ks_tolerance:g} + {self.ks_critical:g} x "
            "sqrt(1/S + 1/ESS_ref). A mean outside -> not-trustworthy; an sd or shape outside "
            "-> means-only. The reference's MCSE and ESS come from its own chains (ArviZ). "
            "Latent sites the reference lacks: their PSIS-corrected means and sds must agree "
            "with q's when k-hat is within its threshold. The MCSE allowance keeps noise from "
            "being called an error but never certifies: elements within their bands only "
            "thanks to it (a reference too short to resolve the tolerance, or a measured error "
            f"above the core tolerance) or compared with reference chains whose R-hat exceeds "
            f"{self.max_r_hat:g} are judged by q's own diagnostics instead.",
            f"Without a reference: converged, k-hat "
            f"<= {self.khat_bounds:g} (so E_q[w^2] is finite and d_2 is estimable) and an "
            f"importance ESS >= max({self.min_ess:g}, {self.min_ess_fraction:g} S), else "
            f"not-trustworthy; every PSIS-corrected mean within {self.mean_tolerance:g} sd + "
            f"{f:g} MCSE of q's, else not-trustworthy; trustworthy also needs every "
            f"unconstrained coordinate's VIABEL mean-error bound <= "
            f"{self.bound_mean_tolerance:g} sd_q, sd-error bound (W2) <= "
            f"{self.bound_sd_tolerance:g} sd_q and every PSIS-corrected sd within "
            f"{self.sd_tolerance:g} + {f:g} relative MCSE of q's, else means-only.",
            "With or without a reference: posterior modes that a multi-start L-BFGS search finds "
            "and q never visits are added to q with their Laplace masses; if that moves an "
            f"unconstrained coordinate's mean by more than {self.mean_tolerance:g} sd -> "
            f"not-trustworthy, if it changes an sd by more than {self.sd_tolerance:g} relative "
            "-> at most means-only.",
        ]


@dataclass
class Verdict:
    """The label, the reasons in words (naming the parameters that are off), and the checks."""

    label: str
    reasons: list[str]
    rules: list[str]
    checks: dict = field(default_factory=dict)
    off: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "reasons": self.reasons,
            "rules": self.rules,
            "off": self.off,
            "checks": self.checks,
        }


def _worse(a: str, b: str) -> str:
    return a if _ORDER[a] <= _ORDER[b] else b


def _names(items: list[str], limit: int = 8) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


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
        same = ref_sd == 0 and sd == 0 and row["mean"] == row["ref_mean"]
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
    ks_tol = rules.ks_tolerance + rules.ks_critical * math.sqrt(1.0 / draws + 1.0 / ess)
    # The Monte Carlo allowance may not outgrow the tolerance itself: a reference too short to
    # resolve 0.1 sd cannot certify an element, however well q agrees with it.
    # nor can a reference whose chains disagree (R-hat above 1.01, Vehtari et al. 2021): its
    # Monte Carlo errors then mean nothing (chains stuck in different modes, say)
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


def _reference_verdict(rows, draws, rules):
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
    reasons = []
    if degenerate:
        reasons.append(
            f"The reference's draws of {_names(degenerate)} are constant or not finite while "
            "q's are not: the reference cannot judge them, so they count as off (check the "
            "reference: a stuck chain, or draws of another quantity)."
        )
    if bad_mean:
        detail = "; ".join(
            f"{n}: {checked[n][0]['std_mean_error']:+.3g} sd (tolerance "
            f"{checked[n][1]['mean_tolerance']:.3g})"
            for n in bad_mean[:8]
        )
        reasons.append(f"The means of {_names(bad_mean)} are off the reference: {detail}.")
    if bad_sd:
        detail = "; ".join(
            f"{n}: sd ratio {checked[n][0]['sd_ratio']:.3g} (allowed 1 ± "
            f"{checked[n][1]['sd_tolerance']:.3g})"
            for n in bad_sd[:8]
        )
        reasons.append(f"The sds of {_names(bad_sd)} are off the reference: {detail}.")
    if bad_ks:
        detail = "; ".join(
            f"{n}: KS {checked[n][0]['ks']:.3g} (allowed {checked[n][1]['ks_tolerance']:.3g})"
            for n in bad_ks[:8]
        )
        reasons.append(
            f"The marginal shapes of {_names(bad_ks)} differ from the reference: {detail}."
        )
    if bad_mean or degenerate:
        label = NOT_TRUSTWORTHY
    elif bad_sd or bad_ks:
        label = MEANS_ONLY
    else:
        label = TRUSTWORTHY
        summary = f"All {len(checked)} compared elements are within their bands"
        if measured:
            worst = max(measured.values(), key=lambda rc: abs(rc[0]["std_mean_error"]))[0]
            worst_sd = max(measured.values(), key=lambda rc: abs(rc[0]["sd_ratio"] - 1))[0]
            summary += (
                f": the largest standardised mean error is {worst['std_mean_error']:+.3g} "
                f"({worst['name']}), the sd ratio furthest from 1 is {worst_sd['sd_ratio']:.3g} "
                f"({worst_sd['name']})"
            )
        reasons.append(summary + ".")
    off = list(dict.fromkeys(degenerate + bad_mean + bad_sd + bad_ks))
    return label, reasons, off, {n: c for n, (_, c) in checked.items()}


def _psis_discrepancies(rows, rules: VerdictRules) -> tuple[list[str], list[str]]:
    """Elements whose PSIS-corrected mean or sd differs from q's beyond the tolerances."""
    f = rules.mcse_factor
    mean_off, sd_off = [], []
    for r in rows:
        pm, ps = r.get("psis_mean"), r.get("psis_sd")
        if pm is None or ps is None:
            continue
        scale = max(ps, r["sd"])
        if scale == 0:  # q and PSIS agree on a constant
            continue
        # written as "not within" so that a NaN anywhere is off, never within
        mean_tol = rules.mean_tolerance * scale + f * (r.get("psis_mcse_mean") or 0)
        if not abs(r["mean"] - pm) <= mean_tol:
            mean_off.append(r["name"])
        sd_tol = rules.sd_tolerance + f * ((r.get("psis_mcse_sd") or 0.0) / ps) if ps > 0 else 0
        if not (ps > 0 and abs(r["sd"] / ps - 1.0) <= sd_tol):
            sd_off.append(r["name"])
    return mean_off, sd_off


def _self_verdict(
    rows, coords, *, khat, khat_threshold, d2, importance_ess, draws, rules
) -> tuple[str, list[str], list[str], dict]:
    """Rules without a reference, on ``rows`` (elements) and ``coords`` (unconstrained
    coordinates with their bounds). The third value names the elements *measured* off
    (PSIS-corrected moments); elements whose bounds are merely too wide are not certified,
    which the reasons say, but are not called off."""
    reasons: list[str] = []
    checks: dict = {}
    min_ess = max(rules.min_ess, rules.min_ess_fraction * draws)
    if khat is None or math.isnan(khat) or khat > rules.khat_bounds:
        k = "n/a" if khat is None else f"{khat:.3g}"
        reasons.append(
            f"Without a reference nothing certifies the fit: k-hat = {k} is above "
            f"{rules.khat_bounds:g}, so E_q[w^2] may be infinite and d_2 and the error bounds "
            "cannot be estimated."
        )
        return NOT_TRUSTWORTHY, reasons, [], checks
    if not importance_ess >= min_ess:  # NaN fails too
        reasons.append(
            f"Without a reference nothing certifies the fit: the importance ESS "
            f"({importance_ess:.0f}) is below {min_ess:.0f}, too few for the importance-"
            "sampling checks."
        )
        return NOT_TRUSTWORTHY, reasons, [], checks
    bad_bound_mean = [
        c["name"] for c in coords if not c["mean_error"] <= rules.bound_mean_tolerance * c["sd"]
    ]
    bad_bound_sd = [
        c["name"] for c in coords if not c["sd_error"] <= rules.bound_sd_tolerance * c["sd"]
    ]
    bad_psis_mean, bad_psis_sd = _psis_discrepancies(rows, rules)
    bad_psis_mean += [r["name"] for r in rows if r.get("psis_mean") is None]
    checks.update(
        bound_mean_off=bad_bound_mean,
        bound_sd_off=bad_bound_sd,
        psis_mean_off=bad_psis_mean,
        psis_sd_off=bad_psis_sd,
    )
    e = math.expm1(d2) if d2 < 700 else math.inf
    if bad_bound_mean:
        worst = max(coords, key=lambda c: c["mean_error"] / c["sd"] if c["sd"] > 0 else math.inf)
        reasons.append(
            f"The mean-error bounds are too wide for {_names(bad_bound_mean)} (unconstrained "
            f"space): d_2 = {d2:.3g} allows a mean error of up to "
            f"{worst['mean_error'] / worst['sd']:.3g} sd ({worst['name']}), above "
            f"{rules.bound_mean_tolerance:g} sd."
        )
    if bad_psis_mean:
        detail = "; ".join(
            f"{r['name']}: q {r['mean']:.4g} vs PSIS {_fmt(r.get('psis_mean'))}"
            for r in rows
            if r["name"] in bad_psis_mean[:8]
        )
        reasons.append(f"Importance sampling moves the means of {_names(bad_psis_mean)}: {detail}.")
    if bad_psis_mean:
        return NOT_TRUSTWORTHY, reasons, bad_psis_mean, checks
    if bad_bound_mean:
        # measured (PSIS, k-hat <= 0.5) agreement without a certificate: the means only
        reasons.append(
            "Importance sampling (k-hat <= "
            f"{rules.khat_bounds:g}) finds q's means right within {rules.mean_tolerance:g} sd, "
            "so the means can be used; with the bounds this loose, the sds cannot be certified."
        )
        return MEANS_ONLY, reasons, bad_psis_sd, checks
    if bad_bound_sd:
        worst = max(coords, key=lambda c: c["sd_error"] / c["sd"] if c["sd"] > 0 else math.inf)
        reasons.append(
            f"The means are certified (d_2 = {d2:.3g}, e^d2 - 1 = {e:.3g}; every mean-error "
            f"bound <= {rules.bound_mean_tolerance:g} sd), but the sds are not: the W2 bound "
            f"allows an sd error of up to {worst['sd_error'] / worst['sd']:.3g} sd "
            f"({_names(bad_bound_sd)}), above {rules.bound_sd_tolerance:g} sd."
        )
    if bad_psis_sd:
        detail = "; ".join(
            f"{r['name']}: q {r['sd']:.4g} vs PSIS {_fmt(r.get('psis_sd'))}"
            for r in rows
            if r["name"] in bad_psis_sd[:8]
        )
        reasons.append(f"Importance sampling changes the sds of {_names(bad_psis_sd)}: {detail}.")
    if bad_bound_sd or bad_psis_sd:
        return MEANS_ONLY, reasons, bad_psis_sd, checks
    worst_m = max((c["mean_error"] / c["sd"] for c in coords if c["sd"] > 0), default=0.0)
    worst_s = max((c["sd_error"] / c["sd"] for c in coords if c["sd"] > 0), default=0.0)
    reasons.append(
        f"Where q puts mass, its own draws certify it: k-hat = {khat:.3g}, d_2 = {d2:.3g}; "
        "the error bounds "
        f"allow at most {worst_m:.3g} sd of mean error and {worst_s:.3g} sd of sd error in the "
        "guide's unconstrained space, and PSIS-corrected means and sds agree with q's."
    )
    return TRUSTWORTHY, reasons, [], checks


def _mode_verdict(search: dict, rules: VerdictRules) -> tuple[str, list[str], list[str]]:
    """The rule on modes q never visits (module docstring), from a mode search's dict."""
    missed = search.get("missed") or []
    if not missed:
        return TRUSTWORTHY, [], []
    coords = search.get("coordinates") or []
    mean_off = [c["name"] for c in coords if not c["mean_shift"] <= rules.mean_tolerance]
    sd_off = [c["name"] for c in coords if not abs(c["sd_ratio"] - 1.0) <= rules.sd_tolerance]
    share = sum(m["share"] for m in missed)
    where = "; ".join(
        ", ".join(f"{k} = {v:.3g}" for k, v in list(m["location"].items())[:4])
        + (" ..." if len(m["location"]) > 4 else "")
        + f" ({m['share']:.2%})"
        for m in missed[:3]
    )
    found = (
        f"A mode search ({search['starts']} L-BFGS starts) found {len(missed)} posterior "
        f"mode{'s' if len(missed) > 1 else ''} that q never visits, holding an estimated "
        f"{share:.2%} of the posterior mass (Laplace approximation); unconstrained space: "
        f"{where}."
    )
    if not (mean_off or sd_off):
        return TRUSTWORTHY, [f"{found} Too little mass to move a mean or sd beyond tolerance."], []
    worst = max(coords, key=lambda c: c["mean_shift"])
    effect = (
        f" With it the means of {_names(mean_off)} move by up to {worst['mean_shift']:.3g} sd "
        f"({worst['name']}): q's means and sds describe one mode, not the posterior; fit a guide "
        "that can hold every mode, or reparametrise the model to remove the symmetry."
        if mean_off
        else f" With it the sds of {_names(sd_off)} change by more than "
        f"{rules.sd_tolerance:g} relative: q's uncertainty misses that mass."
    )
    return (NOT_TRUSTWORTHY if mean_off else MEANS_ONLY), [found + effect], mean_off + sd_off


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
        _self_verdict,
        khat=khat,
        khat_threshold=khat_threshold,
        d2=d2,
        importance_ess=importance_ess,
        draws=draws,
        rules=rules,
    )
    reasons: list[str] = []
    off: list[str] = []
    checks: dict = {}
    compared = [r for r in rows if r.get("ref_mean") is not None]
    compared_sites = {r["site"] for r in compared}
    if has_reference and compared:
        label, why, bad, checks["reference"] = _reference_verdict(compared, draws, rules)
        reasons += why
        off += bad
        uncompared_latent = {
            r["site"] for r in rows if r["kind"] == "latent" and r["site"] not in compared_sites
        }
        if uncompared_latent:
            # Sites the reference lacks (a non-centred model's raw parameters, say) cannot be
            # compared; what q's own draws measure about them still counts, but a failure to
            # certify them does not overrule the reference's checks of everything else.
            sub_rows = [r for r in rows if r["site"] in uncompared_latent]
            sub_coords = [c for c in coordinates if c["site"] in uncompared_latent]
            l2, why2, bad2, checks["self"] = judge(sub_rows, sub_coords)
            names = _names(sorted(uncompared_latent))
            mean_off, sd_off = _psis_discrepancies(sub_rows, rules)
            if khat is not None and khat <= khat_threshold and (mean_off or sd_off):
                reasons.append(
                    f"The reference has no draws of {names}; importance sampling from q "
                    f"finds {_names(mean_off + sd_off)} off (PSIS-corrected "
                    f"{'means' if mean_off else 'sds'} differ from q's)."
                )
                off += mean_off + sd_off
                label = _worse(label, NOT_TRUSTWORTHY if mean_off else MEANS_ONLY)
            elif l2 != TRUSTWORTHY:
                reasons.append(
                    f"The reference has no draws of {names}: they are summarised but neither "
                    f"compared nor certified by q's own diagnostics ({why2[0] if why2 else ''})"
                )
            else:
                reasons.append(
                    f"The reference has no draws of {names}; q's own diagnostics certify them."
                )
        # elements within their bands only thanks to the Monte Carlo allowance: a reference
        # too short to resolve the tolerance, or a measured error between the tolerance and
        # the tolerance plus the allowance
        within = {
            name: c
            for name, c in checks["reference"].items()
            if not c["certified"] and c["mean_ok"] and c["sd_ok"] and c["ks_ok"]
        }
        if within:
            # Judge what the reference cannot certify as if it had no reference: noise must not
            # turn "not measured" into "certified".
            sub_rows = [r for r in compared if r["name"] in within]
            sites = {r["site"] for r in sub_rows}
            sub_coords = [c for c in coordinates if c["site"] in sites]
            l3, why3, bad3, checks["noisy_reference"] = judge(sub_rows, sub_coords)
            short = [n for n, c in within.items() if not c["resolved"]]
            marginal = [n for n, c in within.items() if c["resolved"]]
            if short:
                reasons.append(
                    f"The reference cannot resolve {rules.mean_tolerance:g} sd for "
                    f"{_names(short)} (its Monte Carlo error allows more, or its chains "
                    f"disagree: R-hat above {rules.max_r_hat:g}): a longer, converged "
                    "reference run would settle them; meanwhile q's own diagnostics judge them."
                )
            if marginal:
                reasons.append(
                    f"The measured errors of {_names(marginal)} exceed {rules.mean_tolerance:g} "
                    f"sd (means) or {rules.sd_tolerance:g} (sd ratios) but are within the "
                    "Monte Carlo error of the comparison: not certified; more draws or a "
                    "longer reference would settle them; meanwhile q's own diagnostics judge "
                    "them."
                )
            if l3 != TRUSTWORTHY:
                reasons += why3
                off += bad3
                label = _worse(label, l3 if bad3 and l3 == NOT_TRUSTWORTHY else MEANS_ONLY)
    else:
        if has_reference:
            reasons.append("The reference shares no element with the model: nothing compared.")
        label, why, off, checks["self"] = judge(rows, coordinates)
        reasons += why
    if mode_search is not None:
        modes_label, why_modes, modes_off = _mode_verdict(mode_search, rules)
        label = _worse(label, modes_label)
        reasons[:0] = why_modes
        off += modes_off
    cap = TRUSTWORTHY
    if khat is None or not (khat <= khat_threshold):
        reasons.insert(
            0,
            f"PSIS k-hat = {_fmt(khat)} is above the threshold {khat_threshold:.3g}: q misses "
            "posterior mass (tails or dependence it cannot represent), so its uncertainty "
            "statements are not reliable.",
        )
        cap = MEANS_ONLY if compared else NOT_TRUSTWORTHY
    if not converged:
        reasons.insert(
            0,
            "The optimisation did not meet its convergence rule: the guide may still be moving.",
        )
        cap = _worse(cap, MEANS_ONLY if compared else NOT_TRUSTWORTHY)
    label = _worse(label, cap)
    checks.update(converged=bool(converged), khat=khat, khat_threshold=khat_threshold, d2=d2)
    return Verdict(
        label=label,
        reasons=reasons,
        rules=rules.describe(),
        checks=_plain(checks),
        off=list(dict.fromkeys(off)),
    )


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
