"""The command line of ``ppl-models exp-normal``: its options, and the command itself.

Nothing heavy is imported at the top, so building the parser (and ``--help``) loads neither
torch nor Pyro; :func:`main` imports the run when it starts it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...config import add_config_arguments, command_line_overrides, load_command_line_config
from ...exp_normal.options import GUIDE_FAMILIES
from ...options import DEVICES, ELBO_KINDS
from .config import DEFAULT_CONFIG, ExpNormalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``ppl-models exp-normal``'s options (each overrides the config file)."""
    add_config_arguments(parser, DEFAULT_CONFIG)
    parser.add_argument("--data", help="observations file: .csv, .txt or .npy, one number per row")
    parser.add_argument("--rate", type=float, help="prior rate (> 0)")
    parser.add_argument("--n-obs", type=int, dest="n_obs", help="simulate N observations")
    parser.add_argument("--seed", type=int, help="seed for simulation and SVI")
    parser.add_argument("--guide", choices=GUIDE_FAMILIES, help="guide family")
    parser.add_argument("--elbo", choices=ELBO_KINDS, help="ELBO estimator")
    parser.add_argument("--particles", type=int, help="ELBO particles per step (vectorized)")
    parser.add_argument("--steps", type=int, help="SVI steps")
    parser.add_argument("--device", choices=DEVICES, help="where to fit")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<config>/<time>/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> tuple[ExpNormalConfig, str]:
    """The resolved configuration and its name (the config file's stem) from parsed options."""
    flags = ("data", "rate", "n_obs", "seed", "guide", "elbo", "particles", "steps", "device")
    overrides = command_line_overrides(args.overrides, {k: getattr(args, k) for k in flags})
    return load_command_line_config(
        ExpNormalConfig, args.config, DEFAULT_CONFIG, overrides, "exp_normal"
    )


def main(args: argparse.Namespace) -> int:
    """Run ``ppl-models exp-normal``: fit, report, print the key numbers; returns 0."""
    config, name = config_from_args(args)
    from ...runs import read_json
    from .report import fit_cost
    from .run import execute

    run = execute(config, name, out=args.out, progress=not args.quiet)
    summary = read_json(run.file("summary.json"))
    if summary["theta_svi"] is not None:
        print(
            f"theta_svi = {summary['theta_svi']:.6g}, theta* = {summary['theta_star']:.6g} "
            f"(relative error {summary['theta_rel_error']:.2e})"
        )
    print(
        f"KL(q || p) = {summary['kl_at_theta_svi']:.4g} nats, PSIS k-hat = "
        f"{summary['psis_khat']:.3g}"
    )
    print(fit_cost(summary).replace("`", ""))
    print(f"report: {run.file('report.html')}")
    return 0
