"""The model's own choices and the check of its one parameter: guide families, data-file
suffixes and the prior rate.

This module imports neither torch, Pyro nor NumPy, so a run configuration can validate its values
and the command line can list its choices without loading PyTorch. The choices every model shares
(devices, ELBO estimators) are in :mod:`ppl_models.options`.
"""

from __future__ import annotations

import math

GUIDE_FAMILIES = ("exponential", "gamma", "lognormal", "truncated-normal")
SUPPORTED_SUFFIXES = (".csv", ".npy", ".txt")


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
