"""Figures of a VAE run, each written atomically as a PNG (see :mod:`ppl_models.plots`).

Every builder takes plain NumPy arrays (grey levels in [0, 1], metrics records) and a path, so a
report can be rebuilt from saved files without the networks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes

from ..plots import new_figure, save_figure


def _image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """Tile ``(n, h, w)`` images into one ``(rows * h, columns * w)`` array, 1-pixel gaps."""
    n, h, w = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), 0.25)  # light grey gaps
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image
    return grid


def _show(ax: Axes, grid: np.ndarray, title: str) -> None:
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def reconstructions(path: Path, inputs: np.ndarray, recons: np.ndarray) -> Path:
    """Held-out inputs (top row) above their reconstructions (bottom row)."""
    fig, axes = new_figure(2, 1, figsize=(1.0 * len(inputs), 2.6))
    _show(axes[0], _image_grid(inputs, len(inputs)), "held-out inputs")
    _show(axes[1], _image_grid(recons, len(recons)), "reconstructions")
    return save_figure(fig, path)


def prior_samples(path: Path, images: np.ndarray) -> Path:
    """Decoded draws from the prior on a square grid."""
    columns = int(np.ceil(np.sqrt(len(images))))
    fig, ax = new_figure(figsize=(5, 5))
    _show(ax, _image_grid(images, columns), "samples from the prior, decoded")
    return save_figure(fig, path)


def interpolation(path: Path, images: np.ndarray) -> Path:
    """Rows of ``(rows, steps, h, w)`` images along straight lines in latent space."""
    rows, steps = images.shape[:2]
    fig, ax = new_figure(figsize=(0.8 * steps, 0.8 * rows + 0.4))
    _show(
        ax,
        _image_grid(images.reshape(rows * steps, *images.shape[2:]), steps),
        "latent interpolation between held-out images",
    )
    return save_figure(fig, path)


def training_curves(path: Path, metrics: list[dict]) -> Path:
    """Train and held-out ELBO per image against the epoch."""
    epochs = [m["epoch"] for m in metrics]
    fig, ax = new_figure(figsize=(6, 3.6))
    ax.plot(epochs, [m["train_elbo"] for m in metrics], "o-", label="train ELBO")
    ax.plot(epochs, [m["heldout_elbo"] for m in metrics], "s-", label="held-out ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per image (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def khat_histogram(path: Path, khat: np.ndarray, threshold: float) -> Path:
    """Distribution of the per-image Pareto k-hat with the 0.5 and reliability thresholds."""
    fig, ax = new_figure(figsize=(6, 3.6))
    ax.hist(khat, bins=min(40, max(10, len(khat) // 5)), color="#4c72b0", alpha=0.85)
    ax.axvline(0.5, color="#55a868", ls="--", label="0.5")
    ax.axvline(threshold, color="#c44e52", ls="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("PSIS k-hat of log p(x, z) - log q(z | x)")
    ax.set_ylabel("held-out images")
    ax.legend()
    return save_figure(fig, path)


def latent_map(path: Path, latent_loc: np.ndarray, labels: np.ndarray) -> Path:
    """Posterior means of a 2-D latent space, one point per held-out image, coloured by digit."""
    fig, ax = new_figure(figsize=(6, 5))
    points = ax.scatter(
        latent_loc[:, 0], latent_loc[:, 1], c=labels, cmap="tab10", s=6, vmin=-0.5, vmax=9.5
    )
    fig.colorbar(points, ax=ax, ticks=range(10), label="digit")
    ax.set_xlabel("E[z_1 | x]")
    ax.set_ylabel("E[z_2 | x]")
    return save_figure(fig, path)
