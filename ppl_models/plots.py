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

from .runs import atomic_save

# One colour per kind of posterior, shared by every report.
COLORS = {"exact": "black", "grid": "tab:orange", "variational": "tab:blue", "joint": "tab:gray"}


DPI = 110


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (7.5, 4.2)):
    """A figure and its axes (as ``pyplot.subplots`` returns them), outside pyplot's state."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols)


def fixed_layout(
    fig: Figure, nrows: int, ncols: int, *, left, right, bottom, top, wspace, hspace
) -> None:
    """Place a grid of ``nrows`` x ``ncols`` panels with margins and gaps given in inches, so
    that labels of a known size fit at any size of the grid without a layout engine (which
    draws a many-panel figure more than once to measure it)."""
    width, height = fig.get_size_inches()
    panel_w = (width - left - right - (ncols - 1) * wspace) / ncols
    panel_h = (height - bottom - top - (nrows - 1) * hspace) / nrows
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wspace / panel_w,
        hspace=hspace / panel_h,
    )


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path``, atomically; returns the path. The figure is saved as
    laid out (by matplotlib's constrained layout or :func:`fixed_layout`), drawn once."""
    atomic_save(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return Path(path)
