"""Benchmark the exponential-normal fit against the notebook's per-particle loop.

Both start from theta = 1 on the default data (rate 1, N 5, seed 0). The baseline is the
notebook's ``VariationalModel`` written faithfully: 128 particles in a Python loop, SGD with step
size 1e-4, 1000 steps, float32. The package's fit is
:func:`ppl_models.jobs.exp_normal.fitting.fit` with the default configuration (through
:func:`ppl_models.vi.fitting.fit_svi`). Reported: time per step (the package's includes the fit's
set-up), and the wall time from the call until theta enters the band theta* +- 0.5% and stays
there for the rest of the run.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import load_config
from ..jobs.exp_normal.config import DEFAULT_CONFIG, TOLERANCE, ExpNormalConfig
from ..runs import atomic_write_json, environment
from . import make_out_dir

if TYPE_CHECKING:
    import numpy as np


def time_to_stay(
    thetas: np.ndarray, elapsed: np.ndarray, theta_star: float, tolerance: float = TOLERANCE
) -> tuple[float | None, int | None]:
    """Seconds (and step) after which theta stays within ``tolerance`` of theta*; None if never."""
    import numpy as np

    outside = np.flatnonzero(np.abs(thetas - theta_star) > tolerance * theta_star)
    if len(outside) == 0:
        return float(elapsed[0]), 0
    first_inside = outside[-1] + 1
    if first_inside >= len(thetas):
        return None, None
    return float(elapsed[first_inside]), int(first_inside)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to its ``bench exp-normal`` subparser."""
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="package fits with different SVI seeds (median reported)",
    )
    parser.add_argument(
        "--baseline-steps",
        type=int,
        default=1000,
        dest="baseline_steps",
        help="steps of the notebook loop (the notebook runs 1000)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        help="folder to write bench.json into, created when missing (default: here)",
    )


def main(args: argparse.Namespace) -> int:
    """Run both fits, print the table, write ``bench.json``; returns the exit code."""
    import torch

    from .. import exp_normal
    from ..jobs.exp_normal.fitting import fit
    from ..svi import seed_everything
    from .notebook import run_notebook_loop

    if args.repeats < 1 or args.baseline_steps < 1:
        raise ValueError(
            f"--repeats and --baseline-steps must be >= 1, got {args.repeats} and "
            f"{args.baseline_steps}"
        )
    config = load_config(
        ExpNormalConfig, DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None, {"device": "cpu"}
    )
    _, x = exp_normal.simulate(config.rate, config.n_obs, config.seed)
    theta_star = exp_normal.optimal_theta(x, config.rate)
    env = environment(seed=config.seed, device="cpu")
    out = make_out_dir(args.out)

    seed_everything(config.seed)
    base_thetas, base_elapsed = run_notebook_loop(x, steps=args.baseline_steps)
    base_time, base_step = time_to_stay(base_thetas, base_elapsed, theta_star)
    baseline = {
        "steps": args.baseline_steps,
        "seconds_per_step": float(base_elapsed[-1] / args.baseline_steps),
        "seconds_total": float(base_elapsed[-1]),
        "seconds_to_tolerance": base_time,
        "step_to_tolerance": base_step,
        "final_theta": float(base_thetas[-1]),
    }

    runs = []
    x_t = torch.as_tensor(x, dtype=torch.float64)
    for repeat in range(args.repeats):
        fitted = fit(x_t, config, progress=False, seed=config.seed + 1 + repeat)
        seconds, step = time_to_stay(fitted.traces["theta"], fitted.elapsed, theta_star)
        runs.append(
            {
                "seed": config.seed + 1 + repeat,
                "seconds_to_tolerance": seconds,
                "step_to_tolerance": step,
                "seconds_per_step": fitted.seconds / config.steps,
                "final_theta": fitted.params["theta"],
            }
        )
    reached = [r["seconds_to_tolerance"] for r in runs if r["seconds_to_tolerance"] is not None]
    package = {
        "config": {
            "particles": config.particles,
            "steps": config.steps,
            "lr": config.lr,
            "lr_final": config.lr_final,
            "average_window": config.average_window,
        },
        "runs": runs,
        "reached": f"{len(reached)}/{len(runs)}",
        "seconds_per_step": statistics.median(r["seconds_per_step"] for r in runs),
        "seconds_to_tolerance": (statistics.median(reached) if len(reached) == len(runs) else None),
    }
    # The baseline may never reach the band within its steps; its whole run is then a lower bound.
    base_bound = base_time if base_time is not None else baseline["seconds_total"]
    speedup = (
        base_bound / package["seconds_to_tolerance"] if package["seconds_to_tolerance"] else None
    )
    result = {
        "benchmark": "exp-normal",
        "theta_star": theta_star,
        "tolerance": TOLERANCE,
        "baseline_notebook_loop": baseline,
        "package": package,
        "speedup_to_tolerance": speedup,
        "speedup_is_lower_bound": base_time is None,
        "speedup_per_step": baseline["seconds_per_step"] / package["seconds_per_step"],
        "cpu_threads": torch.get_num_threads(),
        **{key: env[key] for key in ("device", "device_name", "versions", "python", "created")},
    }
    atomic_write_json(out / "bench.json", result)
    _print_table(result)
    print(f"wrote {out / 'bench.json'}")
    return 0


def _print_table(r: dict) -> None:
    b, p = r["baseline_notebook_loop"], r["package"]

    def fmt(value, unit="s"):
        return "not reached" if value is None else f"{value:.4g} {unit}"

    print(f"theta* = {r['theta_star']:.6g}; band = theta* ± {100 * r['tolerance']:.1f}%")
    print(f"{'':28}{'per step':>14}{'to band and stays':>22}")
    print(
        f"{'notebook loop (128, SGD)':28}{fmt(b['seconds_per_step']):>14}"
        f"{fmt(b['seconds_to_tolerance']):>22}"
    )
    print(
        f"{'ppl_models fit':28}{fmt(p['seconds_per_step']):>14}"
        f"{fmt(p['seconds_to_tolerance']):>22}   (median of {len(p['runs'])}, "
        f"reached {p['reached']})"
    )
    if r["speedup_to_tolerance"] is not None:
        bound = ">= " if r["speedup_is_lower_bound"] else ""
        note = ""
        if r["speedup_is_lower_bound"]:
            note = (
                " (the notebook loop never stays in the band within its "
                f"{b['steps']} steps: its whole run is used)"
            )
        print(f"speed-up to the band: {bound}{r['speedup_to_tolerance']:.0f}x{note}")
    print(f"speed-up per step: {r['speedup_per_step']:.1f}x")
