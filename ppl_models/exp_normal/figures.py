"""Figures of an exponential-normal run, each written atomically as a PNG (see
:mod:`ppl_models.plots`).

:func:`report_figures` draws every figure of the report from the run's saved files (observations,
``summary.json``, ``posterior.nc``, ``metrics.jsonl``), so ``ppl-models report`` redraws them
without refitting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
from scipy.special import logsumexp

from ..plots import COLORS, new_figure, save_figure
from . import closed_forms, pyro_model


def _log_density(dist: torch.distributions.Distribution):
    """``dist.log_prob`` as a NumPy function of float64 arrays."""
    return lambda z: dist.log_prob(torch.as_tensor(z, dtype=torch.float64)).numpy()


def _density(dist: torch.distributions.Distribution, z: np.ndarray) -> np.ndarray:
    return np.exp(_log_density(dist)(z))


def report_figures(
    fig_dir: Path, x: np.ndarray, rate: float, summary: dict, idata, metrics: list[dict]
) -> list[tuple[str, Path, str]]:
    """All figures of the exponential-normal report, as ``(title, path, caption)``."""
    fig_dir = Path(fig_dir)
    exact = closed_forms.exact_posterior(x, rate)
    q = pyro_model.guide_distribution(summary["guide"], summary["guide_params_svi"])
    grid = closed_forms.grid_posterior(x, rate)
    draws = {
        m: idata[f"posterior_{m}"]["z"].values.ravel() for m in ("variational", "grid", "exact")
    }
    upper = float(
        max(
            np.quantile(draws["variational"], 0.995),
            exact.icdf(torch.tensor(0.99999, dtype=torch.float64)),
        )
    )
    z = np.linspace(0.0, upper, 1200)[1:]
    out = []

    fig, ax = new_figure(figsize=(7.5, 4.2))
    ax.plot(z, _density(exact, z), color=COLORS["exact"], lw=2, label="exact posterior")
    ax.plot(z, grid.pdf(z), color=COLORS["grid"], ls="--", lw=2, label="grid posterior")
    ax.plot(
        z,
        _density(q, z),
        color=COLORS["variational"],
        lw=2,
        label=f"variational ({summary['guide']})",
    )
    ax.set_xlabel("z")
    ax.set_ylabel("posterior density p(z | x)")
    twin = ax.twinx()
    log_joint = closed_forms.log_joint(z, x, rate)
    twin.plot(
        z,
        np.exp(log_joint - log_joint.max()),
        color=COLORS["joint"],
        ls=":",
        label="joint p(x, z) / max",
    )
    twin.set_ylabel("joint p(x, z), scaled to peak 1")
    twin.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right")
    out.append(
        (
            "Posterior densities",
            save_figure(fig, fig_dir / "densities.png"),
            "Exact (truncated normal), grid and variational posteriors on one axis; the "
            "dotted joint density has the posterior's shape, rescaled.",
        )
    )

    theta_star = summary["theta_star"]
    thetas = np.geomspace(theta_star / 5, theta_star * 5, 400)
    fig, ax = new_figure(figsize=(7.5, 4.2))
    ax.plot(
        thetas,
        closed_forms.kl_to_posterior(thetas, x, rate),
        color="tab:blue",
        label="closed form: log p(x) - ELBO(theta)",
    )
    checks = np.geomspace(theta_star / 4, theta_star * 4, 9)
    kl_grid = [
        grid.kl_from(_log_density(pyro_model.guide_distribution("exponential", {"theta": t})))
        for t in checks
    ]
    ax.plot(checks, kl_grid, "o", color=COLORS["grid"], label="grid quadrature")
    ax.axvline(theta_star, color="black", ls="--", label=f"theta* = {theta_star:.4g}")
    if summary.get("theta_svi") is not None:
        ax.axvline(
            summary["theta_svi"],
            color="tab:red",
            ls=":",
            label=f"theta (SVI) = {summary['theta_svi']:.4g}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("theta (Exponential guide rate)")
    ax.set_ylabel("KL(q_theta || p(z | x)) [nats]")
    ax.legend()
    out.append(
        (
            "KL divergence of the Exponential guide",
            save_figure(fig, fig_dir / "kl.png"),
            "KL over theta with its minimum at theta*; unlike the notebook's truncated grid, "
            "the closed form and the full-range grid agree.",
        )
    )

    steps = np.array([m["step"] for m in metrics])
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(10, 3.8))
    ax1.plot(
        steps,
        [-m["loss"] for m in metrics],
        color="tab:blue",
        lw=0.8,
        label="ELBO estimate per step",
    )
    ax1.axhline(summary["elbo_at_theta_star"], color="black", ls="--", label="ELBO(theta*)")
    ax1.axhline(summary["log_evidence_exact"], color="tab:green", ls=":", label="log p(x)")
    elbos = np.array([-m["loss"] for m in metrics])
    lo = min(np.percentile(elbos, 2), summary["elbo_at_theta_star"])
    hi = max(np.percentile(elbos, 98), summary["log_evidence_exact"])
    ax1.set_ylim(lo - 0.1 * (hi - lo), hi + 0.35 * (hi - lo))
    ax1.set_xlabel("step")
    ax1.set_ylabel("nats")
    ax1.legend(loc="upper right", fontsize="small")
    for name in summary["guide_params_svi"]:
        ax2.plot(
            steps,
            [m[f"{name}_iterate"] for m in metrics],
            lw=0.7,
            alpha=0.6,
            label=f"{name}, last iterate",
        )
        ax2.plot(steps, [m[name] for m in metrics], lw=1.8, label=f"{name}, suffix average")
    if summary.get("theta_svi") is not None:
        ax2.axhline(theta_star, color="black", ls="--", label="theta*")
        ax2.axhspan(
            theta_star * 0.995, theta_star * 1.005, color="gray", alpha=0.3, label="theta* ± 0.5%"
        )
    ax2.set_xlabel("step")
    ax2.set_ylabel("guide parameter")
    ax2.legend()
    out.append(
        (
            "ELBO and parameter traces",
            save_figure(fig, fig_dir / "trace.png"),
            "Left: the Monte Carlo ELBO per step against ELBO(theta*) and log p(x). Right: "
            "the reported guide parameters per step.",
        )
    )

    fig, ax = new_figure(figsize=(7.5, 4.2))
    for method, values in draws.items():
        sorted_values = np.sort(values)
        ax.step(
            sorted_values,
            np.arange(1, len(values) + 1) / len(values),
            where="post",
            color=COLORS[method],
            alpha=0.8,
            label=f"{method} draws (ECDF)",
        )
    ax.plot(
        z, exact.cdf(torch.as_tensor(z)).numpy(), color="black", ls=":", lw=1, label="exact CDF"
    )
    ax.set_xlim(0, upper)
    ax.set_xlabel("z")
    ax.set_ylabel("cumulative probability")
    ax.legend(loc="lower right")
    out.append(
        (
            "Posterior ECDFs",
            save_figure(fig, fig_dir / "ecdf.png"),
            "Empirical CDFs of the draws stored in posterior.nc (ArviZ InferenceData) against "
            f"the exact CDF; KS distance of q to exact = {summary['ks_to_exact']:.3g}.",
        )
    )

    stats = idata["sample_stats"]
    log_w = (stats["log_joint"] - stats["log_q"]).values.ravel()
    log_w_norm = np.sort(log_w - logsumexp(log_w))[::-1]
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(10, 3.8))
    # With 10^5 draws a few land far in q's tail with weights near 0; the bins and the rank plot
    # show the bulk down to 10^-8 of a uniform weight, where they decide nothing.
    shifted = log_w - log_w.max()
    ax1.hist(
        shifted,
        bins=60,
        range=(max(shifted.min(), np.quantile(shifted, 0.001)), 0.0),
        color="tab:blue",
        alpha=0.8,
    )
    ax1.set_xlabel(
        "log w - max log w" + ("" if len(log_w) < 10_000 else " (lowest 0.1% not shown)")
    )
    ax1.set_ylabel("draws")
    ax1.set_title("log importance weights")
    rank = np.arange(1, len(log_w_norm) + 1)
    ax2.loglog(rank, np.exp(log_w_norm), color="tab:blue")
    ax2.axhline(1 / len(log_w_norm), color="gray", ls=":", label="uniform weight 1/S")
    ax2.set_ylim(max(float(np.exp(log_w_norm[-1])), 1e-8 / len(log_w_norm)), 2.0)
    ax2.set_xlabel("rank")
    ax2.set_ylabel("normalised weight")
    ax2.set_title(f"tail: PSIS k-hat = {summary['psis_khat']:.3g}")
    ax2.legend()
    out.append(
        (
            "Importance weights",
            save_figure(fig, fig_dir / "weights.png"),
            "log w = log p(x, z) - log q(z) for draws of q. A few dominant weights (a steep "
            "rank plot) and a large k-hat mean q misses posterior mass.",
        )
    )

    fig, ax = new_figure(figsize=(7.5, 4.2))
    ax.plot(z, _density(exact, z), color="black", lw=2.5, label="exact posterior")
    for family, kl in summary["kl_by_family"].items():
        params = summary["guide_params_by_family"][family]
        ax.plot(
            z,
            _density(pyro_model.guide_distribution(family, params), z),
            lw=1.5,
            ls="--" if family == "truncated-normal" else "-",
            label=f"best {family}: KL = {kl:.2g}",
        )
    ax.set_xlabel("z")
    ax.set_ylabel("density")
    ax.legend()
    out.append(
        (
            "Guide families at their optimum",
            save_figure(fig, fig_dir / "families.png"),
            "Each family's KL-optimal member against the exact posterior.",
        )
    )
    return out
