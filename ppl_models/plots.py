"""Figure helpers: matplotlib figures written atomically as PNG, no display needed.

Figures are ``matplotlib.figure.Figure`` objects rendered by their own canvas, not pyplot
figures, so importing the package never changes a user's matplotlib backend (inline figures in a
notebook keep working). The models' own figures (``ppl_models.exp_normal.figures``,
``ppl_models.vae.figures``) are built with these helpers from saved run artifacts, so
``ppl-models report`` can redraw every figure without refitting.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from .runs import atomic_save

# One colour per kind of posterior, shared by every report.
COLORS = {"exact": "black", "grid": "tab:orange", "variational": "tab:blue", "joint": "tab:gray"}


DPI = 110


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (7.5, 4.2)):
    """A figure and its axes (as ``pyplot.subplots`` returns them), outside pyplot's state."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols)


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path``, atomically; returns the path. A figure laid out by
    matplotlib's constrained layout already fits its labels, so only the others are cropped to
    their drawn extent (``bbox_inches="tight"``, which draws the figure once more to measure
    it)."""
    constrained = isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    bbox = None if constrained else "tight"
    atomic_save(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches=bbox))
    return Path(path)
