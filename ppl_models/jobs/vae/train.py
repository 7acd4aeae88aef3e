"""Train the MNIST VAE by SVI, evaluate it on held-out images and report its amortized posterior.

Model p(z) p(x | z) with z ~ N(0, I) and a pixel likelihood (normal, normal with a learned scale,
or Bernoulli), guide q(z | x) a diagonal Normal from an encoder (the seed notebook's
convolutional networks or Pyro's 784-400-50 MLP). Adam on Pyro's Trace_ELBO (or
TraceMeanField_ELBO) through the shared loop, one checkpoint per epoch, ``--resume RUN_DIR`` to
continue. The run writes the run-directory contract of :mod:`ppl_models.runs` plus
``checkpoint.pt`` and ``evaluation.npz``; the report is rebuilt from those files alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import (
    add_config_arguments,
    command_line_overrides,
    load_command_line_config,
    load_config,
    require,
)
from ..options import DEVICES, ELBO_KINDS, OBJECTIVE_KINDS
from ..report import Figure, Report, Table, write_report
from ..runs import (
    STATUS_COMPLETE,
    Run,
    atomic_save,
    atomic_write_text,
    read_json,
    read_metrics,
)
from ..vae.options import ARCHS, LIKELIHOODS

# torch, pyro and the networks are imported inside the functions that use them, so that building
# the command line (``ppl-models --help``) stays instant.
if TYPE_CHECKING:
    import torch

    from .. import distributed
    from ..vae.data import MnistData
    from ..vae.evaluate import Evaluation
    from ..vae.model import VaeGuide, VaeModel

MODEL = "vae"
DEFAULT_CONFIG = Path("runs/vae_mnist_conv.toml")
CHECKPOINT = "checkpoint.pt"
EVALUATION = "evaluation.npz"
GRID_COMPARISON = "grid_comparison.npz"  # latent dimension 2: exact grid posteriors and gaps
RESUME_KEYS = ("epochs",)  # the only key a resumed run may change: it can train for longer
UNIFORM_PIXELS_NATS = 784 * math.log(2)  # -log p(x) of binary images under p = 1/2 per pixel
# Burda et al. (2016), Table 1: their one-stochastic-layer VAE (784-200-200-50, tanh hidden
# units; not Pyro's 784-400-50), K = 5000, trained 3,280 epochs on all 60,000 binarised images
BURDA_VAE_NATS = 86.76
BURDA_VAE = "784-200-200-50 VAE with tanh units"
ACTIVE_THRESHOLD = 0.01  # Var over images of E[z_u | x] above which a latent unit is active


@dataclass(frozen=True)
class VaeConfig:
    """One VAE run; the defaults are the seed notebook's network and likelihood, sized for a CPU."""

    arch: str = "conv"
    likelihood: str = "normal"
    latent_dim: int = 32
    hidden_dim: int = 400
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    elbo: str = "trace"
    particles: int = 1
    objective: str = "plain"
    device: str = "auto"
    bf16: bool = False
    seed: int = 0
    data_dir: str | None = None
    download: bool = False
    max_train_images: int = 0
    eval_images: int = 0
    iw_images: int = 100
    iw_ks: str = "1,10,100,1000,5000"
    eval_chunk: int = 16384
    posterior_draws: int = 100
    grid_images: int = 20
    grid_points: int = 401
    best_steps: int = 300
    best_particles: int = 32

    def __post_init__(self):
        require(self.arch in ARCHS, "arch", self.arch, f"one of {', '.join(ARCHS)}")
        require(
            self.likelihood in LIKELIHOODS,
            "likelihood",
            self.likelihood,
            f"one of {', '.join(LIKELIHOODS)}",
        )
        require(self.latent_dim >= 1, "latent_dim", self.latent_dim, "an integer >= 1")
        require(self.hidden_dim >= 1, "hidden_dim", self.hidden_dim, "an integer >= 1")
        require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a positive number")
        require(self.elbo in ELBO_KINDS, "elbo", self.elbo, f"one of {', '.join(ELBO_KINDS)}")
        require(self.particles >= 1, "particles", self.particles, "an integer >= 1")
        require(
            self.objective in OBJECTIVE_KINDS,
            "objective",
            self.objective,
            f"one of {', '.join(OBJECTIVE_KINDS)}",
        )
        require(self.device in DEVICES, "device", self.device, f"one of {', '.join(DEVICES)}")
        require(
            self.max_train_images >= 0,
            "max_train_images",
            self.max_train_images,
            "an integer >= 0 (0: all)",
        )
        require(
            self.eval_images == 0 or self.eval_images >= 2,
            "eval_images",
            self.eval_images,
            "0 (all held-out images) or an integer >= 2",
        )
        require(self.iw_images >= 1, "iw_images", self.iw_images, "an integer >= 1")
        require(self.eval_chunk >= 1, "eval_chunk", self.eval_chunk, "an integer >= 1")
        require(
            self.posterior_draws >= 1, "posterior_draws", self.posterior_draws, "an integer >= 1"
        )
        parse_ks(self.iw_ks)
        require(self.grid_images >= 0, "grid_images", self.grid_images, "an integer >= 0 (0: none)")
        require(
            self.latent_dim != 2 or self.grid_images <= self.iw_images,
            "grid_images",
            self.grid_images,
            f"at most iw_images ({self.iw_images}): the grid images are the first IW images "
            "(or 0: no grid posteriors)",
        )
        require(
            self.grid_points >= 5 and self.grid_points % 2 == 1,
            "grid_points",
            self.grid_points,
            "an odd integer >= 5",
        )
        require(self.best_steps >= 1, "best_steps", self.best_steps, "an integer >= 1")
        require(
            self.best_particles >= 3,
            "best_particles",
            self.best_particles,
            "an integer >= 3 (the latent dimension 2, plus 1)",
        )

    @property
    def ks(self) -> list[int]:
        """The Ks of the importance-weighted bounds, increasing; the largest sets the draws."""
        return parse_ks(self.iw_ks)


