r"""The inference gap of a latent-2 VAE, split into its parts against exact grid posteriors.

For each of a set of held-out images :math:`x` this compares three posteriors of :math:`z`:

- the amortized :math:`q_\phi(z \mid x)` (the encoder's diagonal Gaussian);
- the best Gaussian :math:`q^*` of the same (diagonal) family, and of the full-covariance family,
  fitted to this image alone (:mod:`ppl_models.vae.best_gaussian`);
- the grid posterior :math:`p(z \mid x)` (:mod:`ppl_models.vae.posterior_grid`), whose
  normaliser is the image's evidence :math:`\log p(x)` up to quadrature error.

Every ELBO is estimated from ``draws`` independent draws of its own :math:`q` as the mean of
:math:`\log w = \log p(x, z) - \log q(z)`, with standard error :math:`\mathrm{sd}(\log w) /
\sqrt{S}` (the better :math:`q` fits, the smaller it is). With the grid's evidence:

.. math::

    \mathrm{KL}(q \,\|\, p(z \mid x)) &= \log p(x) - \mathrm{ELBO}(q), \\
    \text{approximation gap} &= \log p(x) - \mathrm{ELBO}(q^*_{\text{diag}}), \\
    \text{amortization gap} &= \mathrm{ELBO}(q^*_{\text{diag}}) - \mathrm{ELBO}(q_\phi)

(Cremer, Li and Duvenaud 2018, who use the encoder's family for :math:`q^*`, as here). The
importance-weighted bounds :math:`\mathcal L_K` of the amortized :math:`q` are compared with
:math:`\log p(x)`, and the images' PSIS k-hats with their :math:`\mathrm{KL}(q_\phi \| p)`: did
k-hat flag the images where :math:`q_\phi` was worst?
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from .. import diagnostics
from ..runs import ArrayFile
from . import best_gaussian, evaluate, posterior_grid
from .model import VaeGuide, VaeModel

METHODS = ("amortized", "best-diagonal", "best-full", "grid")
SUMMARY_STATS = ("mean", "sd", "hdi_low", "hdi_high", "ess_bulk")
SUMMARY_HDI = 0.94
HPD_MASSES = (1 - math.exp(-0.5), 1 - math.exp(-2.0), 1 - math.exp(-4.5))  # 1, 2, 3 "sd"
FIGURE_IMAGES = 4
FIGURE_NODES = 201  # the saved contour grids keep at most about this many nodes per axis
WORST_SHARE = 0.25  # "where q was worst": the quarter of the images with the largest KL
QUANTILES = (0.03, 0.5, 0.97)  # the grid posterior's marginal quantiles kept per image


@dataclass(frozen=True)
class GridComparison(ArrayFile):
    """Per image (axis 0, ``n`` images): the grid's ``log_evidence``, its ``log_z_error`` and
    its marginal ``grid_quantiles`` ``(n, len(QUANTILES), 2)``; each method's ``*_loc``
    ``(n, 2)`` and ``*_cov`` ``(n, 2, 2)`` (grid: exact moments); each Gaussian's ``elbo_*`` and
    its Monte Carlo standard error ``elbo_*_se``; the amortized :math:`q`'s ``khat`` and its
    bounds ``iw_bound`` ``(n, len(iw_k))``; ArviZ ``summaries``
    ``(n, len(METHODS), 2, len(SUMMARY_STATS))``. ``draws``: draws per image behind each ELBO.
    For the contour figures, images ``figure_index``: grid nodes ``figure_u``, ``figure_v``,
    log-densities ``figure_log_density`` (every few nodes) and the levels ``figure_levels`` of
    the highest-density regions holding :data:`HPD_MASSES`. ``seconds``: grid, best Gaussians.
    """

    ARRAYS = "grid comparison"

    log_evidence: np.ndarray
    log_z_error: np.ndarray
    grid_loc: np.ndarray
    grid_cov: np.ndarray
    grid_quantiles: np.ndarray
    amortized_loc: np.ndarray
    amortized_cov: np.ndarray
    best_loc: np.ndarray
    best_cov: np.ndarray
    best_full_loc: np.ndarray
    best_full_cov: np.ndarray
    elbo_amortized: np.ndarray
    elbo_amortized_se: np.ndarray
    elbo_best: np.ndarray
    elbo_best_se: np.ndarray
    elbo_best_full: np.ndarray
    elbo_best_full_se: np.ndarray
    khat: np.ndarray
    iw_k: np.ndarray
    iw_bound: np.ndarray
    draws: np.ndarray
    summaries: np.ndarray
    figure_index: np.ndarray
    figure_u: np.ndarray
    figure_v: np.ndarray
    figure_log_density: np.ndarray
    figure_levels: np.ndarray
    seconds: np.ndarray

    # -- the gaps ---------------------------------------------------------------------------------

    @property
    def kl_amortized(self) -> np.ndarray:
        r""":math:`\mathrm{KL}(q_\phi \| p) = \log p(x) - \mathrm{ELBO}(q_\phi)` per image."""
        return self.log_evidence - self.elbo_amortized

    @property
    def kl_best(self) -> np.ndarray:
        """KL of the best diagonal Gaussian: the approximation gap."""
        return self.log_evidence - self.elbo_best

    @property
    def kl_best_full(self) -> np.ndarray:
        """KL of the best full-covariance Gaussian."""
        return self.log_evidence - self.elbo_best_full

    @property
    def approximation_gap(self) -> np.ndarray:
        r""":math:`\log p(x) - \mathrm{ELBO}(q^*)`, :math:`q^*` the best diagonal Gaussian."""
        return self.kl_best

    @property
    def amortization_gap(self) -> np.ndarray:
        r""":math:`\mathrm{ELBO}(q^*) - \mathrm{ELBO}(q_\phi)` per image."""
        return self.elbo_best - self.elbo_amortized

    @property
    def amortization_gap_se(self) -> np.ndarray:
        """Monte Carlo standard error of each image's amortization gap (independent draws)."""
        return np.hypot(self.elbo_best_se, self.elbo_amortized_se)

    @property
    def iw_shortfall(self) -> np.ndarray:
        r""":math:`\log p(x) - \mathcal L_K` per image and K, ``(n, len(iw_k))``."""
        return self.log_evidence[:, None] - self.iw_bound

    @property
    def khat_threshold(self) -> float:
        """k-hat threshold for ``draws`` draws per image."""
        return diagnostics.khat_threshold(int(self.draws))

    def khat_prediction(self) -> dict[str, float]:
        r"""Did k-hat flag the images where :math:`q_\phi` was worst?

        Returns the Spearman rank correlation of k-hat with :math:`\mathrm{KL}(q_\phi \| p)` and
        its p-value, and the shares of images above the k-hat threshold among the worst
        :data:`WORST_SHARE` of the images by KL and among the others.
        """
        n = len(self.khat)
        rho, p_value = stats.spearmanr(self.khat, self.kl_amortized) if n > 2 else (np.nan,) * 2
        worst = np.zeros(n, dtype=bool)
        worst[np.argsort(self.kl_amortized)[::-1][: max(1, math.ceil(WORST_SHARE * n))]] = True
        flagged = self.khat > self.khat_threshold
        return {
            "spearman": float(rho),
            "spearman_p": float(p_value),
            "worst_images": int(worst.sum()),
            "flagged_among_worst": float(flagged[worst].mean()),
            "flagged_among_rest": float(flagged[~worst].mean()) if (~worst).any() else math.nan,
        }


