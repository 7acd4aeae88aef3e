"""The report of a diagnosed variational fit: run files, figures and one self-contained page.

:func:`write_report` writes a diagnosis into a run directory (``summary.json`` last, with
``"status": "complete"``); :func:`rebuild_report` redraws the figures and ``report.html`` from
``summary.json``, ``posterior.nc`` and ``metrics.jsonl`` alone (``ppl-models report RUN_DIR``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .. import diagnostics
from ..report import Figure, Report, Table
from ..report import write_report as write_html
from ..runs import (
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    environment,
    read_json,
    read_metrics,
)
from . import figures as vf
from .verdict import VerdictRules, reference_checks

LABEL_WORDS = {
    "trustworthy": "TRUSTWORTHY: the variational means, sds and marginal shapes can be used as "
    "the posterior's.",
    "means-only": "MEANS ONLY: the variational means can be used; its uncertainty (sds, "
    "intervals, tails) cannot.",
    "not-trustworthy": "NOT TRUSTWORTHY: do not use this fit's summaries as the posterior's.",
}


def _toml_value(v) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float) and not (isinstance(v, float) and not math.isfinite(v)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if v is None:
        return None
    return json.dumps(str(v))


def _minimal_config(summary: dict) -> str:
    lines = ["# written by ppl_models.vi.report.write_report (no config.toml was present)", "[fit]"]
    lines.append(f"guide = {json.dumps(summary.get('guide', 'custom'))}")
    lines.append(f"draws = {summary.get('draws_requested', summary.get('draws'))}")
    lines.append(f"seed = {summary.get('seed', 0)}")
    for key, value in (summary.get("fit_settings") or {}).items():
        text = _toml_value(value)
        if text is not None and key.replace("_", "").isalnum():
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


# what a run directory holds; ``overwrite=True`` removes these (and only these) first
RUN_FILES = ("config.toml", "env.json", "metrics.jsonl", "summary.json", "posterior.nc")
RUN_FILES += ("report.html",)


def write_report(diagnosis, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write a diagnosis as a new run directory and return the path of ``report.html``.

    Writes ``config.toml`` (the fit's settings), ``env.json``, ``metrics.jsonl`` (the fit's
    loss trace), ``posterior.nc`` (ArviZ: variational draws in ``posterior``, reference draws
    in ``reference_posterior``, ``log_joint``/``log_q`` in ``sample_stats``),
    ``figures/*.png``, ``report.html`` and, last, ``summary.json`` with
    ``"status": "complete"``.

    Parameters
    ----------
    out_dir
        A new or empty folder (created with its parents). A folder holding anything is refused,
        as ``ppl-models fit --out`` refuses it: writing there would mix two runs' files.
    overwrite
        Write into a non-empty folder anyway, after removing the files a run writes there
        (:data:`RUN_FILES` and ``figures/*.png``); other files are left alone.

    Raises
    ------
    ValueError
        When ``out_dir`` is not empty (and ``overwrite`` is False), or is not a folder.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"cannot write a report into {out}: it is not a folder")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise ValueError(
            f"output directory {out} is not empty ({shown}): writing there would mix two "
            "runs' files; choose a new folder, or pass overwrite=True to replace the run there"
        )
    for name in RUN_FILES if held else ():
        (out / name).unlink(missing_ok=True)
    for png in (out / "figures").glob("*.png") if held else ():
        png.unlink()
    return write_run(diagnosis, out)


def write_run(diagnosis, run_dir: str | Path) -> Path:
    """Complete a run directory that a job created (:class:`~ppl_models.runs.Run`): the files
    of :func:`write_report`, except ``config.toml``, ``env.json`` and ``metrics.jsonl`` where
    the job wrote them already. Returns the path of ``report.html``."""
    out = Path(run_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    summary = dict(diagnosis.summary)
    if not (out / "config.toml").exists():
        atomic_write_text(out / "config.toml", _minimal_config(summary))
    if not (out / "env.json").exists():
        device = str(getattr(diagnosis.fit, "device", "cpu"))
        atomic_write_json(out / "env.json", environment(seed=summary.get("seed", 0), device=device))
    metrics_path = out / "metrics.jsonl"
    if not metrics_path.exists() or not metrics_path.read_text().strip():
        losses = getattr(diagnosis.fit, "losses", None)
        lines = (
            []
            if losses is None
            else [json.dumps({"step": i, "loss": float(v)}) for i, v in enumerate(losses)]
        )
        atomic_write_text(metrics_path, "".join(line + "\n" for line in lines))
    atomic_save(out / "posterior.nc", lambda tmp: diagnostics.to_netcdf(diagnosis.idata, tmp))
    path = build_report(out, summary, diagnosis.idata)
    status = summary.pop("status", "complete")
    atomic_write_json(out / "summary.json", {"status": status, **summary})
    return path


def rebuild_report(run_dir: str | Path) -> Path:
    """Redraw the figures and ``report.html`` of a finished run from its files; returns the
    report's path. Raises ``FileNotFoundError`` when the run lacks ``summary.json`` or
    ``posterior.nc``."""
    run_dir = Path(run_dir)
    for name in ("summary.json", "posterior.nc"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} has no {name}: not a finished fit run")
    summary = read_json(run_dir / "summary.json")
    return build_report(run_dir, summary, diagnostics.load(run_dir / "posterior.nc"))


def build_report(run_dir: Path, summary: dict, idata) -> Path:
    """Figures from the run's files, then ``report.html``."""
    metrics = read_metrics(run_dir)
    figs = vf.all_figures(run_dir / "figures", summary, idata, metrics)
    report = Report(
        title=f"Variational fit ({summary.get('guide', 'custom')} guide): posterior diagnostics",
        verdict=verdict_paragraphs(summary),
        tables=tables(summary),
        figures=[Figure(t, p, c) for t, p, c in figs],
    )
    return write_html(run_dir, report)


