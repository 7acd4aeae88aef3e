"""The posterior-diagnostics report: one self-contained HTML page per run.

A job describes its report as a :class:`Report`: a title; the first screen (a :class:`Badge`
with the verdict in colour and words and one sentence on why, the steps to take next, the
:class:`KeyNumber` s that matter, each linking down to its section, and room for more
first-screen tables); collapsible :class:`Details` (the rules, the notes); tables and figures.
This module embeds the figures (base64 PNG), appends the provenance read from the run directory
(``config.toml``, ``env.json``, each when present) and writes ``report.html`` atomically.

Numbers are printed as a statistician prints them (:func:`format_number`): rounded to what their
Monte Carlo standard error supports where one is known (a :class:`Num` carries it), else to three
significant digits; times in seconds (:func:`format_seconds`). A table column that is empty in
every row is left out.
"""

from __future__ import annotations

import base64
import functools
import html as html_lib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .runs import atomic_write_text

LEVELS = ("good", "warn", "bad", "info")  # the badge's and the key numbers' colours
EMPTY = "—"
MAX_DIGITS = 6  # never more significant digits than this, whatever the standard error says


@functools.cache
def _templates():
    # jinja2 on first use: the command line imports the report's dataclasses, not the renderer
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ppl_models", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["code"] = inline_code
    env.filters["anchor"] = anchor
    return env


# ----------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class Num:
    """A number and the precision it deserves.

    Attributes
    ----------
    value
        The number (None prints as a dash).
    se
        Its Monte Carlo standard error, when known: the number is rounded to the decimal place
        of the error's first significant digit (as ArviZ's ``round_to`` would be set by hand).
    digits
        Significant digits where no error is known.
    unit
        ``"s"`` prints the value as seconds (:func:`format_seconds`).
    """

    value: float | int | None
    se: float | None = None
    digits: int = 3
    unit: str = ""

    def __str__(self) -> str:
        if self.unit == "s":
            return format_seconds(self.value)
        return format_number(self.value, se=self.se, digits=self.digits)


def _decimals_for(x: float, digits: int) -> int:
    """Decimal places that show ``digits`` significant digits of ``x``."""
    return max(0, digits - 1 - math.floor(math.log10(abs(x))))


def format_number(value, se: float | None = None, digits: int = 3) -> str:
    """``value`` rounded to what its standard error ``se`` supports, else to ``digits``
    significant digits; an integer part is never rounded away (1234.5 prints as 1235, not
    1.23e+03), and very large or very small magnitudes print in scientific notation.

    Examples: ``format_number(6.04685) == "6.05"``, ``format_number(0.00284513) == "0.00285"``,
    ``format_number(-33.91676, se=0.0045) == "-33.917"``.
    """
    if value is None:
        return EMPTY
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    x = float(value)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    if se is not None and math.isfinite(se) and se > 0:
        decimals = max(0, -math.floor(math.log10(se)))
        # at most MAX_DIGITS significant digits, and at least one
        decimals = min(decimals, _decimals_for(x, MAX_DIGITS))
        if magnitude < -decimals:  # the error swamps the value: say so with one digit
            decimals = _decimals_for(x, 1)
    else:
        decimals = _decimals_for(x, digits)
    if abs(x) >= 1e6 or magnitude < -4:
        return f"{x:.{max(digits, 1) - 1}e}"
    return f"{x:.{decimals}f}"


def format_seconds(seconds) -> str:
    """Seconds as a person reads them: ``<0.01 s``, ``0.09 s``, ``4.3 s``, ``88 s``,
    ``12 min 5 s``, ``2 h 3 min``."""
    if seconds is None:
        return EMPTY
    t = float(seconds)
    if not math.isfinite(t):
        return EMPTY
    if t < 0.01:
        return "<0.01 s"
    if t < 1:
        return f"{t:.2f} s"
    if t < 10:
        return f"{t:.1f} s"
    if t < 600:
        return f"{t:.0f} s"
    if t < 3600:
        minutes, rest = divmod(round(t), 60)
        return f"{minutes} min {rest} s"
    hours, rest = divmod(round(t), 3600)
    return f"{hours} h {rest // 60} min"


def format_cell(value) -> str:
    """A table cell as text: a :class:`Num` as it says, a float to 3 significant digits,
    integers as they are (thousands separated from 10,000), None as a dash."""
    if value is None:
        return EMPTY
    if isinstance(value, Num):
        return str(value)
    if isinstance(value, bool | int | float):
        return format_number(value)
    return str(value)