def compare(
    model: VaeModel,
    guide: VaeGuide,
    x: torch.Tensor,
    *,
    ks: list[int],
    amortized_log_weights: np.ndarray | None = None,
    grid_points: int = 401,
    log_drop: float = 30.0,
    best_steps: int = 300,
    best_particles: int = 32,
    summary_draws: int = 1000,
    chunk: int = evaluate.DEFAULT_CHUNK,
    seed: int = 0,
    progress: bool = False,
) -> tuple[GridComparison, dict[str, np.ndarray]]:
    r"""Grid posteriors, best Gaussians, ELBOs, gaps and summaries of the images ``x``.

    Parameters
    ----------
    model, guide
        A trained VAE with a two-dimensional latent.
    x
        Held-out observations ``(n, ...)`` as the likelihood models them, on the model's device.
    ks
        The Ks of the importance-weighted bounds; ``max(ks)`` draws per image estimate every
        ELBO (at least 10, for k-hat).
    amortized_log_weights
        ``(n, >= max(ks))`` log importance weights of the guide for these images, when already
        drawn (as :func:`ppl_models.vae.evaluate.evaluate` does); drawn here otherwise.
    grid_points, log_drop
        Grid nodes per axis and the depth of its edges (see :mod:`ppl_models.grid2d`).
    best_steps, best_particles
        SVI steps and draws per step of each best Gaussian.
    summary_draws
        Draws per image and method behind the ArviZ summaries (a multiple of 4).
    chunk
        Most (image, point) pairs per decoder pass.
    seed
        Seed of the grid's draws (the Gaussians draw from torch's global generator).
    progress
        Progress bars on a terminal.

    Returns
    -------
    (GridComparison, dict)
        The comparison and, per method of :data:`METHODS`, ``summary_draws`` draws per image,
        ``(summary_draws, n, 2)``.
    """
    draws = max(ks)
    if draws < 10 or summary_draws < 4 or summary_draws % 4:
        raise ValueError(
            f"need max(ks) >= 10 and summary_draws a positive multiple of 4, got max(ks)={draws}, "
            f"summary_draws={summary_draws}"
        )
    n = len(x)
    if amortized_log_weights is not None and amortized_log_weights.shape[:1] != (n,):
        raise ValueError(
            f"amortized_log_weights must have one row per image ({n}), got shape "
            f"{amortized_log_weights.shape}"
        )
    model.eval()
    guide.eval()
    start = time.perf_counter()
    grids = posterior_grid.grid_posteriors(
        model, guide, x, n_points=grid_points, log_drop=log_drop, chunk=chunk, progress=progress
    )
    grid_seconds = time.perf_counter() - start

    start = time.perf_counter()
    loc, scale = (torch.as_tensor(a, device=x.device) for a in evaluate.latent_moments(guide, x))
    best = {
        family: best_gaussian.fit_best_gaussians(
            model,
            x,
            loc,
            scale,
            family=family,
            steps=best_steps,
            particles=best_particles,
            chunk=chunk,
            progress=progress,
        )
        for family in best_gaussian.FAMILIES
    }
    best_seconds = time.perf_counter() - start

    if amortized_log_weights is None:
        amortized_log_weights = evaluate.importance_draws(
            model, guide, x, draws, chunk=chunk
        ).log_weights
    log_w = {"amortized": np.asarray(amortized_log_weights, dtype=np.float64)[:, :draws]}
    for family, gaussians in best.items():
        log_w[family] = evaluate.importance_draws(
            model, None, x, draws, chunk=chunk, proposal=gaussians.distribution
        ).log_weights
    elbo = {name: lw.mean(axis=1) for name, lw in log_w.items()}
    elbo_se = {name: lw.std(axis=1, ddof=1) / math.sqrt(draws) for name, lw in log_w.items()}

    samples = _method_draws(guide, x, best, grids, summary_draws, seed)
    loc_np, scale_np = (t.double().cpu().numpy() for t in (loc, scale))
    figure_index = _figure_images(np.array([g.log_normalizer for g in grids]) - elbo["amortized"])
    step = max(1, (grid_points - 1) // (FIGURE_NODES - 1))
    comparison = GridComparison(
        log_evidence=np.array([g.log_normalizer for g in grids]),
        log_z_error=np.array([g.log_z_error for g in grids]),
        grid_loc=np.array([g.mean for g in grids]),
        grid_cov=np.array([g.cov for g in grids]),
        grid_quantiles=np.array([g.quantile(QUANTILES) for g in grids]),
        amortized_loc=loc_np,
        amortized_cov=np.stack([np.diag(s**2) for s in scale_np]).reshape(n, 2, 2),
        best_loc=best["diagonal"].loc.double().cpu().numpy(),
        best_cov=best["diagonal"].cov,
        best_full_loc=best["full"].loc.double().cpu().numpy(),
        best_full_cov=best["full"].cov,
        elbo_amortized=elbo["amortized"],
        elbo_amortized_se=elbo_se["amortized"],
        elbo_best=elbo["diagonal"],
        elbo_best_se=elbo_se["diagonal"],
        elbo_best_full=elbo["full"],
        elbo_best_full_se=elbo_se["full"],
        khat=diagnostics.psis_khat(log_w["amortized"]),
        iw_k=np.asarray(ks),
        iw_bound=evaluate.iw_bounds_per_image(log_w["amortized"], ks),
        draws=np.asarray(draws),
        summaries=_summaries(samples),
        figure_index=figure_index,
        figure_u=np.array([grids[i].u[::step] for i in figure_index]),
        figure_v=np.array([grids[i].v[::step] for i in figure_index]),
        figure_log_density=np.array(
            [grids[i].log_values[::step, ::step] for i in figure_index], dtype=np.float32
        ),
        figure_levels=np.array([grids[i].density_levels(HPD_MASSES) for i in figure_index]),
        seconds=np.array([grid_seconds, best_seconds]),
    )
    return comparison, samples


@torch.no_grad()
def _method_draws(guide, x, best, grids, n_draws, seed) -> dict[str, np.ndarray]:
    """``n_draws`` draws per image of every method, ``(n_draws, n, 2)`` each."""
    rng = np.random.default_rng(seed)
    out = {"amortized": guide.posterior(x).sample((n_draws,))}
    for family, gaussians in best.items():
        out[f"best-{family}"] = gaussians.distribution().sample((n_draws,))
    out = {name: z.double().cpu().numpy() for name, z in out.items()}
    out["grid"] = np.stack([g.sample(n_draws, rng) for g in grids], axis=1)
    return out


def _summaries(samples: dict[str, np.ndarray]) -> np.ndarray:
    """ArviZ summaries ``(n, methods, 2, stats)`` of every method's draws, per image and
    coordinate, in one call of :func:`ppl_models.diagnostics.summarize_draws`."""
    n_draws, n = samples["grid"].shape[:2]
    names, arrays = [], []
    for method in METHODS:
        for i in range(n):
            for d in range(2):
                names.append((method, i, d))
                arrays.append(samples[method][:, i, d].reshape(4, n_draws // 4))
    table = diagnostics.summarize_draws(
        {f"{m}[{i},{d}]": a for (m, i, d), a in zip(names, arrays, strict=True)},
        hdi_prob=SUMMARY_HDI,
    )
    out = np.empty((n, len(METHODS), 2, len(SUMMARY_STATS)))
    for (m, i, d), row in zip(names, table.values(), strict=True):
        out[i, METHODS.index(m), d] = [row[s] for s in SUMMARY_STATS]
    return out


def _figure_images(kl: np.ndarray) -> np.ndarray:
    """Up to :data:`FIGURE_IMAGES` images spanning the range of KL(q || p): the smallest, the
    median, the 90% quantile and the largest."""
    order = np.argsort(kl)
    n = len(order)
    picks = [0, n // 2, min(n - 1, int(0.9 * n)), n - 1]
    return np.array(sorted(set(order[picks].tolist()), key=lambda i: kl[i]))[:FIGURE_IMAGES]
