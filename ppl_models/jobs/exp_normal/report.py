"""The exponential-normal report: the first screen (the verdict as a badge, one sentence on why,
what to do next, the numbers that matter), the numbers in words, tables and figures, from the
run's files.

Everything here reads ``summary.json`` (and, for the figures, the other saved files), so
``ppl-models report RUN_DIR`` rebuilds the page without refitting.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ... import diagnostics
from ...exp_normal.figures import report_figures
from ...report import (
    Badge,
    Details,
    Figure,
    KeyNumber,
    Num,
    Report,
    Table,
    format_seconds,
    write_report,
)
from ...runs import read_json, read_metrics
from ...vi import advice
from .config import TOLERANCE

ADEQUATE_KL = 0.05  # nats: a guide this close to the exact posterior can stand in for it
FEWER_PARTICLES = 256


def build_report(run_dir: Path, summary: dict) -> Path:
    """Draw the figures from the run's files and write ``report.html``; returns its path."""
    saved = read_json(run_dir / "observations.json")
    x, rate = np.asarray(saved["x"], dtype=np.float64), float(saved["rate"])
    idata = diagnostics.load(run_dir / "posterior.nc")
    metrics = read_metrics(run_dir)
    figures = report_figures(run_dir / "figures", x, rate, summary, idata, metrics)
    report = Report(
        title=f"Exponential-normal model, {summary['guide']} guide: posterior diagnostics",
        verdict=verdict(summary),
        badge=badge(summary),
        next_steps=next_steps(summary),
        key_numbers=key_numbers(summary),
        details=[
            Details("The numbers in words", verdict(summary)),
            *(
                [Details("Rules of the verdict", list(summary["verdict_rules"]))]
                if summary.get("verdict_rules")
                else []
            ),
        ],
        tables=tables(summary),
        figures=[Figure(title, path, caption) for title, path, caption in figures],
    )
    return write_report(run_dir, report)


