"""A ``ppl-models fit`` run: check the inputs, fit, diagnose, write the run directory.

Under ``torchrun`` every rank fits, makes its share of the diagnosis's guide draws and runs its
share of the mode search's starts; rank 0 alone does the rest and writes the run directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ... import distributed
from ...errors import model_failure
from ...runs import Run
from ...svi import NonFiniteLossError, default_dtype, resolve_device
from ...vi import fitting
from ...vi.diagnose import diagnose
from ...vi.references import load_reference
from ...vi.report import rebuild_report as rebuild_fit_report
from ...vi.report import write_run
from ...vi.script import load_script, model_data, read_data_file
from .config import FitConfig


def prepare(config: FitConfig):
    """Check every input before anything is written: load the script, its data (converted, keys
    checked against the model) and the reference file. Returns ``(script, data, source,
    reference)``; raises ``FileNotFoundError``/``ValueError`` naming the problem.

    The script is imported, and its data made, with the run's float dtype as torch's default:
    a module the script builds at import (as Pyro's tutorials build theirs) then has its
    parameters and priors in the run's dtype."""
    dtype = run_dtype(config)
    with default_dtype(dtype):
        script = load_script(config.script)
        if config.guide == "custom" and script.guide is None:
            raise ValueError(f"--guide custom needs a guide(**data) function in {config.script}")
        if config.data:
            raw = read_data_file(config.data)
            source = {"source": "file", "path": str(config.data)}
        elif script.data is not None:
            raw = script.load_data()
            source = {"source": "script", "path": str(script.path)}
        else:
            raw = {}
            source = {"source": "none"}
        data = model_data(script.model, raw, dtype=dtype)
    reference = load_reference(config.reference) if config.reference_kind == "file" else None
    return script, data, source, reference


def run_dtype(config: FitConfig) -> torch.dtype:
    """The run's float dtype: as configured, or for ``auto`` float32 on CUDA, else float64."""
    if config.dtype != "auto":
        return getattr(torch, config.dtype)
    return torch.float32 if resolve_device(config.device).type == "cuda" else torch.float64


def data_plate(config: FitConfig, script) -> str | None:
    """The data plate the fit uses: ``config.data_plate``, else the script's ``DATA_PLATE``.

    Raises ``ValueError`` when ``batch_size`` is set without one."""
    plate = config.data_plate.strip() or script.data_plate
    if config.batch_size and not plate:
        raise ValueError(needs_plate(f"batch_size {config.batch_size}"))
    return plate


def needs_plate(what: str) -> str:
    """The message for a setting (``what``) that needs a data plate the script did not name."""
    return (
        f"{what} needs the model's data plate: name the plate over the observations with "
        "DATA_PLATE in the script or --set data_plate=NAME"
    )


def execute(config: FitConfig, out: Path | None = None, progress: bool = True):
    """Do the whole run: inputs, fit, diagnosis, report. Returns ``(run, diagnosis)``.

    Under ``torchrun`` every rank fits (:func:`ppl_models.vi.fitting.fit_svi` with the
    process's :class:`~ppl_models.distributed.Context`), makes its share of the guide draws and
    runs its share of the mode search's starts; rank 0 alone does the rest of the diagnosis and
    writes the run directory, and the other ranks return ``(run, None)`` with a run that wrote
    nothing.
    A model that raises while fitting or being diagnosed ends the run with ``summary.json``
    saying ``"status": "failed"`` and a ``ValueError`` carrying the model's message.
    """
    script, data, source, reference = prepare(config)
    plate = data_plate(config, script)
    name = Path(config.script).stem
    with distributed.session(resolve_device(config.device)) as ctx:
        if ctx.parallel and not plate:
            raise ValueError(needs_plate(f"{ctx.world_size} processes"))
        run = distributed.rank_run(ctx.on_main(lambda: Run.create(name, out)), ctx)
        with run:
            run.write_config(config)
            run.write_env(seed=config.seed, device=str(ctx.device), extra=ctx.describe())
            guide = script.guide if config.guide == "custom" else config.guide
            settings = config.fit_settings(plate).replace(device=ctx.device)
            hooks = fitting.FitHooks(
                progress=progress, on_log=lambda record: run.log_metrics(**record)
            )
            try:  # fit_svi looked up when called, so that a benchmark can time it
                fit = fitting.fit_svi(script.model, guide, data, settings, hooks=hooks, context=ctx)
            except (ValueError, FileNotFoundError, NonFiniteLossError, distributed.RankFailure):
                raise
            except Exception as err:  # noqa: BLE001 - the user's model failed: one line
                raise ValueError(model_failure("fitting", err)) from err
            digests = ctx.gather(_parameter_digest(fit.guide)) if ctx.parallel else None
            nuts = vars(config.nuts_settings()) | {"seed": config.seed, "progress": progress}
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
                raise ValueError(model_failure("diagnosis", err)) from err
            if diagnosis is None:  # not rank 0: its draws and minima went to rank 0, which writes
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
            write_run(diagnosis, run.path)
    return run, diagnosis


def execute_auto(config: FitConfig, out: Path | None = None, progress: bool = True, on_rung=None):
    """``fit --auto``: climb the escalation ladder (:func:`ppl_models.vi.ladder.fit_auto`) and
    write the run directory. Returns ``(run, diagnosis, ladder)``: the diagnosis is the answer's
    (or the closest rung's), its summary holding the climb under ``ladder``.

    Each rung is written to ``rungs/NN-<rung>/`` (``summary.json``, ``posterior.nc``) and the
    climb so far to ``ladder.json`` as soon as the rung finishes, each file atomically: Ctrl-C
    or a kill leaves every finished rung on disk. Ctrl-C ends the climb with the best rung so
    far, which is written as the answer; ``on_rung(rung, index)`` is called after each rung is
    written (the command prints a line).
    """
    from ...runs import atomic_write_json
    from ...vi.ladder import fit_auto, write_rung

    script, data, source, reference = prepare(config)
    plate = data_plate(config, script)
    device = resolve_device(config.device)
    run = Run.create(Path(config.script).stem, out)
    with run:
        run.write_config(config)
        run.write_env(seed=config.seed, device=str(device))
        guide = script.guide if config.guide == "custom" else config.guide
        settings = config.fit_settings(plate).replace(device=device)
        records: list[dict] = []

        def written(rung, index: int) -> None:
            write_rung(rung, index, run.path / "rungs")
            records.append(rung.record())
            atomic_write_json(
                run.file("ladder.json"),
                {"status": "running", "budget": config.budget, "rungs": records},
            )
            if on_rung is not None:
                on_rung(rung, index)

        ref = "nuts" if config.reference_kind == "nuts" else reference
        try:
            with default_dtype(run_dtype(config)):
                ladder = fit_auto(
                    script.model,
                    data,
                    guide=guide,
                    reference=ref,
                    settings=settings,
                    ladder=config.ladder_settings(),
                    seed=config.seed,
                    progress=progress,
                    on_rung=written,
                )
        except (ValueError, FileNotFoundError, NonFiniteLossError):
            raise
        except Exception as err:  # noqa: BLE001 - the user's model failed: one line
            raise ValueError(model_failure("fitting", err)) from err
        diagnosis = ladder.diagnosis
        if diagnosis is None:
            reasons = "; ".join(f"{r.rung}: {r.stopped}" for r in ladder.rungs) or "none ran"
            raise ValueError(f"no rung of the escalation ladder finished ({reasons})")
        atomic_write_json(run.file("ladder.json"), {"status": "complete", **ladder.to_dict()})
        diagnosis.summary.update(
            script=str(script.path),
            data=source,
            device=str(device),
            init_seconds=getattr(diagnosis.fit, "init_seconds", None),
        )
        write_run(diagnosis, run.path)
    return run, diagnosis, ladder


def _parameter_digest(guide) -> str | None:
    """The digest of a module guide's parameters (None for a function guide)."""
    return distributed.parameter_digest(guide) if isinstance(guide, torch.nn.Module) else None


def rebuild_report(run_dir: Path) -> Path:
    """Regenerate the figures and ``report.html`` of a finished fit run from its files."""
    return rebuild_fit_report(Path(run_dir))
