"""Compare runs on one page: their verdicts and their per-element errors side by side.

``ppl-models compare RUN RUN ...`` reads each run's ``summary.json`` (a fit, an exp-normal or a
VAE run) and writes one self-contained page: a table of the runs (job, model, guide, verdict,
PSIS k-hat, importance ESS, ELBO, the element furthest off, seconds), then each element's error
in every run that has it: the standardised mean error and the sd ratio against the run's
reference where it has one, else q's mean and sd and their PSIS-corrected values, with a
figure of the errors. The page goes to ``--out`` (a new or empty folder), by default
``runs/compare/<time>/``; nothing is refitted.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..runs import STATUS_COMPLETE, Run, atomic_write_text
from .runs import RunInfo, read_run

LABELS = {"trustworthy": "good", "means-only": "warn", "not-trustworthy": "bad"}


def _letters(runs: list[RunInfo]) -> dict[Path, str]:
    """A letter per run (A, B, ..., then A2, B2, ...): the element table's columns stay narrow."""
    return {
        r.path: chr(ord("A") + k % 26) + (str(k // 26 + 1) if k >= 26 else "")
        for k, r in enumerate(runs)
    }


def _title(r: RunInfo) -> str:
    return f"{r.model} / {r.guide}"


def _worst(summary: dict) -> str | None:
    rows = [r for r in summary.get("parameters") or [] if r.get("std_mean_error") is not None]
    if not rows:
        return None
    worst = max(rows, key=lambda r: abs(r["std_mean_error"]))
    return f"{worst['name']}: {worst['std_mean_error']:+.2f} sd"


def overview_table(runs: list[RunInfo], names: dict[Path, str]):
    """One row per run: what it is, its verdict and its key numbers."""
    from ..report import Num, Table

    rows = []
    for r in runs:
        s = r.summary
        khat = s.get("psis_khat")
        rows.append(
            [
                names[r.path],
                _title(r),
                r.job,
                r.verdict,
                None if khat is None else Num(khat, digits=2),
                None if s.get("importance_ess") is None else f"{s['importance_ess']:,.0f}",
                None if s.get("elbo") is None else Num(s["elbo"], se=s.get("elbo_se")),
                _worst(s),
                Num(r.seconds, unit="s") if r.seconds is not None else None,
                str(r.path),
            ]
        )
    return Table(
        "The runs",
        [
            "run",
            "model / guide",
            "job",
            "verdict",
            "PSIS k-hat",
            "importance ESS",
            "ELBO",
            "worst element vs reference",
            "time",
            "folder",
        ],
        rows,
        note="Verdicts and numbers as each run's own report states them; ELBOs compare only "
        "between runs of the same model and data.",
        anchor="runs",
    )


def element_table(runs: list[RunInfo], names: dict[Path, str]):
    """Each element's errors in every run that has it, side by side."""
    from ..report import Table

    with_elements = [r for r in runs if r.summary.get("parameters")]
    order: list[str] = []
    by_run: dict[Path, dict[str, dict]] = {}
    for r in with_elements:
        by_run[r.path] = {row["name"]: row for row in r.summary["parameters"]}
        order += [n for n in by_run[r.path] if n not in order]
    referenced = {
        r.path: any(row.get("std_mean_error") is not None for row in by_run[r.path].values())
        for r in with_elements
    }
    columns = ["element"]
    for r in with_elements:
        if referenced[r.path]:
            columns += [f"{names[r.path]}: mean error", f"{names[r.path]}: sd ratio"]
        else:
            columns += [f"{names[r.path]}: PSIS shift", f"{names[r.path]}: sd / PSIS sd"]
    rows = []
    for name in order:
        row = [name]
        for r in with_elements:
            p = by_run[r.path].get(name)
            if p is None:
                row += [None, None]
            elif referenced[r.path]:
                row += [_maybe(p.get("std_mean_error")), _maybe(p.get("sd_ratio"))]
            else:
                shift = (
                    (p["mean"] - p["psis_mean"]) / p["psis_sd"]
                    if p.get("psis_mean") is not None and p.get("psis_sd")
                    else None
                )
                ratio = p["sd"] / p["psis_sd"] if p.get("psis_sd") else None
                row += [_maybe(shift), _maybe(ratio)]
        rows.append(row)
    skipped = [names[r.path] for r in runs if r not in with_elements]
    note = (
        "Runs by their letters in the table above. Mean error: (mean_q - mean_ref) / sd_ref; sd "
        "ratio: sd_q / sd_ref (0 and 1 are exact agreement); a run without a reference: q "
        "against its own PSIS-corrected moments ((mean_q - mean_PSIS) / sd_PSIS and "
        "sd_q / sd_PSIS); a dash: the run has no such element."
        + (f" Runs without per-element results: {', '.join(skipped)}." if skipped else "")
    )
    return Table("Per-element errors, side by side", columns, rows, note=note, anchor="elements")


def _maybe(x):
    from ..report import Num

    return None if x is None or not math.isfinite(x) else Num(x, digits=2)


def error_figure(runs: list[RunInfo], names: dict[Path, str], path: Path):
    """Dots per element and run: the standardised mean error (against the reference) and the
    log sd ratio, so that the runs' errors can be compared at a glance."""
    import numpy as np

    from ..plots import new_figure, save_figure

    referenced = [
        r
        for r in runs
        if any(p.get("std_mean_error") is not None for p in r.summary.get("parameters") or [])
    ]
    if not referenced:
        return None
    order: list[str] = []
    for r in referenced:
        order += [p["name"] for p in r.summary["parameters"] if p["name"] not in order]
    order = order[:40]
    height = max(3.0, 0.22 * len(order) + 1.2)
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(10, height))
    y = np.arange(len(order))
    for k, r in enumerate(referenced):
        rows = {p["name"]: p for p in r.summary["parameters"]}
        errors = [rows.get(n, {}).get("std_mean_error") for n in order]
        ratios = [rows.get(n, {}).get("sd_ratio") for n in order]
        offset = (k - (len(referenced) - 1) / 2) * 0.15
        e = np.array([np.nan if v is None else v for v in errors], dtype=float)
        q = np.array([np.nan if v is None or v <= 0 else math.log(v) for v in ratios], dtype=float)
        ax1.plot(e, y + offset, "o", ms=4, label=f"{names[r.path]}: {_title(r)}")
        ax2.plot(q, y + offset, "o", ms=4)
    for ax, title in ((ax1, "(mean - ref) / ref sd"), (ax2, "log(sd / ref sd)")):
        ax.axvline(0, color="gray", lw=0.8)
        for edge in (-0.1, 0.1):
            ax.axvline(edge, color="gray", ls=":", lw=0.8)
        ax.set_yticks(y, order, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(title)
    ax1.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def _steps(runs: list[RunInfo], names: dict[Path, str]) -> list[str]:
    """The first step each fit's own report advises, then where the reports are."""
    from ..vi import advice

    by_step: dict[str, list[str]] = {}
    for r in runs:
        if r.job != "fit" or r.verdict == "trustworthy":
            continue
        advised = advice.next_steps(advice.findings_of(r.summary), r.summary)
        if advised:
            by_step.setdefault(advised[0], []).append(names[r.path])
    steps = [
        f"Run{'s' if len(who) > 1 else ''} {', '.join(who)}: {step}"
        for step, who in by_step.items()
    ]
    steps.append("Each run's own report says why: `report.html` in each run's folder.")
    return steps


def write_comparison(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Write the comparison page of ``run_dirs`` into ``out`` (a new or empty folder; default
    ``runs/compare/<time>/``) and return its path.

    Raises ``FileNotFoundError`` for a folder that does not exist or holds no
    ``summary.json``, ``ValueError`` for fewer than two runs or a run that did not complete.
    """
    from ..report import Badge, Figure, KeyNumber, Report
    from ..report import write_report as write_html

    if len(run_dirs) < 2:
        raise ValueError(f"compare needs at least two run folders, got {len(run_dirs)}")
    runs = []
    for folder in map(Path, run_dirs):
        if not folder.exists():
            raise FileNotFoundError(f"run directory not found: {folder}")
        if not (folder / "summary.json").is_file():
            raise FileNotFoundError(f"not a finished run directory (no summary.json): {folder}")
        info = read_run(folder)
        if info.status != STATUS_COMPLETE:
            raise ValueError(f"run {folder} did not complete ({info.verdict}); nothing to compare")
        runs.append(info)
    names = _letters(runs)
    target = Run.create("compare", out)
    listed = "".join(f"  {json.dumps(str(r.path.resolve()))},  # {names[r.path]}\n" for r in runs)
    atomic_write_text(target.file("config.toml"), f"# ppl-models compare\nruns = [\n{listed}]\n")
    figures = []
    figure = error_figure(runs, names, target.figures / "errors.png")
    if figure is not None:
        figures.append(
            Figure(
                "Errors against the reference, per element and run",
                figure,
                "Each run's standardised mean error and log sd ratio against its own reference "
                "(dotted: the verdict's core tolerance of 0.1); at most 40 elements.",
            )
        )
    verdicts = [r.verdict for r in runs]
    labelled = [v for v in verdicts if v in LABELS]
    worst = min(labelled, key=list(LABELS).index) if labelled else None
    best = max(labelled, key=list(LABELS).index) if labelled else None
    summary = "; ".join(f"{names[r.path]} ({_title(r)}): {r.verdict}" for r in runs)
    report = Report(
        title=f"Comparison of {len(runs)} runs",
        verdict=[summary],
        badge=Badge(
            f"{len(runs)} RUNS",
            "info",
            (f"best verdict: {best}; worst: {worst}" if labelled else "no verdict labels"),
            summary + ".",
        ),
        key_numbers=[
            KeyNumber(
                f"{names[r.path]}: {_title(r)}",
                r.verdict,
                f"{r.job}; {r.time}",
                "#runs",
                LABELS.get(r.verdict, "info"),
            )
            for r in runs
        ],
        next_steps=_steps(runs, names),
        tables=[overview_table(runs, names), element_table(runs, names)],
        figures=figures,
    )
    return write_html(target.path, report)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``ppl-models compare``'s arguments."""
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN", help="run folders")
    parser.add_argument(
        "--out", type=Path, help="folder for the page (default runs/compare/<time>/)"
    )


def main(args: argparse.Namespace) -> int:
    """Write the comparison page; prints its path and returns 0."""
    path = write_comparison(args.run_dirs, args.out)
    print(f"compare: {path}")
    return 0
