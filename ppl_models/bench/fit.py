"""Benchmark ``ppl-models fit`` end to end on the shipped model scripts.

For each model script in ``runs/`` whose data is available (``normal_mean.py`` always; the
posteriordb ones when their data is found: ``$PPL_MODELS_POSTERIORDB``, else the repository's
``ppl_models/data/posteriordb``), three timings on the same settings:

(a) ``fit``: the command's whole run, :func:`ppl_models.jobs.fit.run.execute` (inputs, the fit
    with its Laplace start, the diagnosis with ``--draws`` guide draws, the report and its
    figures, the run's files), split into its stages;
(b) ``plain Pyro``: the same steps and particles of ``pyro.infer.SVI`` with Pyro's own
    autoguide of the same family (``AutoNormal`` or ``AutoMultivariateNormal``, started at the
    package's posterior means, since Pyro's initialisers fail on flat priors) and
    ``pyro.optim.Adam`` at the same step size, vectorized as the package's fit is and on the
    same number of torch threads: the overhead of the package's fit is (a)'s fit time over
    (b)'s (target <= 1.1);
(c) ``nuts``: :func:`ppl_models.nuts_reference`, what ``--reference nuts`` adds to a run.

With ``--compare-pyro`` the benchmark measures accuracy instead of time: every posterior of
:mod:`ppl_models.bench.posteriors` (the shipped scripts and the package's test posteriors) is
fitted the package's way and plain Pyro's way, and their final ELBOs, mean errors and sd ratios
are compared (:mod:`ppl_models.bench.compare_pyro`).

With ``--scaling`` it times the hierarchical logistic regression of
``runs/hierarchical_logistic.py`` at several numbers of groups (``--groups``), each size in a fresh
process for its peak memory, beside plain Pyro's and NumPyro's SVI and NumPyro's NUTS on the same
data, with the log-log slopes of the times against the dimension and the observations
(:mod:`ppl_models.bench.fit_scaling`; NumPyro is the optional ``bench`` extra).

Target: a report for a model of up to 10 parameters within 15 s on a 2-core CPU, NUTS aside.
Times are of one warm process (torch and Pyro already imported), after one untimed warm-up run
of the smallest model, which pays the one-off imports and first-call costs. Besides wall-clock
seconds, the command's and the baseline's process CPU seconds are recorded: on a machine shared
with other work the wall clock stretches, while the CPU time of a run on one thread is close to
its wall time on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .posteriors import DEFAULT_SCRIPTS, select  # DEFAULT_SCRIPTS: the repository's runs/

TARGET_SECONDS = 15.0
TARGET_PARAMETERS = 10
TARGET_OVERHEAD = 1.1


@dataclass(frozen=True)
class BenchModel:
    """A shipped model script, the guide its ``runs/README.md`` command uses, and the
    posteriordb posterior whose reference draws it is compared with (None: no reference)."""

    name: str
    guide: str
    posterior: str | None = None


MODELS = (
    BenchModel("normal_mean", "auto-normal"),
    BenchModel(
        "eight_schools_noncentered", "auto-normal", "eight_schools-eight_schools_noncentered"
    ),
    BenchModel("eight_schools_centered", "auto-normal", "eight_schools-eight_schools_centered"),
    BenchModel("kidiq_kidscore_momiq", "auto-mvn", "kidiq-kidscore_momiq"),
    BenchModel("sblri_blr", "auto-mvn", "sblri-blr"),
)


def available(models=MODELS, scripts: Path = DEFAULT_SCRIPTS) -> tuple[list, list[str]]:
    """The models whose script and data are present, as ``(model, script path, reference file
    or None)``, and a sentence for each one skipped."""
    from ..vi.script import load_script

    scripts = Path(scripts)
    found, skipped = [], []
    for m in models:
        path = scripts / f"{m.name}.py"
        if not path.is_file():
            skipped.append(f"{m.name}: no script {path}")
            continue
        try:
            load_script(path).load_data()
        except (FileNotFoundError, ValueError) as err:
            skipped.append(f"{m.name}: data not available ({str(err).splitlines()[0]})")
            continue
        reference = None
        if m.posterior is not None:
            from ..vi.script import posteriordb_file

            try:
                reference = posteriordb_file(m.posterior, "reference_draws.json.zip")
            except FileNotFoundError:
                reference = None
        found.append((m, path, reference))
    return found, skipped


def time_fit_command(config, out: Path) -> dict:
    """Run :func:`ppl_models.jobs.fit.run.execute` once; its wall time and stages (seconds)."""
    from ..jobs.fit.run import execute
    from ..vi import fitting

    fit_svi, fit_cpu = fitting.fit_svi, []

    def timed_fit(*args, **kwargs):  # the CPU seconds of the command's own fit call
        cpu = time.process_time()
        try:
            return fit_svi(*args, **kwargs)
        finally:
            fit_cpu.append(time.process_time() - cpu)

    fitting.fit_svi = timed_fit  # execute imports it from the module when called
    try:
        start, cpu = time.perf_counter(), time.process_time()
        _, diagnosis = execute(config, out=out, progress=False)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        fitting.fit_svi = fit_svi
    s, fit = diagnosis.summary, diagnosis.fit
    diag = s["timings"]
    parameters = sum(
        int(_prod(shape)) for site, shape in s["site_shapes"].items() if site in s["latent_sites"]
    )
    return {
        "total": total,
        "total_cpu": cpu,
        "fit": fit.seconds,
        "fit_cpu": fit_cpu[0],
        "fit_init": fit.init_seconds,
        "fit_steps": fit.seconds - fit.init_seconds,
        "diagnose": diag["total"],
        "diagnose_draws": diag["draws"],
        "diagnose_weights_and_bounds": diag["weights_and_bounds"],
        "diagnose_compare": diag["compare"],
        "diagnose_other": diag["total"]
        - diag["draws"]
        - diag["weights_and_bounds"]
        - diag["compare"],
        "report_and_files": total - fit.seconds - diag["total"],
        "parameters": parameters,
        "draws": s["draws"],
        "verdict": s["verdict"],
        "psis_khat": s["psis_khat"],
        "vectorized": fit.vectorized,
        "max_plate_nesting": fit.max_plate_nesting,
        "threads": fit.settings.get("threads"),
        "data": fit.data,
        "model": fit.model,
        "means": {
            site: diagnosis.idata.posterior[site].values.mean(axis=(0, 1))
            for site in s["latent_sites"]
        },
    }


def _prod(shape) -> int:
    n = 1
    for k in shape:
        n *= int(k)
    return n


def time_plain_pyro(
    model,
    data: dict,
    guide: str,
    *,
    steps: int,
    particles: int,
    lr: float,
    vectorize: bool,
    max_plate_nesting: int,
    threads: int | None,
    init_values: dict | None = None,
    seed: int = 0,
) -> dict:
    """Seconds for ``steps`` steps of plain ``pyro.infer.SVI`` (guide built and initialised
    included, as the package's fit time includes its Laplace start); Pyro's parameter store
    and torch's thread count are restored after.

    ``init_values`` (site -> value) start the autoguide there (``init_to_value``): Pyro's own
    initialisers sample from the prior, which fails on flat priors (``ImproperUniform``).
    """
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
    from pyro.infer.autoguide.initialization import init_to_median, init_to_value

    classes = {"auto-normal": AutoNormal, "auto-mvn": AutoMultivariateNormal}
    before_threads = torch.get_num_threads()
    saved = pyro.get_param_store().get_state()
    try:
        if threads:
            torch.set_num_threads(threads)
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        start, cpu = time.perf_counter(), time.process_time()
        init = init_to_median
        if init_values:
            values = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in init_values.items()}
            init = init_to_value(values=values)
        auto = classes[guide](model, init_loc_fn=init)
        elbo = Trace_ELBO(
            num_particles=particles,
            vectorize_particles=vectorize and particles > 1,
            max_plate_nesting=max_plate_nesting,
        )
        svi = SVI(model, auto, pyro.optim.Adam({"lr": lr}), elbo)
        with pyro.validation_enabled(False):  # as the package's loop runs
            losses = [svi.step(**data) for _ in range(steps)]
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        pyro.clear_param_store()  # set_state merges: drop the baseline's parameters first
        pyro.get_param_store().set_state(saved)
        torch.set_num_threads(before_threads)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "final_loss": float(losses[-1]),
        "guide": type(auto).__name__,
    }


def time_nuts(model, data: dict, *, warmup: int, draws: int, chains: int, nesting: int) -> dict:
    """Seconds of :func:`ppl_models.vi.references.nuts_reference` (what ``--reference nuts``
    adds to a run)."""
    from ..vi.references import nuts_reference

    start = time.perf_counter()
    nuts_reference(
        model, data, warmup=warmup, draws=draws, chains=chains, max_plate_nesting=nesting
    )
    return {
        "seconds": time.perf_counter() - start,
        "warmup": warmup,
        "draws": draws,
        "chains": chains,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to its ``bench fit`` subparser."""
    names = ", ".join(m.name for m in MODELS)
    parser.add_argument(
        "--models",
        help=f"comma-separated model scripts of --scripts (default: all of {names}); with "
        "--compare-pyro, posteriors of ppl_models.bench.posteriors (default: all)",
    )
    parser.add_argument(
        "--scripts",
        type=Path,
        default=DEFAULT_SCRIPTS,
        help=f"folder of the model scripts (default {DEFAULT_SCRIPTS}, from the repository's root)",
    )
    from ..jobs.fit.config import FitConfig

    d = FitConfig()  # the fit command's defaults
    parser.add_argument("--steps", type=int, default=d.steps, help=f"SVI steps ({d.steps})")
    parser.add_argument(
        "--particles", type=int, default=d.particles, help=f"particles ({d.particles})"
    )
    parser.add_argument("--lr", type=float, default=d.lr, help=f"Adam step size ({d.lr})")
    parser.add_argument(
        "--draws", type=int, default=d.draws, help=f"diagnosis draws S ({d.draws:,})"
    )
    parser.add_argument(
        "--no-nuts", action="store_true", dest="no_nuts", help="skip the NUTS timings"
    )
    for name, default, scaling in (
        ("warmup", d.nuts_warmup, "500"),
        ("draws", d.nuts_draws, "500"),
        ("chains", d.nuts_chains, "2"),
    ):
        parser.add_argument(
            f"--nuts-{name}",
            type=int,
            default=None,
            dest=f"nuts_{name}",
            help=f"NUTS {name} (default {default}; with --scaling, NumPyro's, {scaling})",
        )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        dest="no_warmup",
        help="skip the untimed warm-up run (first-call costs then land on the first model)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        help="folder for bench.json, created when missing (default: here)",
    )
    from . import compare_pyro

    compare_pyro.add_arguments(parser)
    scaling = parser.add_argument_group(
        "scaling mode (--scaling)",
        "the hierarchical logistic regression of runs/hierarchical_logistic.py at several "
        "sizes, each in a fresh process, beside plain Pyro and NumPyro "
        "(ppl_models.bench.fit_scaling)",
    )
    scaling.add_argument(
        "--scaling",
        action="store_true",
        help="time the fit and its diagnosis as the number of groups J grows",
    )
    scaling.add_argument("--groups", help="comma-separated numbers of groups J (default 100,1000)")
    scaling.add_argument(
        "--per-group",
        dest="per_group",
        help="observations per group, one or several comma-separated (default 20)",
    )
    scaling.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="overrides",
        help="a ppl-models fit configuration key for every size (repeatable), e.g. "
        "batch_size=20000",
    )
    scaling.add_argument(
        "--timeout", type=float, help="seconds allowed to each size's process (default: none)"
    )
    scaling.add_argument(
        "--threads",
        type=int,
        help="torch threads of each size's process before the run (default: torch's own; the "
        "fit still picks one thread for small data)",
    )
    scaling.add_argument(
        "--memory-limit",
        type=float,
        dest="memory_limit",
        metavar="GB",
        help="stop a size whose process holds more resident memory (default: none)",
    )
    scaling.add_argument(
        "--no-baselines",
        action="store_true",
        dest="no_baselines",
        help="time the package's run only (no plain Pyro, no NumPyro)",
    )
    scaling.add_argument(
        "--no-numpyro", action="store_true", dest="no_numpyro", help="skip NumPyro"
    )
    scaling.add_argument(
        "--numpyro-x64",
        action="store_true",
        dest="numpyro_x64",
        help="run NumPyro in float64, as the package runs on the CPU (default: its float32)",
    )
    scaling.add_argument(
        "--profile",
        action="store_true",
        help="profile each size's package run (cProfile) into --out/profile-J<J>-P<P>.txt",
    )
    from . import fit_scaling

    fit_scaling.add_arguments(scaling)  # the alternating comparison of the steps


