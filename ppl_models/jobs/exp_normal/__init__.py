"""Fit the exponential-normal model by SVI and report it against the grid and exact posteriors.

z ~ Exponential(rate), x_i | z ~ Normal(z, 1), guide q(z) from a chosen family (the notebook's
Exponential(theta) by default). The run writes the run-directory contract of
:mod:`ppl_models.runs`; the report is rebuilt from the saved files alone.
"""

# This docstring is the command's --help text. The job's modules: config (defaults, choices,
# validation), command (options and main), run (execute: data, fit, diagnosis, report), fitting
# (the SVI fit), analysis (the report's numbers) and report (verdict, tables, the page). The model
# itself is the ppl_models.exp_normal package. config and command import neither torch, Pyro nor
# NumPy, so they are imported here and `ppl-models exp-normal --help` stays instant; the names of
# the other modules are imported on first use.

from __future__ import annotations

import importlib

from .command import add_arguments, config_from_args, main
from .config import DEFAULT_CONFIG, MODEL, TOLERANCE, ExpNormalConfig

_LAZY = {
    "observations": "run",
    "execute": "run",
    "Fit": "fitting",
    "fit": "fitting",
    "BETAS": "fitting",
    "analyse": "analysis",
    "IW_DRAWS": "analysis",
    "build_report": "report",
    "rebuild_report": "report",
    "verdict": "report",
    "tables": "report",
}

__all__ = [
    "DEFAULT_CONFIG",
    "MODEL",
    "TOLERANCE",
    "ExpNormalConfig",
    "add_arguments",
    "config_from_args",
    "main",
    *_LAZY,
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
