r"""The VAE as a Pyro model/guide pair.

.. math::

    z \sim \mathcal N(0, I_D), \qquad x \mid z \sim p_\theta(x \mid z) \text{ (per pixel)},
    \qquad q_\phi(z \mid x) = \mathcal N\big(\mu_\phi(x), \operatorname{diag} e^{2 s_\phi(x)}\big).

Model and guide are ``nn.Module``\ s (decoder in the model, encoder in the guide), so
``Trace_ELBO()(model, guide)`` is one module holding every parameter (see :mod:`ppl_models.svi`).
Both draw under ``pyro.plate("data")`` on the data's device (:func:`data_plate`), over the batch
or, with ``forward(x, subsample, size)``, over the whole data set of which ``x`` is a minibatch.
Pixel likelihoods:

- ``normal``: :math:`\mathcal N(x_j; m_j(z), 1)` on pixels normalised to :math:`[-1, 1]`;
- ``normal-learned-scale``: :math:`\mathcal N(x_j; m_j(z), e^{2\lambda})` with one learned
  :math:`\lambda`;
- ``bernoulli``: :math:`\operatorname{Bernoulli}(x_j; \operatorname{sigmoid} \ell_j(z))` on pixels
  binarised by :math:`x_j \sim \operatorname{Bernoulli}(\text{grey level})`, a proper likelihood of
  binary images whose log-probabilities compare with published MNIST results.

The normal likelihoods are densities of continuous pixels: their nats are not comparable with the
Bernoulli's (or with each other's as model quality).

The distributions skip argument validation: an exponentiated scale is positive, logits and
latents are real, unless a value is NaN or infinite, and that case must reach the loss, where
:func:`ppl_models.svi.train` reports it as a ``NonFiniteLossError`` (a validation error would
hide it). The observations come from :func:`observations`, so they are in support.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .options import LIKELIHOODS


def check_likelihood(likelihood: str) -> None:
    """Raise ``ValueError`` unless ``likelihood`` is one of
    :data:`~ppl_models.vae.options.LIKELIHOODS`."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")


def observations(
    pixels: torch.Tensor, likelihood: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Turn grey levels in :math:`[0, 1]` into the data the likelihood models.

    ``2p - 1`` for the normal likelihoods (the notebooks' ``Normalize(0.5, 0.5)``); a fresh
    binarisation :math:`x \\sim \\operatorname{Bernoulli}(p)` for ``bernoulli`` (drawn from
    ``generator``, else the global RNG of the pixels' device).
    """
    check_likelihood(likelihood)
    if likelihood == "bernoulli":
        return torch.bernoulli(pixels, generator=generator)
    return pixels * 2 - 1


def data_plate(
    x: torch.Tensor, subsample: torch.Tensor | None = None, size: int | None = None
) -> pyro.plate:
    r"""The images' plate: over the batch ``x``, or, given ``subsample`` (the batch's indices into a
    data set of ``size`` images), over the whole data set with ``x`` as its subsample.

    In the second form Pyro scales every log-density in the plate by :math:`N/b`
    (``size / len(x)``), so the loss of a batch is an unbiased estimate of the full-data negative
    ELBO, whatever the batch size, and averaging the losses of several ranks' batches (as
    ``DistributedDataParallel`` averages their gradients) is the estimate from their union. The
    indices are given, never drawn by the plate: a plate that drew its own subsample would draw
    the same one on every rank.
    """
    if subsample is None:
        return pyro.plate("data", x.shape[0], device=x.device)
    if size is None or len(subsample) != x.shape[0]:
        raise ValueError(
            f"a subsample needs the data size and one index per image: got {len(subsample)} "
            f"indices for {x.shape[0]} images, size {size}"
        )
    return pyro.plate("data", size, subsample=subsample, device=x.device)


class VaeModel(nn.Module):
    """Generative model :math:`p(z) p_\\theta(x \\mid z)`; ``forward(x)`` is the Pyro model."""

    def __init__(
        self, decoder: nn.Module, latent_dim: int, likelihood: str, autocast: bool = False
    ):
        super().__init__()
        check_likelihood(likelihood)
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.likelihood = likelihood
        self.autocast = autocast
        if likelihood == "normal-learned-scale":
            self.log_scale = nn.Parameter(torch.zeros(()))

    def prior(self, like: torch.Tensor) -> dist.Distribution:
        """:math:`\\mathcal N(0, I_D)` on the device and dtype of ``like``, event shape ``(D,)``."""
        zero = like.new_zeros(())
        return dist.Normal(zero, 1.0, validate_args=False).expand([self.latent_dim]).to_event(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output for latents ``(..., D)`` as ``(..., pixels)`` in float32 (float64 for a
        float64 decoder).

        Under ``autocast`` the network runs in bf16; the output is cast back so every
        log-density is computed in float32 at least.
        """
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.decoder(z.reshape(-1, z.shape[-1]))
        return out.to(torch.promote_types(out.dtype, torch.float32)).reshape(*z.shape[:-1], -1)

    def observation(self, z: torch.Tensor) -> dist.Distribution:
        """:math:`p_\\theta(x \\mid z)` over flattened pixels, batch shape ``z.shape[:-1]``."""
        out = self.decode(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        scale = self.log_scale.exp() if self.likelihood == "normal-learned-scale" else 1.0
        return dist.Normal(out, scale, validate_args=False).to_event(1)

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`E[x \\mid z]` mapped back to grey levels in :math:`[0, 1]`, for figures."""
        out = self.decode(z)
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out)
        return ((out + 1) / 2).clamp(0, 1)

    def forward(
        self, x: torch.Tensor, subsample: torch.Tensor | None = None, size: int | None = None
    ) -> None:
        with data_plate(x, subsample, size):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.observation(z), obs=x.reshape(x.shape[0], -1))


class VaeGuide(nn.Module):
    """Amortized guide :math:`q_\\phi(z \\mid x)`; ``forward(x)`` is the Pyro guide."""

    def __init__(self, encoder: nn.Module, autocast: bool = False):
        super().__init__()
        self.encoder = encoder
        self.autocast = autocast

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        """Diagonal Normal :math:`q(z \\mid x)` with batch shape ``(N,)`` and event ``(D,)``, in
        float32 (float64 for a float64 encoder)."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loc, log_scale = self.encoder(x)
        dtype = torch.promote_types(loc.dtype, torch.float32)
        return dist.Normal(loc.to(dtype), log_scale.to(dtype).exp(), validate_args=False).to_event(
            1
        )

    def forward(
        self, x: torch.Tensor, subsample: torch.Tensor | None = None, size: int | None = None
    ) -> None:
        with data_plate(x, subsample, size):
            pyro.sample("z", self.posterior(x))


def build_vae(
    encoder: nn.Module, decoder: nn.Module, latent_dim: int, likelihood: str, autocast: bool = False
) -> tuple[VaeModel, VaeGuide]:
    """The model/guide pair around a decoder and an encoder."""
    return (VaeModel(decoder, latent_dim, likelihood, autocast), VaeGuide(encoder, autocast))
