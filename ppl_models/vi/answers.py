r"""The answers of the ladder's rungs that are not a guide: PSIS-resampled draws and NUTS draws,
each diagnosed as a guide's draws are, with a verdict.

:func:`psis_diagnosis` reweights a guide's :math:`S` draws by their Pareto-smoothed importance
weights :math:`\tilde w_s`: each element's mean and sd are the self-normalised estimates
:math:`\hat\mu = \sum_s \tilde w_s z_s / \sum_s \tilde w_s` (and likewise the second moment),
with their Monte Carlo errors. :func:`nuts_diagnosis` summarises NUTS chains (split R-hat, bulk
and tail ESS, divergences) and judges them by :func:`mcmc_verdict` under :func:`mcmc_rules`.
:func:`json_number` and :func:`json_plain` make the records JSON-safe.
"""

from __future__ import annotations

import math

import numpy as np

from .. import diagnostics
from .compare import compare
from .verdict_text import names

# the verdict labels (as ppl_models.vi.verdict names them)
TRUSTWORTHY, MEANS_ONLY, NOT_TRUSTWORTHY = "trustworthy", "means-only", "not-trustworthy"
PSIS_DRAWS = 10_000  # the most resampled draws kept as the PSIS answer's posterior


def json_number(x):
    """A number for JSON: a float, or None where it is missing or not finite."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def json_plain(obj):
    """``obj`` with numpy scalars made Python's and non-finite floats None, for JSON."""
    if isinstance(obj, dict):
        return {str(k): json_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def psis_diagnosis(diagnosis, *, draws: int = PSIS_DRAWS, seed: int = 0):
    r"""The diagnosis of ``diagnosis``'s guide draws resampled by their Pareto-smoothed
    importance weights: the PSIS answer of the ladder's second rung.

    Each element's mean and sd are the PSIS estimates from all :math:`S` draws, with their Monte
    Carlo errors (:func:`~ppl_models.importance.weighted_moments`), and its ESS the importance
    ESS; the HDI, the KS and Wasserstein distances to a reference come from up to ``draws``
    kept draws resampled with replacement in proportion to their smoothed weights (the KS
    tolerance counts the importance ESS, not the resampled copies). The verdict
    (:func:`~ppl_models.vi.verdict.decide`) is applied to these estimates with the guide's own
    facts: its convergence, k-hat (against the sample-size threshold), importance ESS,
    :math:`d_2`, error bounds and mode search.

    Returns
    -------
    Diagnosis
        ``posterior`` holds the resampled draws; ``summary["psis_resampling"]`` says how.
    """
    from .diagnose import Diagnosis
    from .verdict import decide

    s, idata = diagnosis.summary, diagnosis.idata
    stats, posterior = idata["sample_stats"], idata["posterior"]
    log_w = (stats["log_joint"] - stats["log_q"]).values.ravel()
    smoothed, _ = diagnostics.psis_smooth(np.where(np.isfinite(log_w), log_w, -np.inf))
    weights = np.exp(smoothed - smoothed.max())
    weights /= weights.sum()
    rng = np.random.default_rng(seed)
    n = min(draws, len(weights)) // 4 * 4
    index = rng.choice(len(weights), size=n, replace=True, p=weights)
    values = {
        name: np.asarray(posterior[name].values).reshape(-1, *posterior[name].shape[2:])[index]
        for name in posterior.data_vars
    }
    kinds = {r["site"]: r["kind"] for r in s["parameters"]}
    ess = float(s["importance_ess"])
    reference = diagnosis.reference
    rows = compare(values, kinds, None, reference)
    by_name = {r["name"]: r for r in s["parameters"]}
    for row in rows:
        q = by_name.get(row["name"]) or {}
        mean, sd = q.get("psis_mean"), q.get("psis_sd")
        if mean is None or sd is None:
            continue
        row.update(
            mean=mean,
            sd=sd,
            mcse_mean=q.get("psis_mcse_mean"),
            mcse_sd=q.get("psis_mcse_sd"),
            ess_bulk=ess,
            psis_mean=mean,
            psis_sd=sd,
            psis_mcse_mean=q.get("psis_mcse_mean"),
            psis_mcse_sd=q.get("psis_mcse_sd"),
            psis_khat_mean=q.get("psis_khat_mean"),
            psis_khat_sd=q.get("psis_khat_sd"),
            q_khat_mean=q.get("q_khat_mean"),
            q_khat_sd=q.get("q_khat_sd"),
        )
        if row.get("ref_mean") is not None and row["ref_sd"]:
            row.update(
                std_mean_error=(mean - row["ref_mean"]) / row["ref_sd"],
                sd_ratio=sd / row["ref_sd"],
                ks_draws=int(max(1, min(ess, n))),
            )
    coords = [
        {
            **c,
            "mean_error": math.inf if c.get("mean_error") is None else c["mean_error"],
            "sd_error": math.inf if c.get("sd_error") is None else c["sd_error"],
        }
        for c in s.get("error_bounds_per_coordinate") or []
    ]
    verdict = decide(
        rows,
        converged=bool(s.get("converged")),
        khat=s.get("psis_khat"),
        khat_threshold=s["psis_khat_threshold"],
        d2=s["d2"] if s.get("d2") is not None else math.inf,
        importance_ess=ess,
        draws=s["draws"],
        coordinates=coords,
        has_reference=reference is not None,
        mode_search=s.get("mode_search"),
    )
    resampling = {
        "draws": n,
        "from_draws": len(weights),
        "importance_ess": ess,
        "khat": s.get("psis_khat"),
        "khat_threshold": s["psis_khat_threshold"],
    }
    summary = dict(s)
    summary.update(
        guide=f"{s.get('guide')} + PSIS",
        parameters=[
            {k: json_number(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows
        ],
        verdict=verdict.label,
        verdict_reasons=verdict.reasons,
        verdict_rules=verdict.rules,
        verdict_off=verdict.off,
        verdict_checks=verdict.checks,
        psis_resampling=resampling,
        answer={
            "kind": "psis",
            "words": (
                f"{n:,} draws resampled with replacement from {len(weights):,} draws of the "
                f"{s.get('guide')} guide by their Pareto-smoothed importance weights"
            ),
        },
        notes=[
            *s.get("notes", []),
            f"The answer is the guide's draws corrected by Pareto-smoothed importance sampling "
            f"(k-hat {s.get('psis_khat'):.2f}, within the threshold "
            f"{s['psis_khat_threshold']:.2g}): means and sds are the PSIS estimates from all "
            f"{s['draws']:,} draws, with their Monte Carlo errors (importance ESS {ess:,.0f}); "
            f"posterior.nc holds {n:,} draws resampled by the smoothed weights (with "
            "replacement: copies repeat), from which the intervals and the distances to a "
            "reference come.",
        ],
    )
    groups = {
        "posterior": {k: v.reshape(4, -1, *v.shape[1:]) for k, v in values.items()},
        "sample_stats": {
            k: np.asarray(stats[k].values).ravel()[index].reshape(4, -1)
            for k in ("log_joint", "log_q")
        },
    }
    if "importance" in idata.groups():
        imp = idata["importance"]
        groups["importance"] = {k: np.asarray(imp[k].values) for k in imp.data_vars}
    if reference is not None:
        groups["reference_posterior"] = dict(reference.draws)
    return Diagnosis(
        summary=summary,
        idata=diagnostics.from_dict(**groups),
        fit=diagnosis.fit,
        reference=reference,
    )


# ----------------------------------------------------------------------------- NUTS rung


def nuts_diagnosis(base, draws, reference):
    """The diagnosis of a NUTS run (:class:`~ppl_models.vi.neutra.NutsDraws`): every element's
    mean, sd, HDI, Monte Carlo errors, bulk and tail ESS and R-hat from the chains (ArviZ), the
    comparison with a reference, and a verdict (:func:`mcmc_verdict`). ``base`` is the
    preconditioner's diagnosis, whose facts (k-hat, bounds) the summary keeps beside the
    chains'; ``summary["mcmc"]`` holds the checks."""
    from .diagnose import Diagnosis
    from .references import match_sites

    values = draws.values
    c, n = draws.run.chains, draws.run.kept
    flat = {k: v.reshape(c * n, *v.shape[2:]) for k, v in values.items()}
    ref = None
    if reference is not None:
        ref = match_sites(reference, {k: tuple(v.shape[1:]) for k, v in flat.items()})
    rows = compare(flat, draws.kinds, None, ref) if n else []
    for row in rows:
        sm = draws.summaries.get(row["name"]) or {}
        ess = [e for e in (sm.get("ess_bulk"), sm.get("ess_tail")) if e and math.isfinite(e)]
        row.update(
            mcse_mean=json_number(sm.get("mcse_mean")),
            mcse_sd=json_number(sm.get("mcse_sd")),
            ess_bulk=json_number(sm.get("ess_bulk")),
            ess_tail=json_number(sm.get("ess_tail")),
            r_hat=json_number(sm.get("r_hat")),
        )
        if row.get("ks") is not None:
            row["ks_draws"] = int(max(1, min(ess))) if ess else c * n
    label, reasons, off = mcmc_verdict(rows, draws.checks)
    summary = dict(base.summary)
    summary.update(
        guide=f"NeuTra NUTS ({base.summary.get('guide')})",
        parameters=[
            {k: json_number(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows
        ],
        verdict=label,
        verdict_reasons=reasons,
        verdict_rules=mcmc_rules(),
        verdict_off=off,
        verdict_checks={"mcmc": json_plain(draws.checks)},
        mcmc=json_plain(draws.checks),
        draws=int(c * n),
        draws_kept=int(c * n),
        reference=None if ref is None else ref.source,
        reference_sites=[] if ref is None else list(ref.draws),
        latent_sites=[k for k, kind in draws.kinds.items() if kind == "latent"],
        deterministic_sites=[k for k, kind in draws.kinds.items() if kind == "deterministic"],
        site_shapes={k: list(v.shape[1:]) for k, v in flat.items()},
        answer={
            "kind": "nuts",
            "words": f"{c} NUTS chains of {n:,} draws after {draws.run.warmup} warm-up "
            f"iterations, preconditioned by the {base.summary.get('guide')} guide",
        },
        notes=[*base.summary.get("notes", []), *draws.notes],
    )
    summary["timings"] = dict(summary.get("timings") or {}) | {
        "nuts_warmup": draws.run.warmup_seconds,
        "nuts_sampling": draws.run.sampling_seconds,
    }
    groups = {
        "posterior": values,
        "sample_stats": {
            "diverging": draws.run.diverging,
            "tree_depth": draws.run.tree_depth,
            "n_steps": draws.run.steps,
            "acceptance_rate": draws.run.accept,
        },
    }
    if ref is not None:
        groups["reference_posterior"] = dict(ref.draws)
    return Diagnosis(
        summary=summary, idata=diagnostics.from_dict(**groups), fit=base.fit, reference=ref
    )


def mcmc_rules() -> list[str]:
    """The NUTS rung's rules in words."""
    from .neutra import MAX_R_HAT, MIN_ESS

    return [
        f"NUTS's draws are trustworthy only if every element's rank-normalised split R-hat is "
        f"at most {MAX_R_HAT} (the chains agree), its bulk and tail ESS are at least "
        f"{MIN_ESS:g}, and no transition diverged after warm-up (Vehtari et al. 2021).",
        "Those checks work on ranks, so the tails are checked too: where an element's squared "
        "deviations have a Pareto k-hat above the sample-size threshold min(1 - 1/log10 S, 0.7), "
        "the draws cannot estimate its sd (means only), and where half that k-hat (its own "
        "tails') is, its mean (not trustworthy) (Vehtari et al. 2024). Between 0.5 and that "
        "threshold its sd's Monte Carlo error is a lower bound, which the verdict says.",
        "With a reference, each element's mean must lie within 0.1 reference sd plus twice "
        "the Monte Carlo error of both sides (else not trustworthy), and its sd and marginal "
        "shape within their bands (else means only), the bands of the variational verdict.",
    ]


def mcmc_verdict(rows: list[dict], checks: dict) -> tuple[str, list[str], list[str]]:
    """The NUTS rung's verdict: ``not-trustworthy`` unless the chains' own checks hold; then,
    against a reference, the variational verdict's bands
    (:func:`~ppl_models.vi.verdict.reference_checks`) with the chains' Monte Carlo errors."""
    from .verdict import VerdictRules, reference_checks, worse_label

    if not checks.get("passed"):
        failed = checks.get("failed") or ["the checks did not run"]
        return (
            NOT_TRUSTWORTHY,
            [
                "NUTS's own checks fail, so its draws are not trustworthy: "
                + "; ".join(failed)
                + "."
            ],
            [],
        )
    rules = VerdictRules()
    held = (
        f"NUTS's own checks hold: {checks['chains']} chains, split R-hat at most "
        f"{checks['max_r_hat']:.3f}, bulk ESS at least {checks['min_ess_bulk']:.0f}, tail ESS "
        f"at least {checks['min_ess_tail']:.0f}, no divergent transition."
    )
    label, reasons, off = TRUSTWORTHY, [held], []
    no_means, no_sds = checks.get("unreliable_means") or [], checks.get("unreliable_sds") or []
    if no_means or no_sds:
        tails = (
            f"Pareto k-hat of the squared deviations up to {checks['max_sd_tail_khat']:.2f}; an "
            f"sd needs less than {checks['estimable_khat_limit']:.2f}, a mean half of it, from "
            f"{checks['chains'] * checks['draws_per_chain']:,} draws"
        )
    if no_means:
        label = NOT_TRUSTWORTHY
        reasons.append(
            f"The draws cannot estimate the means of {names(no_means)}: their tails are too "
            f"heavy ({tails}), as a Cauchy's are, and more draws do not cure a tail. A more "
            "informative prior, or a reparametrisation that lightens the tail, would."
        )
    elif no_sds:
        label = MEANS_ONLY
        reasons.append(
            f"The sds of {names(no_sds)} cannot be estimated from these draws ({tails}): an sd "
            "computed from them may be far from the posterior's, and only their means and "
            "quantiles are certified. More draws do not cure a tail; a more informative prior, "
            "or a reparametrisation that lightens it, would."
        )
    elif checks.get("heavy_tails"):
        reasons.append(_heavy_tails_reason(checks))
    mean_off, sd_off = [], []
    compared = 0
    for row in rows:
        c = reference_checks(row, row.get("ks_draws") or 1, rules)
        if c is None:
            continue
        compared += 1
        if not c["mean_ok"]:
            mean_off.append(row["name"])
        elif not (c["sd_ok"] and c["ks_ok"]):
            sd_off.append(row["name"])
    if mean_off:
        label = NOT_TRUSTWORTHY
        reasons.append(f"The means of {', '.join(mean_off[:8])} are off the reference.")
    if sd_off:
        label = worse_label(label, MEANS_ONLY)
        reasons.append(
            f"The sds or marginal shapes of {', '.join(sd_off[:8])} are off the reference."
        )
    if compared and not (mean_off or sd_off):
        reasons.append(f"All {compared} compared elements agree with the reference.")
    off = mean_off + sd_off
    if label != TRUSTWORTHY:  # what decided it first, then the checks that held
        reasons = [*reasons[1:], held]
    return label, reasons, off


def _heavy_tails_reason(checks: dict) -> str:
    """What the sds of ``checks["heavy_tails"]`` lack (:mod:`ppl_models.vi.neutra`)."""
    heavy = checks["heavy_tails"]
    return (
        f"The sd{'s' if len(heavy) > 1 else ''} of {names(heavy)} "
        f"rest{'' if len(heavy) > 1 else 's'} on a "
        f"tail too heavy for its Monte Carlo error to be known (Pareto k-hat of the squared "
        f"deviations {checks['max_sd_tail_khat']:.2f}, at least {checks['sd_tail_khat_limit']:.2f}"
        f", after {checks['chains']} x {checks['draws_per_chain']} draws): the reported sd "
        "errors are lower bounds. Means, quantiles and intervals are not affected."
    )


# ----------------------------------------------------------------------------- advice
