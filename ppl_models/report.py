"""The posterior-diagnostics report: one self-contained HTML page per run.

A job describes its report as a title, a plain-words verdict, tables and figures; this module
embeds the figures (base64 PNG), appends the provenance read from the run directory
(``config.toml``, ``env.json``, each when present) and writes ``report.html`` atomically.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .runs import atomic_write_text


@functools.cache
def _templates():
    # jinja2 on first use: the command line imports the report's dataclasses, not the renderer
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("ppl_models", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )


@dataclass(frozen=True)
class Table:
    """A table of the report: ``rows`` are lists of cells (numbers are formatted for display)."""

    title: str
    columns: list[str]
    rows: list[list]
    note: str = ""


@dataclass(frozen=True)
class Figure:
    """A PNG file of the run, embedded in the page with a caption."""

    title: str
    path: Path
    caption: str = ""


@dataclass(frozen=True)
class Report:
    """A whole report: title, verdict paragraphs in plain words, tables and figures."""

    title: str
    verdict: list[str]
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def format_cell(value) -> str:
    """Numbers to 6 significant digits (integers as they are); anything else as text."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.6g}"
    return str(value)


def write_report(run_dir: Path, report: Report) -> Path:
    """Render ``report`` into ``run_dir/report.html`` and return its path."""
    run_dir = Path(run_dir)
    env_path = run_dir / "env.json"
    env = json.loads(env_path.read_text()) if env_path.exists() else {}
    config_path = run_dir / "config.toml"
    config_text = config_path.read_text() if config_path.exists() else "(no config.toml)"
    figures = [
        {
            "title": fig.title,
            "caption": fig.caption,
            "data": base64.b64encode(Path(fig.path).read_bytes()).decode("ascii"),
        }
        for fig in report.figures
    ]
    tables = [
        {
            "title": t.title,
            "columns": t.columns,
            "rows": [[format_cell(c) for c in row] for row in t.rows],
            "note": t.note,
        }
        for t in report.tables
    ]
    template = _templates().get_template("report.html.j2")
    html = template.render(
        title=report.title,
        verdict=report.verdict,
        tables=tables,
        figures=figures,
        config_text=config_text,
        env=env,
        run_dir=str(run_dir),
    )
    out = run_dir / "report.html"
    atomic_write_text(out, html)
    return out
