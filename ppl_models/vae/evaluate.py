r"""Evaluation of a fitted VAE on held-out images, the way the literature reports it.

Everything starts from importance weights of the guide against the model, per image :math:`x`:

.. math::

    \log w_s = \log p(x, z_s) - \log q(z_s \mid x), \qquad z_s \sim q(\cdot \mid x),

- the ELBO is :math:`E_q[\log w]` (one draw per image, averaged over images);
- the importance-weighted bound :math:`\mathcal L_K = E[\log \frac1K \sum_{k \le K} w_k]`
  increases with :math:`K` to :math:`\log p(x)`; :math:`\mathcal L_1` is the ELBO and the largest
  :math:`K` gives the log-likelihood estimate (Burda et al. 2016);
- the Pareto k-hat of each image's weights says whether the amortized :math:`q(z \mid x)` covers
  that image's posterior well enough for importance sampling (Yao et al. 2018);
- a latent unit :math:`u` is active when :math:`\operatorname{Var}_x E_q[z_u \mid x] > 0.01`
  (Burda et al. 2016, section 5.2).

Draws are taken in chunks of at most ``chunk`` (image, draw) pairs per network pass, so memory stays
bounded for any number of images and draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyro.distributions as dist
import torch

from .. import diagnostics, importance
from ..runs import ArrayFile
from .model import VaeGuide, VaeModel

ACTIVE_THRESHOLD = 0.01
DEFAULT_CHUNK = 16384
FIGURE_IMAGES = 8  # inputs shown beside their reconstructions
PRIOR_SAMPLES = 64
INTERPOLATION_ROWS, INTERPOLATION_STEPS = 4, 10


@dataclass(frozen=True)
class ImportanceDraws:
    """Log importance weights ``(n_images, n_draws)`` and the first ``kept`` draws in full.

    ``z`` is ``(kept, n_images, D)``; ``log_joint`` and ``log_q`` are ``(kept, n_images)``.
    """

    log_weights: np.ndarray
    z: np.ndarray
    log_joint: np.ndarray
    log_q: np.ndarray

    @classmethod
    def concatenate(cls, parts: list[ImportanceDraws]) -> ImportanceDraws:
        """The draws of consecutive groups of images as one (images are axis 0 of
        ``log_weights`` and axis 1 of the kept arrays)."""
        return cls(
            log_weights=np.concatenate([p.log_weights for p in parts]),
            z=np.concatenate([p.z for p in parts], axis=1),
            log_joint=np.concatenate([p.log_joint for p in parts], axis=1),
            log_q=np.concatenate([p.log_q for p in parts], axis=1),
        )


@torch.no_grad()
def importance_draws(
    model: VaeModel,
    guide: VaeGuide | None,
    x: torch.Tensor,
    draws: int,
    *,
    keep: int = 0,
    chunk: int = DEFAULT_CHUNK,
    proposal: Callable[[slice], dist.Distribution] | None = None,
) -> ImportanceDraws:
    r"""Log importance weights :math:`\log p(x, z_s) - \log q(z_s \mid x)`, :math:`z_s \sim q`.

    Parameters
    ----------
    x
        Observations (as the likelihood models them), ``(n_images, ...)``, on the model's device.
    draws
        Draws per image.
    keep
        How many of the first draws to return in full (latents and both log densities).
    chunk
        Upper bound on (image, draw) pairs decoded in one pass.
    proposal
        In place of the guide's :math:`q(z \mid x)`: a function giving the proposal of the images
        ``x[s]`` for a slice ``s`` (batch shape ``(len(x[s]),)``, event ``(D,)``), such as
        per-image Gaussians fitted separately; ``guide`` is then not used.
    """
    if draws < 1 or chunk < 1:
        raise ValueError(f"draws and chunk must be >= 1, got draws={draws}, chunk={chunk}")
    keep = min(keep, draws)
    per_pass_images = min(len(x), chunk)
    log_w, kept_z, kept_joint, kept_q = [torch.zeros(0, draws, dtype=torch.float64)], [], [], []
    for start in range(0, len(x), max(per_pass_images, 1)):
        images = slice(start, start + per_pass_images)
        xs = x[images]
        obs = xs.reshape(len(xs), -1)
        q = guide.posterior(xs) if proposal is None else proposal(images)
        per_pass_draws = max(1, chunk // len(xs))
        rows, zs, joints, qs = [], [], [], []
        for first in range(0, draws, per_pass_draws):
            z = q.sample((min(per_pass_draws, draws - first),))
            log_q = q.log_prob(z)
            log_joint = model.prior(z).log_prob(z) + model.observation(z).log_prob(obs)
            rows.append((log_joint - log_q).double().cpu())
            if first < keep:
                zs.append(z[: keep - first].cpu())
                joints.append(log_joint[: keep - first].double().cpu())
                qs.append(log_q[: keep - first].double().cpu())
        log_w.append(torch.cat(rows).T)
        if keep:
            kept_z.append(torch.cat(zs))
            kept_joint.append(torch.cat(joints))
            kept_q.append(torch.cat(qs))
    dim = model.latent_dim

    def stack(parts, shape):
        return torch.cat(parts, dim=1).numpy() if parts else np.zeros(shape)

    return ImportanceDraws(
        log_weights=torch.cat(log_w).numpy(),
        z=stack(kept_z, (keep, len(x), dim)),
        log_joint=stack(kept_joint, (keep, len(x))),
        log_q=stack(kept_q, (keep, len(x))),
    )


def elbo_per_image(
    model: VaeModel, guide: VaeGuide, x: torch.Tensor, chunk: int = DEFAULT_CHUNK
) -> np.ndarray:
    """One-draw Monte Carlo ELBO of every image, in nats (an unbiased estimate per image)."""
    return importance_draws(model, guide, x, 1, chunk=chunk).log_weights[:, 0]


def iw_bounds(log_weights: np.ndarray, ks: list[int]) -> dict[int, tuple[float, float]]:
    """:math:`\\mathcal L_K` per image, averaged, with its standard error across images, per K."""
    return {k: importance.iw_bound(log_weights, k) for k in ks}


def iw_bounds_per_image(log_weights: np.ndarray, ks: list[int]) -> np.ndarray:
    r""":math:`\mathcal L_K` of every image (row of ``log_weights``) at every K, ``(n_images,
    len(ks))``: each row's draws cut into disjoint groups of K, as :func:`iw_bounds` does."""
    return np.array(
        [[importance.iw_bound(row[np.newaxis], k)[0] for k in ks] for row in log_weights]
    ).reshape(len(log_weights), len(ks))


