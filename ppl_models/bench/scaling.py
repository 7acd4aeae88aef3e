r"""Data-parallel scaling of the VAE's SVI step: ``ppl-models bench vae --nproc 1,2,4``.

For each world size :math:`W` it times the step that ``ppl-models vae`` takes under ``torchrun``
(Pyro's Trace_ELBO as a module, wrapped in ``DistributedDataParallel``; each rank's batch of the
device-resident images under the full-data plate), with the per-rank batch fixed (weak scaling:
the global batch is :math:`W b`). :math:`W = 1` runs in this process, without a wrapper, as
``ppl-models vae`` does; larger :math:`W` are launched through ``torch.distributed.run``, on one
GPU per process on CUDA and with ``cpu_count // W`` threads per process on the CPU (or
``--threads``), so every world size has the same machine. It reports

.. math::

    \text{images/s}(W) = \frac{W\, b\, \text{steps}}{t_W}, \qquad
    \text{speed-up} = \frac{\text{images/s}(W)}{\text{images/s}(1)}, \qquad
    \text{efficiency} = \frac{\text{speed-up}}{W},

with :math:`t_W` the median over rounds of the time from a barrier before the steps to a
barrier after them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path

import pyro
import torch

from .. import distributed
from ..batches import DeviceBatches
from ..runs import atomic_write_json, environment, read_json
from ..svi import make_elbo, make_objective, resolve_device, seed_everything, train
from ..vae.data import load_mnist, resolve_root
from ..vae.model import build_vae, observations
from ..vae.networks import build_networks


def parse_world_sizes(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``: distinct positive integers, increasing, starting at 1 (the
    baseline of the speed-up)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or sizes != sorted(set(sizes)) or sizes[0] != 1:
        raise ValueError(
            f"--nproc must be increasing comma-separated world sizes starting at 1, e.g. 1,2,4; "
            f"got {text!r}"
        )
    return sizes


def threads_per_process(world_size: int, device: torch.device, threads: int | None = None) -> int:
    """CPU threads for each of ``world_size`` processes: ``threads`` when given, else the
    machine's cores shared evenly (one on CUDA, where the GPU computes)."""
    if threads is not None:
        return threads
    if device.type == "cuda":
        return 1
    return max(1, (os.cpu_count() or 1) // world_size)


def measure(args: argparse.Namespace, ctx: distributed.Context, batch_size: int) -> dict:
    """Time the data-parallel step of this rank of ``ctx`` at per-rank ``batch_size``."""
    seed_everything(distributed.rank_seed(args.seed, ctx.rank))
    data = load_mnist(resolve_root(args.data_dir), ctx.device)
    pixels = torch.cat([data.train_images, data.heldout_images])
    repeats = -(-args.epoch_images // len(pixels))
    images = observations(pixels.repeat(repeats, 1, 1, 1)[: args.epoch_images], args.likelihood)
    encoder, decoder = build_networks(args.arch, args.latent_dim)
    model, guide = build_vae(encoder, decoder, args.latent_dim, args.likelihood)
    objective = make_objective(model.to(ctx.device), guide.to(ctx.device), make_elbo("trace"))
    optimizer = torch.optim.Adam(objective.parameters(), lr=1e-3)
    loss_fn = ctx.wrap(objective)

    def passes():
        for epoch in itertools.count(1):
            yield from DeviceBatches(
                images,
                batch_size,
                rank=ctx.rank,
                world_size=ctx.world_size,
                seed=distributed.epoch_seed(args.seed, epoch),
                subsample=True,
            )

    source = passes()

    def steps(n: int) -> float:
        ctx.barrier()
        start = time.perf_counter()
        batches = itertools.islice(source, n)
        train(loss_fn, optimizer, batches, total=n, sync_every=n, progress=False)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        ctx.barrier()
        return time.perf_counter() - start

    with pyro.validation_enabled(False):
        if args.warmup:
            steps(args.warmup)
        seconds = statistics.median(steps(args.steps) for _ in range(args.repeats))
    return {
        "world_size": ctx.world_size,
        "batch_per_rank": batch_size,
        "global_batch": batch_size * ctx.world_size,
        "threads_per_process": torch.get_num_threads(),
        "seconds": seconds,
        "images_per_s": ctx.world_size * batch_size * args.steps / seconds,
    }


def _partial(out: Path, world_size: int) -> Path:
    return out / f".scaling-{world_size}.json"


def worker(args: argparse.Namespace, batch_sizes: list[int]) -> int:
    """One rank of a launched world size: measure every batch size; rank 0 writes the rows."""
    device = resolve_device(args.device)
    with distributed.session(device) as ctx:
        torch.set_num_threads(threads_per_process(ctx.world_size, device, args.threads))
        rows = [measure(args, ctx, b) for b in batch_sizes]
        if ctx.is_main:
            atomic_write_json(_partial(args.out, ctx.world_size), rows)
    return 0


def main(args: argparse.Namespace, batch_sizes: list[int]) -> int:
    """Measure every world size of ``--nproc``, print the table, write ``bench.json``."""
    world_sizes = parse_world_sizes(args.nproc)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if distributed.launched():
        return worker(args, batch_sizes)
    device = resolve_device(args.device)
    if device.type == "cuda" and world_sizes[-1] > torch.cuda.device_count():
        raise ValueError(
            f"--nproc {world_sizes[-1]} needs as many GPUs; this machine has "
            f"{torch.cuda.device_count()}"
        )
    rows = []
    for world_size in world_sizes:
        if world_size == 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(threads_per_process(1, device, args.threads))
            try:
                rows += [measure(args, distributed.Context(device=device), b) for b in batch_sizes]
            finally:
                torch.set_num_threads(threads)
            continue
        partial = _partial(args.out, world_size)
        partial.unlink(missing_ok=True)
        distributed.launch(world_size, args.argv)
        rows += read_json(partial)
        partial.unlink()
    base = {r["batch_per_rank"]: r["images_per_s"] for r in rows if r["world_size"] == 1}
    for r in rows:
        r["speedup"] = r["images_per_s"] / base[r["batch_per_rank"]]
        r["efficiency"] = r["speedup"] / r["world_size"]
    env = environment(seed=args.seed, device=str(device))
    result = {
        "benchmark": "vae-data-parallel",
        "arch": args.arch,
        "likelihood": args.likelihood,
        "latent_dim": args.latent_dim,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "cpu_count": os.cpu_count(),
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "rows": rows,
        **{key: env[key] for key in ("device", "device_name", "versions", "python", "created")},
    }
    atomic_write_json(args.out / "bench.json", result)
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    """Print the rows of a scaling ``bench.json`` as a table."""
    print(
        f"VAE SVI step, data-parallel ({result['backend']}), {result['arch']} / "
        f"{result['likelihood']}, device {result['device']} ({result['device_name']}), "
        f"torch {result['versions']['torch']}, pyro {result['versions']['pyro-ppl']}"
    )
    header = ("processes", "threads each", "batch/rank", "images/s", "speed-up", "efficiency")
    print("  ".join(f"{h:>12}" for h in header))
    for r in result["rows"]:
        cells = (
            r["world_size"],
            r["threads_per_process"],
            r["batch_per_rank"],
            f"{r['images_per_s']:.4g}",
            f"{r['speedup']:.2f}",
            f"{r['efficiency']:.2f}",
        )
        print("  ".join(f"{c:>12}" for c in cells))
    print("weak scaling: the batch per process is fixed; efficiency = speed-up / processes")
