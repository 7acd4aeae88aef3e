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


def _ellipse(loc: np.ndarray, cov: np.ndarray, radius: float = 2.0) -> np.ndarray:
    """Points ``(200, 2)`` of the ellipse at Mahalanobis distance ``radius`` from ``loc``."""
    t = np.linspace(0, 2 * np.pi, 200)
    return loc + radius * np.stack([np.cos(t), np.sin(t)], axis=-1) @ np.linalg.cholesky(cov).T


def grid_contours(
    path: Path,
    u: np.ndarray,
    v: np.ndarray,
    log_density: np.ndarray,
    levels: np.ndarray,
    gaussians: dict[str, tuple[np.ndarray, np.ndarray]],
    titles: list[str],
) -> Path:
    """Grid posteriors of a few images as filled highest-density regions, with Gaussians' ellipses.

    ``u``, ``v`` ``(m, g)`` are each image's grid nodes, ``log_density`` ``(m, g, g)`` its
    log-density there and ``levels`` ``(m, k)`` the log-densities bounding its highest-density
    regions (largest mass last); ``gaussians`` maps a label to means ``(m, 2)`` and covariances
    ``(m, 2, 2)``, drawn as 2-sd ellipses (86.5% of a Gaussian's mass).
    """
    m = len(u)
    fig, axes = new_figure(1, m, figsize=(3.3 * m, 3.6))
    axes = np.atleast_1d(axes)
    styles = [("tab:blue", "-"), ("tab:green", "--"), ("tab:red", ":")]
    for k, ax in enumerate(axes):
        order = np.sort(levels[k])
        ax.contourf(
            u[k], v[k], log_density[k].T, levels=[*order, log_density[k].max()], cmap="Oranges"
        )
        ax.contour(
            u[k],
            v[k],
            log_density[k].T,
            levels=order,
            colors="tab:orange",
            linewidths=0.6,
            linestyles="solid",
        )
        for (label, (loc, cov)), (color, ls) in zip(gaussians.items(), styles, strict=False):
            ring = _ellipse(loc[k], cov[k])
            ax.plot(ring[:, 0], ring[:, 1], color=color, ls=ls, lw=1.4, label=label)
        ax.set_title(titles[k], fontsize=9)
        ax.set_xlabel("z_1")
        ax.set_aspect("equal", adjustable="datalim")
    axes[0].set_ylabel("z_2")
    axes[0].legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def inference_gaps(path: Path, approximation: np.ndarray, amortization: np.ndarray) -> Path:
    """Histograms of the approximation and amortization gaps over images, means marked."""
    fig, axes = new_figure(1, 2, figsize=(8, 3.4))
    for ax, values, name, color in (
        (axes[0], approximation, "approximation gap", "tab:green"),
        (axes[1], amortization, "amortization gap", "tab:blue"),
    ):
        ax.hist(values, bins=min(30, max(5, len(values) // 3)), color=color, alpha=0.8)
        ax.axvline(values.mean(), color="black", ls="--", label=f"mean {values.mean():.3f}")
        ax.set_xlabel(f"{name} (nats)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("images")
    return save_figure(fig, path)


def iw_against_grid(
    path: Path, ks: np.ndarray, shortfall: np.ndarray, kl_best: np.ndarray | None = None
) -> Path:
    """:math:`\\log p(x) - \\mathcal L_K` against K: each image (grey) and the mean (two standard
    errors across images), on log axes; values at or below 0 (reached within Monte Carlo noise)
    are drawn at the axis floor. ``kl_best``: the best Gaussian's mean KL, for comparison."""
    fig, ax = new_figure(figsize=(6, 3.8))
    floor = 1e-4
    for row in shortfall:
        ax.plot(ks, np.maximum(row, floor), color="0.75", lw=0.6)
    mean = shortfall.mean(axis=0)
    se = shortfall.std(axis=0, ddof=1) / np.sqrt(len(shortfall)) if len(shortfall) > 1 else 0 * mean
    ax.errorbar(ks, np.maximum(mean, floor), yerr=2 * se, color="black", marker="o", label="mean")
    if kl_best is not None:
        ax.axhline(
            max(kl_best.mean(), floor), color="tab:green", ls="--", label="approximation gap"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("K (importance draws of the amortized q)")
    ax.set_ylabel("grid log p(x) - IW bound L_K (nats)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def khat_against_kl(path: Path, khat: np.ndarray, kl: np.ndarray, threshold: float) -> Path:
    """Each image's PSIS k-hat against its exact :math:`\\mathrm{KL}(q \\| p)`."""
    fig, ax = new_figure(figsize=(5.5, 3.8))
    ax.scatter(kl, khat, s=12, color="#4c72b0")
    ax.axhline(threshold, color="#c44e52", ls="--", label=f"k-hat threshold {threshold:.2f}")
    ax.set_xlabel("KL(amortized q || grid posterior), nats")
    ax.set_ylabel("PSIS k-hat")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
