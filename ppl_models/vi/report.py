"""The report of a diagnosed variational fit: run files, figures and one self-contained page.

:func:`write_report` writes a diagnosis into a run directory (``summary.json`` last, with
``"status": "complete"``); :func:`rebuild_report` redraws the figures and ``report.html`` from
``summary.json``, ``posterior.nc`` and ``metrics.jsonl`` alone (``ppl-models report RUN_DIR``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .. import diagnostics
from ..report import Badge, Details, Figure, KeyNumber, Num, Report, Table, format_seconds
from ..report import write_report as write_html
from ..runs import (
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    environment,
    read_json,
    read_metrics,
)
from . import advice
from . import figures as vf
from .logweights import element_names
from .verdict import VerdictRules, reference_checks

SIDE_BY_SIDE = "side-by-side"  # the anchors that the first screen's numbers link to
EVIDENCE = "evidence"
TIMINGS = "timings"
LADDER = "escalation-ladder"
WEIGHTS_FIGURE = "figure-importance-weights"


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
    summary.update(_fit_facts(diagnosis.fit))
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


def _fit_facts(fit) -> dict:
    """What the first screen's advice needs to know about the fit beyond the diagnosis: the
    model's structure (which sites scale which) and how the fit started. Never fails the run:
    a model that cannot be traced this way gets no structural advice."""
    facts = {"fit_start": advice.fit_start(fit)}
    try:
        facts["model_structure"] = advice.model_structure(fit.model, fit.data, fit.guide)
    except Exception:  # noqa: BLE001 - the user's model; the advice does without
        facts["model_structure"] = None
    return facts


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
    findings = advice.findings_of(summary)
    words, level, meaning = advice.badge_words(summary["verdict"])
    if (summary.get("answer") or {}).get("kind") in ("psis", "nuts"):  # a ladder's answer
        meaning = meaning.replace("q's", "the answer's")
    report = Report(
        title=_title(summary),
        verdict=verdict_paragraphs(summary),
        badge=Badge(words, level, meaning, advice.headline(findings, summary)),
        next_steps=advice.next_steps(findings, summary),
        key_numbers=key_numbers(summary),
        details=details(summary),
        tables=tables(summary),
        figures=[Figure(t, p, c) for t, p, c in figs],
        first_screen=[ladder_table(summary)] if summary.get("ladder") else [],
    )
    return write_html(run_dir, report)


def _title(s: dict) -> str:
    if s.get("ladder"):
        return f"Escalation ladder (answer: {s.get('guide', 'custom')}): posterior diagnostics"
    return f"Variational fit ({s.get('guide', 'custom')} guide): posterior diagnostics"


def ladder_table(s: dict) -> Table:
    """The escalation ladder's rungs, one row each: what it tried, its time, k-hat and verdict,
    and why the climb moved on (the answer's row says so)."""
    ladder = s["ladder"]
    rows = []
    for i, r in enumerate(ladder.get("rungs", [])):
        if r.get("status") == "skipped":
            verdict = "skipped"
        elif r.get("status") in ("failed", "cut"):
            verdict = r["status"]
        else:
            verdict = r.get("verdict")
        rows.append(
            [
                i + 1,
                r["rung"] + ("  ◀ answer" if r.get("answer") else ""),
                r["method"],
                Num(r.get("seconds"), unit="s") if r.get("status") != "skipped" else None,
                _num(r.get("khat"), digits=2),
                verdict,
                r.get("stopped", ""),
            ]
        )
    return Table(
        "Escalation ladder",
        ["#", "rung", "method", "time", "k-hat", "verdict", "why it stopped"],
        rows,
        note=f"{ladder.get('sentence', '')} Each rung starts from the best fit before it; the "
        f"whole climb took {format_seconds(ladder.get('seconds'))} of a budget of "
        f"{format_seconds(ladder.get('budget'))}. Every rung's files are in rungs/.",
        anchor=LADDER,
        keep_empty=True,
    )


def verdict_paragraphs(s: dict) -> list[str]:
    """Every finding of the verdict in words, naming the parameters that are off."""
    out = []
    if s.get("verdict_off"):
        out.append("Off: " + ", ".join(s["verdict_off"]) + ".")
    return out + list(s.get("verdict_reasons", []))


def _how(s: dict) -> list[str]:
    """How the verdict was reached: the reference, the convergence rule, the weights."""
    ref = s.get("reference")
    answer = s.get("answer") or {}
    out = [f"The answer: {answer['words']}."] if answer.get("words") else []
    if s.get("mcmc"):
        m = s["mcmc"]
        out.append(
            f"NUTS's checks: {m.get('rules', '')}; "
            + ("all hold." if m.get("passed") else "failed: " + "; ".join(m.get("failed", [])))
        )
    out += [
        f"Reference: {ref}."
        if ref
        else "Reference: none; the fit was judged from its own importance weights and error bounds."
    ]
    conv = s.get("convergence_rule") or "no rule recorded"
    out.append(f"Convergence: {'met' if s.get('converged') else 'NOT met'}. Rule: {conv}.")
    k = s.get("psis_khat")
    k_words = "not finite (see the notes)" if k is None else f"{k:.2f}"
    out.append(
        f"Importance weights from {s['draws']:,} draws of q: PSIS k-hat {k_words} "
        f"(threshold {s['psis_khat_threshold']:.2g}), importance ESS "
        f"{s['importance_ess']:,.0f}, d_2 = {s['d2']:.3g}. The Wasserstein and error bounds "
        "hold in the guide's unconstrained space."
    )
    return out


def details(s: dict) -> list[Details]:
    """The collapsible sections under the first screen."""
    out = [
        Details(f"Every finding ({len(s.get('verdict_reasons', []))})", verdict_paragraphs(s)),
        Details("How the verdict was reached", _how(s)),
        Details("Rules of the verdict", list(s.get("verdict_rules", []))),
    ]
    if s.get("notes"):
        out.append(Details(f"Notes ({len(s['notes'])})", list(s["notes"])))
    return out


def _seconds(s: dict) -> tuple[float | None, float | None]:
    diagnosis = (s.get("timings") or {}).get("total")
    return s.get("fit_seconds"), diagnosis


def _mcmc_numbers(s: dict) -> list[KeyNumber]:
    """A NUTS answer's numbers: its chains' checks."""
    m = s["mcmc"]
    r_hat, bulk, tail = m.get("max_r_hat"), m.get("min_ess_bulk"), m.get("min_ess_tail")
    divergences = m.get("divergences", 0)
    return [
        KeyNumber(
            "Split R-hat (max)",
            "n/a" if r_hat is None else Num(r_hat, digits=3),
            f"{m.get('max_r_hat_element') or ''}; at most 1.01",
            f"#{SIDE_BY_SIDE}",
            "good" if r_hat is not None and r_hat <= 1.01 else "bad",
        ),
        KeyNumber(
            "ESS bulk / tail (min)",
            "n/a" if bulk is None else f"{bulk:,.0f} / {tail:,.0f}",
            f"{m.get('chains')} chains x {m.get('draws_per_chain')} draws; at least 400",
            f"#{SIDE_BY_SIDE}",
            "good" if bulk is not None and min(bulk, tail) >= 400 else "bad",
        ),
        KeyNumber(
            "Divergences",
            f"{divergences}",
            f"after {m.get('warmup')} warm-up iterations",
            f"#{SIDE_BY_SIDE}",
            "good" if not divergences else "bad",
        ),
    ]


def key_numbers(s: dict) -> list[KeyNumber]:
    """The five numbers that matter, each linking down to where it is explained."""
    if s.get("mcmc"):
        return [*_mcmc_numbers(s), _worst_element(s), _time_number(s)]
    k, thr = s.get("psis_khat"), s["psis_khat_threshold"]
    if k is None:
        khat = KeyNumber("PSIS k-hat", "n/a", "not finite: see the notes", f"#{WEIGHTS_FIGURE}")
    else:
        level = "bad" if k > thr else "warn" if k > 0.5 else "good"
        khat = KeyNumber(
            "PSIS k-hat", Num(k, digits=2), f"threshold {thr:.2g}", f"#{WEIGHTS_FIGURE}", level
        )
    draws, ess = s["draws"], s["importance_ess"]
    min_ess = VerdictRules().min_importance_ess(draws)
    ess_number = KeyNumber(
        "Importance ESS",
        f"{ess:,.0f}",
        f"of {draws:,} draws",
        f"#{EVIDENCE}",
        "good" if ess >= min_ess else "bad",
    )
    top = max(s["iw_bounds"], key=int) if s.get("iw_bounds") else None
    elbo = KeyNumber(
        "ELBO",
        Num(s["elbo"], se=s.get("elbo_se")),
        f"± {s['elbo_se']:.1g}"
        + (
            ""
            if top is None
            else f"; IW bound (K = {top}) {Num(s['iw_bounds'][top], se=s['iw_bounds_se'].get(top))}"
        ),
        f"#{EVIDENCE}",
    )
    return [khat, ess_number, elbo, _worst_element(s), _time_number(s)]


def _time_number(s: dict) -> KeyNumber:
    ladder = s.get("ladder")
    if ladder:
        answer = ladder.get("answer")
        answer = ladder.get("closest") if answer is None else answer
        rungs = ladder.get("rungs") or []
        rung = rungs[answer] if answer is not None and answer < len(rungs) else None
        return KeyNumber(
            "Time",
            format_seconds(ladder.get("seconds")),
            f"{len(rungs)} rungs"
            + ("" if rung is None else f"; the answer's rung {format_seconds(rung['seconds'])}"),
            f"#{LADDER}",
        )
    fit_s, diag_s = _seconds(s)
    total = sum(t for t in (fit_s, diag_s) if t is not None) if fit_s or diag_s else None
    return KeyNumber(
        "Time",
        format_seconds(total),
        f"fit {format_seconds(fit_s)}, diagnosis {format_seconds(diag_s)}",
        f"#{TIMINGS}",
    )


def _worst_element(s: dict) -> KeyNumber:
    rows = s["parameters"]
    off = set(s.get("verdict_off") or [])
    compared = [r for r in rows if r.get("std_mean_error") is not None]
    if compared:
        worst = max(compared, key=lambda r: abs(r["std_mean_error"]))
        worst_sd = max(compared, key=lambda r: abs(math.log(max(r["sd_ratio"], 1e-12))))
        return KeyNumber(
            "Worst element vs reference",
            f"{worst['name']}: {worst['std_mean_error']:+.2f} sd",
            f"mean error; sd ratio {worst_sd['sd_ratio']:.2f} ({worst_sd['name']})",
            f"#{SIDE_BY_SIDE}",
            "bad" if worst["name"] in off or worst_sd["name"] in off else "good",
        )
    shifts = [
        (abs(r["mean"] - r["psis_mean"]) / r["psis_sd"], r)
        for r in rows
        if r.get("psis_mean") is not None and r.get("psis_sd")
    ]
    if not shifts:
        return KeyNumber(
            "Worst element", "n/a", "no reference, no PSIS moments", f"#{SIDE_BY_SIDE}"
        )
    shift, worst = max(shifts, key=lambda t: t[0])
    return KeyNumber(
        "Largest PSIS shift",
        f"{worst['name']}: {shift:.2f} sd",
        "q's mean against its PSIS correction (no reference)",
        f"#{SIDE_BY_SIDE}",
        "bad" if worst["name"] in off else "info",
    )


def _status(row: dict, s: dict) -> str | None:
    """The verdict's reading of one element: against the reference, or (without one) of its
    PSIS-corrected moments; None where neither judged it."""
    c = reference_checks(row, s["draws"], VerdictRules())
    if c is not None:
        bad = [k for k in ("mean", "sd", "ks") if not c[f"{k}_ok"]]
        return "ok" if not bad else "off: " + ", ".join(bad)
    self_checks = (s.get("verdict_checks") or {}).get("self") or {}
    if not self_checks:
        return None

    def listed(kind: str) -> list[str]:
        return [
            w for w in ("mean", "sd") if row["name"] in (self_checks.get(f"psis_{w}_{kind}") or [])
        ]

    bad = listed("off")
    unreliable = [w for w in listed("unreliable") if w not in bad]
    words = [f"PSIS moves the {' and '.join(bad)}"] if bad else []
    if unreliable:  # its estimate's own k-hat is too high: it cannot check q there
        words.append(f"PSIS cannot check the {' and '.join(unreliable)}")
    return "; ".join(words) or "PSIS agrees"


def _tail_khats(row: dict) -> str | None:
    """The k-hats of the element's PSIS mean and sd estimates (the tails of w (theta - c) and
    w (theta - c)^2), as one cell."""
    k = [row.get("psis_khat_mean"), row.get("psis_khat_sd")]
    if all(v is None for v in k):
        return None
    return " / ".join("-" if v is None else f"{v:.2f}" for v in k)


def _ratio_se(r: dict) -> float | None:
    if not (r.get("sd") and r.get("ref_sd") and r.get("sd_ratio") is not None):
        return None
    rel = math.hypot(
        (r.get("mcse_sd") or 0.0) / r["sd"], (r.get("ref_mcse_sd") or 0.0) / r["ref_sd"]
    )
    return r["sd_ratio"] * rel or None


def _error_se(r: dict) -> float | None:
    if not r.get("ref_sd"):
        return None
    return (
        math.hypot(r.get("mcse_mean") or 0.0, r.get("ref_mcse_mean") or 0.0) / r["ref_sd"] or None
    )


def _num(value, se=None, digits=3):
    return None if value is None else Num(value, se=se, digits=digits)


def tables(s: dict) -> list[Table]:
    """The report's tables from ``summary.json``'s contents; numbers rounded to their Monte
    Carlo errors where known, columns empty in every row left out."""
    every = s["parameters"]
    has_reference = any(r.get("ref_mean") is not None for r in every)
    rows = vf.globals_and_furthest_off(every, vf.error_score, TABLE_ROWS)
    side = [
        [
            r["name"],
            _num(r["mean"], r.get("mcse_mean")),
            _num(r["sd"], r.get("mcse_sd")),
            _num(r.get("hdi_low")),
            _num(r.get("hdi_high")),
            _num(r.get("psis_mean"), r.get("psis_mcse_mean")),
            _num(r.get("psis_sd"), r.get("psis_mcse_sd")),
            _tail_khats(r),
            _num(r.get("ref_mean"), r.get("ref_mcse_mean")),
            _num(r.get("ref_sd"), r.get("ref_mcse_sd")),
            _num(r.get("std_mean_error"), _error_se(r)),
            _num(r.get("sd_ratio"), _ratio_se(r)),
            _num(r.get("w1_over_sd"), digits=2),
            _num(r.get("ks"), digits=2),
            _status(r, s),
        ]
        for r in rows
    ]
    iw_se = s.get("iw_bounds_se") or {}
    evidence = [
        [
            "ELBO (mean log w)",
            Num(s["elbo"], se=s.get("elbo_se")),
            _num(s.get("elbo_se"), digits=2),
        ],
        *[
            [f"IW bound, K = {k}", Num(v, se=iw_se.get(k)), _num(iw_se.get(k), digits=2)]
            for k, v in s["iw_bounds"].items()
        ],
        ["CUBO_2", _num(s["cubo2"]), None],
        ["d_2 = 2 (CUBO_2 - ELBO)", _num(s["d2"]), None],
        ["PSIS k-hat", _num(s.get("psis_khat"), digits=2), None],
        ["k-hat threshold", _num(s["psis_khat_threshold"], digits=2), None],
        ["importance ESS", f"{s['importance_ess']:,.0f}", None],
        ["draws S", s["draws"], None],
    ]
    eb = s["error_bounds"]
    coordinates = vf.chosen_coordinates(s, TABLE_ROWS)
    coords = [
        [
            c["name"],
            c.get("transform"),
            _num(c["sd"]),
            _num(c.get("mean_error")),
            _num(c.get("measured_mean_error")),
            _num(c.get("sd_error")),
            _num(c.get("measured_sd_error")),
        ]
        for c in coordinates
    ]
    start = (s.get("fit_start") or {}).get("method")
    fit = [
        ["guide", s.get("guide")],
        ["converged", "yes" if s.get("converged") else "no"],
        ["converged from step", (s.get("convergence") or {}).get("step")],
        ["steps", s.get("steps")],
        [
            "start",
            {"laplace": "MAP (Laplace)", "prior": "Pyro's (no proper MAP)"}.get(start, start),
        ],
        ["draws vectorized", "yes" if s.get("vectorized") else "no"],
    ]
    timings = dict(s.get("timings") or {})
    total = timings.pop("total", None)
    time_columns = ["fit", *(k.replace("_", " ") for k in timings), "diagnosis total"]
    time_row = [Num(s.get("fit_seconds"), unit="s"), *(Num(v, unit="s") for v in timings.values())]
    time_row.append(Num(total, unit="s"))
    return [
        Table(
            "Side by side: q against the reference"
            if has_reference
            else "Posterior summaries: q and its PSIS correction",
            [
                "element",
                "mean",
                "sd",
                "hdi 3%",
                "hdi 97%",
                "PSIS mean",
                "PSIS sd",
                "PSIS k-hat: mean / sd",
                "ref mean",
                "ref sd",
                "(mean - ref) / ref sd",
                "sd / ref sd",
                "W1 / ref sd",
                "KS",
                "status",
            ],
            side,
            note="mean and sd from all S draws of q, rounded to their Monte Carlo standard "
            "errors (as are the PSIS and reference moments and the errors); HDI: 94% "
            "highest-density interval, 3 significant digits; PSIS: the posterior moments "
            "re-estimated by Pareto-smoothed importance sampling from q's draws, and the k-hat "
            "of each estimate's own tail (w (theta - c) for the mean, w (theta - c)^2 for the "
            "variance: above the threshold, the estimate cannot check q); KS and W1 from "
            "scipy on the draws. Status applies the verdict's tolerances (which allow for the "
            "Monte Carlo error)"
            + ("" if has_reference else "; without a reference, to the PSIS moments")
            + "."
            + vf.shown_words(rows, every, "elements", ROWS_HELD),
            anchor=SIDE_BY_SIDE,
        ),
        Table(
            "Evidence bounds and importance weights",
            ["quantity", "value", "s.e."],
            evidence,
            note="ELBO <= IW bounds (rising with K) <= log p(x) <= CUBO_2; d_2 bounds the "
            "Rényi-2 divergence D_2(posterior || q).",
            anchor=EVIDENCE,
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
            note=f"Joint bounds: W1 <= {_fmt(eb.get('w1'))}, W2 <= {_fmt(eb.get('w2'))}, "
            f"||mean_q - mean_p|| <= {_fmt(eb.get('mean_error'))}, every |sd_q - sd_p| <= "
            f"{_fmt(eb.get('sd_error'))}. Coordinates are the latent sites mapped by the "
            "inverse of biject_to(support); 'measured' compares with the reference mapped "
            "the same way."
            + vf.shown_words(
                coordinates, s.get("error_bounds_per_coordinate") or [], "coordinates", ROWS_HELD
            ),
        ),
        Table(
            "Fit",
            ["quantity", "value"],
            fit,
            note=f"Convergence rule: {s.get('convergence_rule') or 'none recorded'}.",
        ),
        *_discrete_tables(s),
        *_point_estimate_tables(s),
        Table("Timings", time_columns, [time_row], anchor=TIMINGS, keep_empty=True),
    ]


TABLE_ROWS = 60  # rows of a per-element table before the rest is left to summary.json
ROWS_HELD = "summary.json holds every row"


def _discrete_tables(s: dict) -> list[Table]:
    """Each summed-out discrete site's posterior probabilities, one row per element."""
    marginals = s.get("discrete_marginals") or {}
    out = []
    for site, m in marginals.items():
        probabilities = np.asarray(m["probabilities"], dtype=float)
        support = probabilities.shape[-1]
        flat = probabilities.reshape(-1, support)
        names = element_names(site, probabilities.shape[:-1])
        rows = [
            [name, *(Num(p, digits=3) for p in row)] for name, row in zip(names, flat, strict=True)
        ]
        shown = (
            f"; the first {TABLE_ROWS} of {len(rows)} elements" if len(rows) > TABLE_ROWS else ""
        )
        out.append(
            Table(
                f"Discrete site {site}: posterior probabilities",
                ["element", *(f"p({site} = {k})" for k in range(support))],
                rows[:TABLE_ROWS],
                note=f"{site} is summed out by enumeration; p(k | x) is the PSIS-weighted average "
                f"of its exact conditional probabilities over {m['draws']:,} guide draws "
                f"(importance ESS {m['ess']:.0f}){shown}; summary.json and posterior.nc "
                "(group discrete_marginals) hold every element.",
            )
        )
    return out


def _point_estimate_tables(s: dict) -> list[Table]:
    """The model's own parameters, fitted as point estimates."""
    estimates = s.get("point_estimates") or {}
    if not estimates:
        return []
    rows = []
    for name, value in estimates.items():
        value = np.asarray(value, dtype=float)
        for element, v in zip(element_names(name, value.shape), value.ravel(), strict=True):
            rows.append([element, Num(v, digits=4)])
    return [
        Table(
            "The model's own parameters (point estimates)",
            ["parameter", "value"],
            rows[:TABLE_ROWS],
            note="pyro.param sites of the model (and a module's own weights), fitted with the "
            "guide to maximise the ELBO (type-II maximum likelihood): the posterior above, and "
            "every check of it, is conditional on these values.",
        )
    ]


def _fmt(x) -> str:
    return "inf" if x is None else f"{x:.3g}"
