r"""The best Gaussian of each image: a per-image :math:`q_i(z)` fitted by SVI, not amortized.

For each image :math:`x_i` a Gaussian :math:`q_i = \mathcal N(m_i, L_i L_i^\top)` maximises
:math:`\mathrm{ELBO}(q_i) = E_{q_i}[\log p(x_i, z)] + H[q_i]` on its own, started at the encoder's
:math:`q(z \mid x_i)`. Its ELBO is the best the family can do for that image, so the inference gap
of the amortized guide splits into two parts (Cremer, Li and Duvenaud 2018):

.. math::

    \log p(x) - \mathrm{ELBO}(q_\phi) =
    \underbrace{\log p(x) - \mathrm{ELBO}(q^*)}_{\text{approximation gap}}
    + \underbrace{\mathrm{ELBO}(q^*) - \mathrm{ELBO}(q_\phi)}_{\text{amortization gap}}.

Two families: ``diagonal``, the encoder's own (the one Cremer et al. use for the amortization
gap), and ``full`` (a full covariance), the best any Gaussian can do.

The fit is stochastic gradient ascent (Adam, step size decaying geometrically from ``lr`` to
``lr_final``) of the reparameterised estimate

.. math::

    \widehat{\mathrm{ELBO}}_i = \frac1S \sum_{s=1}^S \log p(x_i, m_i + L_i \epsilon_s)
    + \log\lvert\det L_i\rvert + \tfrac D2 (1 + \log 2\pi),

with the entropy exact and the :math:`S` standard-normal draws of every step shifted and whitened
so that their sample mean is exactly 0 and their sample covariance exactly :math:`I` (divisor
:math:`S`). For a log joint quadratic in :math:`z` (a linear-Gaussian decoder, or the Laplace
regime of a VAE) the estimate is then the exact ELBO, and the fit converges to the exact optimum;
otherwise it is a variance-reduced estimate with an :math:`O(1/S)` bias in the gradient. Each
image's parameters are whitened by the encoder's :math:`q`:
:math:`m_i = \mu_i + \sigma_i \odot a_i`, :math:`L_i = \operatorname{diag}(\sigma_i)\, T_i`
with :math:`T_i` lower triangular with a positive diagonal :math:`e^{d_i}`, started at
:math:`a = 0`, :math:`T = I`, so one step size suits images of any posterior width.

What is returned is the last iterate: the best Gaussian *found*. Its ELBO, estimated afresh with
independent draws, bounds the family's best from below, so the approximation gap computed with it
can only be overstated and the amortization gap only understated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro.distributions as dist
import torch
from tqdm import tqdm  # the terminal bar, as in ppl_models.svi

from .model import VaeModel

FAMILIES = ("diagonal", "full")


@dataclass(frozen=True)
class Gaussians:
    r"""One Gaussian per image: means ``loc`` ``(n, D)`` and Cholesky factors ``scale_tril``
    ``(n, D, D)`` (diagonal for the ``diagonal`` family)."""

    loc: torch.Tensor
    scale_tril: torch.Tensor
    family: str

    def distribution(self, images: slice = slice(None)) -> dist.Distribution:
        """:math:`\\mathcal N(m_i, L_i L_i^\\top)` of the images ``images``, batch shape ``(n,)``,
        as :func:`ppl_models.vae.evaluate.importance_draws` takes for a ``proposal``."""
        return dist.MultivariateNormal(
            self.loc[images], scale_tril=self.scale_tril[images], validate_args=False
        )

    @property
    def cov(self) -> np.ndarray:
        """Covariances ``(n, D, D)`` as float64 NumPy."""
        tril = self.scale_tril.detach().double().cpu()
        return (tril @ tril.transpose(-1, -2)).numpy()


def standardized_normal(particles: int, n: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    r"""Standard-normal draws ``(particles, n, dim)`` whose sample mean is exactly 0 and sample
    covariance (divisor ``particles``) exactly :math:`I`, separately for each of the ``n``
    columns: drawn, centred, then whitened by the Cholesky factor of their covariance."""
    eps = torch.randn(particles, n, dim, dtype=like.dtype, device=like.device)
    eps = eps - eps.mean(0)
    cov = torch.einsum("snd,sne->nde", eps, eps) / particles
    chol = torch.linalg.cholesky(cov)
    # eps_s <- K^{-1} eps_s for each column, with cov = K K^T
    white = torch.linalg.solve_triangular(chol, eps.permute(1, 2, 0), upper=False)
    return white.permute(2, 0, 1)


def fit_best_gaussians(
    model: VaeModel,
    x: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    *,
    family: str = "diagonal",
    steps: int = 300,
    particles: int = 64,
    lr: float = 0.1,
    lr_final: float = 1e-4,
    chunk: int = 65536,
    progress: bool = False,
) -> Gaussians:
    r"""Fit each image's best Gaussian of ``family`` by SVI, batched over images.

    Parameters
    ----------
    model
        The VAE's model; its parameters are held fixed (no gradient reaches them).
    x
        Observations ``(n, ...)`` (as the likelihood models them), on the model's device.
    loc, scale
        ``(n, D)``: the starting Gaussians' means and standard deviations (the encoder's
        :math:`q(z \mid x)`); they also whiten the parameters (see the module's docstring).
    family
        ``diagonal`` or ``full``.
    steps, particles, lr, lr_final
        Adam steps, draws per image and step (at least ``D + 1``), and the step size's
        geometric schedule.
    chunk
        Most (image, draw) pairs per network pass: images are fitted in groups of
        ``chunk // particles``; each image's fit is independent of the others'.
    progress
        A progress bar over the steps of every group (on a terminal only).

    Raises
    ------
    ValueError
        On an unknown family, mismatched shapes, or non-positive settings.
    FloatingPointError
        When the objective of some image becomes NaN or infinite.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    n, dim = loc.shape
    if scale.shape != loc.shape or len(x) != n:
        raise ValueError(
            f"x, loc and scale must describe the same images: got {len(x)} images, loc "
            f"{tuple(loc.shape)}, scale {tuple(scale.shape)}"
        )
    if steps < 1 or particles < dim + 1 or not 0 < lr_final <= lr:
        raise ValueError(
            f"need steps >= 1, particles >= {dim + 1} (the latent dimension + 1) and "
            f"0 < lr_final <= lr; got steps={steps}, particles={particles}, lr={lr}, "
            f"lr_final={lr_final}"
        )
    dtype = next(model.parameters()).dtype
    loc0, scale0 = loc.detach().to(dtype), scale.detach().to(dtype)
    group = max(1, chunk // particles)
    decay = (lr_final / lr) ** (1.0 / max(steps - 1, 1))
    locs, trils = [], []
    with tqdm(
        total=steps * math.ceil(n / group),
        desc=f"best {family} Gaussians",
        unit="step",
        disable=None if progress else True,
        leave=False,
    ) as bar:
        for start in range(0, n, group):
            rows = slice(start, start + group)
            m, t = _fit_group(
                model, x[rows], loc0[rows], scale0[rows], family, steps, particles, lr, decay, bar
            )
            locs.append(m)
            trils.append(t)
    return Gaussians(torch.cat(locs), torch.cat(trils), family)


def _fit_group(model, x, loc0, scale0, family, steps, particles, lr, decay, bar):
    n, dim = loc0.shape
    obs = x.reshape(n, -1).to(loc0.dtype)
    a = torch.zeros_like(loc0, requires_grad=True)
    d = torch.zeros_like(loc0, requires_grad=True)
    params = [a, d]
    rows, cols = torch.tril_indices(dim, dim, offset=-1, device=loc0.device)
    if family == "full":
        off = torch.zeros(n, len(rows), dtype=loc0.dtype, device=loc0.device, requires_grad=True)
        params.append(off)
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, decay)

    def current():
        tril = torch.diag_embed(d.exp())
        if family == "full":
            tril[:, rows, cols] = off
        return loc0 + scale0 * a, scale0[:, :, None] * tril

    for _ in range(steps):
        mean, tril = current()
        eps = standardized_normal(particles, n, dim, loc0)
        z = mean + torch.einsum("nde,sne->snd", tril, eps)
        log_joint = model.prior(z).log_prob(z) + model.observation(z).log_prob(obs)
        entropy = torch.diagonal(tril, dim1=-2, dim2=-1).log().sum(-1)
        elbo = log_joint.mean(0) + entropy
        if not torch.isfinite(elbo).all():
            bad = torch.nonzero(~torch.isfinite(elbo)).flatten().tolist()
            raise FloatingPointError(
                f"the best-Gaussian objective became {elbo[bad[0]].item()} for images {bad[:10]} "
                "(of their group); try a smaller lr"
            )
        grads = torch.autograd.grad(-elbo.sum(), params)  # the model's parameters stay fixed
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizer.step()
        schedule.step()
        bar.update(1)
    mean, tril = current()
    return mean.detach(), tril.detach()
