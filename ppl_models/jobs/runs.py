"""List the runs under a folder: time, job, model, guide, verdict, seconds.

Every run directory under ``DIR`` (default ``runs/``) that holds a ``summary.json`` is one line,
oldest first: when it was made (``env.json``), the job that made it, the model and guide it
fitted, its verdict (or that it failed), the seconds it took, and where it is. A folder without
``summary.json`` is a run in progress or one that ended before writing it; ``--all`` lists those
too. Reads the run files only (no torch).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..runs import DEFAULT_ROOT, STATUS_COMPLETE

STAMP = re.compile(r"^(\d{8})-(\d{6})(?:-\d+)?$")
COLUMNS = ("time", "job", "model", "guide", "verdict", "seconds", "run")


@dataclass
class RunInfo:
    """One run directory as ``ppl-models runs`` and ``ppl-models compare`` see it."""

    path: Path
    time: str
    job: str
    model: str
    guide: str
    verdict: str
    seconds: float | None
    status: str
    summary: dict = field(default_factory=dict, repr=False)


def _read(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _time(run: Path) -> str:
    created = _read(run / "env.json").get("created")
    if created:
        try:
            return datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z").strftime("%Y-%m-%d %H:%M")
        except ValueError:
            pass
    match = STAMP.match(run.name)
    if match:
        return datetime.strptime("".join(match.groups()), "%Y%m%d%H%M%S").strftime("%Y-%m-%d %H:%M")
    marker = run / "summary.json" if (run / "summary.json").exists() else run
    return datetime.fromtimestamp(marker.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


def _describe(summary: dict, config: dict) -> tuple[str, str, str, float | None]:
    """(job, model, guide, seconds) from a run's summary and configuration."""
    job = summary.get("model") or _job_of_config(config)
    if job == "fit":
        script = summary.get("script") or config.get("script") or ""
        model = Path(script).stem if script else "model script"
        guide = summary.get("guide") or config.get("guide") or "?"
        seconds = _sum(summary.get("fit_seconds"), (summary.get("timings") or {}).get("total"))
    elif job == "exp-normal":
        n = (summary.get("observations") or {}).get("count")
        model = "exp-normal" + (f" (N {n})" if n else "")
        guide = summary.get("guide") or config.get("guide") or "?"
        seconds = _sum(summary.get("fit_seconds"), (summary.get("timings") or {}).get("total"))
    elif job == "vae":
        model = f"{summary.get('arch', '?')} VAE, latent {summary.get('latent_dim', '?')}"
        guide = "amortized encoder"
        per_epoch, epochs = summary.get("seconds_per_epoch"), summary.get("epochs")
        train = per_epoch * epochs if per_epoch is not None and epochs else None
        seconds = _sum(train, summary.get("eval_seconds"))
    else:
        model = str(config.get("script") or "?")
        guide = str(summary.get("guide") or config.get("guide") or "?")
        seconds = None
    return job, model, guide, seconds


def _job_of_config(config: dict) -> str:
    """The job of a run whose summary does not say (it failed early), from its config's keys."""
    if "script" in config:
        return "fit"
    if "n_obs" in config:
        return "exp-normal"
    if "arch" in config:
        return "vae"
    return "?"


def _sum(*parts) -> float | None:
    known = [p for p in parts if isinstance(p, int | float)]
    return float(sum(known)) if known else None


def _flat_config(run: Path) -> dict:
    """``config.toml``'s keys (one table flattened), or {} when it is missing or unreadable."""
    import tomllib

    try:
        data = tomllib.loads((run / "config.toml").read_text())
    except (OSError, ValueError):
        return {}
    flat = {}
    for key, value in data.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def read_run(run: Path) -> RunInfo:
    """What ``summary.json``, ``env.json`` and ``config.toml`` say about the run at ``run``."""
    run = Path(run)
    summary = _read(run / "summary.json")
    status = summary.get("status") or ("incomplete" if not summary else "?")
    job, model, guide, seconds = _describe(summary, _flat_config(run))
    if not summary:
        verdict = "no summary.json"
    elif status != STATUS_COMPLETE:
        verdict = f"{status}: {summary.get('error', '')}".rstrip(": ")
    else:
        verdict = summary.get("verdict") or "—"
    return RunInfo(run, _time(run), job, model, guide, verdict, seconds, status, summary)


def find_runs(root: Path, include_incomplete: bool = False) -> list[RunInfo]:
    """Every run directory under ``root`` (``root`` itself when it is one), oldest first.

    Raises ``FileNotFoundError`` when ``root`` does not exist, ``NotADirectoryError`` when it
    is a file."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"runs folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root} (expected a folder of runs)")
    folders = {p.parent for p in root.rglob("summary.json")}
    if include_incomplete:
        folders |= {p.parent for p in root.rglob("config.toml")}
    runs = [read_run(folder) for folder in folders if "figures" not in folder.parts]
    return sorted(runs, key=lambda r: (r.time, str(r.path)))


def format_table(runs: list[RunInfo], root: Path) -> str:
    """The runs as aligned text columns (:data:`COLUMNS`)."""
    rows = [list(COLUMNS)]
    for r in runs:
        try:
            where = str(r.path.relative_to(root))
        except ValueError:
            where = str(r.path)
        verdict = r.verdict if len(r.verdict) <= 60 else r.verdict[:57] + "..."
        seconds = _seconds(r.seconds)
        rows.append([r.time, r.job, r.model, r.guide, verdict, seconds, where or "."])
    widths = [max(len(row[j]) for row in rows) for j in range(len(COLUMNS))]
    right = {COLUMNS.index("seconds")}
    lines = [
        "  ".join(
            cell.rjust(widths[j]) if j in right else cell.ljust(widths[j])
            for j, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def _seconds(t: float | None) -> str:
    if t is None:
        return "—"
    return f"{t:.1f}" if t < 10 else f"{t:,.0f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``ppl-models runs``'s arguments."""
    parser.add_argument(
        "root",
        nargs="?",
        type=Path,
        default=DEFAULT_ROOT,
        metavar="DIR",
        help=f"folder to look for runs in (default {DEFAULT_ROOT}/)",
    )
    parser.add_argument("--all", action="store_true", help="also list folders without summary.json")


def main(args: argparse.Namespace) -> int:
    """Print the runs under ``DIR``; returns 0 (also when there are none, which it says)."""
    runs = find_runs(args.root, include_incomplete=args.all)
    if not runs:
        print(f"no runs under {args.root}")
        return 0
    print(format_table(runs, Path(args.root)))
    return 0
