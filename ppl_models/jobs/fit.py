"""Fit a model script by SVI and write its posterior-diagnostics report.

A model script is a Python file defining ``model(**data)``, and optionally ``guide(**data)``
(used with ``--guide custom``) and ``data()`` (overridden by ``--data FILE``, a ``.json`` or a
posteriordb ``.json.zip``). The fit starts from a Laplace approximation at the MAP and runs in
coordinates whitened by it; the diagnosis draws ``--draws`` samples from the guide (PSIS
k-hat, importance-weighted bounds, CUBO, error bounds) and compares with ``--reference``
(reference draws, an ArviZ ``.nc`` file, ``nuts``, or ``none``).
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
    float64 on the CPU and float32 on CUDA. The fit's defaults are those of
    :func:`ppl_models.vi.fitting.fit_svi`.
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


def execute(config: FitConfig, out: Path | None = None, progress: bool = True):
    """Do the whole run: inputs, fit, diagnosis, report. Returns ``(run, diagnosis)``.

    A model that raises while fitting or being diagnosed ends the run with ``summary.json``
    saying ``"status": "failed"`` and a ``ValueError`` carrying the model's message.
    """
    from ..runs import Run
    from ..svi import NonFiniteLossError, resolve_device
    from ..vi.diagnose import diagnose
    from ..vi.fitting import fit_svi
    from ..vi.report import write_report

    script, data, source, reference = prepare(config)
    device = resolve_device(config.device)
    name = Path(config.script).stem
    with Run.create(name, out) as run:
        run.write_config(config)
        run.write_env(seed=config.seed, device=str(device))
        guide = script.guide if config.guide == "custom" else config.guide
        options = {"rank": config.rank} if config.guide == "auto-lowrank" and config.rank else {}
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
                device=device,
                dtype=_dtype(config),
                init=config.init,
                eval_every=config.eval_every,
                guide_options=options,
                progress=progress,
                on_log=lambda record: run.log_metrics(**record),
                log_every=1,
            )
        except (ValueError, FileNotFoundError, NonFiniteLossError):
            raise
        except Exception as err:  # noqa: BLE001 - the user's model failed: report it in one line
            raise ValueError(_model_failed("fitting", err)) from err
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
                fit, ref, draws=config.draws, seed=config.seed, progress=progress, nuts=nuts
            )
        except (ValueError, FileNotFoundError):
            raise
        except Exception as err:  # noqa: BLE001
            raise ValueError(_model_failed("diagnosis", err)) from err
        diagnosis.summary["script"] = str(script.path)
        diagnosis.summary["data"] = source
        diagnosis.summary["device"] = str(device)
        diagnosis.summary["init_seconds"] = fit.init_seconds
        write_report(diagnosis, run.path)
    return run, diagnosis


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


def config_from_args(args: argparse.Namespace) -> FitConfig:
    """The resolved configuration from parsed arguments."""
    flags = ("script", "data", "guide", "reference", "steps", "particles", "lr", "seed")
    flags += ("device", "draws")
    overrides = command_line_overrides(args.overrides, {k: getattr(args, k) for k in flags})
    return load_config(FitConfig, None, overrides)


def main(args: argparse.Namespace) -> int:
    """Run ``ppl-models fit``: fit, diagnose, report; print the verdict; returns 0."""
    config = config_from_args(args)
    run, diagnosis = execute(config, out=args.out, progress=not args.quiet)
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