def verdict_paragraphs(s: dict) -> list[str]:
    """The verdict first, in words naming the parameters that are off, then how it was reached."""
    out = [f"Verdict: {LABEL_WORDS.get(s['verdict'], s['verdict'])}"]
    if s.get("verdict_off"):
        out.append("Off: " + ", ".join(s["verdict_off"]) + ".")
    out += list(s.get("verdict_reasons", []))
    ref = s.get("reference")
    out.append(
        f"Reference: {ref}."
        if ref
        else "Reference: none; the fit was judged from its own importance weights and error bounds."
    )
    conv = s.get("convergence_rule") or "no rule recorded"
    out.append(f"Convergence: {'met' if s.get('converged') else 'NOT met'}. Rule: {conv}.")
    k = s.get("psis_khat")
    k_words = "not finite (see the notes)" if k is None else f"{k:.3g}"
    out.append(
        f"Importance weights from {s['draws']:,} draws of q: PSIS k-hat {k_words} "
        f"(threshold {s['psis_khat_threshold']:.3g}), "
        f"importance ESS {s['importance_ess']:.0f}, d_2 = {s['d2']:.3g}. The Wasserstein and "
        "error bounds hold in the guide's unconstrained space."
    )
    out.append("Rules of the verdict: " + " ".join(s.get("verdict_rules", [])))
    for note in s.get("notes", []):
        out.append("Note: " + note)
    return out


def _status(row: dict, draws: int) -> str:
    c = reference_checks(row, draws, VerdictRules())
    if c is None:
        return "not compared"
    bad = [k for k in ("mean", "sd", "ks") if not c[f"{k}_ok"]]
    return "ok" if not bad else "off: " + ", ".join(bad)


def tables(s: dict) -> list[Table]:
    """The report's tables from ``summary.json``'s contents."""
    rows = s["parameters"]
    side = [
        [
            r["name"],
            r["mean"],
            r["sd"],
            r.get("hdi_low"),
            r.get("hdi_high"),
            r.get("psis_mean"),
            r.get("psis_sd"),
            r.get("ref_mean"),
            r.get("ref_sd"),
            r.get("std_mean_error"),
            r.get("sd_ratio"),
            r.get("w1_over_sd"),
            r.get("ks"),
            _status(r, s["draws"]),
        ]
        for r in rows
    ]
    evidence = [
        ["ELBO (mean log w)", s["elbo"], s.get("elbo_se")],
        *[[f"IW bound, K = {k}", v, s["iw_bounds_se"].get(k)] for k, v in s["iw_bounds"].items()],
        ["CUBO_2", s["cubo2"], None],
        ["d_2 = 2 (CUBO_2 - ELBO)", s["d2"], None],
        ["PSIS k-hat", s.get("psis_khat"), None],
        ["k-hat threshold", s["psis_khat_threshold"], None],
        ["importance ESS", s["importance_ess"], None],
        ["draws S", s["draws"], None],
    ]
    eb = s["error_bounds"]
    coords = [
        [
            c["name"],
            c.get("transform"),
            c["sd"],
            c.get("mean_error"),
            c.get("measured_mean_error"),
            c.get("sd_error"),
            c.get("measured_sd_error"),
        ]
        for c in s.get("error_bounds_per_coordinate", [])
    ]
    fit = [
        ["guide", s.get("guide")],
        ["converged", s.get("converged")],
        ["convergence rule", s.get("convergence_rule")],
        ["steps", s.get("steps")],
        ["fit seconds", s.get("fit_seconds")],
        ["draws vectorized", s.get("vectorized")],
        *[[f"diagnosis seconds: {k}", v] for k, v in (s.get("timings") or {}).items()],
    ]
    return [
        Table(
            "Side by side: q against the reference",
            [
                "element",
                "mean",
                "sd",
                "hdi 3%",
                "hdi 97%",
                "PSIS mean",
                "PSIS sd",
                "ref mean",
                "ref sd",
                "(mean - ref) / ref sd",
                "sd / ref sd",
                "W1 / ref sd",
                "KS",
                "status",
            ],
            side,
            note="mean and sd from all S draws of q; HDI: 94% highest-density interval; PSIS: "
            "the posterior moments re-estimated by Pareto-smoothed importance sampling from "
            "q's draws; KS and W1 from scipy on the draws. Status applies the verdict's "
            "tolerances (which allow for the reference's Monte Carlo error).",
        ),
        Table(
            "Evidence bounds and importance weights",
            ["quantity", "value", "s.e."],
            evidence,
            note="ELBO <= IW bounds (rising with K) <= log p(x) <= CUBO_2; d_2 bounds the "
            "Rényi-2 divergence D_2(posterior || q).",
        ),
        Table(
            "Error bounds (Huggins et al. 2020) in the guide's unconstrained space",
            [
                "coordinate",
                "bijection",
                "sd_q",
                "mean-error bound",
                "measured",
                "sd-error bound",
                "measured",
            ],
            coords,
            note=f"Joint bounds: W1 <= {_num(eb.get('w1'))}, W2 <= {_num(eb.get('w2'))}, "
            f"||mean_q - mean_p|| <= {_num(eb.get('mean_error'))}, every |sd_q - sd_p| <= "
            f"{_num(eb.get('sd_error'))}. Coordinates are the latent sites mapped by the "
            "inverse of biject_to(support); 'measured' compares with the reference mapped "
            "the same way.",
        ),
        Table("Fit and timings", ["quantity", "value"], fit),
    ]


def _num(x) -> str:
    return "inf" if x is None else f"{x:.3g}"