def parse_ks(text: str) -> list[int]:
    """``"1,10,100"`` -> ``[1, 10, 100]``: increasing from 1 (the ELBO), the largest >= 10
    (k-hat needs at least 10 draws per image)."""
    expected = "comma-separated increasing integers from 1 to at least 10, e.g. '1,10,100'"
    try:
        ks = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"iw_ks must be {expected}, got {text!r}") from None
    require(ks == sorted(set(ks)) and ks[0] == 1 and ks[-1] >= 10, "iw_ks", text, expected)
    return ks


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
    import torch

    from ..vae.data import load_mnist, resolve_root
    from ..vae.model import observations

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
    from ..vae.model import build_vae
    from ..vae.networks import build_networks

    encoder, decoder = build_networks(config.arch, config.latent_dim, config.hidden_dim)
    model, guide = build_vae(
        encoder, decoder, config.latent_dim, config.likelihood, autocast=config.bf16
    )
    return model.to(device), guide.to(device)


def run_device(config: VaeConfig) -> torch.device:
    """The device of the run; bf16 autocast is refused anywhere but CUDA."""
    from ..svi import resolve_device

    device = resolve_device(config.device)
    if config.bf16 and device.type != "cuda":
        raise ValueError(
            f"bf16 autocast is for CUDA; the run's device is {device} "
            "(set bf16 = false or device = cuda)"
        )
    return device


# ----------------------------------------------------------------------------- checkpoints


def rng_state() -> dict:
    """Every RNG the run draws from: torch (CPU and CUDA), NumPy and Python."""
    import numpy as np
    import torch

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
    import numpy as np
    import torch

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
    import torch

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
    import torch

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
    import numpy as np
    import pyro
    import torch
    from tqdm import tqdm  # the terminal bar, as in ppl_models.svi

    from .. import distributed, svi
    from ..vae import evaluate
    from ..vae.data import DeviceBatches
    from ..vae.model import observations

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
    from .. import distributed
    from ..svi import seed_everything

    device = run_device(config)
    with distributed.session(device) as ctx:
        splits = prepare_data(config, ctx.device)
        run = distributed.rank_run(ctx.on_main(lambda: Run.create(config_name, out)), ctx)
        with run:
            run.write_config(config)
            run.write_env(seed=config.seed, device=str(ctx.device), extra=ctx.describe())
            # rank 0's seed is the config's: its initialisation is the one broadcast
            seed_everything(distributed.rank_seed(config.seed, ctx.rank))
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
    from .. import distributed

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
    import torch

    from .. import diagnostics, distributed
    from ..vae import evaluate

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
    from .. import diagnostics
    from ..vae import gaps, gaps_report

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


