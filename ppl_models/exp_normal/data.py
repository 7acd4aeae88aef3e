r"""Observations of the exponential-normal model: validation, files, simulation.

Observations are a float64 vector :math:`x_{1:N}`; the closed forms need only its sufficient
statistics (count, sum, mean and centred sum of squares), computed once by :func:`_stats`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .options import SUPPORTED_SUFFIXES, validate_rate


def validate_observations(x) -> np.ndarray:
    """Check observations and return them as a float64 1-D array.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Observations, shape ``(N,)`` or ``(N, 1)``.

    Raises
    ------
    ValueError
        If ``x`` is empty, has another shape, or holds NaN/inf (the message names the first bad
        0-based row and its value).
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"observations must be numbers: {err}") from None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"observations must be 1-D (or shape (N, 1)), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("observations are empty: need at least one value")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"observation at row {bad[0]} is not finite: {arr[bad[0]]}")
    return arr


def load_observations(path: str | Path) -> np.ndarray:
    """Read observations from ``.csv``/``.txt`` (one number per line) or ``.npy``.

    Text files: blank lines are skipped; every other line must be one finite number (no header).
    ``.npy`` files hold a 1-D array or shape ``(N, 1)``.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(N,)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For an unsupported suffix, a line that is not a finite number (naming its 1-based line
        number and text), a bad array shape, or no observations.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"unsupported observations file {str(path)!r}: suffix {suffix!r} is not one of "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"observations file not found: {path}")
    if suffix == ".npy":
        return validate_observations(np.load(path, allow_pickle=False))
    values = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"{path}: line {number} is not a finite number: {text!r}")
        values.append(value)
    if not values:
        raise ValueError(f"{path}: no observations found")
    return validate_observations(values)


def simulate(rate: float, n_obs: int, seed: int) -> tuple[float, np.ndarray]:
    r"""Draw :math:`z \sim \mathrm{Exp}(\lambda)` and :math:`x_{1:N} \sim \mathcal{N}(z, 1)`.

    Uses torch's global RNG in float32 exactly as the notebook does, so ``simulate(1.0, 5, 0)``
    reproduces its data. Note that this reseeds torch's global generator.

    Returns
    -------
    z : float
    x : numpy.ndarray
        float64, shape ``(n_obs,)``.
    """
    rate = validate_rate(rate)
    if int(n_obs) != n_obs or n_obs < 1:
        raise ValueError(f"n_obs must be a positive integer, got {n_obs}")
    torch.manual_seed(seed)
    z = torch.distributions.Exponential(torch.tensor(rate, dtype=torch.float32)).sample()
    x = torch.distributions.Normal(z, 1.0).sample((int(n_obs),))
    return float(z), x.double().numpy()


class _Stats(NamedTuple):
    """Sufficient statistics: count, sum, mean and centred sum of squares ``sum (x - mean)^2``."""

    n: int
    total: float
    mean: float
    ss: float


def _stats(x) -> _Stats:
    arr = validate_observations(x)
    mean = float(arr.mean())
    return _Stats(arr.size, float(arr.sum()), mean, float(np.sum((arr - mean) ** 2)))
