"""Sphinx configuration of the ppl_models documentation.

Tutorials are MyST markdown notebooks (``docs/tutorials/*.md``) executed at every build against
the installed package; the API reference is generated from the NumPy-style docstrings, one page
per module, written by autosummary into ``api/generated/`` at every build (nothing there is kept
by hand or committed). The build needs no network: no intersphinx, and MathJax is served from
the built site itself when the ``sphinx-mathjax-offline`` package is installed.

``PPL_MODELS_DOCS_MODE=full`` (the default, and what ``make docs`` builds) runs the tutorials at
the sizes whose numbers and pictures the pages discuss, within about 10 minutes on a 2-core CPU;
``smoke`` shrinks every size for quick local iteration, and its pages say they are smoke output.

MNIST is found by :func:`ppl_models.tutorial.mnist_root` from ``$PPL_MODELS_DATA``, which this
file sets, when it is unset, to the repository's ``data/mnist`` or ``../shared/data/mnist`` beside
it (the package itself knows nothing of the repository's layout); ``$PPL_MODELS_RUNS`` points the
tutorials at the repository's ``runs/`` the same way. Without it the cells tagged ``mnist``
are not executed (a ``skip-execution`` tag is added as each page is read), and each MNIST page
shows a note at its top saying how to get the data, so a fresh clone builds the whole site.

Every tutorial is also offered as a Jupyter notebook: ``tutorials/_ipynb/NAME.ipynb`` is written
from its MyST source before the build reads the pages.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import ppl_models
from ppl_models import tutorial

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

# -- the two build modes ----------------------------------------------------------------------

MODES = ("smoke", "full")
os.environ.setdefault("PPL_MODELS_DOCS_MODE", "full")
DOCS_MODE = tutorial.mode()  # validates the value
REPO = DOCS.parent
# what the tutorials' kernels find through the environment (set by setup(), for the build only)
BUILD_ENVIRONMENT = {"PPL_MODELS_RUNS": str(REPO / "runs")}
for _candidate in (REPO / "data" / "mnist", REPO.parent / "shared" / "data" / "mnist"):
    if "PPL_MODELS_DATA" not in os.environ and (_candidate / "MNIST" / "raw").is_dir():
        BUILD_ENVIRONMENT["PPL_MODELS_DATA"] = str(_candidate)
        break
MNIST = (
    Path(BUILD_ENVIRONMENT["PPL_MODELS_DATA"])
    if "PPL_MODELS_DATA" in BUILD_ENVIRONMENT
    else (tutorial.mnist_root())
)

# -- project ----------------------------------------------------------------------------------

project = "ppl_models"
author = "the ppl_models authors"
copyright = "the ppl_models authors"  # noqa: A001  (Sphinx's name)
release = ppl_models.__version__
version = release

# -- extensions -------------------------------------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "api_pages",  # _ext/api_pages.py: re-exports listed and resolved
]
# MathJax 3 bundled into _static/mathjax, so formulas render without a CDN (offline viewing).
# Without the package the pages still build, and load MathJax from its CDN when viewed.
if importlib.util.find_spec("sphinx-mathjax-offline") is not None:
    extensions.append("sphinx-mathjax-offline")

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "_templates",
    "jupyter_execute",
    "**.ipynb_checkpoints",
    "tutorials/_generated",
    "tutorials/_ipynb",
]

# -- MyST and MyST-NB ---------------------------------------------------------------------------

myst_enable_extensions = ["amsmath", "dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Execute every notebook at every build, so no page shows outputs of older code. (A cache keyed
# on the cells' source would miss changes in the package and in PPL_MODELS_DOCS_MODE.)
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_show_tb = True
# Per cell. Smoke cells take seconds; a full-mode VAE training cell several minutes on a CPU.
nb_execution_timeout = 600 if DOCS_MODE == "smoke" else 3600
nb_execution_allow_errors = False
nb_merge_streams = True
# Markdown outputs (the tutorials' tables, ppl_models.tutorial.show_table) are parsed as MyST,
# which has tables; CommonMark, the default, has none.
nb_render_markdown_format = "myst"
# A warning (a NumPy RuntimeWarning, a deprecation) printed by a cell fails the build under -W:
# a tutorial must run cleanly. Cells whose stderr is known noise carry the `remove-stderr` tag
# (the import cells: tqdm warns at import in a kernel without ipywidgets).
nb_output_stderr = "warn"

# -- the API reference: autosummary, autodoc and napoleon ------------------------------------

# api/index.md holds one recursive autosummary of the package; at every build it writes one page
# per module (package or not, found by walking the package, so a new or moved module needs no
# docs edit) from _templates/autosummary/module.rst into API_PAGES, which git ignores.
API_PAGES = DOCS / "api" / "generated"
autosummary_generate = True
autosummary_ignore_module_all = True  # a package's __all__ re-exports are not its own members
# a reference to a re-export ({func}`ppl_models.fit_svi`) links to where the object is documented
reexports_packages = ["ppl_models"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True

# -- HTML -------------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = f"ppl_models {release}"
html_static_path = ["_static"]
# a wider content column: code and outputs up to about 100 characters fit without scrolling
html_css_files = ["wide.css"]
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "home_page_in_toc": True,
}
html_last_updated_fmt = None
# a mode from the start: without one, the theme's script logs a console error on a first visit
html_context = {"default_mode": "light"}


# -- checks -----------------------------------------------------------------------------------


def _fail_on_error_outputs(app, doctree):
    """Warn (an error under -W) for every traceback in an executed page's outputs.

    MyST-NB raises only when a cell's execution fails. An exception that IPython catches and
    prints, for example one raised while a figure is rendered for display, leaves an error
    output behind in a cell that "succeeded"; this turns it into a build failure.
    """
    from docutils import nodes
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    for node in doctree.findall(nodes.literal_block):
        if {"output", "traceback"} <= set(node.get("classes", [])):
            logger.warning(
                "a cell output holds a traceback:\n%s", node.astext()[-2000:], location=node
            )


CELL_TAGS = re.compile(r"^(```\{code-cell\}[^\n]*\n:tags: *\[)([^\]]*)\]", re.M)


def _skip_mnist_cells(app, docname, source):
    """Without MNIST, tag each code cell tagged ``mnist`` ``skip-execution`` as it is read."""
    if MNIST is not None or not docname.startswith("tutorials/"):
        return

    def tag(match: re.Match) -> str:
        tags = [t.strip() for t in match.group(2).split(",")]
        if "mnist" in tags:
            tags.append("skip-execution")
        return match.group(1) + ", ".join(tags) + "]"

    source[0] = CELL_TAGS.sub(tag, source[0])


def _write_notebooks(app):
    """Each tutorial as ``tutorials/_ipynb/NAME.ipynb``, for the pages' download links."""
    import nbformat
    from myst_nb.core.read import read_myst_markdown_notebook

    out = DOCS / "tutorials" / "_ipynb"
    out.mkdir(exist_ok=True)
    for page in sorted((DOCS / "tutorials").glob("*.md")):
        notebook = read_myst_markdown_notebook(page.read_text())
        notebook.metadata.pop("jupytext", None)
        text = nbformat.writes(notebook)
        target = out / f"{page.stem}.ipynb"
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is gone
        return False


def _clear_stale_api_pages(app):
    """Empty ``api/generated`` when a module that has a page there was moved or removed.

    Autosummary reads its own earlier pages too: a package page that still lists the module
    would fail to import it (a warning), and the module's page would linger as an orphan.
    Otherwise the pages stay, so that autosummary rewrites (and Sphinx rereads) only those whose
    text changed.
    """
    if not all(_module_exists(page.stem) for page in API_PAGES.glob("*.rst")):
        shutil.rmtree(API_PAGES)


def setup(app):
    for key, value in BUILD_ENVIRONMENT.items():  # the tutorials' kernels inherit them
        os.environ.setdefault(key, value)
    # before autosummary's own builder-inited handler (priority 500) writes the pages
    app.connect("builder-inited", _clear_stale_api_pages, priority=400)
    app.connect("builder-inited", _write_notebooks)
    app.connect("source-read", _skip_mnist_cells)
    app.connect("doctree-read", _fail_on_error_outputs)
