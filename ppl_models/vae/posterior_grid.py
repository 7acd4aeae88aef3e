r"""Exact per-image posteriors of a VAE with a two-dimensional latent, on grids.

For one image :math:`x` the unnormalised posterior is the log joint

.. math::

    \log f_x(z) = \log p_\theta(x \mid z) + \log \mathcal N(z; 0, I_2),

whose integral over :math:`z` is the image's evidence :math:`p(x)`. :func:`grid_posteriors`
evaluates it on a grid per image (:mod:`ppl_models.grid2d`), ranged from the encoder's
:math:`q(z \mid x)` and a scan of the prior's bulk :math:`[-6, 6]^2`, with one decoder pass per
chunk of (image, grid point) pairs on the model's device. The decoder runs in the model's dtype
(float32 for a trained VAE, so each log-density carries a rounding error of about
:math:`10^{-7}` times its size); the quadrature is float64.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import grid2d
from .evaluate import DEFAULT_CHUNK, latent_moments
from .model import VaeGuide, VaeModel

SEARCH_BOX = 6.0  # the scan covers [-6, 6]^2, where the prior N(0, I) puts all but 4e-9


def log_joint(model: VaeModel, x: torch.Tensor) -> grid2d.BatchLogDensity:
    r"""The batch of log joints :math:`\log p(x_i \mid z) + \log p(z)` of the images ``x``, as
    :func:`ppl_models.grid2d.grid_posteriors` takes them: ``(index, z)`` with ``z``
    ``(b, m, 2)`` float64 on the host gives ``(b, m)`` float64, one decoder pass per call."""
    obs = x.reshape(len(x), -1)
    dtype = next(model.parameters()).dtype

    @torch.no_grad()
    def evaluate(index: np.ndarray, z: np.ndarray) -> np.ndarray:
        zt = torch.as_tensor(z, dtype=dtype, device=obs.device)
        rows = obs[torch.as_tensor(index, device=obs.device)].to(dtype)[:, None, :]
        values = model.prior(zt).log_prob(zt) + model.observation(zt).log_prob(rows)
        return values.double().cpu().numpy()

    return evaluate


def grid_posteriors(
    model: VaeModel,
    guide: VaeGuide,
    x: torch.Tensor,
    *,
    n_points: int = 401,
    log_drop: float = 30.0,
    chunk: int = DEFAULT_CHUNK,
    progress: bool = False,
) -> list[grid2d.GridPosterior2D]:
    """The grid posterior :math:`p(z \\mid x_i)` of every image of ``x`` (see the module doc).

    Parameters
    ----------
    model, guide
        A VAE with ``latent_dim == 2``; the guide's :math:`q(z \\mid x)` starts each grid's range.
    x
        Observations ``(n, ...)`` as the likelihood models them, on the model's device.
    n_points, log_drop, chunk, progress
        As for :func:`ppl_models.grid2d.grid_posteriors` (``chunk``: most (image, point) pairs
        per decoder pass).

    Raises
    ------
    ValueError
        For a latent dimension other than 2, and as :func:`ppl_models.grid2d.grid_posteriors`.
    """
    if model.latent_dim != 2:
        raise ValueError(
            f"grid posteriors need a two-dimensional latent, got latent_dim={model.latent_dim}"
        )
    loc, scale = latent_moments(guide, x, chunk)
    box = (np.full(2, -SEARCH_BOX), np.full(2, SEARCH_BOX))
    return grid2d.grid_posteriors(
        log_joint(model, x),
        loc.astype(np.float64),
        scale.astype(np.float64),
        n_points=n_points,
        log_drop=log_drop,
        search_box=box,
        chunk=chunk,
        progress=progress,
    )
