"""Sphinx configuration of the ppl_models documentation.

Tutorials are MyST markdown notebooks (``docs/tutorials/*.md``) executed at every build against
the installed package; the API reference is generated from the NumPy-style docstrings. The build
needs no network: no intersphinx, and MathJax is served from the built site itself when the
``sphinx-mathjax-offline`` package is installed.

``PPL_MODELS_DOCS_MODE=smoke`` (what ``make docs`` sets unless told otherwise) makes every tutorial
shrink its sizes so the whole site builds on a 2-core CPU in a few minutes; ``full`` (the default
here) runs them at the sizes whose numbers the pages discuss.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import ppl_models

DOCS = Path(__file__).resolve().parent

# -- the two build modes ----------------------------------------------------------------------

MODES = ("smoke", "full")
DOCS_MODE = os.environ.setdefault("PPL_MODELS_DOCS_MODE", "full")
if DOCS_MODE not in MODES:
    raise ValueError(f"PPL_MODELS_DOCS_MODE must be one of {', '.join(MODES)}, got {DOCS_MODE!r}")

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
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
# MathJax 3 bundled into _static/mathjax, so formulas render without a CDN (offline viewing).
# Without the package the pages still build, and load MathJax from its CDN when viewed.
if importlib.util.find_spec("sphinx-mathjax-offline") is not None:
    extensions.append("sphinx-mathjax-offline")

exclude_patterns = [
    "_build",
    "jupyter_execute",
    "**.ipynb_checkpoints",
    "tutorials/_generated",
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
# A warning (a NumPy RuntimeWarning, a deprecation) printed by a cell fails the build under -W:
# a tutorial must run cleanly. Cells whose stderr is known noise carry the `remove-stderr` tag
# (the import cells: tqdm warns at import in a kernel without ipywidgets).
nb_output_stderr = "warn"

# -- autodoc and napoleon ---------------------------------------------------------------------

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
html_static_path: list[str] = []
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "home_page_in_toc": True,
}
html_last_updated_fmt = None


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


def setup(app):
    app.connect("doctree-read", _fail_on_error_outputs)
