"""What the command line checks before anything heavy is imported: guide families, ELBO
estimators, data-file suffixes and the prior rate.

This module imports neither torch, Pyro nor NumPy, so ``ppl-models exp-normal --help`` and the
run configuration's validation stay instant (:mod:`ppl_models.jobs.exp_normal` uses it).
"""

from __future__ import annotations

import math

MODEL = "exp-normal"  # the command, and summary.json's "model" (how `ppl-models report` finds it)
GUIDE_FAMILIES = ("exponential", "gamma", "lognormal", "truncated-normal")
SUPPORTED_SUFFIXES = (".csv", ".npy", ".txt")
# The estimators of :func:`ppl_models.svi.make_elbo` (``svi.ELBO_KINDS``, which imports torch);
# tests/test_exp_normal_job.py checks that the two agree.
ELBO_KINDS = ("trace", "meanfield")


def validate_rate(rate) -> float:
    """Return the prior rate as a float; it must be finite and positive.

    Raises
    ------
    ValueError
        ``"rate must be a positive finite number, got -1.0"`` and the like.
    """
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"rate must be a positive finite number, got {rate!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"rate must be a positive finite number, got {value}")
    return value


def _check_family(family: str) -> None:
    if family not in GUIDE_FAMILIES:
        raise ValueError(f"unknown guide family {family!r}; expected one of {GUIDE_FAMILIES}")
