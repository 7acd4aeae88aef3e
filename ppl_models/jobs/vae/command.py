"""The command line of ``ppl-models vae``: its options, and :func:`main`, which starts, resumes or
launches a run.

Torch-free at import time, because ``ppl-models --help`` builds every job's parser: the training
code (:mod:`ppl_models.jobs.vae.train`) and :mod:`ppl_models.distributed` are imported when the
command runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ...config import add_config_arguments, command_line_overrides, load_command_line_config
from ...options import DEVICES, ELBO_KINDS
from ...runs import Run, read_json
from ...vae.options import ARCHS, LIKELIHOODS
from .config import DEFAULT_CONFIG, MODEL, RESUME_KEYS, VaeConfig

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
    # imported when the command runs, not when its parser is built: they load torch
    from ... import distributed

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
    from .train import execute, resume  # the launcher above needs none of the training code

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
    from ... import distributed

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