def fit_cost(s: dict) -> str:
    """What the fit cost and why: every step evaluates the likelihood of every observation under
    every particle, whatever the guide family (at n_obs = 1000 the exponential guide costs what
    the gamma guide costs)."""
    settings = s.get("fit_settings") or {}
    particles, steps = settings.get("particles"), s.get("steps")
    n_obs = (s.get("observations") or {}).get("count")
    if not (particles and steps and n_obs):
        return f"The fit took {format_seconds(s.get('fit_seconds'))}."
    per_step = particles * n_obs
    cheaper = max(1, particles // FEWER_PARTICLES)
    return (
        f"The fit took {format_seconds(s.get('fit_seconds'))}: {steps:,} steps, each evaluating "
        f"the likelihood of {n_obs:,} observations under {particles:,} particles "
        f"({per_step:,} normal log-densities and their gradients). The cost grows with "
        "particles × observations, whatever the guide family"
        + (
            f"; `--particles {FEWER_PARTICLES}` makes each step about {cheaper} times cheaper "
            f"(with {math.sqrt(cheaper):.0f} times the gradient noise)."
            if cheaper > 1
            else "."
        )
    )


def _adequate(s: dict) -> bool:
    return s["kl_at_theta_svi"] < ADEQUATE_KL


def badge(s: dict) -> Badge:
    """The verdict of the generic diagnosis against the exact posterior, and why in one
    sentence: how far the guide is from the exact posterior, and whose fault that is."""
    label = s.get("verdict") or ("trustworthy" if _adequate(s) else "not-trustworthy")
    words, level, meaning = advice.badge_words(label)
    kl, best = s["kl_at_theta_svi"], s["kl_by_family"][s["guide"]]
    family_gap = kl - best < 0.1 * kl + 1e-3
    why = (
        f"The fitted {s['guide']} guide is {Num(kl)} nats from the exact posterior "
        "(KL(q || p)), "
        + (
            "about what its family's best member allows"
            if family_gap
            else f"while its family's best member is {Num(best)} nats away (the optimiser's share)"
        )
        + f"; q's mean is {Num(s['posterior_table']['variational']['mean'])} against the exact "
        f"{Num(s['posterior_table']['exact (closed form)']['mean'])}."
    )
    return Badge(words, level, meaning, why)


def next_steps(s: dict) -> list[str]:
    """Steps from the numbers: a family that holds the posterior, a longer fit, a cheaper one."""
    steps = []
    families = s["kl_by_family"]
    kl, best = s["kl_at_theta_svi"], families[s["guide"]]
    closer = sorted((v, f) for f, v in families.items() if v < best and f != s["guide"])
    if not _adequate(s) and closer:
        exact, first = closer[0]
        steps.append(
            f"Use a family that holds the posterior: `--guide {first}` (its best member is "
            f"{Num(exact)} nats away)"
            + (
                f", or `--guide {closer[1][1]}` ({Num(closer[1][0])} nats)."
                if len(closer) > 1
                else "."
            )
        )
    optimiser_off = (
        s["theta_svi"] is not None and s["theta_rel_error"] > TOLERANCE
    ) or kl - best > max(0.01, 0.1 * best)
    if optimiser_off:
        steps.append(
            f"Run longer (`--steps {2 * s['steps']}`): SVI stopped short of its family's best "
            "member."
        )
    if (s.get("fit_seconds") or 0) > 30 and (s.get("fit_settings") or {}).get(
        "particles", 0
    ) > FEWER_PARTICLES:
        steps.append(
            f"For a quicker fit: `--particles {FEWER_PARTICLES}` (the cost grows with "
            "particles × observations)."
        )
    if not steps:
        steps.append(
            "Nothing to fix: the guide is within "
            f"{ADEQUATE_KL:g} nats of the exact posterior and SVI found its family's best member."
            if _adequate(s)
            else "Nothing SVI can fix: no family here comes closer to the exact posterior."
        )
    return steps


def key_numbers(s: dict) -> list[KeyNumber]:
    """KL to the exact posterior, SVI against the closed-form optimum, k-hat, the evidence gap
    and the time, each linking to where it is explained."""
    kl = s["kl_at_theta_svi"]
    out = [
        KeyNumber(
            "KL(q || p)",
            f"{Num(kl)} nats",
            f"family's best: {Num(s['kl_by_family'][s['guide']])} nats",
            "#what-each-guide-family-costs",
            "good" if _adequate(s) else "bad",
        )
    ]
    if s["theta_svi"] is not None:
        within = s["theta_rel_error"] <= TOLERANCE
        out.append(
            KeyNumber(
                "theta vs theta*",
                f"{100 * s['theta_rel_error']:.2g}% off",
                f"{Num(s['theta_svi'], digits=4)} vs {Num(s['theta_star'], digits=4)} "
                f"(target {100 * TOLERANCE:g}%)",
                "#numbers",
                "good" if within else "bad",
            )
        )
    k, thr = s["psis_khat"], s["psis_khat_threshold"]
    k_value = "−∞" if k is None else Num(k, digits=2)
    k_level = "good" if k is None or k <= 0.5 else ("warn" if k <= thr else "bad")
    out.append(KeyNumber("PSIS k-hat", k_value, f"threshold {thr:.2g}", "#numbers", k_level))
    gap = s["log_evidence_exact"] - s["elbo_at_svi"]
    out.append(
        KeyNumber(
            "ELBO gap to log p(x)",
            f"{Num(gap)} nats",
            f"log p(x) = {Num(s['log_evidence_exact'], digits=5)} (exact)",
            "#importance-weighted-bounds-on-log-p-x",
        )
    )
    out.append(
        KeyNumber(
            "Time",
            format_seconds(s.get("fit_seconds")),
            f"fit of {(s.get('fit_settings') or {}).get('particles', '?'):,} particles × "
            f"{(s.get('observations') or {}).get('count', '?'):,} observations",
            "#timings",
        )
        if (s.get("fit_settings") or {}).get("particles")
        and (s.get("observations") or {}).get("count")
        else KeyNumber("Time", format_seconds(s.get("fit_seconds")), "", "#timings")
    )
    return out


def verdict(s: dict) -> list[str]:
    """Plain-words reading of the numbers: is the optimiser right, is the family adequate,
    and what do the importance weights say."""
    lines = []
    if "verdict" in s:  # runs made before the generic diagnosis have no verdict label
        lines.append(
            f"Diagnosis against the exact posterior: {s['verdict']}. "
            + " ".join(s.get("verdict_reasons", []))
        )
    kl, best = s["kl_at_theta_svi"], s["kl_by_family"]
    if s["theta_svi"] is not None:
        within = s["theta_rel_error"] <= TOLERANCE
        lines.append(
            f"Optimisation: SVI found theta = {s['theta_svi']:.5g} against the closed-form "
            f"optimum theta* = {s['theta_star']:.5g}, a relative error of "
            f"{100 * s['theta_rel_error']:.2g}% ({'within' if within else 'OUTSIDE'} the 0.5% "
            "target)."
        )
    exact_row = s["posterior_table"]["exact (closed form)"]
    q_row = s["posterior_table"]["variational"]
    family_gap = best[s["guide"]]
    adequate = kl < 0.05
    lines.append(
        f"Approximation: the fitted {s['guide']} guide is {kl:.3g} nats from the exact posterior "
        f"(KL(q || p)); the best member of its family is {family_gap:.3g} nats away, so "
        f"{'almost all' if kl - family_gap < 0.1 * kl + 1e-3 else 'only part'} of the gap is the "
        f"family's, not the optimiser's. Its mean is {q_row['mean']:.4g} against the exact "
        f"{exact_row['mean']:.4g} and its sd {q_row['sd']:.4g} against {exact_row['sd']:.4g}; "
        f"Wasserstein-1 {s['wasserstein1_to_exact']:.3g}, KS {s['ks_to_exact']:.3g}. "
        + (
            "The fit can be trusted for this posterior."
            if adequate
            else "Do not use this guide's summaries as the posterior's: a family that contains the "
            f"posterior (truncated normal, {best['truncated-normal']:.2g} nats) or a closer one "
            f"(gamma {best['gamma']:.2g}, lognormal {best['lognormal']:.2g}) would."
        )
    )
    k, thr = s["psis_khat"], s["psis_khat_threshold"]
    ess_share = s["importance_ess"] / s["draws"]
    if k is None:  # every weight equal: k-hat tends to -infinity (stored as null)
        k = -math.inf
    if k < 0.5:
        tail = (
            "q's tails are at least as heavy as the posterior's, so importance sampling "
            "from q is reliable"
        )
    elif k < thr:
        tail = "the weights' tail is moderately heavy: importance sampling from q converges slowly"
    else:
        tail = (
            "the weights' tail is too heavy: q misses posterior mass and importance "
            "sampling from q is not reliable"
        )
    lines.append(
        f"Importance weights: PSIS k-hat = {k:.3g} (threshold {thr:.2g}): {tail}; their "
        f"effective sample size is {s['importance_ess']:.0f} of {s['draws']} draws "
        f"({100 * ess_share:.2g}%)" + (", so many draws are needed." if ess_share < 0.1 else ".")
    )
    gap = s["log_evidence_exact"] - s["iw_bounds"]["1000"]
    error = 2 * s["iw_bounds_se"]["1000"]
    closing = (
        f"narrows the gap to {gap:.2g} nats"
        if gap > error
        else f"closes the gap to within its Monte Carlo error ({gap:.1e} ± {error:.1e} nats)"
    )
    lines.append(
        f"Evidence: log p(x) = {s['log_evidence_exact']:.6g} (grid {s['log_evidence_grid']:.6g}). "
        f"The ELBO is {s['log_evidence_exact'] - s['elbo_at_svi']:.3g} nats below it; "
        f"importance weighting with K = 1000 {closing}."
    )
    if "convergence" in s:
        convergence = s["convergence"]
        lines.append(
            f"Convergence: {convergence['rule']}. The rule {convergence['status']}"
            + ("" if convergence["status"].endswith(".") else ".")
        )
    lines.append(fit_cost(s))
    if s.get("notes"):
        lines.append("Notes: " + " ".join(s["notes"]))
    return lines


def _exact(x, digits: int = 6):
    """A closed-form or quadrature number: more digits than Monte Carlo noise allows, since it
    has none (the agreement of two such numbers is the point of showing them)."""
    return None if x is None else Num(x, digits=digits)


def _drawn(row: dict, key: str):
    """A moment of a row of draws, rounded to its Monte Carlo error (sd / sqrt(ESS)); the
    closed form's row has no ESS and keeps 4 significant digits."""
    value = row.get(key)
    if value is None:
        return None
    ess, sd = row.get("ess_bulk"), row.get("sd")
    se = sd / math.sqrt(ess) if ess and sd else None
    if key == "sd" and se is not None:
        se = se / math.sqrt(2)
    return (
        Num(value, se=se, digits=4)
        if key in ("mean", "sd", "mean_error", "sd_error")
        else Num(value, digits=3 if ess else 4)
    )


def tables(s: dict) -> list[Table]:
    """The report's tables, from ``summary.json``'s contents."""
    numbers = [
        ["theta*", _exact(s["theta_star"], 5)],
        ["theta (SVI)", _exact(s["theta_svi"], 5)],
        ["relative error of theta", _exact(s["theta_rel_error"], 2)],
        ["log evidence (exact)", _exact(s["log_evidence_exact"])],
        ["log evidence (grid)", _exact(s["log_evidence_grid"])],
        ["ELBO at theta*", _exact(s["elbo_at_theta_star"])],
        ["ELBO of the fitted guide", _exact(s["elbo_at_svi"])],
        ["KL at theta* (closed form)", _exact(s["kl_at_theta_star"], 4)],
        ["KL at theta* (grid)", _exact(s["kl_at_theta_star_grid"], 4)],
        ["KL of the fitted guide (quadrature)", _exact(s["kl_at_theta_svi"], 4)],
        ["KL of the fitted guide (grid)", _exact(s["kl_at_theta_svi_grid"], 4)],
        ["PSIS k-hat", _exact(s["psis_khat"], 2)],
        ["k-hat threshold", _exact(s["psis_khat_threshold"], 2)],
        ["importance-sampling ESS", f"{s['importance_ess']:,.0f}"],
        ["draws", s["draws"]],
        ["Wasserstein-1 to exact", _exact(s["wasserstein1_to_exact"], 2)],
        ["Kolmogorov-Smirnov to exact", _exact(s["ks_to_exact"], 2)],
        ["grid max |pdf error|", _exact(s["grid_max_abs_pdf_error"], 2)],
        ["SVI steps", s["steps"]],
    ]
    if "cubo2" in s:
        numbers[-1:-1] = [
            ["ELBO (Monte Carlo, the draws)", Num(s["elbo"], se=s.get("elbo_se"))],
            ["CUBO_2 (upper bound on log p(x))", Num(s["cubo2"])],
            ["d_2 = 2 (CUBO_2 - ELBO)", Num(s["d2"])],
            ["convergence rule held", "yes" if s["converged"] else "no"],
        ]
    cols = ["mean", "sd", "hdi_3%", "hdi_97%", "q_3%", "q_97%", "mean_error", "sd_error"]
    posterior = [
        [method] + [_drawn(row, c) for c in cols] for method, row in s["posterior_table"].items()
    ]
    bounds = [
        [
            k,
            Num(v, se=s["iw_bounds_se"][k]),
            Num(s["iw_bounds_se"][k], digits=2),
            Num(s["log_evidence_exact"] - v, se=s["iw_bounds_se"][k]),
        ]
        for k, v in s["iw_bounds"].items()
    ]
    families = [[f, _exact(kl, 3)] for f, kl in s["kl_by_family"].items()]
    generic = _generic_tables(s) if "parameters" in s else []
    timings = dict(s.get("timings") or {})
    diagnosis = timings.pop("total", None)
    return [
        Table("Numbers", ["quantity", "value"], numbers),
        Table(
            "Posterior summaries (ArviZ) against the exact posterior",
            ["method"] + cols,
            posterior,
            note="hdi: 94% highest-density interval of the draws; q: equal-tailed "
            "quantiles of the exact posterior; errors are against the exact "
            "mean and sd. Moments of draws are rounded to their Monte Carlo errors "
            "(sd / sqrt(ESS)).",
        ),
        Table(
            "Importance-weighted bounds on log p(x)",
            ["K", "bound", "s.e.", "gap to exact"],
            bounds,
            note="K = 1 is the ELBO; the bound rises to log p(x) as K grows (Burda et al. 2016).",
        ),
        Table(
            "What each guide family costs",
            ["family", "KL(q* || p) at the family's optimum"],
            families,
            note="KL in nats at each family's best member, by quadrature.",
        ),
        *generic,
        Table(
            "Timings",
            ["fit", *(k.replace("_", " ") for k in timings), "diagnosis total"],
            [
                [
                    Num(s.get("fit_seconds"), unit="s"),
                    *(Num(v, unit="s") for v in timings.values()),
                    Num(diagnosis, unit="s"),
                ]
            ],
            note=fit_cost(s),
            keep_empty=True,
        ),
    ]


def _generic_tables(s: dict) -> list[Table]:
    """The generic diagnosis's tables: each parameter against the reference, and VIABEL's error
    bounds next to the errors measured against the exact draws."""
    cols = ["name", "mean", "sd", "ref_mean", "ref_sd", "std_mean_error", "sd_ratio"]
    cols += ["w1_over_sd", "ks"]
    parameters = [[p.get(c) for c in cols] for p in s["parameters"]]
    joint = s["error_bounds"]
    bounds = [
        ["all coordinates", "Wasserstein-1", joint["w1"], None],
        ["all coordinates", "Wasserstein-2", joint["w2"], None],
    ]
    for c in s.get("error_bounds_per_coordinate", []):
        name = f"{c['name']} ({c['transform']})"
        bounds.append([name, "|mean error|", c["mean_error"], c.get("measured_mean_error")])
        bounds.append([name, "|sd error|", c["sd_error"], c.get("measured_sd_error")])
    return [
        Table(
            "Parameters against the reference (the exact posterior's draws)",
            cols,
            parameters,
            note="std_mean_error = (mean_q - mean_ref) / sd_ref; sd_ratio = sd_q / sd_ref; "
            "w1_over_sd: Wasserstein-1 / sd_ref; ks: Kolmogorov-Smirnov distance.",
        ),
        Table(
            "Error bounds (Huggins et al. 2020) and the errors measured",
            ["coordinates", "quantity", "bound", "measured"],
            bounds,
            note=f"In {s['error_bounds_space']}. Bounds from d_2 = {s['d2']:.3g}; they hold "
            "only as far as the Monte Carlo estimate of CUBO_2 does (k-hat below 0.5).",
        ),
    ]


def rebuild_report(run_dir: Path) -> Path:
    """Regenerate figures and ``report.html`` from a finished run's files, without refitting."""
    return build_report(Path(run_dir), read_json(Path(run_dir) / "summary.json"))
