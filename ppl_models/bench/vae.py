"""Benchmark the VAE's SVI step: the package's against hand-written PyTorch and a DataLoader path.

Three ways to take the same Adam step on the same networks and MNIST images (tiled to
``--epoch-images``), timed in images per second at each batch size:

(a) ``package``: Pyro's Trace_ELBO as a module (:func:`ppl_models.svi.make_objective`), batches of
    the device-resident tensor by an on-device permutation, through :func:`ppl_models.svi.train`;
(b) ``handwritten``: the reparameterised ELBO written directly in PyTorch, same batching;
(c) ``dataloader``: (a)'s objective fed as Pyro's VAE example does, a ``DataLoader`` over a
    ``TensorDataset`` in host memory, each batch moved with ``.to(device)``.

With ``--nproc 1,2,...`` it measures data-parallel scaling instead
(:mod:`ppl_models.bench.scaling`).

Ratios are of time per step: (a)/(b) is the price of Pyro's machinery (target <= 1.15), (c)/(a)
the price of the per-item data path (target >= 3 on CUDA). On CUDA it also times one epoch of
60,000 images of the conv network at batch 256 (target < 1.5 s on an H100).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..options import DEVICES
from ..runs import atomic_write_json, environment
from ..vae.options import ARCHS, LIKELIHOODS
from . import make_out_dir

# torch and pyro are imported inside the functions, so that building the command line is instant
if TYPE_CHECKING:
    import torch

    from ..vae.model import VaeGuide, VaeModel

LOG_2PI = math.log(2 * math.pi)
EPOCH_BATCH = 256
METHODS = ("package", "handwritten", "dataloader")


def handwritten_loss(model: VaeModel, guide: VaeGuide, x: torch.Tensor) -> torch.Tensor:
    r""":math:`-\sum_n [\log p(x_n \mid z_n) + \log p(z_n) - \log q(z_n \mid x_n)]` with
    :math:`z_n = \mu_n + \sigma_n \odot \epsilon_n`, written with plain tensor operations."""
    import torch
    import torch.nn.functional as F

    loc, log_scale = guide.encoder(x)
    eps = torch.randn_like(loc)
    z = loc + log_scale.exp() * eps
    out = model.decoder(z).flatten(1)
    obs = x.flatten(1)
    if model.likelihood == "bernoulli":
        log_px = -F.binary_cross_entropy_with_logits(out, obs, reduction="none").sum(1)
    else:
        log_s = model.log_scale if model.likelihood == "normal-learned-scale" else out.new_zeros(())
        log_px = (-0.5 * ((obs - out) / log_s.exp()) ** 2 - log_s - 0.5 * LOG_2PI).sum(1)
    log_pz = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(1)
    log_q = (-0.5 * eps**2 - log_scale - 0.5 * LOG_2PI).sum(1)
    return -(log_px + log_pz - log_q).sum()


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step_loop, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` steps, device work included."""
    _sync(device)
    start = time.perf_counter()
    step_loop(steps)
    _sync(device)
    return time.perf_counter() - start


def _pair(args, device):
    from ..vae.model import build_vae
    from ..vae.networks import build_networks

    encoder, decoder = build_networks(args.arch, args.latent_dim)
    model, guide = build_vae(encoder, decoder, args.latent_dim, args.likelihood)
    return model.to(device), guide.to(device)


def _stepper(
    method: str,
    model: VaeModel,
    guide: VaeGuide,
    images: torch.Tensor,
    host_images: torch.Tensor,
    batch_size: int,
    device: torch.device,
    objective: str = "plain",
):
    """A function taking ``n`` Adam steps of ``method`` on the next ``n`` batches; ``objective``
    is the kind of the package's objective (see :func:`ppl_models.svi.make_objective`)."""
    import torch

    from ..batches import DeviceBatches
    from ..svi import make_elbo, make_objective, train

    if method == "handwritten":
        loss_fn = _handwritten_module(model, guide)
    else:
        loss_fn = make_objective(model, guide, make_elbo("trace"), objective)
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)
    if method == "dataloader":
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(host_images),
            batch_size=batch_size,
            shuffle=True,
            pin_memory=device.type == "cuda",
        )
        source = ((x.to(device, non_blocking=True),) for (x,) in _forever(loader))
    else:
        source = _forever(DeviceBatches(images, batch_size))

    def steps(n: int) -> None:
        if n:
            train(
                loss_fn,
                optimizer,
                itertools.islice(source, n),
                total=n,
                sync_every=n,
                progress=False,
            )

    return steps


