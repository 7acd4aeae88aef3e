"""Worker of ``test_distributed.py``, run under torchrun: one data-parallel step's gradient.

Each rank builds the tiny VAE from its own seed (so only DistributedDataParallel's broadcast can
make the ranks agree), takes its stride of the first step of a shared permutation under the
full-data plate, and back-propagates through the DDP-wrapped objective. The guide draws
``z = loc + scale * eps`` with ``eps`` fixed per image (by the image's index), so the noise is
the same however the images are split among processes. Rank 0 saves the averaged gradients, and
every rank's parameter digest, to ``OUT/gradients.pt``.

Usage: ``torchrun ... tests/ddp_gradient.py OUT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from ppl_models import distributed, svi
from ppl_models.batches import DeviceBatches
from ppl_models.vae.model import VaeGuide, build_vae, data_plate
from ppl_models.vae.networks import build_networks

IMAGES, LATENT, HIDDEN = 12, 3, 16


class FixedNoiseNormal(dist.Normal):
    """A Normal whose reparameterised draw uses the given standard-normal ``eps``."""

    def __init__(self, loc, scale, eps):
        super().__init__(loc, scale, validate_args=False)
        self.eps = eps

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return FixedNoiseNormal(
            self.loc.expand(shape), self.scale.expand(shape), self.eps.expand(shape)
        )

    def rsample(self, sample_shape=()):
        return self.loc + self.scale * self.eps


class FixedNoiseGuide(VaeGuide):
    """The VAE's guide with the noise of image ``n`` fixed to ``eps[n]``."""

    def __init__(self, encoder, eps):
        super().__init__(encoder)
        self.eps = eps

    def forward(self, x, subsample=None, size=None):
        loc, log_scale = self.encoder(x)
        eps = self.eps if subsample is None else self.eps[subsample]
        with data_plate(x, subsample, size):
            pyro.sample("z", FixedNoiseNormal(loc, log_scale.exp(), eps).to_event(1))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed images and noise, the same in every process."""
    generator = torch.Generator().manual_seed(123)
    x = torch.rand(IMAGES, 1, 28, 28, generator=generator) * 2 - 1
    eps = torch.randn(IMAGES, LATENT, generator=generator)
    return x, eps


def objective(seed: int) -> torch.nn.Module:
    """The negative-ELBO module of the tiny VAE, initialised from ``seed``."""
    torch.manual_seed(seed)
    encoder, decoder = build_networks("mlp", LATENT, HIDDEN)
    model, _ = build_vae(encoder, decoder, LATENT, "normal")
    guide = FixedNoiseGuide(encoder, data()[1])
    return svi.make_objective(model, guide, svi.make_elbo("trace"))


def gradients(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in module.named_parameters()}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    with distributed.session(torch.device("cpu")) as ctx:
        loss_fn = objective(distributed.rank_seed(0, ctx.rank))
        ddp = ctx.wrap(loss_fn)
        x, _ = data()
        batches = DeviceBatches(
            x,
            IMAGES // ctx.world_size,
            rank=ctx.rank,
            world_size=ctx.world_size,
            seed=distributed.epoch_seed(0, 1),
            subsample=True,
        )
        with pyro.validation_enabled(False):
            ddp(*next(iter(batches))).backward()
        digests = ctx.gather(distributed.parameter_digest(loss_fn))
        if ctx.is_main:
            state = {"gradients": gradients(loss_fn), "digests": digests, "world": ctx.describe()}
            torch.save(state, out / "gradients.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
