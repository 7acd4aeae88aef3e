"""The exponential-normal report: verdict in words, tables and figures, from the run's files.

Everything here reads ``summary.json`` (and, for the figures, the other saved files), so
``ppl-models report RUN_DIR`` rebuilds the page without refitting.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ... import diagnostics
from ...exp_normal.figures import report_figures
from ...report import Figure, Report, Table, write_report
from ...runs import read_json, read_metrics
from .config import TOLERANCE


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
        tables=tables(summary),
        figures=[Figure(title, path, caption) for title, path, caption in figures],
    )
    return write_report(run_dir, report)


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
    if s.get("notes"):
        lines.append("Notes: " + " ".join(s["notes"]))
    return lines


def tables(s: dict) -> list[Table]:
    """The report's tables, from ``summary.json``'s contents."""
    numbers = [
        ["theta*", s["theta_star"]],
        ["theta (SVI)", s["theta_svi"]],
        ["relative error of theta", s["theta_rel_error"]],
        ["log evidence (exact)", s["log_evidence_exact"]],
        ["log evidence (grid)", s["log_evidence_grid"]],
        ["ELBO at theta*", s["elbo_at_theta_star"]],
        ["ELBO of the fitted guide", s["elbo_at_svi"]],
        ["KL at theta* (closed form)", s["kl_at_theta_star"]],
        ["KL at theta* (grid)", s["kl_at_theta_star_grid"]],
        ["KL of the fitted guide (quadrature)", s["kl_at_theta_svi"]],
        ["KL of the fitted guide (grid)", s["kl_at_theta_svi_grid"]],
        ["PSIS k-hat", s["psis_khat"]],
        ["k-hat threshold", s["psis_khat_threshold"]],
        ["importance-sampling ESS", s["importance_ess"]],
        ["draws", s["draws"]],
        ["Wasserstein-1 to exact", s["wasserstein1_to_exact"]],
        ["Kolmogorov-Smirnov to exact", s["ks_to_exact"]],
        ["grid max |pdf error|", s["grid_max_abs_pdf_error"]],
        ["SVI steps", s["steps"]],
        ["SVI seconds", s["fit_seconds"]],
    ]
    if "cubo2" in s:
        numbers[-2:-2] = [
            ["ELBO (Monte Carlo, the draws)", s["elbo"]],
            ["CUBO_2 (upper bound on log p(x))", s["cubo2"]],
            ["d_2 = 2 (CUBO_2 - ELBO)", s["d2"]],
            ["convergence rule held", s["converged"]],
        ]
    cols = ["mean", "sd", "hdi_3%", "hdi_97%", "q_3%", "q_97%", "mean_error", "sd_error"]
    posterior = [
        [method] + [row.get(c) for c in cols] for method, row in s["posterior_table"].items()
    ]
    bounds = [
        [k, v, s["iw_bounds_se"][k], s["log_evidence_exact"] - v] for k, v in s["iw_bounds"].items()
    ]
    families = [[f, kl] for f, kl in s["kl_by_family"].items()]
    generic = _generic_tables(s) if "parameters" in s else []
    return [
        Table("Numbers", ["quantity", "value"], numbers),
        Table(
            "Posterior summaries (ArviZ) against the exact posterior",
            ["method"] + cols,
            posterior,
            note="hdi: 94% highest-density interval of the draws; q: equal-tailed "
            "quantiles of the exact posterior; errors are against the exact "
            "mean and sd.",
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
