"""Helpers of the documented tutorials (``docs/tutorials``): build mode, data, notes, tables.

Each tutorial starts with ``page = tutorial.setup(...)``, which reads the build mode
(``PPL_MODELS_DOCS_MODE``: ``full``, the default, or ``smoke``), finds MNIST when the page needs
it, and shows a note at the top of the page for smoke output or missing data. The data and the
run configurations are found through ``$PPL_MODELS_DATA`` and ``$PPL_MODELS_RUNS``, which the
documentation's build sets from the repository it builds; the module reads no path of a
checkout.

The documentation build reads :func:`mnist_root` too: without MNIST, the cells tagged ``mnist``
are not executed (see ``docs/conf.py``), and the note says how to get the data.
"""

from __future__ import annotations

import atexit
import html
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

MODES = ("smoke", "full")
MODE_ENV = "PPL_MODELS_DOCS_MODE"
DATA_ENV = "PPL_MODELS_DATA"  # as ppl_models.vae.data.DATA_ENV
RUNS_ENV = "PPL_MODELS_RUNS"  # the folder of the run configurations the tutorials start from
MNIST_MISSING = "MNIST not found: the MNIST cells of this page were not run"  # a note's title


def mode() -> str:
    """The build mode, ``$PPL_MODELS_DOCS_MODE``: ``full`` (the default) or ``smoke``."""
    value = os.environ.get(MODE_ENV, "full")
    if value not in MODES:
        raise ValueError(f"{MODE_ENV} must be one of {', '.join(MODES)}, got {value!r}")
    return value


def mnist_candidates() -> list[Path]:
    """Where MNIST is looked for: ``$PPL_MODELS_DATA`` (the documentation's build sets it from
    the repository it builds, ``docs/conf.py``), else torchvision's own download folder
    ``./data`` of the current folder."""
    if os.environ.get(DATA_ENV):
        return [Path(os.environ[DATA_ENV]).expanduser().absolute()]
    return [Path("data").absolute()]


def runs_dir() -> Path:
    """The folder of the run configurations (``runs/*.toml``): ``$PPL_MODELS_RUNS`` (the
    documentation's build sets it), else ``runs`` in the current folder."""
    return Path(os.environ.get(RUNS_ENV, "runs")).expanduser().absolute()


def mnist_root() -> Path | None:
    """The first candidate folder holding MNIST's test split in torchvision's layout
    (``MNIST/raw/t10k-images-idx3-ubyte[.gz]``), or ``None``."""
    for root in mnist_candidates():
        raw = root / "MNIST" / "raw"
        if any((raw / f"t10k-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz")):
            return root
    return None


def scratch_dir(prefix: str = "ppl-models-") -> Path:
    """A new temporary folder, removed when the Python process (the notebook's kernel) ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@dataclass(frozen=True)
class Page:
    """What a tutorial's first cell learns: the build mode and, for MNIST pages, the data."""

    mode: str
    mnist: Path | None

    @property
    def smoke(self) -> bool:
        """Smoke mode: every size shrunk so that the site builds in minutes."""
        return self.mode == "smoke"


def setup(mnist: bool = False) -> Page:
    """Read the build mode and find MNIST (when ``mnist``); show the notes the page needs.

    A smoke build gets a note that its numbers and pictures are smoke output. An MNIST page
    without the data gets a note saying how to get it; its MNIST cells are then skipped.
    """
    # Pyro's MCMC logger imports tqdm.auto, which in a kernel without ipywidgets warns once on
    # stderr as it is imported; imported here, quietly, it leaves the page's cells clean.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tqdm.auto  # noqa: F401

    page = Page(mode=mode(), mnist=mnist_root() if mnist else None)
    notes = []
    if page.smoke:
        notes.append(
            (
                "Smoke output",
                "This page was built in smoke mode (PPL_MODELS_DOCS_MODE=smoke): every size is "
                "cut so that the site builds in minutes, so its numbers and pictures show that "
                "the code runs, not what it achieves. <code>make docs</code> builds the full "
                "pages.",
            )
        )
    if mnist and page.mnist is None:
        looked = ", ".join(f"<code>{html.escape(str(p))}</code>" for p in mnist_candidates())
        notes.append(
            (
                MNIST_MISSING,
                f"No MNIST images were found (looked in {looked}). Download them with "
                "<code>ppl-models vae --download --data-dir data/mnist</code> from the "
                "repository, or set <code>PPL_MODELS_DATA</code> to a folder in torchvision's "
                "layout (<code>MNIST/raw/*-ubyte.gz</code>), then build the site again.",
            )
        )
    if notes:
        _display_html("".join(_admonition(title, body) for title, body in notes))
    return page


def _admonition(title: str, body: str) -> str:
    return (
        '<div class="admonition warning"><p class="admonition-title">'
        f"{html.escape(title)}</p><p>{body}</p></div>"
    )


def _display_html(markup: str) -> None:
    from IPython.display import HTML, display

    display(HTML(markup))


def table(
    rows: Sequence[Sequence],
    columns: Sequence[str],
    formats: Sequence[str | Callable | None] | None = None,
) -> str:
    """A Markdown table of ``rows``, each column's numbers in one format (``"{:.3f}"`` style
    strings or callables; ``None`` leaves a cell as text), shown as the page's table."""
    formats = list(formats) if formats is not None else [None] * len(columns)

    def cell(value, fmt) -> str:
        if fmt is None or isinstance(value, str) or value is None:
            return "—" if value is None else str(value)
        return fmt(value) if callable(fmt) else fmt.format(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        lines.append(
            "| " + " | ".join(cell(v, f) for v, f in zip(row, formats, strict=True)) + " |"
        )
    return "\n".join(lines)


def show_table(
    rows: Sequence[Sequence],
    columns: Sequence[str],
    formats: Sequence[str | Callable | None] | None = None,
    title: str = "",
) -> None:
    """Display :func:`table` (with an optional bold title) as Markdown in the notebook."""
    from IPython.display import Markdown, display

    text = table(rows, columns, formats)
    display(Markdown((f"**{title}**\n\n" if title else "") + text))