def iw_gains(log_weights: np.ndarray, ks: list[int]) -> tuple[np.ndarray, np.ndarray]:
    r"""Paired gains :math:`\mathcal L_{K_{i+1}} - \mathcal L_{K_i}` and their standard errors.

    Each image's bounds come from the same draws, so the gain is computed per image and averaged;
    its standard error across images is far smaller than that of either bound, which carries
    the images' spread. The bound must not decrease: a gain below minus two standard errors
    means too few draws for the larger K.
    """
    gains = np.diff(iw_bounds_per_image(log_weights, ks), axis=1)
    results = [mean_and_se(column) for column in gains.T]
    return np.array([m for m, _ in results]), np.array([se for _, se in results])


def mean_and_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error :math:`s / \\sqrt n` (nan for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return float(values.mean()), float(se)


def active_units(latent_loc: np.ndarray, threshold: float = ACTIVE_THRESHOLD) -> int:
    """Units whose posterior mean varies across images: :math:`\\operatorname{Var}_x \\mu_u(x)`
    above ``threshold`` (population variance over the images given)."""
    return int((np.var(latent_loc, axis=0) > threshold).sum())


@torch.no_grad()
def latent_moments(
    guide: VaeGuide, x: torch.Tensor, chunk: int = DEFAULT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Location and scale of :math:`q(z \\mid x)` per image, ``(n_images, D)`` each."""
    locs, scales = [], []
    for xs in x.split(chunk):
        q = guide.posterior(xs).base_dist
        locs.append(q.loc.cpu())
        scales.append(q.scale.cpu())
    return torch.cat(locs).numpy(), torch.cat(scales).numpy()


@torch.no_grad()
def figure_images(
    model: VaeModel, guide: VaeGuide, x: torch.Tensor, pixels: torch.Tensor
) -> dict[str, np.ndarray]:
    """Grey-level arrays for the figures: inputs and reconstructions (decoded posterior means),
    prior samples (decoded :math:`z \\sim \\mathcal N(0, I)`) and straight-line interpolations
    between the posterior means of consecutive held-out images, ``(rows, steps, 28, 28)``."""
    n = min(FIGURE_IMAGES, len(x))
    loc = guide.posterior(x[: 2 * INTERPOLATION_ROWS]).base_dist.loc
    z_prior = torch.randn(PRIOR_SAMPLES, model.latent_dim, device=x.device)
    t = torch.linspace(0, 1, INTERPOLATION_STEPS, device=x.device)[None, :, None]
    ends = loc[: 2 * (len(loc) // 2)].reshape(-1, 2, loc.shape[-1])
    path = (1 - t) * ends[:, :1] + t * ends[:, 1:]

    def image(z):
        return model.mean_image(z).reshape(*z.shape[:-1], 28, 28).float().cpu().numpy()

    return {
        "inputs": pixels[:n].reshape(n, 28, 28).float().cpu().numpy(),
        "reconstructions": image(loc[:n]),
        "prior_samples": image(z_prior),
        "interpolation": image(path),
    }


@dataclass(frozen=True)
class Evaluation(ArrayFile):
    """Everything the report needs from an evaluation, saved as ``evaluation.npz``.

    Per held-out image of the ELBO set: ``elbo`` (one-draw ELBO), ``latent_loc``,
    ``latent_scale``, ``labels``. Per image of the importance-sampling set: ``khat``. Per K:
    ``iw_k``, ``iw_bound``, ``iw_se``; from each K to the next, ``iw_gain`` and ``iw_gain_se``
    (see :func:`iw_gains`). ``iw_draws`` holds the number of draws per image. The
    remaining arrays are grey-level images for the figures (see :func:`figure_images`).
    """

    ARRAYS = "evaluation"

    elbo: np.ndarray
    latent_loc: np.ndarray
    latent_scale: np.ndarray
    labels: np.ndarray
    khat: np.ndarray
    iw_draws: np.ndarray
    iw_k: np.ndarray
    iw_bound: np.ndarray
    iw_se: np.ndarray
    iw_gain: np.ndarray
    iw_gain_se: np.ndarray
    inputs: np.ndarray
    reconstructions: np.ndarray
    prior_samples: np.ndarray
    interpolation: np.ndarray

    @property
    def threshold(self) -> float:
        """k-hat threshold for ``iw_draws`` draws per image."""
        return diagnostics.khat_threshold(int(self.iw_draws))

    @property
    def khat_share_bad(self) -> float:
        return float((self.khat > self.threshold).mean())


def evaluate(
    model: VaeModel,
    guide: VaeGuide,
    x: torch.Tensor,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    *,
    iw_images: int,
    ks: list[int],
    keep: int = 0,
    chunk: int = DEFAULT_CHUNK,
    parallel: Parallel | None = None,
) -> tuple[Evaluation, ImportanceDraws] | None:
    """Evaluate on held-out observations ``x`` (grey levels ``pixels``, digit ``labels``).

    The ELBO and latent statistics use all of ``x``; the importance-weighted bounds and the
    k-hats use its first ``iw_images`` images with ``max(ks)`` draws each.

    ``parallel`` (a :class:`ppl_models.distributed.Context` under ``torchrun``) shards the
    per-image work: each rank computes the ELBO, latent moments, importance weights and k-hat of
    its contiguous share of the images with its own random draws, and rank 0 gathers them in
    image order and computes the rest. Every rank must call; rank 0 gets the result, the others
    None.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if not 1 <= iw_images <= len(x):
        raise ValueError(f"iw_images must be between 1 and {len(x)}, got {iw_images}")
    model.eval()
    guide.eval()
    parts = _per_image_parts(model, guide, x, iw_images, ks, keep, chunk, parallel)
    if parts is None:
        return None
    loc, scale, elbo = (np.concatenate([p[i] for p in parts]) for i in range(3))
    draws = ImportanceDraws.concatenate([p[3] for p in parts])
    khat = np.concatenate([p[4] for p in parts])
    bounds = iw_bounds(draws.log_weights, ks)
    gains, gains_se = iw_gains(draws.log_weights, ks)
    evaluation = Evaluation(
        elbo=elbo,
        latent_loc=loc,
        latent_scale=scale,
        labels=labels.cpu().numpy(),
        khat=khat,
        iw_draws=np.asarray(max(ks)),
        iw_k=np.asarray(ks),
        iw_bound=np.asarray([bounds[k][0] for k in ks]),
        iw_se=np.asarray([bounds[k][1] for k in ks]),
        iw_gain=gains,
        iw_gain_se=gains_se,
        **figure_images(model, guide, x, pixels),
    )
    return evaluation, draws


class Parallel(Protocol):
    """What sharded evaluation needs of a process group (see ppl_models.distributed.Context)."""

    def share(self, n: int) -> slice: ...

    def gather(self, obj: Any) -> list | None: ...


def _per_image_parts(model, guide, x, iw_images, ks, keep, chunk, parallel) -> list | None:
    """This rank's (loc, scale, ELBO, draws, k-hat) of its share of the images, gathered."""
    share = parallel.share(len(x)) if parallel is not None else slice(None)
    iw_share = parallel.share(iw_images) if parallel is not None else slice(0, iw_images)
    xs, iw_xs = x[share], x[:iw_images][iw_share]
    loc, scale = latent_moments(guide, xs, chunk)
    elbo = elbo_per_image(model, guide, xs, chunk)
    draws = importance_draws(model, guide, iw_xs, max(ks), keep=keep, chunk=chunk)
    khat = diagnostics.psis_khat(draws.log_weights) if len(iw_xs) else np.zeros(0)
    part = (loc, scale, elbo, draws, khat)
    return parallel.gather(part) if parallel is not None else [part]