def make_summary(
    config: VaeConfig,
    splits: Splits,
    evaluation: Evaluation,
    metrics: list[dict],
    device: torch.device,
    eval_seconds: float,
) -> dict:
    """The numbers of ``summary.json`` from the config, data, evaluation and metrics."""
    import numpy as np

    from ..vae import evaluate

    elbo, elbo_se = evaluate.mean_and_se(evaluation.elbo)
    ks = [int(k) for k in evaluation.iw_k]
    khat = evaluation.khat
    # the importance-weighted bounds use the first iw_images evaluated images: their one-draw
    # ELBO is the number to set beside them (K = 1 estimates it with more draws per image)
    iw_elbo, iw_elbo_se = evaluate.mean_and_se(evaluation.elbo[: len(khat)])
    threshold = evaluation.threshold
    seconds = [m["seconds"] for m in metrics]
    return {
        "model": MODEL,
        "arch": config.arch,
        "likelihood": config.likelihood,
        "latent_dim": config.latent_dim,
        "elbo": config.elbo,
        "epochs": len(metrics),
        "data_split": splits.data.split,
        "data_source": str(splits.data.source),
        "train_images": len(splits.train_pixels),
        "heldout_images": len(splits.data.heldout_images),
        "eval_images": len(splits.heldout),
        "iw_images": len(khat),
        "iw_draws": int(evaluation.iw_draws),
        "heldout_elbo": elbo,
        "heldout_elbo_se": elbo_se,
        "iw_elbo": iw_elbo,
        "iw_elbo_se": iw_elbo_se,
        "iw_bounds": {str(k): float(v) for k, v in zip(ks, evaluation.iw_bound, strict=True)},
        "iw_bounds_se": {str(k): float(v) for k, v in zip(ks, evaluation.iw_se, strict=True)},
        "iw_gains": {str(k): float(v) for k, v in zip(ks[1:], evaluation.iw_gain, strict=True)},
        "iw_gains_se": {
            str(k): float(v) for k, v in zip(ks[1:], evaluation.iw_gain_se, strict=True)
        },
        "log_likelihood": float(evaluation.iw_bound[-1]),
        "active_units": evaluate.active_units(evaluation.latent_loc),
        "khat_threshold": threshold,
        "khat_share_good": float((khat <= 0.5).mean()),
        "khat_share_bad": evaluation.khat_share_bad,
        "khat_median": float(np.median(khat)),
        "khat_q90": float(np.quantile(khat, 0.9)),
        "khat_max": float(khat.max()),
        "train_elbo": metrics[-1]["train_elbo"],
        "seconds_per_epoch": float(np.mean(seconds)),
        "images_per_second": len(splits.train_pixels) * len(seconds) / float(np.sum(seconds)),
        "eval_seconds": eval_seconds,
        "device": str(device),
        "bf16": config.bf16,
    }


# ----------------------------------------------------------------------------- report


def rebuild_report(run_dir: Path) -> Path:
    """Regenerate figures and ``report.html`` from a finished run's files, without retraining."""
    return build_report(Path(run_dir), read_json(Path(run_dir) / "summary.json"))


def build_report(run_dir: Path, summary: dict) -> Path:
    """Draw the figures from the run's files and write ``report.html``; returns its path."""
    from ..vae import evaluate

    evaluation = evaluate.Evaluation.load(run_dir / EVALUATION)
    metrics = read_metrics(run_dir)
    report = Report(
        title=(
            f"MNIST VAE ({summary['arch']}, {summary['likelihood']} likelihood, latent "
            f"{summary['latent_dim']}): held-out evaluation and amortized-posterior "
            "diagnostics"
        ),
        verdict=verdict(summary),
        tables=tables(summary, metrics),
        figures=make_figures(run_dir / "figures", evaluation, metrics),
    )
    if "grid_images" in summary:
        from ..vae import gaps, gaps_report

        comparison = gaps.GridComparison.load(run_dir / GRID_COMPARISON)
        report.verdict.extend(gaps_report.verdict(summary))
        report.tables[1:1] = gaps_report.tables(summary, comparison)
        report.figures.extend(gaps_report.make_figures(run_dir / "figures", comparison))
    return write_report(run_dir, report)