def _out_dir(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out must be a folder (it is created when missing), got {out}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(args: argparse.Namespace) -> int:
    """Time every available model, print the table, write ``bench.json``; returns 0. With
    ``--compare-pyro``, compare the package's fits with plain Pyro's instead
    (:func:`ppl_models.bench.compare_pyro.main`)."""
    if getattr(args, "scaling", False):
        from . import fit_scaling

        return fit_scaling.main(args)
    if getattr(args, "compare_pyro", False):
        from . import compare_pyro

        return compare_pyro.main(args)
    import torch

    from ..jobs.fit.config import FitConfig
    from ..runs import atomic_write_json, environment

    d = FitConfig()
    for name in ("warmup", "draws", "chains"):  # None: the fit command's own default
        if getattr(args, f"nuts_{name}", None) is None:
            setattr(args, f"nuts_{name}", getattr(d, f"nuts_{name}"))
    for flag in ("steps", "particles", "nuts_draws", "nuts_chains"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.draws < 100 or args.nuts_warmup < 0 or not args.lr > 0:
        raise ValueError(
            "--draws must be >= 100, --nuts-warmup >= 0 and --lr > 0; got "
            f"{args.draws}, {args.nuts_warmup} and {args.lr}"
        )
    out = _out_dir(args.out)
    found, skipped = available(select(args.models, MODELS), args.scripts)
    if not found:
        raise ValueError("no model script with its data available: " + "; ".join(skipped))
    env = environment(seed=0, device="cpu")

    def config(m, path, reference, draws):
        return FitConfig(
            script=str(path),
            guide=m.guide,
            reference=str(reference) if reference else "none",
            steps=args.steps,
            particles=args.particles,
            lr=args.lr,
            draws=draws,
            device="cpu",
        )

    results = []
    with tempfile.TemporaryDirectory(prefix="ppl-models-bench-fit-") as tmp:
        if not args.no_warmup:  # imports and first calls, not timed
            m, path, _ = found[0]
            warm = FitConfig(script=str(path), guide=m.guide, steps=20, draws=100, device="cpu")
            time_fit_command(warm, Path(tmp) / "warm-up")
        for i, (m, path, reference) in enumerate(found):
            print(f"{m.name}: fit command ...", file=sys.stderr, flush=True)
            run = time_fit_command(config(m, path, reference, args.draws), Path(tmp) / f"{i}")
            data, model, means = run.pop("data"), run.pop("model"), run.pop("means")
            print(f"{m.name}: plain Pyro ...", file=sys.stderr, flush=True)
            try:
                plain = time_plain_pyro(
                    model,
                    data,
                    m.guide,
                    steps=args.steps,
                    particles=args.particles,
                    lr=args.lr,
                    vectorize=run["vectorized"],
                    max_plate_nesting=run["max_plate_nesting"],
                    threads=run["threads"],
                    init_values=means,
                )
            except Exception as err:  # noqa: BLE001 - a baseline that fails is reported, not fatal
                first = (str(err).strip().splitlines() or [""])[0]
                plain = {"seconds": None, "error": f"{type(err).__name__}: {first}"}
            nuts = None
            if not args.no_nuts:
                print(f"{m.name}: NUTS ...", file=sys.stderr, flush=True)
                try:
                    nuts = time_nuts(
                        model,
                        data,
                        warmup=args.nuts_warmup,
                        draws=args.nuts_draws,
                        chains=args.nuts_chains,
                        nesting=run["max_plate_nesting"],
                    )
                except Exception as err:  # noqa: BLE001 - reported in bench.json, not fatal
                    first = (str(err).strip().splitlines() or [""])[0]
                    nuts = {"seconds": None, "error": f"{type(err).__name__}: {first}"}
            print(f"{m.name}: {run['total']:.1f} s", file=sys.stderr, flush=True)
            results.append(
                {
                    "model": m.name,
                    "guide": m.guide,
                    "reference": None if reference is None else str(reference),
                    "fit_command": run,
                    "plain_pyro": plain,
                    "nuts": nuts,
                    "fit_overhead": run["fit"] / plain["seconds"] if plain["seconds"] else None,
                    "fit_overhead_cpu": (
                        run["fit_cpu"] / plain["cpu_seconds"] if plain["seconds"] else None
                    ),
                    "meets_time_target": (
                        run["total"] <= TARGET_SECONDS
                        if run["parameters"] <= TARGET_PARAMETERS
                        else None
                    ),
                }
            )
    result = {
        "benchmark": "fit",
        "settings": {
            "steps": args.steps,
            "particles": args.particles,
            "lr": args.lr,
            "draws": args.draws,
            "nuts": None
            if args.no_nuts
            else {"warmup": args.nuts_warmup, "draws": args.nuts_draws, "chains": args.nuts_chains},
        },
        "targets": {
            "seconds": TARGET_SECONDS,
            "parameters": TARGET_PARAMETERS,
            "fit_overhead": TARGET_OVERHEAD,
        },
        "models": results,
        "skipped": skipped,
        "cpu_threads": torch.get_num_threads(),
        **{key: env[key] for key in ("device", "device_name", "versions", "python", "created")},
    }
    atomic_write_json(out / "bench.json", result)
    _print_table(result)
    print(f"wrote {out / 'bench.json'}")
    return 0


COLUMNS = (
    ("model", 27),
    ("params", 7),
    ("report", 9),
    ("(cpu)", 8),
    ("fit", 8),
    ("init", 7),
    ("draws", 8),
    ("compare", 8),
    ("report+io", 10),
    ("plain", 8),
    ("fit/plain", 10),
    ("(cpu)", 8),
    ("nuts", 8),
)


def _print_table(r: dict) -> None:
    def sec(x):
        return "—" if x is None else f"{x:.2f}"

    print(
        f"ppl-models fit, end to end ({r['settings']['steps']} steps, "
        f"{r['settings']['particles']} particles, S = {r['settings']['draws']:,}); seconds"
    )
    print(
        "".join(
            f"{name:>{width}}" if i else f"{name:<{width}}"
            for i, (name, width) in enumerate(COLUMNS)
        )
    )
    for m in r["models"]:
        c = m["fit_command"]
        cells = [
            m["model"],
            str(c["parameters"]),
            sec(c["total"]),
            sec(c["total_cpu"]),
            sec(c["fit"]),
            sec(c["fit_init"]),
            sec(c["diagnose_draws"]),
            sec(c["diagnose_compare"]),
            sec(c["report_and_files"]),
            sec(m["plain_pyro"]["seconds"]),
            "—" if m["fit_overhead"] is None else f"{m['fit_overhead']:.2f}x",
            "—" if m["fit_overhead_cpu"] is None else f"{m['fit_overhead_cpu']:.2f}x",
            sec(None if m["nuts"] is None else m["nuts"]["seconds"]),  # None: failed
        ]
        print(
            "".join(
                f"{cell:>{width}}" if i else f"{cell:<{width}}"
                for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
            )
        )
    t = r["targets"]
    print(
        f"targets: report <= {t['seconds']:g} s for <= {t['parameters']} parameters; "
        f"fit/plain <= {t['fit_overhead']:g}x"
    )
    for m in r["models"]:
        for part in ("plain_pyro", "nuts"):
            if m[part] and m[part].get("error"):
                print(f"{m['model']}: {part} failed: {m[part]['error']}")
    for line in r["skipped"]:
        print(f"skipped {line}")
