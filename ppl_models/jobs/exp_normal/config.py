"""The configuration of ``ppl-models exp-normal``: every default, choice and check of a run.

This module imports neither torch, Pyro nor NumPy, so ``ppl-models exp-normal --help`` and the
validation of a run's configuration stay instant. The choices come from where they are defined:
the guide families and the rate check from :mod:`ppl_models.exp_normal.options`, the devices and
ELBO estimators from :mod:`ppl_models.options`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...config import require, require_svi_schedule
from ...exp_normal.options import GUIDE_FAMILIES, validate_rate
from ...options import ELBO_KINDS

MODEL = "exp-normal"  # the command, and summary.json's "model" (how `ppl-models report` finds it)
DEFAULT_CONFIG = Path("runs/exp_normal.toml")
# the report's (and the benchmark's) target: SVI's theta within 0.5% of the closed-form theta*
TOLERANCE = 0.005


@dataclass(frozen=True)
class ExpNormalConfig:
    """One exponential-normal run; the defaults reproduce the notebook (rate 1, N 5, seed 0)."""

    data: str | None = None
    rate: float = 1.0
    n_obs: int = 5
    seed: int = 0
    guide: str = "exponential"
    elbo: str = "trace"
    particles: int = 4096
    steps: int = 300
    lr: float = 0.1
    lr_final: float = 0.001
    average_window: float = 0.7
    device: str = "auto"
    draws: int = 4000
    grid_points: int = 4001

    def __post_init__(self):
        validate_rate(self.rate)
        require(self.n_obs >= 1, "n_obs", self.n_obs, "an integer >= 1")
        require(
            self.guide in GUIDE_FAMILIES,
            "guide",
            self.guide,
            f"one of {', '.join(GUIDE_FAMILIES)}",
        )
        require(self.elbo in ELBO_KINDS, "elbo", self.elbo, f"one of {', '.join(ELBO_KINDS)}")
        require_svi_schedule(self)
        require(self.draws >= 100, "draws", self.draws, "an integer >= 100")
        require(self.grid_points >= 101, "grid_points", self.grid_points, "an integer >= 101")
