"""The ``ppl-models`` command (also ``python -m ppl_models``).

Each job module (``ppl_models.jobs.*``) and benchmark module (``ppl_models.bench.*``) exposes
``add_arguments(parser)`` and ``main(args) -> int``; this module only wires them into argparse
and turns expected errors into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from pathlib import Path

from . import allocator
from .errors import one_line
from .runs import STATUS_COMPLETE, read_json

# command name -> module implementing it; the summary's "model" key names the same modules.
JOBS = {
    "fit": "ppl_models.jobs.fit",
    "exp-normal": "ppl_models.jobs.exp_normal",
    "vae": "ppl_models.jobs.vae",
}
# commands that read runs rather than make them
TOOLS = {
    "runs": "ppl_models.jobs.runs",
    "compare": "ppl_models.jobs.compare",
}
BENCHMARKS = {
    "exp-normal": "ppl_models.bench.exp_normal",
    "vae": "ppl_models.bench.vae",
    "vae-grid": "ppl_models.bench.vae_grid",
    "fit": "ppl_models.bench.fit",
    "ladder": "ppl_models.bench.ladder",
    "step": "ppl_models.bench.step",
    "verdict": "ppl_models.bench.verdict",
}
EXIT_USAGE = 2  # bad input or a failed fit: one line on stderr, no traceback
# Set by ppl_models.distributed.launch for its workers: the folder where each rank leaves its
# one-line error (rank-<RANK>.json) instead of printing it, so that the launcher prints one line
RANK_ERRORS_ENV = "PPL_MODELS_RANK_ERRORS"


class UsageError(ValueError):
    """A command line that argparse refuses (an unknown choice, a missing argument); ``prog``
    is the (sub)command that refused it."""

    def __init__(self, message: str, prog: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse whose refusals are one line naming ``--help`` (its own would print the usage
    text first: eight lines for ``fit``); subcommands' parsers are of the same class."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)", self.prog)


def build_parser() -> argparse.ArgumentParser:
    """The ``ppl-models`` parser with every job, ``report`` and every benchmark."""
    parser = _Parser(
        prog="ppl-models",
        description="Fit Pyro models by SVI and write posterior-diagnostics reports.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_modules(commands, JOBS)

    report = commands.add_parser("report", help="regenerate a run's report from its saved files")
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    report.set_defaults(handler=_report)
    _add_modules(commands, TOOLS)

    bench = commands.add_parser("bench", help="run a benchmark and write bench.json")
    _add_modules(
        bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK"), BENCHMARKS
    )
    return parser


def _add_modules(subparsers, modules: dict[str, str]) -> None:
    """One subcommand per module; its docstring is the help, its ``main`` the handler."""
    for name, module_name in modules.items():
        module = importlib.import_module(module_name)
        doc = _plain(module.__doc__)
        sub = subparsers.add_parser(name, help=doc.splitlines()[0], description=doc)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.main)


def _plain(docstring: str) -> str:
    """A module docstring as plain text for ``--help``: Sphinx roles and literals unwrapped."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", docstring.strip())
    return text.replace("``", "")


def _report(args: argparse.Namespace) -> int:
    if not args.run_dir.exists():
        raise FileNotFoundError(f"run directory not found: {args.run_dir}")
    if not args.run_dir.is_dir():
        raise NotADirectoryError(f"not a folder: {args.run_dir} (expected a run directory)")
    summary_path = args.run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"not a finished run directory (no summary.json): {args.run_dir}")
    summary = read_json(summary_path)
    if summary.get("status") != STATUS_COMPLETE:
        raise ValueError(
            f"run {args.run_dir} did not complete ({summary.get('error', 'unknown')})"
            "; there is nothing to report"
        )
    model = summary.get("model")
    if model not in JOBS:
        raise ValueError(f"summary.json names model {model!r}; expected one of {', '.join(JOBS)}")
    path = importlib.import_module(JOBS[model]).rebuild_report(args.run_dir)
    print(f"report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command; expected errors become one stderr line and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(f"{err.prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    args.argv = argv  # a launcher (--nproc) starts its workers with the same command line
    allocator.tune()  # the process's, set by the command and never by importing the package
    try:
        return int(args.handler(args) or 0)
    # FloatingPointError: svi.NonFiniteLossError, ConnectionError: distributed.RankFailure, caught
    # by their base classes so that building the parser imports neither torch nor pyro
    except (
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        FloatingPointError,
        ConnectionError,
    ) as err:
        # one line: messages from deeper libraries (Pyro's) run over several lines
        first = one_line(str(err)) or type(err).__name__
        rank = os.environ.get("RANK", "0") if "LOCAL_RANK" in os.environ else "0"
        # a lost or stopped rank (ConnectionError: RankFailure) is a consequence, not the cause
        if not _left_for_the_launcher(rank, first, isinstance(err, ConnectionError)):
            where = "" if rank == "0" else f" (rank {rank})"  # under torchrun every rank may say it
            print(f"ppl-models: error{where}: {first}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ppl-models: interrupted", file=sys.stderr)
        return 130


def _left_for_the_launcher(rank: str, message: str, consequence: bool) -> bool:
    """Under ``ppl-models ... --nproc N``: leave this rank's error where the launcher reads it
    (it prints one line for the whole job); False when not launched so, or on failure."""
    folder = os.environ.get(RANK_ERRORS_ENV)
    if not folder or "LOCAL_RANK" not in os.environ:
        return False
    record = json.dumps({"message": message, "consequence": consequence})
    try:
        (Path(folder) / f"rank-{int(rank)}.json").write_text(record)
    except (OSError, ValueError):
        return False
    return True