def measure(
    images: torch.Tensor, host_images: torch.Tensor, batch_size: int, args, device: torch.device
) -> dict:
    """Images per second of (a), (b) and (c) at one batch size, from identical networks.

    After ``warmup`` steps each, the three alternate in ``repeats`` rounds of ``steps`` steps,
    so a machine's drifting load hits them alike; the median round counts.
    """
    model, guide = _pair(args, device)
    steppers = {
        name: _stepper(
            name,
            copy.deepcopy(model),
            copy.deepcopy(guide),
            images,
            host_images,
            batch_size,
            device,
            args.objective,
        )
        for name in METHODS
    }
    for steps in steppers.values():
        steps(args.warmup)
    seconds = {name: [] for name in METHODS}
    for _ in range(args.repeats):
        for name, steps in steppers.items():
            seconds[name].append(_timed(steps, args.steps, device))
    rates = {name: args.steps * batch_size / statistics.median(s) for name, s in seconds.items()}
    return {
        "batch_size": batch_size,
        "package_images_per_s": rates["package"],
        "handwritten_images_per_s": rates["handwritten"],
        "dataloader_images_per_s": rates["dataloader"],
        # time ratios, as the targets are stated: (a)/(b) <= 1.15, (c)/(a) >= 3 on CUDA
        "time_package_over_handwritten": rates["handwritten"] / rates["package"],
        "time_dataloader_over_package": rates["package"] / rates["dataloader"],
    }


def _handwritten_module(model: VaeModel, guide: VaeGuide) -> torch.nn.Module:
    """:func:`handwritten_loss` as a module, so the shared loop drives (a) and (b) alike."""
    import torch

    class HandwrittenLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.guide = model, guide

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return handwritten_loss(self.model, self.guide, x)

    return HandwrittenLoss()


def _forever(batches):
    """Cycle through passes of a re-iterable (a new shuffle each pass)."""
    while True:
        yield from batches