def make_figures(folder: Path, evaluation: Evaluation, metrics: list[dict]) -> list[Figure]:
    """Draw every figure of the report into ``folder`` and return them as report figures."""
    from ..vae import figures

    result = [
        Figure(
            "Training curves",
            figures.training_curves(folder / "training.png", metrics),
            "ELBO per image after each epoch: on the training images (the average of the "
            "epoch's minibatch estimates, taken while the networks changed) and on the "
            "evaluated held-out images (one draw per image).",
        ),
        Figure(
            "Reconstructions",
            figures.reconstructions(
                folder / "reconstructions.png", evaluation.inputs, evaluation.reconstructions
            ),
            "Held-out images (grey levels) above the decoder's mean at the guide's "
            "posterior mean E[z | x].",
        ),
        Figure(
            "Samples from the prior",
            figures.prior_samples(folder / "prior_samples.png", evaluation.prior_samples),
            "Decoder means at z ~ N(0, I): what the model generates.",
        ),
        Figure(
            "Latent interpolation",
            figures.interpolation(folder / "interpolation.png", evaluation.interpolation),
            "Decoder means along straight lines between the posterior means of two "
            "held-out images (left and right ends).",
        ),
        Figure(
            "Per-image Pareto k-hat",
            figures.khat_histogram(folder / "khat.png", evaluation.khat, evaluation.threshold),
            f"PSIS k-hat of each held-out image's {int(evaluation.iw_draws)} importance "
            "weights. Above the threshold the guide misses part of that image's posterior "
            "and importance-sampling estimates for it are unreliable.",
        ),
    ]
    if evaluation.latent_loc.shape[1] == 2:
        result.append(
            Figure(
                "Latent map",
                figures.latent_map(
                    folder / "latent_map.png", evaluation.latent_loc, evaluation.labels
                ),
                "Posterior means of the held-out images in the 2-D latent space, by digit.",
            )
        )
    return result


def verdict(s: dict) -> list[str]:
    """Plain-words reading of the numbers.

    Every ELBO set beside an importance-weighted bound is computed on the same images, and each
    number names its image count: the bounds use the first ``iw_images`` of the ``eval_images``
    evaluated held-out images.
    """
    ks = list(s["iw_bounds"])
    k_max = ks[-1]
    gap = s["iw_bounds"][k_max] - s["iw_bounds"][ks[0]]
    n_iw = s["iw_images"]
    lines = [
        f"A {s['arch']} VAE (latent dimension {s['latent_dim']}, {s['likelihood']} likelihood, "
        f"{s['elbo']} ELBO) trained for {s['epochs']} epochs on {s['train_images']:,} images "
        f"({s['data_split']}) reaches a held-out ELBO of {s['heldout_elbo']:.2f} "
        f"± {s['heldout_elbo_se']:.2f} nats per image on {s['eval_images']:,} held-out images.",
        f"On the first {n_iw:,} of those images, the ELBO is "
        f"{s['iw_bounds'][ks[0]]:.2f} nats per image (K = 1, {s['iw_draws']:,} draws per image; "
        f"one draw per image gives {s['iw_elbo']:.2f} ± {s['iw_elbo_se']:.2f}), and importance "
        f"weighting with K = {k_max} draws raises the bound to {s['log_likelihood']:.2f} nats "
        f"(the log-likelihood estimate, same {n_iw:,} images): the amortized posterior costs at "
        f"least {gap:.2f} nats per image of KL(q(z | x) || p(z | x)). " + _monotone_note(s),
        _active_note(s),
        _khat_note(s),
        _comparability_note(s),
    ]
    return lines


