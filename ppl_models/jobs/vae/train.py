"""Training and evaluation of ``ppl-models vae``: one run, from the data to the report.

:func:`execute` does a new run and :func:`resume` continues one from its checkpoint. Both cut the
data (:func:`prepare_data`), build the networks (:func:`build_model`), train epoch by epoch
(:func:`fit`: Adam on the ELBO through :func:`ppl_models.svi.train`, a checkpoint with every RNG
state after each epoch) and :func:`finish`: evaluate on the held-out images, save the arrays and
posterior draws, and write the report (:mod:`ppl_models.jobs.vae.report`) and the summary. Under
``torchrun`` every rank calls them, and rank 0 alone writes (:mod:`ppl_models.distributed`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch
from tqdm import tqdm  # the terminal bar, as in ppl_models.svi

from ... import diagnostics, distributed, svi
from ...batches import DeviceBatches
from ...config import load_config
from ...runs import STATUS_COMPLETE, Run, atomic_save, atomic_write_text, read_json, read_metrics
from ...vae import evaluate, gaps
from ...vae.data import MnistData, load_mnist, resolve_root
from ...vae.model import VaeGuide, VaeModel, build_vae, observations
from ...vae.networks import build_networks
from . import gaps_report
from .config import CHECKPOINT, EVALUATION, GRID_COMPARISON, RESUME_KEYS, VaeConfig
from .report import build_report, make_summary

# ----------------------------------------------------------------------------- data and networks


@dataclass(frozen=True)
class Splits:
    """What the run trains and evaluates on, all on the device.

    ``train_pixels``: grey levels of the training images (re-binarised every epoch for a
    Bernoulli likelihood); ``heldout``: the evaluated held-out observations (binarised once, with a
    fixed seed), ``heldout_pixels`` and ``heldout_labels`` beside them.
    """

    train_pixels: torch.Tensor
    heldout: torch.Tensor
    heldout_pixels: torch.Tensor
    heldout_labels: torch.Tensor
    data: MnistData


def prepare_data(config: VaeConfig, device: torch.device) -> Splits:
    """Load MNIST onto ``device`` and cut the training and held-out sets the config asks for."""
    root = resolve_root(config.data_dir)
    data = load_mnist(root, device, download_missing=config.download)
    n_train = len(data.train_images)
    if config.max_train_images > n_train:
        raise ValueError(
            f"max_train_images is {config.max_train_images} but {root} has only "
            f"{n_train} training images"
        )
    n_eval = config.eval_images or len(data.heldout_images)
    if n_eval > len(data.heldout_images):
        raise ValueError(
            f"eval_images is {config.eval_images} but {root} holds out only "
            f"{len(data.heldout_images)} images"
        )
    if config.iw_images > n_eval:
        raise ValueError(
            f"iw_images ({config.iw_images}) must not exceed the {n_eval} evaluated held-out images"
        )
    pixels = data.heldout_images[:n_eval]
    # a generator of its own: the held-out binarisation is the same however training went
    generator = torch.Generator(device=device).manual_seed(config.seed)
    return Splits(
        train_pixels=data.train_images[: config.max_train_images or n_train],
        heldout=observations(pixels, config.likelihood, generator),
        heldout_pixels=pixels,
        heldout_labels=data.heldout_labels[:n_eval],
        data=data,
    )


def build_model(config: VaeConfig, device: torch.device) -> tuple[VaeModel, VaeGuide]:
    """The model/guide pair of the config, on ``device``."""
    encoder, decoder = build_networks(config.arch, config.latent_dim, config.hidden_dim)
    model, guide = build_vae(
        encoder, decoder, config.latent_dim, config.likelihood, autocast=config.bf16
    )
    return model.to(device), guide.to(device)


def run_device(config: VaeConfig) -> torch.device:
    """The device of the run; bf16 autocast is refused anywhere but CUDA."""
    device = svi.resolve_device(config.device)
    if config.bf16 and device.type != "cuda":
        raise ValueError(
            f"bf16 autocast is for CUDA; the run's device is {device} "
            "(set bf16 = false or device = cuda)"
        )
    return device


# ----------------------------------------------------------------------------- checkpoints


def rng_state() -> dict:
    """Every RNG the run draws from: torch (CPU and CUDA), NumPy and Python."""
    # the legacy global NumPy state is the one seed_everything seeds
    _, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # as a tensor and plain numbers, so the checkpoint loads with weights_only=True
        "numpy": (torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        ("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    )
    random.setstate(state["python"])


def save_checkpoint(
    path: Path,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    config: VaeConfig,
    rank_rng: list[dict] | None = None,
) -> None:
    """Write networks, optimizer, epoch, RNG states and config to ``path`` atomically.

    ``rank_rng``: under ``torchrun``, every rank's :func:`rng_state`, in rank order; saved with
    the world size, so a resume with as many processes gives each its own generators back.
    """
    state = {
        "epoch": epoch,
        "networks": loss_fn.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "config": dataclasses.asdict(config),
    }
    if rank_rng is not None and len(rank_rng) > 1:
        state.update(world_size=len(rank_rng), rank_rng=rank_rng)
    atomic_save(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (a missing file is a clear error)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: the run stopped before its first "
            "epoch ended; start a new run instead"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- training


def fit(
    run: Run,
    config: VaeConfig,
    splits: Splits,
    device: torch.device,
    checkpoint: dict | None = None,
    progress: bool = True,
    ctx: distributed.Context | None = None,
) -> tuple[VaeModel, VaeGuide]:
    """Train epoch by epoch from scratch or from ``checkpoint``; log and checkpoint each epoch.

    Each step's loss is a minibatch under ``pyro.plate("data", N, subsample=idx)``: an unbiased
    estimate of the full-data negative ELBO. Under ``torchrun`` (``ctx`` of several ranks) the
    loss module is wrapped in ``DistributedDataParallel``, every rank takes its stride of the
    pass's shared permutation (:func:`ppl_models.distributed.epoch_seed`), the logged losses
    and held-out ELBOs are gathered from all ranks, and rank 0 alone logs and checkpoints.

    Raises
    ------
    NonFiniteLossError
        When the loss becomes NaN or infinite; the last epoch's checkpoint stays as it was.
    """
    ctx = ctx or distributed.Context(device=device)
    model, guide = build_model(config, device)
    objective = svi.make_objective(
        model, guide, svi.make_elbo(config.elbo, config.particles), config.objective
    )
    optimizer = torch.optim.Adam(objective.parameters(), lr=config.lr)
    start = 0
    if checkpoint is not None:
        objective.load_state_dict(checkpoint["networks"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        # last: building the networks drew from the RNG
        set_rng_state(checkpoint["rank_rng"][ctx.rank] if ctx.parallel else checkpoint["rng"])
        start = checkpoint["epoch"]
    # the networks exist at construction, so no warm-up call; rank 0's values are broadcast
    loss_fn = ctx.wrap(objective)
    n_train = len(splits.train_pixels)
    heldout_share = splits.heldout[ctx.share(len(splits.heldout))]
    # a GPU keeps its queue full when losses are read back only now and then
    sync_every = 1 if device.type == "cpu" else 50
    # Pyro's validation reads every site's log-density back to the host to warn of NaN, a
    # synchronisation per site and step on a GPU; the loop's own finiteness check covers it.
    with pyro.validation_enabled(False), ctx.lost_ranks_reported():
        for epoch in range(start + 1, config.epochs + 1):
            loss_fn.train()
            x_train = observations(splits.train_pixels, config.likelihood)
            batches = DeviceBatches(
                x_train,
                config.batch_size,
                rank=ctx.rank,
                world_size=ctx.world_size,
                seed=distributed.epoch_seed(config.seed, epoch),
                subsample=True,
            )
            result = svi.train(
                loss_fn,
                optimizer,
                batches,
                sync_every=sync_every,
                items_per_step=config.batch_size * ctx.world_size,
                progress=progress and ctx.is_main,
                desc=f"epoch {epoch}/{config.epochs}",
            )
            losses = ctx.all_reduce_mean(result.losses.double()).cpu()
            heldout = ctx.gather(
                evaluate.elbo_per_image(model, guide, heldout_share, config.eval_chunk)
            )
            rank_rng = ctx.gather(rng_state())
            if not ctx.is_main:
                continue
            # each loss estimates the full-data -ELBO, N times the per-image one; weighted by
            # batch size, so that every image seen in the pass counts once
            sizes = torch.tensor(batches.batch_sizes(), dtype=torch.float64)
            seen = batches.items * ctx.world_size
            record = {
                "epoch": epoch,
                "train_elbo": -float((losses * sizes).sum() / sizes.sum()) / n_train,
                "heldout_elbo": float(np.concatenate(heldout).mean()),
                "seconds": result.seconds,
                "images_per_second": seen / result.seconds,
            }
            run.log_metrics(**record)
            save_checkpoint(
                run.file(CHECKPOINT), objective, optimizer, epoch, config, rank_rng=rank_rng
            )
            if progress:
                tqdm.write(
                    f"epoch {epoch}/{config.epochs}: train ELBO "
                    f"{record['train_elbo']:.2f}, held-out ELBO "
                    f"{record['heldout_elbo']:.2f} nats/image, "
                    f"{record['images_per_second']:.0f} images/s"
                )
    return model, guide


# ----------------------------------------------------------------------------- the run


def execute(
    config: VaeConfig, config_name: str, out: Path | None = None, progress: bool = True
) -> Run:
    """Do a whole new run: data, training, evaluation, figures, report. Returns the run.

    Under ``torchrun`` every rank calls this; rank 0 creates and writes the run directory, the
    others return a :class:`~ppl_models.runs.Run` of the same path that wrote nothing.
    """
    device = run_device(config)
    with distributed.session(device) as ctx:
        splits = prepare_data(config, ctx.device)
        run = distributed.rank_run(ctx.on_main(lambda: Run.create(config_name, out)), ctx)
        with run:
            run.write_config(config)
            run.write_env(seed=config.seed, device=str(ctx.device), extra=ctx.describe())
            # rank 0's seed is the config's: its initialisation is the one broadcast
            svi.seed_everything(distributed.rank_seed(config.seed, ctx.rank))
            model, guide = fit(run, config, splits, ctx.device, progress=progress, ctx=ctx)
            finish(run, config, splits, model, guide, ctx.device, ctx=ctx, progress=progress)
    return run


def resume(run_dir: Path, epochs: int | None = None, progress: bool = True) -> Run:
    """Continue an interrupted run (or extend a finished one to ``epochs``) from its checkpoint.

    With the same device (CPU), the losses are those of an uninterrupted run, exactly: the
    checkpoint restores networks, Adam's moments and every RNG state after the last epoch (of
    every rank, under ``torchrun``, which must then start as many processes as before). Every
    rank reads the run directory (on several machines it must be on a shared filesystem); rank 0
    alone writes it.
    """
    run = Run.open(run_dir)
    config = load_config(
        VaeConfig, run.file("config.toml"), {"epochs": epochs} if epochs is not None else {}
    )
    checkpoint = load_checkpoint(run.file(CHECKPOINT))
    changed = [
        key
        for key, value in checkpoint["config"].items()
        if key not in RESUME_KEYS and getattr(config, key) != value
    ]
    if changed:
        raise ValueError(
            f"{run.file('config.toml')} no longer matches its checkpoint "
            f"({', '.join(changed)}); a resumed run must keep its configuration"
        )
    done = checkpoint["epoch"]
    if done > config.epochs:
        raise ValueError(
            f"the checkpoint of {run_dir} has {done} epochs, more than the "
            f"{config.epochs} asked for"
        )
    summary_path = run.file("summary.json")
    if (
        done == config.epochs
        and summary_path.is_file()
        and read_json(summary_path).get("status") == STATUS_COMPLETE
    ):
        raise ValueError(
            f"run {run_dir} already finished its {done} epochs; pass --epochs N "
            f"with N > {done} to train it further"
        )
    device = run_device(config)
    with distributed.session(device) as ctx:
        saved_world = checkpoint.get("world_size", 1)
        if saved_world != ctx.world_size:
            raise ValueError(
                f"the checkpoint of {run_dir} was written by {saved_world} processes; resume "
                f"it with as many (--nproc {saved_world}), not {ctx.world_size}"
            )
        splits = prepare_data(config, ctx.device)
        run = distributed.rank_run(run, ctx)
        with run:
            run.write_config(config)
            if ctx.is_main:
                kept = [m for m in read_metrics(run.path) if m["epoch"] <= done]
                lines = "".join(json.dumps(m) + "\n" for m in kept)
                atomic_write_text(run.file("metrics.jsonl"), lines)
            model, guide = fit(
                run, config, splits, ctx.device, checkpoint=checkpoint, progress=progress, ctx=ctx
            )
            finish(run, config, splits, model, guide, ctx.device, ctx=ctx, progress=progress)
    return run


def finish(
    run: Run,
    config: VaeConfig,
    splits: Splits,
    model: VaeModel,
    guide: VaeGuide,
    device: torch.device,
    ctx: distributed.Context | None = None,
    progress: bool = False,
) -> None:
    """Evaluate the trained pair, save the arrays and posterior draws, write report and summary.

    Under ``torchrun`` the evaluation is sharded across ranks and gathered on rank 0, which
    alone writes; the summary records every rank's parameter digest (all equal: the ranks hold
    bit-identical parameters). With a two-dimensional latent, rank 0 also computes the first
    ``grid_images`` IW images' exact grid posteriors and inference gaps
    (:mod:`ppl_models.vae.gaps`).
    """
    ctx = ctx or distributed.Context(device=device)
    start = time.perf_counter()
    digests = ctx.gather(distributed.parameter_digest(torch.nn.ModuleList([model, guide])))
    result = evaluate.evaluate(
        model,
        guide,
        splits.heldout,
        splits.heldout_pixels,
        splits.heldout_labels,
        iw_images=config.iw_images,
        ks=config.ks,
        keep=config.posterior_draws,
        chunk=config.eval_chunk,
        parallel=ctx if ctx.parallel else None,
    )
    if not ctx.is_main:
        return
    evaluation, draws = result
    evaluation.save(run.file(EVALUATION))
    # one chain: any number of draws; they are independent given each image anyway
    idata = diagnostics.inference_data(
        draws.z, log_joint=draws.log_joint, log_q=draws.log_q, chains=1
    )
    atomic_save(run.file("posterior.nc"), lambda tmp: idata.to_netcdf(str(tmp)))
    summary = make_summary(
        config,
        splits,
        evaluation,
        read_metrics(run.path),
        device,
        eval_seconds=time.perf_counter() - start,
    )
    if config.latent_dim == 2 and config.grid_images:
        summary.update(_grid_section(run, config, splits, model, guide, draws, progress))
    summary.update(ctx.describe(), parameter_digests=digests)
    build_report(run.path, summary)
    run.write_summary(summary)  # last: a summary with status "complete" means all is there


def _grid_section(run, config, splits, model, guide, draws, progress) -> dict:
    """Grid posteriors and gaps of the first ``grid_images`` IW images, reusing their importance
    weights; saves ``grid_comparison.npz`` and ``posterior_grid.nc``, returns the summary keys."""
    n = config.grid_images
    comparison, samples = gaps.compare(
        model,
        guide,
        splits.heldout[:n],
        ks=config.ks,
        amortized_log_weights=draws.log_weights[:n],
        grid_points=config.grid_points,
        best_steps=config.best_steps,
        best_particles=config.best_particles,
        chunk=config.eval_chunk,
        seed=config.seed,
        progress=progress,
    )
    comparison.save(run.file(GRID_COMPARISON))
    idata = diagnostics.merge_methods(
        {method: diagnostics.inference_data(z) for method, z in samples.items()}
    )
    atomic_save(run.file("posterior_grid.nc"), lambda tmp: idata.to_netcdf(str(tmp)))
    return gaps_report.summary(comparison, config.grid_points)