def epoch_seconds(images: torch.Tensor, args, device: torch.device) -> float:
    """Wall time of one epoch's worth of steps over ``images``, package step, batch 256."""
    from ..batches import DeviceBatches

    pair = _pair(args, device)
    steps = _stepper("package", *pair, images, images, EPOCH_BATCH, device, args.objective)
    steps(args.warmup)
    return _timed(steps, len(DeviceBatches(images, EPOCH_BATCH)), device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to its ``bench vae`` subparser."""
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where to run (default: CUDA when present)",
    )
    parser.add_argument("--arch", choices=ARCHS, default="conv", help="networks (default conv)")
    parser.add_argument(
        "--likelihood",
        choices=LIKELIHOODS,
        default="normal",
        help="pixel likelihood (default normal)",
    )
    parser.add_argument(
        "--latent-dim",
        type=int,
        default=32,
        dest="latent_dim",
        help="latent dimension (default 32)",
    )
    parser.add_argument(
        "--batch-sizes",
        default="256,1024",
        dest="batch_sizes",
        help="comma-separated batch sizes (default 256,1024)",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed rounds per method (the median counts)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument(
        "--epoch-images",
        type=int,
        default=60000,
        dest="epoch_images",
        help="images in the tiled data set (an epoch of full MNIST: 60000)",
    )
    parser.add_argument(
        "--full-epoch",
        action="store_true",
        default=None,
        dest="full_epoch",
        help="time a whole epoch also off CUDA (it is always timed on CUDA)",
    )
    parser.add_argument(
        "--nproc",
        metavar="W1,W2,...",
        help="measure data-parallel scaling instead: images/s, speed-up and efficiency at each "
        "of these numbers of processes (from 1; through torchrun, one GPU each on CUDA)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="with --nproc: CPU threads per process (default: the cores shared evenly)",
    )
    parser.add_argument(
        "--data-dir", dest="data_dir", help="MNIST root (default $PPL_MODELS_DATA, else data/mnist)"
    )
    parser.add_argument(
        "--objective",
        choices=("plain", "traced"),
        default="plain",
        help="the package's objective for (a) and (c): Pyro's handlers every step, or traced once",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the networks and batches")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        help="folder for bench.json, created when missing (default: the current folder)",
    )


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--batch-sizes must be comma-separated positive integers, got {text!r}")
    return sizes


def main(args: argparse.Namespace) -> int:
    """Measure the three training steps, print the table, write ``bench.json``; returns 0.

    With ``--nproc 1,2,...``, measure data-parallel scaling instead
    (:mod:`ppl_models.bench.scaling`)."""
    import pyro
    import torch

    from ..svi import resolve_device, seed_everything
    from ..vae.data import load_mnist, resolve_root
    from ..vae.model import observations

    sizes = _batch_sizes(args.batch_sizes)
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0 or args.epoch_images < max(sizes):
        raise ValueError(
            f"need --steps >= 1, --repeats >= 1, --warmup >= 0 and --epoch-images "
            f">= the largest batch; got {args.steps}, {args.repeats}, "
            f"{args.warmup}, {args.epoch_images}"
        )
    out = make_out_dir(args.out)
    if args.nproc is not None:
        from . import scaling

        args.out = out
        return scaling.main(args, sizes)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    data = load_mnist(resolve_root(args.data_dir), device)
    pixels = torch.cat([data.train_images, data.heldout_images])
    # throughput does not depend on pixel content: tile the images up to an epoch's worth
    repeats = -(-args.epoch_images // len(pixels))
    images = observations(pixels.repeat(repeats, 1, 1, 1)[: args.epoch_images], args.likelihood)
    timed_epoch = device.type == "cuda" or bool(args.full_epoch)
    per_epoch = {"images": args.epoch_images, "batch_size": EPOCH_BATCH, "measured": timed_epoch}
    with pyro.validation_enabled(False):  # as in ppl-models vae: no per-site NaN checks
        rows = [measure(images, images.cpu(), b, args, device) for b in sizes]
        if timed_epoch:
            per_epoch["seconds"] = epoch_seconds(images, args, device)
    if not timed_epoch:
        package_rates = [r["package_images_per_s"] for r in rows if r["batch_size"] == EPOCH_BATCH]
        per_epoch["seconds"] = (args.epoch_images / package_rates[0]) if package_rates else None
    env = environment(seed=args.seed, device=str(device))
    result = {
        "benchmark": "vae",
        "arch": args.arch,
        "likelihood": args.likelihood,
        "latent_dim": args.latent_dim,
        "objective": args.objective,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "cpu_threads": torch.get_num_threads(),
        "rows": rows,
        "epoch": per_epoch,
        **{key: env[key] for key in ("device", "device_name", "versions", "python", "created")},
    }
    atomic_write_json(out / "bench.json", result)
    _print_table(result)
    return 0


def _print_table(result: dict) -> None:
    print(
        f"VAE SVI step, {result['arch']} / {result['likelihood']}, "
        f"{result['objective']} objective, device {result['device']} "
        f"({result['device_name']}), {result['cpu_threads']} CPU threads, "
        f"torch {result['versions']['torch']}, pyro {result['versions']['pyro-ppl']}"
    )
    header = (
        "batch",
        "(a) package",
        "(b) hand-written",
        "(c) DataLoader",
        "time (a)/(b)",
        "time (c)/(a)",
    )
    print("  ".join(f"{h:>16}" for h in header))
    for r in result["rows"]:
        cells = (
            r["batch_size"],
            r["package_images_per_s"],
            r["handwritten_images_per_s"],
            r["dataloader_images_per_s"],
            r["time_package_over_handwritten"],
            r["time_dataloader_over_package"],
        )
        print("  ".join(f"{c:>16.4g}" if isinstance(c, float) else f"{c:>16}" for c in cells))
    print(
        "images per second; time ratios: (a)/(b) > 1 is Pyro's overhead (target <= 1.15), "
        "(c)/(a) > 1 the DataLoader's cost (target >= 3 on CUDA)"
    )
    epoch = result["epoch"]
    if epoch["seconds"] is not None:
        how = "measured" if epoch["measured"] else "estimated from (a)"
        print(
            f"one epoch of {epoch['images']:,} images at batch {epoch['batch_size']}: "
            f"{epoch['seconds']:.2f} s ({how})"
        )