def _active_note(s: dict) -> str:
    active, dim = s["active_units"], s["latent_dim"]
    head = (
        f"{active} of {dim} latent units are active (Var over images of E[z_u | x] > "
        f"{ACTIVE_THRESHOLD})"
    )
    if active == dim:
        return head + "."
    cure = (
        " The unit-scale normal likelihood measures each pixel (in [-1, 1]) against noise of "
        "standard deviation 1, so explaining an image through z gains fewer nats than its KL "
        "costs and the networks settle for the mean image; the learned-scale normal or the "
        "Bernoulli likelihood usually cures this."
        if s["likelihood"] == "normal"
        else ""
    )
    if active == 0:
        return (
            head + ": posterior collapse. q(z | x) stays at the prior for every image, the "
            "decoder ignores z, and reconstructions, prior samples and interpolations all show "
            "the same average image." + cure
        )
    return (
        head + "; the others carry no information about the image (their posterior stays at "
        "the prior: partial posterior collapse)." + cure
    )


def _monotone_note(s: dict) -> str:
    ks = list(s["iw_bounds"])
    drops = [
        f"K = {a} to {b}"
        for a, b in zip(ks, ks[1:], strict=False)
        if s["iw_gains"][b] < -2 * s["iw_gains_se"][b]
    ]
    if drops:
        return (
            "The bound decreases beyond its Monte Carlo error from "
            + ", ".join(drops)
            + ": too few draws per image for these K."
        )
    return (
        "The bound does not decrease with K beyond two standard errors of the paired "
        "per-image gains, as it must not."
    )


def _khat_note(s: dict) -> str:
    share_bad, threshold = s["khat_share_bad"], s["khat_threshold"]
    good = f"k-hat is at most 0.5 for {100 * s['khat_share_good']:.0f}% of the images"
    if share_bad == 0:
        return (
            f"The Pareto k-hat of every image's importance weights stays below the threshold "
            f"{threshold:.2f} ({good}): the guide covers each image's posterior well enough "
            "for importance sampling to be reliable."
        )
    return (
        f"For {100 * share_bad:.1f}% of the images the Pareto k-hat exceeds {threshold:.2f} "
        f"({good}; median {s['khat_median']:.2f}): for those images q(z | x) misses part of "
        "the posterior, their importance weights are heavy-tailed and their IW estimates "
        "(including the log-likelihood) are unreliable, probably too low."
    )


def _comparability_note(s: dict) -> str:
    if s["likelihood"] != "bernoulli":
        return (
            "These are Gaussian densities of continuous pixels in [-1, 1], not probabilities "
            "of discrete images: compare them only with runs of the same likelihood, not "
            "with published MNIST log-likelihoods."
        )
    return (
        f"Bernoulli log-likelihoods of dynamically binarised images compare with published "
        f"results: independent pixels with p = 1/2 score -{UNIFORM_PIXELS_NATS:.1f} nats, "
        f"and Burda et al. (2016) report -{BURDA_VAE_NATS} nats (K = 5000) for their "
        f"{BURDA_VAE} trained for 3,280 epochs on all 60,000 training images; with "
        f"{s['train_images']:,} images and {s['epochs']} epochs this run should be worse."
    )


def _nats(value: float) -> str:
    return f"{value:.2f}"


def _share(value: float) -> str:
    return f"{100 * value:.1f}%"


