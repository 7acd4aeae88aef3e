"""The report of ``ppl-models vae``: the numbers of ``summary.json``, the verdict in words, the
tables, the figures and the report page.

The page is built from the run's files alone (``summary.json``, ``metrics.jsonl``,
``evaluation.npz`` and, for a two-dimensional latent, ``grid_comparison.npz`` with its section
from :mod:`ppl_models.jobs.vae.gaps_report`), so ``ppl-models report RUN_DIR`` redraws it
without the networks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...report import (
    Badge,
    Details,
    Figure,
    KeyNumber,
    Num,
    Report,
    Table,
    format_seconds,
    write_report,
)
from ...runs import read_json, read_metrics
from ...vae import evaluate, figures, gaps
from ...vae.evaluate import ACTIVE_THRESHOLD, Evaluation
from . import gaps_report
from .config import EVALUATION, GRID_COMPARISON, MODEL, VaeConfig

if TYPE_CHECKING:
    import torch

    from .train import Splits

UNIFORM_PIXELS_NATS = 784 * math.log(2)  # -log p(x) of binary images under p = 1/2 per pixel
# Burda et al. (2016), Table 1: their one-stochastic-layer VAE (784-200-200-50, tanh hidden
# units; not Pyro's 784-400-50), K = 5000, trained 3,280 epochs on all 60,000 binarised images
BURDA_VAE_NATS = 86.76
BURDA_VAE = "784-200-200-50 VAE with tanh units"


# ----------------------------------------------------------------------------- summary.json


def make_summary(
    config: VaeConfig,
    splits: Splits,
    evaluation: Evaluation,
    metrics: list[dict],
    device: torch.device,
    eval_seconds: float,
) -> dict:
    """The numbers of ``summary.json`` from the config, data, evaluation and metrics."""
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


# ----------------------------------------------------------------------------- the page


def rebuild_report(run_dir: Path) -> Path:
    """Regenerate figures and ``report.html`` from a finished run's files, without retraining."""
    return build_report(Path(run_dir), read_json(Path(run_dir) / "summary.json"))


def build_report(run_dir: Path, summary: dict) -> Path:
    """Draw the figures from the run's files and write ``report.html``; returns its path."""
    evaluation = evaluate.Evaluation.load(run_dir / EVALUATION)
    metrics = read_metrics(run_dir)
    words = verdict(summary)
    report = Report(
        title=(
            f"MNIST VAE ({summary['arch']}, {summary['likelihood']} likelihood, latent "
            f"{summary['latent_dim']}): held-out evaluation and amortized-posterior "
            "diagnostics"
        ),
        verdict=words,
        badge=badge(summary),
        next_steps=next_steps(summary),
        key_numbers=key_numbers(summary),
        details=[Details("The numbers in words", words)],
        tables=tables(summary, metrics),
        figures=make_figures(run_dir / "figures", evaluation, metrics),
    )
    if "grid_images" in summary:
        comparison = gaps.GridComparison.load(run_dir / GRID_COMPARISON)
        words.extend(gaps_report.verdict(summary))
        report.tables[1:1] = gaps_report.tables(summary, comparison)
        report.figures.extend(gaps_report.make_figures(run_dir / "figures", comparison))
    return write_report(run_dir, report)


def make_figures(folder: Path, evaluation: Evaluation, metrics: list[dict]) -> list[Figure]:
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


# ----------------------------------------------------------------------------- the first screen

MOST = 0.5  # above this share of images with k-hat over the threshold, the estimates fail


