"""Benchmark the exact grid posteriors of a latent-2 VAE: held-out images at 401 x 401 points.

Times :func:`ppl_models.vae.posterior_grid.grid_posteriors` (ranging probes, then every image's
final grid in chunks of at most ``--chunk`` (image, point) pairs per decoder pass) on
``--images`` held-out MNIST images, and reports seconds, seconds per image, decoder evaluations
per second and the peak memory the pass added: the process's peak resident set (CPU) or the
peak of allocated CUDA memory. The networks are a trained run's (``--run RUN_DIR`` of
``ppl-models vae`` with ``latent_dim = 2``), else freshly initialised ones of the same shape:
the cost per point is the same, only the ranging rounds differ.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from ..config import load_config
from ..jobs.vae.config import CHECKPOINT, VaeConfig
from ..options import DEVICES
from ..runs import atomic_write_json, environment
from ..vae.options import LIKELIHOODS
from . import make_out_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to its ``bench vae-grid`` subparser."""
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to run")
    parser.add_argument("--images", type=int, default=200, help="held-out images (default 200)")
    parser.add_argument(
        "--grid-points", type=int, default=401, dest="grid_points", help="nodes per axis (odd)"
    )
    parser.add_argument(
        "--chunk", type=int, default=65536, help="most (image, point) pairs per decoder pass"
    )
    parser.add_argument(
        "--run",
        type=Path,
        help="a finished ppl-models vae run with latent_dim 2 whose networks to use",
    )
    parser.add_argument(
        "--hidden-dim", type=int, default=400, dest="hidden_dim", help="MLP width without --run"
    )
    parser.add_argument(
        "--likelihood", choices=LIKELIHOODS, default="bernoulli", help="without --run"
    )
    parser.add_argument(
        "--data-dir", dest="data_dir", help="MNIST root (default $PPL_MODELS_DATA, else data/mnist)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the networks and images")
    parser.add_argument(
        "--out", type=Path, default=Path("."), help="folder for bench.json (created when missing)"
    )


def _pair(args, device):
    """The model and guide: a run's trained networks, or fresh MLP ones."""
    from .. import svi
    from ..jobs.vae.train import build_model, load_checkpoint

    if args.run is None:
        config = VaeConfig(
            arch="mlp", likelihood=args.likelihood, latent_dim=2, hidden_dim=args.hidden_dim
        )
        return (*build_model(config, device), config)
    config = load_config(VaeConfig, Path(args.run) / "config.toml")
    if config.latent_dim != 2:
        raise ValueError(f"--run needs a run with latent_dim 2, got {config.latent_dim}")
    model, guide = build_model(config, device)
    state = load_checkpoint(Path(args.run) / CHECKPOINT)["networks"]
    # the checkpoint holds the training objective's state, as ppl_models.jobs.vae.train.fit saves it
    elbo = svi.make_elbo(config.elbo, config.particles)
    svi.make_objective(model, guide, elbo, config.objective).load_state_dict(state)
    return model, guide, config


def main(args: argparse.Namespace) -> int:
    """Time the grid posteriors, print the result, write ``bench.json``; returns 0."""
    import torch

    from ..svi import resolve_device, seed_everything
    from ..vae.data import load_mnist, resolve_root
    from ..vae.model import observations
    from ..vae.posterior_grid import grid_posteriors

    if args.images < 1 or args.chunk < 1:
        raise ValueError(f"--images and --chunk must be >= 1, got {args.images}, {args.chunk}")
    out = make_out_dir(args.out)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    model, guide, config = _pair(args, device)
    data = load_mnist(resolve_root(args.data_dir), device)
    if args.images > len(data.heldout_images):
        raise ValueError(
            f"--images is {args.images} but only {len(data.heldout_images)} are held out"
        )
    generator = torch.Generator(device=device).manual_seed(args.seed)
    x = observations(data.heldout_images[: args.images], config.likelihood, generator)

    def peak_bytes() -> int:
        if device.type == "cuda":
            return torch.cuda.max_memory_allocated(device)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = peak_bytes()
    start = time.perf_counter()
    grids = grid_posteriors(
        model, guide, x, n_points=args.grid_points, chunk=args.chunk, progress=True
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    points = args.images * args.grid_points**2
    env = environment(seed=args.seed, device=str(device))
    result = {
        "benchmark": "vae-grid",
        "images": args.images,
        "grid_points": args.grid_points,
        "chunk": args.chunk,
        "networks": str(args.run) if args.run else "untrained",
        "arch": config.arch,
        "hidden_dim": config.hidden_dim,
        "likelihood": config.likelihood,
        "seconds": seconds,
        "seconds_per_image": seconds / args.images,
        "final_grid_points": points,
        "points_per_second": points / seconds,
        "peak_memory_added_bytes": peak_bytes() - before,
        "peak_memory_bytes": peak_bytes(),
        "max_log_z_error": max(g.log_z_error for g in grids),
        "cpu_threads": torch.get_num_threads(),
        **{key: env[key] for key in ("device", "device_name", "versions", "python", "created")},
    }
    atomic_write_json(out / "bench.json", result)
    print(
        f"VAE grid posteriors, {result['images']} images at {args.grid_points} x "
        f"{args.grid_points} points, {config.arch} {config.hidden_dim} / {config.likelihood} "
        f"({result['networks']} networks), device {result['device']} "
        f"({result['device_name']}), {result['cpu_threads']} CPU threads, torch "
        f"{result['versions']['torch']}"
    )
    print(
        f"{seconds:.1f} s ({result['seconds_per_image']:.2f} s per image, "
        f"{result['points_per_second']:,.0f} final grid points per second); peak memory "
        f"{result['peak_memory_bytes'] / 2**20:,.0f} MiB, of which the pass added "
        f"{result['peak_memory_added_bytes'] / 2**20:,.0f} MiB; largest log p(x) change on "
        f"halving a grid {result['max_log_z_error']:.1g} nats"
    )
    return 0
