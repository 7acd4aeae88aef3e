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

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from .. import diagnostics
from ..config import command_line_overrides, load_command_line_config, load_config, require
from ..report import Figure, Report, Table, write_report
from ..runs import (
    STATUS_COMPLETE,
    Run,
    atomic_save,
    atomic_write_text,
    read_json,
    read_metrics,
)
from ..svi import (
    ELBO_KINDS,
    OBJECTIVE_KINDS,
    make_elbo,
    make_objective,
    resolve_device,
    seed_everything,
    train,
)
from ..vae import evaluate, figures
from ..vae.data import DeviceBatches, MnistData, load_mnist, resolve_root
from ..vae.model import LIKELIHOODS, VaeGuide, VaeModel, build_vae, observations
from ..vae.networks import ARCHS, build_networks

MODEL = "vae"
DEFAULT_CONFIG = Path("runs/vae_mnist_conv.toml")
CHECKPOINT = "checkpoint.pt"
EVALUATION = "evaluation.npz"
RESUME_KEYS = ("epochs",)  # the only key a resumed run may change: it can train for longer
UNIFORM_PIXELS_NATS = 784 * math.log(2)  # -log p(x) of binary images under p = 1/2 per pixel
BURDA_VAE_NATS = 86.76  # Burda et al. (2016), VAE 784-400-50 (one stochastic layer), full MNIST


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
        require(
            self.device in ("auto", "cpu", "cuda"), "device", self.device, "one of auto, cpu, cuda"
        )
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
) -> None:
    """Write networks, optimizer, epoch, RNG states and config to ``path`` atomically."""
    state = {
        "epoch": epoch,
        "networks": loss_fn.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "config": dataclasses.asdict(config),
    }
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
) -> tuple[VaeModel, VaeGuide]:
    """Train epoch by epoch from scratch or from ``checkpoint``; log and checkpoint each epoch.

    The loss module ``Trace_ELBO()(model, guide)`` could be wrapped in
    ``DistributedDataParallel`` under ``torchrun``, with ``DeviceBatches(rank=, world_size=)``
    sharding each epoch's permutation.

    Raises
    ------
    NonFiniteLossError
        When the loss becomes NaN or infinite; the last epoch's checkpoint stays as it was.
    """
    model, guide = build_model(config, device)
    loss_fn = make_objective(
        model, guide, make_elbo(config.elbo, config.particles), config.objective
    )
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=config.lr)
    start = 0
    if checkpoint is not None:
        loss_fn.load_state_dict(checkpoint["networks"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"])  # last: building the networks drew from the RNG
        start = checkpoint["epoch"]
    n_train = len(splits.train_pixels)
    # a GPU keeps its queue full when losses are read back only now and then
    sync_every = 1 if device.type == "cpu" else 50
    # Pyro's validation reads every site's log-density back to the host to warn of NaN, a
    # synchronisation per site and step on a GPU; the loop's own finiteness check covers it.
    with pyro.validation_enabled(False):
        for epoch in range(start + 1, config.epochs + 1):
            loss_fn.train()
            x_train = observations(splits.train_pixels, config.likelihood)
            result = train(
                loss_fn,
                optimizer,
                DeviceBatches(x_train, config.batch_size),
                sync_every=sync_every,
                items_per_step=config.batch_size,
                progress=progress,
                desc=f"epoch {epoch}/{config.epochs}",
            )
            heldout = evaluate.elbo_per_image(model, guide, splits.heldout, config.eval_chunk)
            # each loss is -sum of the batch's ELBOs; the batches cover every image once
            record = {
                "epoch": epoch,
                "train_elbo": -float(result.losses.double().sum()) / n_train,
                "heldout_elbo": float(heldout.mean()),
                "seconds": result.seconds,
                "images_per_second": n_train / result.seconds,
            }
            run.log_metrics(**record)
            save_checkpoint(run.file(CHECKPOINT), loss_fn, optimizer, epoch, config)
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
    """Do a whole new run: data, training, evaluation, figures, report. Returns the run."""
    device = run_device(config)
    splits = prepare_data(config, device)
    with Run.create(config_name, out) as run:
        run.write_config(config)
        run.write_env(seed=config.seed, device=str(device))
        seed_everything(config.seed)
        model, guide = fit(run, config, splits, device, progress=progress)
        finish(run, config, splits, model, guide, device)
    return run


def resume(run_dir: Path, epochs: int | None = None, progress: bool = True) -> Run:
    """Continue an interrupted run (or extend a finished one to ``epochs``) from its checkpoint.

    With the same device (CPU), the losses are those of an uninterrupted run, exactly: the
    checkpoint restores networks, Adam's moments and every RNG state after the last epoch.
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
    splits = prepare_data(config, device)
    with run:
        run.write_config(config)
        kept = [m for m in read_metrics(run.path) if m["epoch"] <= done]
        atomic_write_text(run.file("metrics.jsonl"), "".join(json.dumps(m) + "\n" for m in kept))
        model, guide = fit(run, config, splits, device, checkpoint=checkpoint, progress=progress)
        finish(run, config, splits, model, guide, device)
    return run


def finish(
    run: Run,
    config: VaeConfig,
    splits: Splits,
    model: VaeModel,
    guide: VaeGuide,
    device: torch.device,
) -> None:
    """Evaluate the trained pair, save the arrays and posterior draws, write report and summary."""
    start = time.perf_counter()
    evaluation, draws = evaluate.evaluate(
        model,
        guide,
        splits.heldout,
        splits.heldout_pixels,
        splits.heldout_labels,
        iw_images=config.iw_images,
        ks=config.ks,
        keep=config.posterior_draws,
        chunk=config.eval_chunk,
    )
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
    build_report(run.path, summary)
    run.write_summary(summary)  # last: a summary with status "complete" means all is there


def make_summary(
    config: VaeConfig,
    splits: Splits,
    evaluation: evaluate.Evaluation,
    metrics: list[dict],
    device: torch.device,
    eval_seconds: float,
) -> dict:
    """The numbers of ``summary.json`` from the config, data, evaluation and metrics."""
    elbo, elbo_se = evaluate.mean_and_se(evaluation.elbo)
    ks = [int(k) for k in evaluation.iw_k]
    khat = evaluation.khat
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
    return write_report(run_dir, report)


def make_figures(
    folder: Path, evaluation: evaluate.Evaluation, metrics: list[dict]
) -> list[Figure]:
    """Draw every figure of the report into ``folder`` and return them as report figures."""
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
    """Plain-words reading of the numbers."""
    ks = list(s["iw_bounds"])
    k_max = ks[-1]
    gap = s["iw_bounds"][k_max] - s["iw_bounds"][ks[0]]
    lines = [
        f"A {s['arch']} VAE (latent dimension {s['latent_dim']}, {s['likelihood']} likelihood, "
        f"{s['elbo']} ELBO) trained for {s['epochs']} epochs on {s['train_images']:,} images "
        f"({s['data_split']}) reaches a held-out ELBO of {s['heldout_elbo']:.2f} "
        f"± {s['heldout_elbo_se']:.2f} nats per image on {s['eval_images']:,} held-out images.",
        f"Importance weighting with K = {k_max} draws per image raises the bound to "
        f"{s['log_likelihood']:.2f} nats (the log-likelihood estimate, on {s['iw_images']:,} "
        f"images): the amortized posterior costs at least {gap:.2f} nats per image of "
        "KL(q(z | x) || p(z | x)). " + _monotone_note(s),
        f"{s['active_units']} of {s['latent_dim']} latent units are active "
        "(Var over images of E[z_u | x] > 0.01)"
        + (
            "."
            if s["active_units"] == s["latent_dim"]
            else "; the others carry no information about the image (their posterior stays at the "
            "prior)."
        ),
        _khat_note(s),
        _comparability_note(s),
    ]
    return lines


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
        f"and Burda et al. (2016) report -{BURDA_VAE_NATS} nats for a 784-400-50 VAE trained "
        "for 3,280 epochs on all 60,000 training images; with "
        f"{s['train_images']:,} images and {s['epochs']} epochs this run should be worse."
    )


def tables(s: dict, metrics: list[dict]) -> list[Table]:
    """The report's tables, from ``summary.json`` and the per-epoch metrics."""
    ks = list(s["iw_bounds"])
    evaluation = [["held-out ELBO", s["heldout_elbo"], s["heldout_elbo_se"]]]
    evaluation += [[f"IW bound, K = {k}", s["iw_bounds"][k], s["iw_bounds_se"][k]] for k in ks]
    evaluation += [
        [f"gain from K = {a} to {b}", s["iw_gains"][b], s["iw_gains_se"][b]]
        for a, b in zip(ks, ks[1:], strict=False)
    ]
    evaluation.append(
        [f"log-likelihood estimate (K = {ks[-1]})", s["log_likelihood"], s["iw_bounds_se"][ks[-1]]]
    )
    posterior = [
        ["active latent units", s["active_units"]],
        ["latent dimension", s["latent_dim"]],
        ["k-hat threshold", s["khat_threshold"]],
        ["share of images with k-hat <= 0.5", s["khat_share_good"]],
        ["share of images with k-hat above the threshold", s["khat_share_bad"]],
        ["k-hat median", s["khat_median"]],
        ["k-hat 90% quantile", s["khat_q90"]],
        ["k-hat max", s["khat_max"]],
    ]
    run = [
        ["data split", s["data_split"]],
        ["training images", s["train_images"]],
        ["held-out images", s["heldout_images"]],
        ["held-out images evaluated (ELBO)", s["eval_images"]],
        ["held-out images evaluated (IW bounds, k-hat)", s["iw_images"]],
        ["importance draws per image", s["iw_draws"]],
        ["epochs", s["epochs"]],
        ["final training ELBO", s["train_elbo"]],
        ["seconds per epoch", s["seconds_per_epoch"]],
        ["training images per second", s["images_per_second"]],
        ["evaluation seconds", s["eval_seconds"]],
        ["device", s["device"]],
        ["bf16 autocast", s["bf16"]],
    ]
    epochs = [
        [m["epoch"], m["train_elbo"], m["heldout_elbo"], m["seconds"], m["images_per_second"]]
        for m in metrics
    ]
    return [
        Table(
            "Held-out evaluation (nats per image)",
            ["quantity", "value", "s.e."],
            evaluation,
            note="IW bound: E[log (1/K) sum_k p(x, z_k) / q(z_k | x)], z_k ~ q(z | x) (Burda "
            "et al. 2016); K = 1 is the ELBO. Standard errors are across images; the "
            "gains are paired per image (same draws), hence their smaller errors.",
        ),
        Table(
            "Amortized posterior",
            ["quantity", "value"],
            posterior,
            note="PSIS k-hat per image of log p(x, z) - log q(z | x) (Vehtari et al. 2024); "
            "an active unit has Var_x E[z_u | x] > 0.01.",
        ),
        Table("Data and training", ["quantity", "value"], run),
        Table("Per epoch", ["epoch", "train ELBO", "held-out ELBO", "seconds", "images/s"], epochs),
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
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML run configuration (default {DEFAULT_CONFIG} when present)",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a configuration key (repeatable)",
    )
    parser.add_argument("--arch", choices=ARCHS, help="encoder/decoder architecture")
    parser.add_argument("--likelihood", choices=LIKELIHOODS, help="pixel likelihood")
    parser.add_argument("--latent-dim", type=int, dest="latent_dim", help="latent dimension")
    parser.add_argument("--epochs", type=int, help="training epochs (with --resume: the total)")
    parser.add_argument("--batch-size", type=int, dest="batch_size", help="images per step")
    parser.add_argument("--lr", type=float, help="Adam learning rate")
    parser.add_argument(
        "--elbo", choices=ELBO_KINDS, help="trace: Monte Carlo KL; meanfield: analytic KL"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train")
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


def _flag_overrides(args: argparse.Namespace) -> dict:
    flags = (*FLAGS, "bf16", "download")
    return command_line_overrides(args.overrides, {key: getattr(args, key) for key in flags})


def config_from_args(args: argparse.Namespace) -> tuple[VaeConfig, str]:
    """The resolved configuration and its name (the config file's stem) from parsed options."""
    return load_command_line_config(
        VaeConfig, args.config, DEFAULT_CONFIG, _flag_overrides(args), MODEL
    )


def main(args: argparse.Namespace) -> int:
    """Run (or resume) ``ppl-models vae`` and print the key numbers; returns 0."""
    if args.resume is not None:
        extra = sorted(set(_flag_overrides(args)) - set(RESUME_KEYS))
        extra += [name for name in ("config", "out") if getattr(args, name) is not None]
        if extra:
            raise ValueError(
                f"--resume continues a run with its own configuration; only "
                f"--epochs may change, got {', '.join(extra)}"
            )
        run = resume(args.resume, epochs=args.epochs, progress=not args.quiet)
    else:
        config, name = config_from_args(args)
        run = execute(config, name, out=args.out, progress=not args.quiet)
    s = read_json(run.file("summary.json"))
    ks = list(s["iw_bounds"])
    print(
        f"held-out ELBO {s['heldout_elbo']:.2f} nats/image ({s['eval_images']} images); on "
        f"{s['iw_images']} of them ELBO {s['iw_bounds'][ks[0]]:.2f}, log-likelihood estimate "
        f"{s['log_likelihood']:.2f} (K = {ks[-1]}); active units "
        f"{s['active_units']}/{s['latent_dim']}; k-hat above {s['khat_threshold']:.2f} for "
        f"{100 * s['khat_share_bad']:.1f}% of images"
    )
    print(f"report: {run.file('report.html')}")
    return 0
