"""The report's section on exact grid posteriors of a latent-2 VAE: summary, words, tables, figures.

Built from a :class:`~ppl_models.vae.gaps.GridComparison` (``grid_comparison.npz`` of the run) and
the summary's ``grid_*`` keys, so ``ppl-models report`` redraws it without the networks.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...report import Figure, Table
from ...vae import figures
from ...vae.evaluate import mean_and_se
from ...vae.gaps import METHODS, QUANTILES, GridComparison

QUADRATURE_WARNING = 1e-3  # nats: a grid whose log Z moves more than this under halving is coarse
SUMMARY_KEYS = ("mean", "sd", "hdi_3%", "hdi_97%", "ess_bulk")  # ArviZ's names of SUMMARY_STATS


def summary(c: GridComparison, grid_points: int) -> dict:
    """The ``grid_*`` keys of ``summary.json``: per-image averages with standard errors across
    images (which include each image's Monte Carlo error), per-K bounds, the k-hat check, and
    the ArviZ summaries of the figures' images."""

    def both(name: str, values: np.ndarray) -> dict:
        mean, se = mean_and_se(values)
        return {f"grid_{name}": mean, f"grid_{name}_se": se}

    ks = [str(int(k)) for k in c.iw_k]
    shortfall = [mean_and_se(col) for col in c.iw_shortfall.T]
    prediction = c.khat_prediction()
    worse = c.amortization_gap < -3 * c.amortization_gap_se
    out = {
        "grid_images": len(c.log_evidence),
        "grid_points": grid_points,
        "grid_draws": int(c.draws),
        "grid_log_z_error_max": float(c.log_z_error.max()),
        **both("log_evidence", c.log_evidence),
        **both("elbo_amortized", c.elbo_amortized),
        **both("elbo_best", c.elbo_best),
        **both("elbo_best_full", c.elbo_best_full),
        **both("kl_amortized", c.kl_amortized),
        **both("kl_best_full", c.kl_best_full),
        **both("approximation_gap", c.approximation_gap),
        **both("amortization_gap", c.amortization_gap),
        "grid_iw_bounds": {k: float(v) for k, v in zip(ks, c.iw_bound.mean(axis=0), strict=True)},
        "grid_iw_shortfall": {k: m for k, (m, _) in zip(ks, shortfall, strict=True)},
        "grid_iw_shortfall_se": {k: se for k, (_, se) in zip(ks, shortfall, strict=True)},
        "grid_khat_threshold": c.khat_threshold,
        "grid_khat_spearman": prediction["spearman"],
        "grid_khat_spearman_p": prediction["spearman_p"],
        "grid_worst_images": prediction["worst_images"],
        "grid_khat_flagged_worst": prediction["flagged_among_worst"],
        "grid_khat_flagged_rest": prediction["flagged_among_rest"],
        "grid_best_worse_images": int(worse.sum()),
        "grid_seconds": float(c.seconds[0]),
        "grid_best_seconds": float(c.seconds[1]),
        "grid_figure_summaries": {str(int(i)): _image_summaries(c, i) for i in c.figure_index},
    }
    return out


def _image_summaries(c: GridComparison, i: int) -> dict:
    """Image ``i``'s ArviZ summaries per method and coordinate, and the grid's exact moments and
    quantiles (``grid-quadrature``)."""
    out = {
        method: {
            f"z_{d + 1}": dict(zip(SUMMARY_KEYS, map(float, c.summaries[i, m, d]), strict=True))
            for d in range(2)
        }
        for m, method in enumerate(METHODS)
    }
    sd = np.sqrt(np.diag(c.grid_cov[i]))
    out["grid-quadrature"] = {
        f"z_{d + 1}": {
            "mean": float(c.grid_loc[i, d]),
            "sd": float(sd[d]),
            **{f"q{100 * q:g}%": float(c.grid_quantiles[i, k, d]) for k, q in enumerate(QUANTILES)},
        }
        for d in range(2)
    }
    out["grid-quadrature"]["corr"] = float(c.grid_cov[i, 0, 1] / sd.prod())
    return out


def verdict(s: dict) -> list[str]:
    """Plain-words paragraphs on the gaps and on what k-hat saw."""
    n, k_max = s["grid_images"], list(s["grid_iw_bounds"])[-1]
    kl = s["grid_kl_amortized"]
    share = s["grid_amortization_gap"] / kl if kl > 0 else float("nan")
    lines = [
        f"Exact posteriors on {s['grid_points']} x {s['grid_points']} grids of the first {n} "
        f"IW images give log p(x) = {s['grid_log_evidence']:.2f} nats per image. The amortized "
        f"posterior's ELBO falls {kl:.3f} ± {s['grid_kl_amortized_se']:.3f} nats short of it "
        f"(its KL to the exact posterior). Of that, the amortization gap (the best diagonal "
        f"Gaussian of each image against the encoder's) is {s['grid_amortization_gap']:.3f} ± "
        f"{s['grid_amortization_gap_se']:.3f} nats ({100 * share:.0f}% of it), the "
        f"approximation gap (the exact posterior against that best Gaussian) "
        f"{s['grid_approximation_gap']:.3f} ± "
        f"{s['grid_approximation_gap_se']:.3f} nats; a full-covariance Gaussian would leave "
        f"{s['grid_kl_best_full']:.3f}. Importance weighting with K = {k_max} draws of the "
        f"amortized posterior ends {s['grid_iw_shortfall'][k_max]:.3f} ± "
        f"{s['grid_iw_shortfall_se'][k_max]:.3f} nats below the exact log p(x).",
        _khat_words(s),
    ]
    if s["grid_best_worse_images"]:
        lines.append(
            f"For {s['grid_best_worse_images']} of the {n} images the fitted 'best' Gaussian "
            "scored below the encoder's by more than three standard errors: its SVI did not "
            "converge there, so the amortization gap is understated for those images."
        )
    if s["grid_log_z_error_max"] > QUADRATURE_WARNING:
        lines.append(
            f"The grid is coarse for some images: log p(x) moves by up to "
            f"{s['grid_log_z_error_max']:.2g} nats when every other node is dropped; use more "
            "grid points (grid_points)."
        )
    return lines


def _khat_words(s: dict) -> str:
    rho, p = s["grid_khat_spearman"], s["grid_khat_spearman_p"]
    if not np.isfinite(rho):
        reading = "too few images to rank"
    elif p < 0.05 and rho >= 0.5:
        reading = "k-hat ranked the images much as their exact KL did"
    elif p < 0.05 and rho > 0:
        reading = "k-hat and the exact KL agree, but weakly"
    else:
        reading = (
            "on these images k-hat did not predict where the amortized posterior was worst "
            "(no significant positive rank correlation)"
        )
    return (
        f"Did PSIS k-hat flag the images where q was worst? Spearman's rank correlation of "
        f"k-hat with KL(q || p) is {rho:.2f} (p = {p:.2g}): {reading}. k-hat exceeds "
        f"{s['grid_khat_threshold']:.2f} for {100 * s['grid_khat_flagged_worst']:.0f}% of the "
        f"{_images(s['grid_worst_images'])} with the largest KL, against "
        f"{100 * s['grid_khat_flagged_rest']:.0f}% of the others."
    )


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def tables(s: dict, c: GridComparison) -> list[Table]:
    """The gap table, the bounds against the grid, and ArviZ summaries side by side."""
    n = s["grid_images"]

    def row(name, key):
        return [name, f"{s[key]:.3f}", f"{s[key + '_se']:.3f}"]

    gaps = [
        row("log p(x), grid (exact up to quadrature)", "grid_log_evidence"),
        row("ELBO, amortized q(z | x)", "grid_elbo_amortized"),
        row("ELBO, best diagonal Gaussian", "grid_elbo_best"),
        row("ELBO, best full-covariance Gaussian", "grid_elbo_best_full"),
        row("KL(amortized q || p)", "grid_kl_amortized"),
        row("approximation gap: KL(best diagonal || p)", "grid_approximation_gap"),
        row("amortization gap: ELBO(best) - ELBO(amortized)", "grid_amortization_gap"),
        row("KL(best full-covariance || p)", "grid_kl_best_full"),
    ]
    bounds = [
        [
            k,
            f"{s['grid_iw_bounds'][k]:.3f}",
            f"{s['grid_iw_shortfall'][k]:.4f}",
            f"{s['grid_iw_shortfall_se'][k]:.4f}",
        ]
        for k in s["grid_iw_bounds"]
    ]
    khat = [
        ["Spearman rank correlation of k-hat and KL(q || p)", f"{s['grid_khat_spearman']:.2f}"],
        ["its p-value", f"{s['grid_khat_spearman_p']:.2g}"],
        [
            f"k-hat above {s['grid_khat_threshold']:.2f}: the "
            f"{_images(s['grid_worst_images'])} with the largest KL",
            f"{100 * s['grid_khat_flagged_worst']:.0f}%",
        ],
        [
            "k-hat above the threshold: the other images",
            f"{100 * s['grid_khat_flagged_rest']:.0f}%",
        ],
        ["largest change of log p(x) when the grid is halved", f"{s['grid_log_z_error_max']:.2g}"],
        [
            "seconds: grids / best Gaussians",
            f"{s['grid_seconds']:.1f} / {s['grid_best_seconds']:.1f}",
        ],
    ]
    side_by_side = [
        [int(i), f"z_{d + 1}", method, *(f"{c.summaries[i, m, d, j]:.3f}" for j in range(4)),
         f"{c.summaries[i, m, d, 4]:.0f}"]
        if method != "grid, quadrature" else
        [int(i), f"z_{d + 1}", method, f"{c.grid_loc[i, d]:.3f}",
         f"{math.sqrt(c.grid_cov[i, d, d]):.3f}", f"{c.grid_quantiles[i, 0, d]:.3f}",
         f"{c.grid_quantiles[i, -1, d]:.3f}", ""]
        for i in c.figure_index
        for d in range(2)
        for m, method in enumerate([*METHODS, "grid, quadrature"])
    ]  # fmt: skip
    draws = int(c.draws)
    return [
        Table(
            f"Exact posteriors on grids: the inference gap ({n} images, nats per image)",
            ["quantity", "mean", "s.e."],
            gaps,
            note=f"Each ELBO from {draws:,} draws of its own q per image; standard errors across "
            "images (they include the Monte Carlo error). Best Gaussians: fitted to each image "
            "alone by SVI from the encoder's output; the diagonal one is the encoder's family "
            "(Cremer, Li and Duvenaud 2018).",
        ),
        Table(
            f"IW bounds of the amortized q against the grid's log p(x) ({n} images)",
            ["K", "L_K", "log p(x) - L_K", "s.e."],
            bounds,
            note="Shortfalls are paired per image (same image, exact log p(x)), hence their "
            "small standard errors.",
        ),
        Table("Did k-hat predict where q was worst?", ["quantity", "value"], khat),
        Table(
            "ArviZ summaries side by side (the contour figure's images)",
            ["image", "latent", "method", "mean", "sd", "hdi 3%", "hdi 97%", "ess bulk"],
            side_by_side,
            note="ArviZ's summaries of each method's draws (94% HDI); summary.json holds these, "
            "grid_comparison.npz those of every grid image, posterior_grid.nc the draws. Grid "
            "draws: a cell by its mass, then a uniform point inside it; 'grid, quadrature' "
            "gives the grid posterior's exact mean and sd and its 3% and 97% quantiles (an "
            "equal-tailed interval, where the others give ArviZ's highest-density one).",
        ),
    ]


def make_figures(folder: Path, c: GridComparison) -> list[Figure]:
    """The section's figures, drawn into ``folder``."""
    titles = [
        f"image {int(i)}: KL(q || p) = {c.kl_amortized[i]:.2f}, k-hat {c.khat[i]:.2f}"
        for i in c.figure_index
    ]
    idx = c.figure_index
    return [
        Figure(
            "Grid posteriors and Gaussians",
            figures.grid_contours(
                folder / "grid_posteriors.png",
                c.figure_u,
                c.figure_v,
                c.figure_log_density,
                c.figure_levels,
                {
                    "amortized q": (c.amortized_loc[idx], c.amortized_cov[idx]),
                    "best diagonal": (c.best_loc[idx], c.best_cov[idx]),
                    "best full": (c.best_full_loc[idx], c.best_full_cov[idx]),
                },
                titles,
            ),
            "Exact posteriors p(z | x) of held-out images (orange: highest-density regions "
            "holding 39%, 86% and 99% of the mass, which for a Gaussian are its 1-, 2- and 3-sd "
            "ellipses), with the 2-sd ellipses of the amortized q(z | x) and of the best "
            "Gaussians. Images chosen across the range of KL(q || p): smallest, median, 90% "
            "quantile, largest.",
        ),
        Figure(
            "Approximation and amortization gaps",
            figures.inference_gaps(
                folder / "inference_gaps.png", c.approximation_gap, c.amortization_gap
            ),
            "Per image: log p(x) - ELBO(best diagonal Gaussian) (the family's limit) and "
            "ELBO(best) - ELBO(amortized) (the encoder's shortfall); their sum is KL(q || p).",
        ),
        Figure(
            "IW bounds converging to the exact log p(x)",
            figures.iw_against_grid(folder / "iw_grid.png", c.iw_k, c.iw_shortfall, c.kl_best),
            "How far each importance-weighted bound of the amortized q stays below the grid's "
            "log p(x), per image (grey) and on average; K = 1 is the ELBO, so its shortfall is "
            "KL(q || p).",
        ),
        Figure(
            "k-hat against the exact KL",
            figures.khat_against_kl(
                folder / "khat_kl.png", c.khat, c.kl_amortized, c.khat_threshold
            ),
            "Each grid image's PSIS k-hat (from the amortized q's importance weights) against "
            "its exact KL(q || p): does a high k-hat mark the images where q is worst?",
        ),
    ]