def tables(s: dict, metrics: list[dict]) -> list[Table]:
    """The report's tables, from ``summary.json`` and the per-epoch metrics (nats to 0.01)."""
    ks = list(s["iw_bounds"])
    n_eval, n_iw = f"{s['eval_images']:,}", f"{s['iw_images']:,}"
    evaluation = [
        [
            f"ELBO, all {n_eval} evaluated images (1 draw each)",
            s["heldout_elbo"],
            s["heldout_elbo_se"],
        ],
        [f"ELBO, the first {n_iw} of them (1 draw each)", s["iw_elbo"], s["iw_elbo_se"]],
    ]
    evaluation += [
        [f"IW bound, K = {k} ({n_iw} images)", s["iw_bounds"][k], s["iw_bounds_se"][k]] for k in ks
    ]
    evaluation += [
        [f"gain from K = {a} to {b} ({n_iw} images)", s["iw_gains"][b], s["iw_gains_se"][b]]
        for a, b in zip(ks, ks[1:], strict=False)
    ]
    evaluation.append(
        [
            f"log-likelihood estimate, K = {ks[-1]} ({n_iw} images)",
            s["log_likelihood"],
            s["iw_bounds_se"][ks[-1]],
        ]
    )
    evaluation = [[name, _nats(value), _nats(se)] for name, value, se in evaluation]
    posterior = [
        ["active latent units", f"{s['active_units']} of {s['latent_dim']}"],
        ["k-hat threshold", f"{s['khat_threshold']:.2f}"],
        ["images with k-hat <= 0.5", _share(s["khat_share_good"])],
        ["images with k-hat above the threshold", _share(s["khat_share_bad"])],
        ["k-hat median", f"{s['khat_median']:.2f}"],
        ["k-hat 90% quantile", f"{s['khat_q90']:.2f}"],
        ["k-hat max", f"{s['khat_max']:.2f}"],
    ]
    run = [
        ["data split", s["data_split"]],
        ["training images", f"{s['train_images']:,}"],
        ["held-out images", f"{s['heldout_images']:,}"],
        ["held-out images evaluated (ELBO)", n_eval],
        ["of them, for IW bounds and k-hat (the first)", n_iw],
        ["importance draws per image", f"{s['iw_draws']:,}"],
        ["epochs", s["epochs"]],
        ["final training ELBO (nats per image)", _nats(s["train_elbo"])],
        ["seconds per epoch", f"{s['seconds_per_epoch']:.1f}"],
        ["training images per second", f"{s['images_per_second']:,.0f}"],
        ["evaluation seconds", f"{s['eval_seconds']:.1f}"],
        ["device", s["device"]],
        ["bf16 autocast", "yes" if s["bf16"] else "no"],
    ]
    epochs = [
        [
            m["epoch"],
            _nats(m["train_elbo"]),
            _nats(m["heldout_elbo"]),
            f"{m['seconds']:.1f}",
            f"{m['images_per_second']:,.0f}",
        ]
        for m in metrics
    ]
    return [
        Table(
            "Held-out evaluation (nats per image)",
            ["quantity", "value", "s.e."],
            evaluation,
            note="IW bound: E[log (1/K) sum_k p(x, z_k) / q(z_k | x)], z_k ~ q(z | x) (Burda "
            f"et al. 2016), on the first {n_iw} evaluated images; K = 1 is the ELBO of those "
            "same images, estimated with more draws per image, and equals the row above it up "
            "to Monte Carlo error. Standard errors are across images; the gains are paired per "
            "image (same draws), hence their smaller errors.",
        ),
        Table(
            "Amortized posterior",
            ["quantity", "value"],
            posterior,
            note=f"PSIS k-hat per image of log p(x, z) - log q(z | x), on {n_iw} images "
            f"(Vehtari et al. 2024); an active unit has Var_x E[z_u | x] > {ACTIVE_THRESHOLD}.",
        ),
        Table("Data and training", ["quantity", "value"], run),
        Table(
            "Per epoch",
            ["epoch", "train ELBO", f"held-out ELBO ({n_eval} images)", "seconds", "images/s"],
            epochs,
        ),
    ]


# ----------------------------------------------------------------------------- command line

FLAGS = (
    "arch",
    "likelihood",
    "latent_dim",
    "epochs",
    "batch_size",
    "lr",
    "elbo",
    "device",
    "data_dir",
    "seed",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``ppl-models vae``'s options (each overrides the config file)."""
    add_config_arguments(parser, DEFAULT_CONFIG)
    parser.add_argument("--arch", choices=ARCHS, help="encoder/decoder architecture")
    parser.add_argument("--likelihood", choices=LIKELIHOODS, help="pixel likelihood")
    parser.add_argument("--latent-dim", type=int, dest="latent_dim", help="latent dimension")
    parser.add_argument("--epochs", type=int, help="training epochs (with --resume: the total)")
    parser.add_argument("--batch-size", type=int, dest="batch_size", help="images per step")
    parser.add_argument("--lr", type=float, help="Adam learning rate")
    parser.add_argument(
        "--elbo", choices=ELBO_KINDS, help="trace: Monte Carlo KL; meanfield: analytic KL"
    )
    parser.add_argument("--device", choices=DEVICES, help="where to train")
    parser.add_argument(
        "--bf16",
        action="store_true",
        default=None,
        help="bf16 autocast for the networks (CUDA only)",
    )
    parser.add_argument(
        "--data-dir",
        dest="data_dir",
        help="MNIST root in torchvision's layout (default $PPL_MODELS_DATA, else data/mnist)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="download MNIST with torchvision when it is missing",
    )
    parser.add_argument("--seed", type=int, help="seed of torch, pyro, numpy and python")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<config>/<time>/)")
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue this run from its last checkpoint"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train data-parallel in N processes on this machine (torchrun --standalone "
        "--nproc-per-node N; one GPU each on CUDA); for several machines run torchrun "
        "yourself: torchrun --nnodes ... -m ppl_models vae ...",
    )


