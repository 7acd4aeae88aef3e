r"""Encoder and decoder networks of the MNIST VAE.

An encoder maps images ``(N, 1, 28, 28)`` to the location and log-scale of a diagonal Normal
:math:`q(z \mid x) = \mathcal N(\mu(x), \operatorname{diag} \sigma(x)^2)`, each ``(N, latent_dim)``;
a decoder maps latents ``(N, latent_dim)`` to one output per pixel, ``(N, 1, 28, 28)`` (a mean
for a Normal likelihood, a logit for a Bernoulli one). Two architectures:

- ``conv``: the seed notebook's convolutional encoder and decoder, layer for layer;
- ``mlp``: 784-``hidden_dim``-``latent_dim`` with softplus, as in Pyro's ``examples/vae/vae.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from .options import ARCHS

IMAGE_SHAPE = (1, 28, 28)
PIXELS = 28 * 28


class ConvEncoder(nn.Module):
    """The notebook's encoder: three conv-conv-maxpool stages, 28x28 -> 32 features at 1x1.

    Spatial sizes: 28 -3-> 26 -3-> 24 -pool-> 12 -3-> 10 -3-> 8 -pool-> 4 -2-> 3 -2-> 2 -pool-> 1.
    """

    features = 32

    def __init__(self, latent_dim: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3),
            nn.LeakyReLU(),
            nn.Conv2d(8, 8, 3),
            nn.LeakyReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(8, 16, 3),
            nn.LeakyReLU(),
            nn.Conv2d(16, 16, 3),
            nn.LeakyReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(16, 32, 2),
            nn.LeakyReLU(),
            nn.Conv2d(32, 32, 2),
            nn.LeakyReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.loc = nn.Linear(self.features, latent_dim)
        self.log_scale = nn.Linear(self.features, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # flatten rather than the notebook's squeeze(), which also drops a batch of one
        h = self.body(x).flatten(1)
        return self.loc(h), self.log_scale(h)


class ConvDecoder(nn.Module):
    """The notebook's decoder: the latent as a 1x1 image, three bilinear 2x upsamplings.

    Spatial sizes: 1 -1x1-> 1 -up-> 2 -3,pad 2-> 4 -3,pad 2-> 6 -up-> 12 -3,pad 2-> 14
    -3,pad 1-> 14 -up-> 28 -3,pad 1-> 28, so a ``(N, latent_dim)`` input gives ``(N, 1, 28, 28)``.
    """

    def __init__(self, latent_dim: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(latent_dim, 32, 1),
            nn.LeakyReLU(),
            nn.Upsample(scale_factor=2, mode="bilinear"),
            nn.Conv2d(32, 16, 3, padding=2),
            nn.LeakyReLU(),
            nn.Conv2d(16, 16, 3, padding=2),
            nn.LeakyReLU(),
            nn.Upsample(scale_factor=2, mode="bilinear"),
            nn.Conv2d(16, 8, 3, padding=2),
            nn.LeakyReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.LeakyReLU(),
            nn.Upsample(scale_factor=2, mode="bilinear"),
            nn.Conv2d(8, 1, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z[:, :, None, None])


class MlpEncoder(nn.Module):
    """784 -> ``hidden_dim`` (softplus) -> location and log-scale heads."""

    def __init__(self, latent_dim: int = 50, hidden_dim: int = 400):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(PIXELS, hidden_dim), nn.Softplus())
        self.loc = nn.Linear(hidden_dim, latent_dim)
        self.log_scale = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(x.flatten(1))
        return self.loc(h), self.log_scale(h)


class MlpDecoder(nn.Module):
    """``latent_dim`` -> ``hidden_dim`` (softplus) -> 784, reshaped to one 28x28 channel."""

    def __init__(self, latent_dim: int = 50, hidden_dim: int = 400):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, PIXELS)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).reshape(-1, *IMAGE_SHAPE)


def build_networks(
    arch: str, latent_dim: int, hidden_dim: int = 400
) -> tuple[nn.Module, nn.Module]:
    """Return ``(encoder, decoder)`` of architecture ``arch`` (``hidden_dim``: ``mlp`` only)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
    if arch == "conv":
        return ConvEncoder(latent_dim), ConvDecoder(latent_dim)
    if hidden_dim < 1:
        raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
    return MlpEncoder(latent_dim, hidden_dim), MlpDecoder(latent_dim, hidden_dim)
