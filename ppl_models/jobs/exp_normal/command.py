"""Fit the exponential-normal model by SVI and report it against the grid and exact posteriors.

z ~ Exponential(rate), x_i | z ~ Normal(z, 1), guide q(z) from a chosen family (the notebook's
Exponential(theta) by default). The run writes the run-directory contract of
:mod:`ppl_models.runs`; the report is rebuilt from the saved files alone.
"""

# This module holds the run's configuration, its command-line options and the orchestration;
# the fit, the numbers, the figures and the report are in the ppl_models.exp_normal package. It
# imports neither torch, Pyro nor NumPy at its top, so `ppl-models exp-normal --help` is instant.

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import (
    add_config_arguments,
    command_line_overrides,
    load_command_line_config,
    require,
    require_svi_schedule,
)
from ..exp_normal.options import GUIDE_FAMILIES, validate_rate
from ..exp_normal.options import MODEL as MODEL  # summary.json's "model"
from ..options import DEVICES, ELBO_KINDS

if TYPE_CHECKING:
    import numpy as np

    from ..runs import Run

DEFAULT_CONFIG = Path("runs/exp_normal.toml")

# Names that live in ppl_models.exp_normal and are also reachable from here, imported on use.
_ELSEWHERE = {
    "Fit": "fitting",
    "fit": "fitting",
    "BETAS": "fitting",
    "analyse": "analysis",
    "IW_DRAWS": "analysis",
    "build_report": "report",
    "verdict": "report",
    "tables": "report",
    "TOLERANCE": "report",
}


def __getattr__(name: str):
    module = _ELSEWHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"ppl_models.exp_normal.{module}"), name)


@dataclass(frozen=True)
class ExpNormalConfig:
    """One exponential-normal run; the defaults reproduce the notebook (rate 1, N 5, seed 0)."""

    data: str | None = None
    rate: float = 1.0
    n_obs: int = 5
    seed: int = 0
    guide: str = "exponential"
    elbo: str = "trace"
    particles: int = 4096
    steps: int = 300
    lr: float = 0.1
    lr_final: float = 0.001
    average_window: float = 0.7
    device: str = "auto"
    draws: int = 4000
    grid_points: int = 4001

    def __post_init__(self):
        validate_rate(self.rate)
        require(self.n_obs >= 1, "n_obs", self.n_obs, "an integer >= 1")
        require(
            self.guide in GUIDE_FAMILIES,
            "guide",
            self.guide,
            f"one of {', '.join(GUIDE_FAMILIES)}",
        )
        require(self.elbo in ELBO_KINDS, "elbo", self.elbo, f"one of {', '.join(ELBO_KINDS)}")
        require_svi_schedule(self)
        require(self.draws >= 100, "draws", self.draws, "an integer >= 100")
        require(self.grid_points >= 101, "grid_points", self.grid_points, "an integer >= 101")


# ----------------------------------------------------------------------------- the run


def observations(config: ExpNormalConfig) -> tuple[np.ndarray, dict]:
    """The data of the run and how it was obtained (file, or simulated as the notebook does)."""
    from ..exp_normal.data import load_observations, simulate

    if config.data:
        x = load_observations(Path(config.data))
        return x, {"source": "file", "path": str(config.data), "count": len(x)}
    z, x = simulate(config.rate, config.n_obs, config.seed)
    return x, {"source": "simulated", "z_true": z, "count": len(x), "values": x.tolist()}


def execute(
    config: ExpNormalConfig, config_name: str, out: Path | None = None, progress: bool = True
) -> Run:
    """Do the whole run: data, fit, diagnostics, figures, report. Returns the finished run."""
    import torch

    from ..exp_normal.analysis import analyse
    from ..exp_normal.fitting import fit
    from ..exp_normal.report import build_report
    from ..runs import Run, atomic_save, atomic_write_json
    from ..svi import resolve_device, seed_everything

    x, source = observations(config)
    device = resolve_device(config.device)
    with Run.create(config_name, out) as run:
        run.write_config(config)
        run.write_env(seed=config.seed, device=str(device))
        seed_everything(config.seed)
        x_t = torch.as_tensor(x, dtype=torch.float64, device=device)
        fitted = fit(x_t, config, run=run, progress=progress)
        summary, idata = analyse(x, config, fitted)
        summary["observations"] = source
        summary["device"] = str(device)
        atomic_save(run.file("posterior.nc"), lambda tmp: idata.to_netcdf(str(tmp)))
        atomic_write_json(run.file("observations.json"), {"x": x.tolist(), "rate": config.rate})
        build_report(run.path, summary)
        run.write_summary(summary)  # last: a summary with status "complete" means all is there
    return run


def rebuild_report(run_dir: Path) -> Path:
    """Regenerate figures and ``report.html`` from a finished run's files, without refitting."""
    from ..exp_normal.report import rebuild_report

    return rebuild_report(run_dir)


# ----------------------------------------------------------------------------- command line


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
    from ..runs import read_json

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
    print(f"report: {run.file('report.html')}")
    return 0