def _flag_overrides(args: argparse.Namespace) -> dict:
    flags = (*FLAGS, "bf16", "download")
    return command_line_overrides(args.overrides, {key: getattr(args, key) for key in flags})


def config_from_args(args: argparse.Namespace) -> tuple[VaeConfig, str]:
    """The resolved configuration and its name (the config file's stem) from parsed options."""
    return load_command_line_config(
        VaeConfig, args.config, DEFAULT_CONFIG, _flag_overrides(args), MODEL
    )


def main(args: argparse.Namespace) -> int:
    """Run (or resume) ``ppl-models vae`` and print the key numbers; returns 0.

    With ``--nproc N`` (outside ``torchrun``), launch the same command as N processes through
    ``torch.distributed.run`` instead; under ``torchrun`` only rank 0 prints.

    Raises
    ------
    ppl_models.distributed.RankFailure
        (a ``ConnectionError``) when a worker of ``--nproc`` fails; the run's ``summary.json``
        then says ``"status": "failed"`` and why.
    """
    import os

    from .. import distributed

    if args.resume is not None:
        extra = sorted(set(_flag_overrides(args)) - set(RESUME_KEYS))
        extra += [name for name in ("config", "out") if getattr(args, name) is not None]
        if extra:
            raise ValueError(
                f"--resume continues a run with its own configuration; only "
                f"--epochs may change, got {', '.join(extra)}"
            )
    if args.nproc is not None and not distributed.launched():
        return _launch(args)
    if args.resume is not None:
        run = resume(args.resume, epochs=args.epochs, progress=not args.quiet)
    else:
        config, name = config_from_args(args)
        run = execute(config, name, out=args.out, progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":
        return 0
    _print_summary(run.path)
    return 0


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N``: check the command here, then run it as N workers of torchrun."""
    from .. import distributed

    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if args.resume is not None:
        run_dir, new = Run.open(args.resume).path, False
    else:
        config, name = config_from_args(args)  # a bad configuration fails here, once
        run_dir, new = Run.new_path(name, args.out).absolute(), args.out is None
    # rank 0 prints the summary
    distributed.launch_command(args.nproc, getattr(args, "argv", None), run_dir, pin_out=new)
    return 0


def _print_summary(run_dir: Path) -> None:
    s = read_json(Path(run_dir) / "summary.json")
    ks = list(s["iw_bounds"])
    print(
        f"held-out ELBO {s['heldout_elbo']:.2f} nats/image ({s['eval_images']} images); on the "
        f"first {s['iw_images']} of them ELBO {s['iw_bounds'][ks[0]]:.2f} (K = 1), "
        f"log-likelihood estimate {s['log_likelihood']:.2f} (K = {ks[-1]}); active units "
        f"{s['active_units']}/{s['latent_dim']}; k-hat above {s['khat_threshold']:.2f} for "
        f"{100 * s['khat_share_bad']:.1f}% of images"
    )
    if "grid_images" in s:
        print(
            f"exact grid posteriors of {s['grid_images']} images: log p(x) "
            f"{s['grid_log_evidence']:.2f}; KL(q || p) {s['grid_kl_amortized']:.3f} = "
            f"amortization gap {s['grid_amortization_gap']:.3f} + approximation gap "
            f"{s['grid_approximation_gap']:.3f} nats/image"
        )
    print(f"report: {Path(run_dir) / 'report.html'}")