def badge(s: dict) -> Badge:
    """Can the amortized posterior and the log-likelihood estimate be trusted? From the share
    of images whose k-hat exceeds its threshold and the active latent units."""
    share, active, dim = s["khat_share_bad"], s["active_units"], s["latent_dim"]
    if active == 0:
        return Badge(
            "POSTERIOR COLLAPSE",
            "bad",
            "the encoder ignores the image: q(z | x) is the prior for every image.",
            f"0 of {dim} latent units are active, so the decoder draws the same average image "
            "whatever z is.",
        )
    why = (
        f"PSIS k-hat exceeds {s['khat_threshold']:.2f} for {100 * share:.0f}% of the held-out "
        f"images (median {s['khat_median']:.2f}); {active} of {dim} latent units are active."
    )
    if share > MOST:
        return Badge(
            "NOT TRUSTWORTHY",
            "bad",
            "q(z | x) misses part of most images' posteriors: the log-likelihood is an "
            "underestimate of unknown size.",
            why,
        )
    if share > 0 or active < dim:
        return Badge(
            "PARTLY TRUSTWORTHY",
            "warn",
            "the estimates hold for most images; the flagged ones are unreliable.",
            why,
        )
    return Badge(
        "TRUSTWORTHY",
        "good",
        "q(z | x) covers every evaluated image's posterior well enough for importance sampling.",
        why,
    )


def next_steps(s: dict) -> list[str]:
    """Steps from the numbers: a likelihood that does not collapse, longer training, more
    images, more importance draws."""
    steps = []
    if s["active_units"] < s["latent_dim"] and s["likelihood"] == "normal":
        steps.append(
            "Use `--likelihood bernoulli` or `--likelihood normal-learned-scale`: under the "
            "unit-scale normal likelihood latent units collapse to the prior."
        )
    if s["khat_share_bad"] > 0 or s["active_units"] < s["latent_dim"]:
        steps.append(
            f"Train longer (`--epochs {2 * s['epochs']}`): the encoder's posteriors sharpen "
            "as the decoder learns."
        )
    if s["train_images"] < s["heldout_images"] * 5:
        steps.append(
            f"Train on more images: this run used {s['train_images']:,} "
            "(`--set max_train_images=0` uses all of them)."
        )
    if any(s["iw_gains"][k] < -2 * s["iw_gains_se"][k] for k in s["iw_gains"]):
        steps.append(
            f"Bound more images (`--set iw_images={2 * s['iw_images']}`): the bound "
            "decreased with K beyond its Monte Carlo error."
        )
    if not steps:
        steps.append("Nothing to fix: compare the log-likelihood with runs of the same likelihood.")
    return steps


def key_numbers(s: dict) -> list[KeyNumber]:
    """Held-out ELBO, log-likelihood, k-hat, active units and time, each linking to its table."""
    k_max = list(s["iw_bounds"])[-1]
    share = s["khat_share_bad"]
    train = s["seconds_per_epoch"] * s["epochs"]
    return [
        KeyNumber(
            "Held-out ELBO",
            Num(s["heldout_elbo"], se=s["heldout_elbo_se"]),
            f"± {s['heldout_elbo_se']:.2g} nats per image, {s['eval_images']:,} images",
            "#held-out-evaluation-nats-per-image",
        ),
        KeyNumber(
            "Log-likelihood",
            Num(s["log_likelihood"], se=s["iw_bounds_se"][k_max]),
            f"IW bound, K = {k_max}, {s['iw_images']:,} images",
            "#held-out-evaluation-nats-per-image",
        ),
        KeyNumber(
            "k-hat over threshold",
            f"{100 * share:.0f}% of images",
            f"threshold {s['khat_threshold']:.2f}; median {s['khat_median']:.2f}",
            "#amortized-posterior",
            "bad" if share > MOST else "warn" if share > 0 else "good",
        ),
        KeyNumber(
            "Active units",
            f"{s['active_units']} of {s['latent_dim']}",
            f"Var_x E[z_u | x] > {ACTIVE_THRESHOLD}",
            "#amortized-posterior",
            "bad"
            if s["active_units"] == 0
            else "warn"
            if s["active_units"] < s["latent_dim"]
            else "good",
        ),
        KeyNumber(
            "Time",
            format_seconds(train + s["eval_seconds"]),
            f"training {format_seconds(train)}, evaluation {format_seconds(s['eval_seconds'])}",
            "#data-and-training",
        ),
    ]


# ----------------------------------------------------------------------------- words and tables


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
