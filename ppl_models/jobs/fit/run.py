"""Fit a model script by SVI and write its posterior-diagnostics report.

A model script is a Python file defining ``model(**data)``, and optionally ``guide(**data)``
(used with ``--guide custom``) and ``data()`` (overridden by ``--data FILE``, a ``.json`` or a
posteriordb ``.json.zip``). The fit starts from a Laplace approximation at the MAP and runs in
coordinates whitened by it; the diagnosis draws ``--draws`` samples from the guide (PSIS
k-hat, importance-weighted bounds, CUBO, error bounds) and compares with ``--reference``
(reference draws, an ArviZ ``.nc`` file, ``nuts``, or ``none``).

A script that declares its data plate (``DATA_PLATE``, or ``--set data_plate=NAME``) can be
fitted on minibatches (``--set batch_size=B``) and data-parallel: ``--nproc N``, or
``torchrun --nproc-per-node N -m ppl_models fit SCRIPT``. Every rank fits and makes its share of
the diagnosis's guide draws; rank 0 alone does the rest and writes the run directory.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..config import command_line_overrides, load_config, require, require_svi_schedule

MODEL = "fit"
DEFAULT_SCRIPT = "runs/normal_mean.py"
GUIDE_NAMES = ("auto-normal", "auto-mvn", "auto-lowrank", "auto-iaf", "custom")
INIT_NAMES = ("laplace", "feasible")
DTYPES = ("auto", "float32", "float64")


@dataclass(frozen=True)
class FitConfig:
    """One ``ppl-models fit`` run: the script, its data, the guide, the fit and the diagnosis.

    ``reference`` is ``none``, ``nuts`` or a file of reference draws; ``dtype`` ``auto`` is
    float64 on the CPU and float32 on CUDA; ``data_plate`` empty means the script's
    ``DATA_PLATE`` (if any), and ``batch_size`` 0 all the observations (each process's share
    with several). The fit's defaults are those of :func:`ppl_models.vi.fitting.fit_svi`.
    """

    script: str = DEFAULT_SCRIPT
    data: str | None = None
    guide: str = "auto-normal"
    reference: str = "none"
    steps: int = 1000
    particles: int = 16
    lr: float = 0.1
    lr_final: float = 0.002
    average_window: float = 0.7
    init: str = "laplace"
    rank: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    draws: int = 100_000
    eval_every: int = 100
    nuts_warmup: int = 500
    nuts_draws: int = 1000
    nuts_chains: int = 2
    data_plate: str = ""
    batch_size: int = 0

    def __post_init__(self):
        require(bool(str(self.script).strip()), "script", self.script, "a model script path")
        require(self.guide in GUIDE_NAMES, "guide", self.guide, f"one of {', '.join(GUIDE_NAMES)}")
        require(
            bool(str(self.reference).strip()), "reference", self.reference, "none, nuts or a file"
        )
        require_svi_schedule(self)
        require(self.init in INIT_NAMES, "init", self.init, f"one of {', '.join(INIT_NAMES)}")
        require(self.rank is None or self.rank >= 1, "rank", self.rank, "an integer >= 1")
        require(
            self.device in ("auto", "cpu", "cuda"), "device", self.device, "one of auto, cpu, cuda"
        )
        require(self.dtype in DTYPES, "dtype", self.dtype, f"one of {', '.join(DTYPES)}")
        require(self.draws >= 100, "draws", self.draws, "an integer >= 100")
        require(self.eval_every >= 2, "eval_every", self.eval_every, "an integer >= 2")
        require(self.nuts_warmup >= 0, "nuts_warmup", self.nuts_warmup, "an integer >= 0")
        require(self.nuts_draws >= 1, "nuts_draws", self.nuts_draws, "an integer >= 1")
        require(self.nuts_chains >= 1, "nuts_chains", self.nuts_chains, "an integer >= 1")
        require(self.batch_size >= 0, "batch_size", self.batch_size, "an integer >= 0")

    @property
    def reference_kind(self) -> str:
        """``none``, ``nuts`` or ``file``."""
        ref = str(self.reference).strip().lower()
        return ref if ref in ("none", "nuts") else "file"


# ----------------------------------------------------------------------------- the run


def prepare(config: FitConfig):
    """Check every input before anything is written: load the script, its data (converted, keys
    checked against the model) and the reference file. Returns ``(script, data, source,
    reference)``; raises ``FileNotFoundError``/``ValueError`` naming the problem."""
    from ..vi.script import check_data_keys, convert_data, load_data, load_script

    script = load_script(config.script)
    if config.guide == "custom" and script.guide is None:
        raise ValueError(f"--guide custom needs a guide(**data) function in {config.script}")
    dtype = _dtype(config)
    if config.data:
        data = load_data(config.data, dtype=dtype)
        source = {"source": "file", "path": str(config.data)}
    elif script.data is not None:
        data = convert_data(script.load_data(), dtype=dtype)
        source = {"source": "script", "path": str(script.path)}
    else:
        data = {}
        source = {"source": "none"}
    check_data_keys(script.model, data)
    reference = None
    if config.reference_kind == "file":
        from ..vi.references import load_reference

        reference = load_reference(config.reference)
    return script, data, source, reference


def _dtype(config: FitConfig):
    import torch

    if config.dtype == "auto":
        return None
    return {"float32": torch.float32, "float64": torch.float64}[config.dtype]


def data_plate(config: FitConfig, script) -> str | None:
    """The data plate the fit uses: ``config.data_plate``, else the script's ``DATA_PLATE``.

    Raises ``ValueError`` when ``batch_size`` is set without one."""
    plate = config.data_plate.strip() or script.data_plate
    if config.batch_size and not plate:
        raise ValueError(_needs_plate(f"batch_size {config.batch_size}"))
    return plate


def _needs_plate(what: str) -> str:
    return (
        f"{what} needs the model's data plate: name the plate over the observations with "
        "DATA_PLATE in the script or --set data_plate=NAME"
    )


def execute(config: FitConfig, out: Path | None = None, progress: bool = True):
    """Do the whole run: inputs, fit, diagnosis, report. Returns ``(run, diagnosis)``.

    Under ``torchrun`` every rank fits (:func:`ppl_models.vi.fitting.fit_svi` with the
    process's :class:`~ppl_models.distributed.Context`) and makes its share of the guide draws;
    rank 0 alone does the rest of the diagnosis and writes the run directory, and the other
    ranks return ``(run, None)`` with a run that wrote nothing.
    A model that raises while fitting or being diagnosed ends the run with ``summary.json``
    saying ``"status": "failed"`` and a ``ValueError`` carrying the model's message.
    """
    from .. import distributed
    from ..runs import Run
    from ..svi import NonFiniteLossError, resolve_device
    from ..vi.diagnose import diagnose
    from ..vi.fitting import fit_svi
    from ..vi.report import write_report

    script, data, source, reference = prepare(config)
    plate = data_plate(config, script)
    name = Path(config.script).stem
    with distributed.session(resolve_device(config.device)) as ctx:
        if ctx.parallel and not plate:
            raise ValueError(_needs_plate(f"{ctx.world_size} processes"))
        run = distributed.rank_run(ctx.on_main(lambda: Run.create(name, out)), ctx)
        with run:
            run.write_config(config)
            run.write_env(seed=config.seed, device=str(ctx.device), extra=ctx.describe())
            guide = script.guide if config.guide == "custom" else config.guide
            lowrank = config.guide == "auto-lowrank" and config.rank
            options = {"rank": config.rank} if lowrank else {}
            try:
                fit = fit_svi(
                    script.model,
                    guide,
                    data,
                    steps=config.steps,
                    particles=config.particles,
                    lr=config.lr,
                    lr_final=config.lr_final,
                    average_window=config.average_window,
                    seed=config.seed,
                    device=ctx.device,
                    dtype=_dtype(config),
                    init=config.init,
                    eval_every=config.eval_every,
                    guide_options=options,
                    progress=progress,
                    on_log=lambda record: run.log_metrics(**record),
                    log_every=1,
                    data_plate=plate,
                    batch_size=config.batch_size,
                    context=ctx,
                )
            except (ValueError, FileNotFoundError, NonFiniteLossError, distributed.RankFailure):
                raise
            except Exception as err:  # noqa: BLE001 - the user's model failed: one line
                raise ValueError(_model_failed("fitting", err)) from err
            digests = ctx.gather(_parameter_digest(fit.guide)) if ctx.parallel else None
            nuts = {
                "warmup": config.nuts_warmup,
                "draws": config.nuts_draws,
                "chains": config.nuts_chains,
                "seed": config.seed,
                "progress": progress,
            }
            ref = "nuts" if config.reference_kind == "nuts" else reference
            try:
                diagnosis = diagnose(
                    fit,
                    ref,
                    draws=config.draws,
                    seed=config.seed,
                    progress=progress,
                    nuts=nuts,
                    context=ctx,
                )
            except (ValueError, FileNotFoundError, distributed.RankFailure):
                raise
            except Exception as err:  # noqa: BLE001
                raise ValueError(_model_failed("diagnosis", err)) from err
            if diagnosis is None:  # not rank 0: its draws went to rank 0, which writes
                return run, None
            diagnosis.summary.update(
                script=str(script.path),
                data=source,
                device=str(ctx.device),
                init_seconds=fit.init_seconds,
                **ctx.describe(),
            )
            if digests is not None:
                diagnosis.summary["parameter_digests"] = digests
            write_report(diagnosis, run.path)
    return run, diagnosis


def _parameter_digest(guide) -> str | None:
    """The digest of a module guide's parameters (None for a function guide)."""
    import torch

    from ..distributed import parameter_digest

    return parameter_digest(guide) if isinstance(guide, torch.nn.Module) else None


def _model_failed(stage: str, err: BaseException) -> str:
    message = (str(err).strip().splitlines() or [""])[0]
    return f"the model raised during {stage}: {type(err).__name__}: {message}".rstrip(": ")


def rebuild_report(run_dir: Path) -> Path:
    """Regenerate the figures and ``report.html`` of a finished fit run from its files."""
    from ..vi.report import rebuild_report as rebuild

    return rebuild(Path(run_dir))


# ----------------------------------------------------------------------------- command line


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
    parser.add_argument("--guide", choices=GUIDE_NAMES, help="guide (default auto-normal)")
    parser.add_argument(
        "--reference",
        metavar="FILE|nuts|none",
        help="reference posterior: draws (.json, .json.zip, ArviZ .nc), nuts, or none",
    )
    parser.add_argument("--steps", type=int, help="SVI steps")
    parser.add_argument("--particles", type=int, help="ELBO particles per step")
    parser.add_argument("--lr", type=float, help="initial Adam step size (whitened units)")
    parser.add_argument("--seed", type=int, help="seed of the fit and the diagnosis")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to fit")
    parser.add_argument("--draws", type=int, help="guide draws for the diagnosis")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<script>/<time>/)")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="overrides",
        help="set any configuration key (repeatable), e.g. lr_final=0.001, init=feasible",
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
    flags += ("device", "draws")
    overrides = command_line_overrides(args.overrides, {k: getattr(args, k) for k in flags})
    return load_config(FitConfig, None, overrides)


def main(args: argparse.Namespace) -> int:
    """Run ``ppl-models fit``: fit, diagnose, report; print the verdict; returns 0.

    With ``--nproc N`` (outside ``torchrun``), launch the same command as N processes through
    ``torch.distributed.run``; under ``torchrun`` only rank 0 prints.
    """
    from .. import distributed

    config = config_from_args(args)
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
    if s["verdict_off"]:
        print(
            f"off: {', '.join(s['verdict_off'][:8])}"
            + (" ..." if len(s["verdict_off"]) > 8 else "")
        )
    print(f"report: {run.file('report.html')}")
    return 0


def _launch(args: argparse.Namespace, config: FitConfig) -> int:
    """``--nproc N``: check the inputs here, then run the command as N workers of torchrun."""
    from .. import distributed
    from ..runs import Run

    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    script = prepare(config)[0]  # bad inputs fail here, once
    if args.nproc > 1 and not data_plate(config, script):
        raise ValueError(_needs_plate(f"--nproc {args.nproc}"))
    run_dir = Run.new_path(Path(config.script).stem, args.out).absolute()
    argv = getattr(args, "argv", None)
    distributed.launch_command(args.nproc, argv, run_dir, pin_out=args.out is None)
    return 0