_CODE = re.compile(r"`([^`]+)`")


def inline_code(text: str):
    """Escape ``text`` for HTML and show its ```backticked``` spans as ``<code>``."""
    from markupsafe import Markup

    escaped = html_lib.escape(str(text), quote=False)
    return Markup(_CODE.sub(r"<code>\1</code>", escaped))


# ----------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Table:
    """A table of the report: ``rows`` are lists of cells (numbers are formatted for display,
    :func:`format_cell`). ``anchor``: the id that links point at (from the title when empty).
    Columns empty in every row (None) are left out unless ``keep_empty``."""

    title: str
    columns: list[str]
    rows: list[list]
    note: str = ""
    anchor: str = ""
    keep_empty: bool = False


@dataclass(frozen=True)
class Figure:
    """A PNG file of the run, embedded in the page with a caption."""

    title: str
    path: Path
    caption: str = ""
    anchor: str = ""


@dataclass(frozen=True)
class Badge:
    """The verdict at a glance: ``label`` in words (``TRUSTWORTHY``), ``level`` its colour (one of
    :data:`LEVELS`), ``meaning`` what the label allows, ``why`` one sentence on why."""

    label: str
    level: str
    meaning: str = ""
    why: str = ""


@dataclass(frozen=True)
class KeyNumber:
    """One of the numbers that matter, on the first screen: ``value`` (text or :class:`Num`),
    ``detail`` (its threshold, say), ``href`` the section it links down to, ``level`` its colour."""

    name: str
    value: object
    detail: str = ""
    href: str = ""
    level: str = "info"


@dataclass(frozen=True)
class Details:
    """A collapsible section (``<details>``): the rules, the notes, every finding."""

    title: str
    paragraphs: list[str]
    open: bool = False


@dataclass(frozen=True)
class Report:
    """A whole report.

    ``verdict`` paragraphs are shown on the first screen when there is no ``badge`` (a job that
    has not moved to the badge yet); with a badge they go into a collapsible section.
    ``first_screen`` tables are shown on the first screen, under the key numbers.
    """

    title: str
    verdict: list[str]
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    badge: Badge | None = None
    next_steps: list[str] = field(default_factory=list)
    key_numbers: list[KeyNumber] = field(default_factory=list)
    details: list[Details] = field(default_factory=list)
    first_screen: list[Table] = field(default_factory=list)


def anchor(title: str) -> str:
    """The id of a section titled ``title``: lower case, words joined by hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def _table(t: Table) -> dict:
    keep = [
        j
        for j in range(len(t.columns))
        if j == 0 or t.keep_empty or any(j < len(row) and row[j] is not None for row in t.rows)
    ]
    if not t.rows:
        keep = list(range(len(t.columns)))
    return {
        "title": t.title,
        "anchor": t.anchor or anchor(t.title),
        "columns": [t.columns[j] for j in keep],
        "rows": [[format_cell(row[j]) for j in keep] for row in t.rows],
        "note": t.note,
    }


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
            "anchor": fig.anchor or "figure-" + anchor(fig.title),
            "data": base64.b64encode(Path(fig.path).read_bytes()).decode("ascii"),
        }
        for fig in report.figures
    ]
    tables = [_table(t) for t in report.tables]
    if report.badge is not None and report.badge.level not in LEVELS:
        raise ValueError(f"badge level must be one of {LEVELS}, got {report.badge.level!r}")
    key_numbers = [
        {
            "name": k.name,
            "value": format_cell(k.value),
            "detail": k.detail,
            "href": k.href,
            "level": k.level if k.level in LEVELS else "info",
        }
        for k in report.key_numbers
    ]
    contents = [(t["anchor"], t["title"]) for t in tables]
    if figures:
        contents.append(("figures", "Figures"))
    contents.append(("provenance", "Provenance"))
    template = _templates().get_template("report.html.j2")
    html = template.render(
        title=report.title,
        verdict=report.verdict,
        badge=report.badge,
        next_steps=report.next_steps,
        key_numbers=key_numbers,
        details=report.details,
        first_screen=[_table(t) for t in report.first_screen],
        tables=tables,
        figures=figures,
        contents=contents,
        config_text=config_text,
        env=env,
        run_dir=str(run_dir),
    )
    out = run_dir / "report.html"
    atomic_write_text(out, html)
    return out
