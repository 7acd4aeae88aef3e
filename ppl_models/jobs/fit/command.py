"""``ppl-models fit``'s command line: arguments, the printed verdict, the ``--nproc`` launcher."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...config import command_line_overrides, load_config
from ...options import DEVICES
from ...vi.settings import GUIDE_CHOICES
from .config import DEFAULT_SCRIPT, FitConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``ppl-models fit``'s arguments (each flag overrides ``--set``)."""
    parser.add_argument(
        "script",
        nargs="?",
        default=None,
        metavar="SCRIPT",
        help=f"model script defining model(**data) (default {DEFAULT_SCRIPT})",
    )
    parser.add_argument("--data", help="data file: .json or .json.zip (overrides data())")
    parser.add_argument("--guide", choices=GUIDE_CHOICES, help="guide (default auto-normal)")
    parser.add_argument(
        "--reference",
        metavar="FILE|nuts|none",
        help="reference posterior: draws (.json, .json.zip, ArviZ .nc), nuts, or none",
    )
    parser.add_argument("--steps", type=int, help="SVI steps")
    parser.add_argument("--particles", type=int, help="ELBO particles per step")
    parser.add_argument("--lr", type=float, help="initial Adam step size (whitened units)")
    parser.add_argument("--seed", type=int, help="seed of the fit and the diagnosis")
    parser.add_argument("--device", choices=DEVICES, help="where to fit")
    parser.add_argument("--draws", type=int, help="guide draws for the diagnosis")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<script>/<time>/)")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="overrides",
        help="set any configuration key (repeatable), e.g. lr_final=0.001, init=feasible",
    )
    parser.add_argument(
        "--auto",
        action="store_true",
        default=None,
        help="climb the escalation ladder until a fit is certified: the guide, its PSIS "
        "correction, a non-centred model, richer guides, NUTS preconditioned by the best guide",
    )
    parser.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="time budget of --auto (default 900 s): when it runs out, the best rung so far "
        "is the answer",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="fit data-parallel in N processes on this machine (torchrun --standalone "
        "--nproc-per-node N); the script must declare its data plate (DATA_PLATE)",
    )


def config_from_args(args: argparse.Namespace) -> FitConfig:
    """The resolved configuration from parsed arguments."""
    flags = ("script", "data", "guide", "reference", "steps", "particles", "lr", "seed")
    flags += ("device", "draws", "auto", "budget")
    overrides = command_line_overrides(args.overrides, {k: getattr(args, k) for k in flags})
    return load_config(FitConfig, None, overrides)


def main(args: argparse.Namespace) -> int:
    """Run ``ppl-models fit``: fit, diagnose, report; print the verdict; returns 0.

    With ``--nproc N`` (outside ``torchrun``), launch the same command as N processes through
    ``torch.distributed.run``; under ``torchrun`` only rank 0 prints.
    """
    from ... import distributed  # torch: imported when the command runs, not for --help
    from .run import execute

    config = config_from_args(args)
    if config.auto:
        if args.nproc is not None or distributed.launched():
            raise ValueError("--auto runs in one process: leave out --nproc and torchrun")
        return _main_auto(config, args)
    if args.nproc is not None and not distributed.launched():
        return _launch(args, config)
    run, diagnosis = execute(config, out=args.out, progress=not args.quiet)
    if diagnosis is None:  # a rank other than 0 of a torchrun job
        return 0
    s = diagnosis.summary
    khat = s.get("psis_khat")
    print(
        f"{Path(config.script).name}: {s['guide']} guide, ELBO {s['elbo']:.6g}, PSIS k-hat "
        + ("n/a" if khat is None else f"{khat:.3g}")
        + f", verdict: {s['verdict']}"
    )
    _print_off(s)
    print(f"report: {run.file('report.html')}")
    return 0


def _print_off(s: dict) -> None:
    if s["verdict_off"]:
        print(
            f"off: {', '.join(s['verdict_off'][:8])}"
            + (" ..." if len(s["verdict_off"]) > 8 else "")
        )


EXIT_INTERRUPTED = 130


def _main_auto(config: FitConfig, args: argparse.Namespace) -> int:
    """``--auto``: climb the ladder, print a line per rung as it finishes and the answer."""
    import sys

    from .run import execute_auto

    def show(rung, index) -> None:
        khat = "" if rung.khat is None else f"  k-hat {rung.khat:.2f}"
        verdict = f"  {rung.verdict}" if rung.verdict else ""
        print(
            f"  {index + 1:2d} {rung.rung:8s} {rung.status:8s} {rung.seconds:6.1f} s{khat}"
            f"{verdict}  {rung.method}",
            file=sys.stderr,
            flush=True,
        )

    run, diagnosis, ladder = execute_auto(
        config, out=args.out, progress=not args.quiet, on_rung=None if args.quiet else show
    )
    s = diagnosis.summary
    print(f"{Path(config.script).name}: {ladder.summary_sentence()} Verdict: {s['verdict']}")
    _print_off(s)
    for advice in ladder.advice:
        print(f"advice: {advice}")
    print(f"report: {run.file('report.html')}")
    if ladder.stopped == "interrupted":
        print("ppl-models: interrupted; the rungs finished so far are written", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _launch(args: argparse.Namespace, config: FitConfig) -> int:
    """``--nproc N``: check the inputs here, then run the command as N workers of torchrun."""
    from ... import distributed
    from ...runs import Run
    from .run import data_plate, needs_plate, prepare

    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    script = prepare(config)[0]  # bad inputs fail here, once
    if args.nproc > 1 and not data_plate(config, script):
        raise ValueError(needs_plate(f"--nproc {args.nproc}"))
    run_dir = Run.new_path(Path(config.script).stem, args.out).absolute()
    argv = getattr(args, "argv", None)
    distributed.launch_command(args.nproc, argv, run_dir, pin_out=args.out is None)
    return 0
