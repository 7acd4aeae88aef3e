"""The configuration of ``ppl-models vae``: :class:`VaeConfig`, its defaults, choices and checks.

Torch-free (it imports neither torch, Pyro nor NumPy), so building the command line and checking
a config file load nothing heavy. The choice lists are those of :mod:`ppl_models.options` and
:mod:`ppl_models.vae.options`, the same objects the implementing code checks against. Beside the
config: the job's name in ``summary.json``, its default config file, the files its run directory
holds beyond the contract of :mod:`ppl_models.runs`, and what a resumed run may change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ...config import require
from ...options import DEVICES, ELBO_KINDS, OBJECTIVE_KINDS
from ...vae.options import ARCHS, LIKELIHOODS

MODEL = "vae"
DEFAULT_CONFIG = Path("runs/vae_mnist_conv.toml")
CHECKPOINT = "checkpoint.pt"
EVALUATION = "evaluation.npz"
GRID_COMPARISON = "grid_comparison.npz"  # latent dimension 2: exact grid posteriors and gaps
RESUME_KEYS = ("epochs",)  # the only key a resumed run may change: it can train for longer


@dataclass(frozen=True)
class VaeConfig:
    """One VAE run; the defaults are the seed notebook's network and likelihood, sized for a CPU."""

    arch: str = "conv"
    likelihood: str = "normal"
    latent_dim: int = 32
    hidden_dim: int = 400
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    elbo: str = "trace"
    particles: int = 1
    objective: str = "plain"
    device: str = "auto"
    bf16: bool = False
    seed: int = 0
    data_dir: str | None = None
    download: bool = False
    max_train_images: int = 0
    eval_images: int = 0
    iw_images: int = 100
    iw_ks: str = "1,10,100,1000,5000"
    eval_chunk: int = 16384
    posterior_draws: int = 100
    grid_images: int = 20
    grid_points: int = 401
    best_steps: int = 300
    best_particles: int = 32

    def __post_init__(self):
        require(self.arch in ARCHS, "arch", self.arch, f"one of {', '.join(ARCHS)}")
        require(
            self.likelihood in LIKELIHOODS,
            "likelihood",
            self.likelihood,
            f"one of {', '.join(LIKELIHOODS)}",
        )
        require(self.latent_dim >= 1, "latent_dim", self.latent_dim, "an integer >= 1")
        require(self.hidden_dim >= 1, "hidden_dim", self.hidden_dim, "an integer >= 1")
        require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a positive number")
        require(self.elbo in ELBO_KINDS, "elbo", self.elbo, f"one of {', '.join(ELBO_KINDS)}")
        require(self.particles >= 1, "particles", self.particles, "an integer >= 1")
        require(
            self.objective in OBJECTIVE_KINDS,
            "objective",
            self.objective,
            f"one of {', '.join(OBJECTIVE_KINDS)}",
        )
        require(self.device in DEVICES, "device", self.device, f"one of {', '.join(DEVICES)}")
        require(
            self.max_train_images >= 0,
            "max_train_images",
            self.max_train_images,
            "an integer >= 0 (0: all)",
        )
        require(
            self.eval_images == 0 or self.eval_images >= 2,
            "eval_images",
            self.eval_images,
            "0 (all held-out images) or an integer >= 2",
        )
        require(self.iw_images >= 1, "iw_images", self.iw_images, "an integer >= 1")
        require(self.eval_chunk >= 1, "eval_chunk", self.eval_chunk, "an integer >= 1")
        require(
            self.posterior_draws >= 1, "posterior_draws", self.posterior_draws, "an integer >= 1"
        )
        parse_ks(self.iw_ks)
        require(self.grid_images >= 0, "grid_images", self.grid_images, "an integer >= 0 (0: none)")
        require(
            self.latent_dim != 2 or self.grid_images <= self.iw_images,
            "grid_images",
            self.grid_images,
            f"at most iw_images ({self.iw_images}): the grid images are the first IW images "
            "(or 0: no grid posteriors)",
        )
        require(
            self.grid_points >= 5 and self.grid_points % 2 == 1,
            "grid_points",
            self.grid_points,
            "an odd integer >= 5",
        )
        require(self.best_steps >= 1, "best_steps", self.best_steps, "an integer >= 1")
        require(
            self.best_particles >= 3,
            "best_particles",
            self.best_particles,
            "an integer >= 3 (the latent dimension 2, plus 1)",
        )

    @property
    def ks(self) -> list[int]:
        """The Ks of the importance-weighted bounds, increasing; the largest sets the draws."""
        return parse_ks(self.iw_ks)


def parse_ks(text: str) -> list[int]:
    """``"1,10,100"`` -> ``[1, 10, 100]``: increasing from 1 (the ELBO), the largest >= 10
    (k-hat needs at least 10 draws per image)."""
    expected = "comma-separated increasing integers from 1 to at least 10, e.g. '1,10,100'"
    try:
        ks = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"iw_ks must be {expected}, got {text!r}") from None
    require(ks == sorted(set(ks)) and ks[0] == 1 and ks[-1] >= 10, "iw_ks", text, expected)
    return ks
