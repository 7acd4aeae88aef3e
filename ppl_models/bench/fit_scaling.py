r"""``ppl-models bench fit --scaling``: the fit and its diagnosis as the model grows.

The model is ``runs/hierarchical_logistic.py`` (``mu``, ``sigma``, ``beta`` global, ``alpha`` in
a plate of :math:`J` groups, Bernoulli observations in the declared data plate ``obs``), its data
simulated by the script's own ``simulate(J, per_group, seed)``: :math:`d = J + 3` latent
coordinates and :math:`N = J \times` ``per_group`` observations. For every size, in a fresh
Python process (so that its peak resident set size is its own):

(a) the whole ``ppl-models fit`` run, :func:`ppl_models.jobs.fit.run.execute` on a temporary run
    folder with the data written to a file, as a user runs it: the fit (its start and its steps
    apart, the steps timed inside the training loop, so a refit from Pyro's start counts), each
    part of the diagnosis (``summary.json``'s ``timings``), the draws :math:`S` it chose and why,
    the report and files; the peak RSS after the fit, after the diagnosis and at the end;
(b) plain Pyro: ``AutoNormal`` + ``Trace_ELBO`` under ``pyro.infer.SVI`` with the same steps and
    particles, vectorized as the package's fit is, in the same float dtype and torch threads;
(c) NumPyro (optional; the table says when it is not installed): ``AutoNormal`` + SVI with the
    same steps and particles (the whole ``svi.run`` with its compilation, and the steady time per
    step of a jitted ``svi.update``), and NUTS (by default 2 chains of 500 + 500, in parallel on
    the CPU's cores), with its max R-hat, min ESS and divergences.

A minibatch fit (``--set batch_size=B``) has no like-for-like baseline (the script's plate draws
no subsample of its own), so (b) and (c) are skipped for it and the table says so.

Ratios are of times measured in the same process, back to back on the same data:

.. math::

    \frac{\text{package}}{\text{Pyro}} = \frac{t_\text{steps} / n_\text{steps}}
        {t_\text{Pyro} / n_\text{steps}}, \qquad
    \frac{\text{run}}{\text{NUTS}} = \frac{t_\text{run}}{t_\text{NUTS}},

the first also in CPU seconds (on one thread, what an idle machine's clock would read). Timed
so, seconds to minutes apart, a load that moves between the two moves the ratio; so, by
default, (d) right after (b), before NumPyro is imported (with JAX loaded, Pyro's steps were
measured slower), the two are timed alternately: ``--alternate-rounds`` R rounds (default 4),
each the package's own fit for :math:`k` steps and plain Pyro's for :math:`k` steps, the one
that goes first taking turns, :math:`k` (``--alternate-steps``) chosen from the CPU time of the
run's steps so that a block takes about ``ALTERNATE_BLOCK_SECONDS`` (at least
``ALTERNATE_MIN_STEPS``).
Only the steps are timed: from the end of each side's first step to the end of its last (the
package's start and Pyro's guide, built in its first step, left out), in wall and CPU seconds;
the ratio is of the medians over the rounds (:func:`alternating_summary`), and the targets'
line uses it where it was measured. Across the sizes, the log-log slope of each time (and of
the peak memory) against :math:`d` and against :math:`N`, the least-squares :math:`b` of
:math:`\log t = a + b \log x`; when the sizes vary :math:`d` and :math:`N` apart (several
``--per-group``), also the joint fit
:math:`\log t = a + b_d \log d + b_N \log N`. The machine's load average is recorded before and
after every size: on a shared machine wall times stretch, and CPU seconds are given beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .. import allocator

SCRIPT = "hierarchical_logistic.py"
DEFAULT_GROUPS = "100,1000"
DEFAULT_PER_GROUP = "20"
NUTS_DEFAULTS = {"warmup": 500, "draws": 500, "chains": 2}
# The upper bounds the benchmark is held to (J groups of 20 observations, the default fit),
# checked by against_targets for the table's last lines and bench.json
TARGETS = {
    "J1000_run_seconds_idle": 45.0,
    "J1000_run_over_nuts": 2.7,
    "J1000_peak_gb": 1.5,
    "J1000_diagnose_over_fit": 1.0,
    "J10000_run_seconds": 600.0,
    "J10000_peak_gb": 4.0,
    "fit_step_over_pyro": 1.3,
}
# the alternating comparison of the package's steps with plain Pyro's (d)
ALTERNATE_ROUNDS = 4
ALTERNATE_BLOCK_SECONDS = 3.0
ALTERNATE_MIN_STEPS = 50
TIMED_SLOPES = ("total", "fit", "fit_steps", "diagnose", "diagnose_draws", "diagnose_mode_search")


# --------------------------------------------------------------------------- sizes and slopes


def parse_sizes(text: str, flag: str) -> list[int]:
    """``"100,1000"`` -> ``[100, 1000]``: distinct positive integers, in the order given.

    Raises
    ------
    ValueError
        For anything else, naming ``flag``.
    """
    try:
        sizes = [int(part.replace("_", "")) for part in str(text).split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise ValueError(
            f"{flag} must be distinct positive integers separated by commas, e.g. 100,1000; "
            f"got {text!r}"
        )
    return sizes


def loglog_slope(x, y) -> float | None:
    r"""The least-squares slope :math:`b` of :math:`\log y = a + b \log x`,

    .. math:: b = \frac{\sum_i (u_i - \bar u)(v_i - \bar v)}{\sum_i (u_i - \bar u)^2},
        \quad u = \log x,\ v = \log y;

    None when fewer than two distinct positive ``x`` have a positive ``y``."""
    pairs = [
        (math.log(a), math.log(b))
        for a, b in zip(x, y, strict=True)
        if a is not None and b is not None and a > 0 and b > 0
    ]
    if len({u for u, _ in pairs}) < 2:
        return None
    mu = sum(u for u, _ in pairs) / len(pairs)
    mv = sum(v for _, v in pairs) / len(pairs)
    sxx = sum((u - mu) ** 2 for u, _ in pairs)
    sxy = sum((u - mu) * (v - mv) for u, v in pairs)
    return sxy / sxx


def loglog_joint(d, n, y) -> dict | None:
    r"""The least-squares :math:`(b_d, b_N)` of :math:`\log y = a + b_d \log d + b_N \log N`,
    or None when the sizes do not vary :math:`d` and :math:`N` apart (a singular design)."""
    import numpy as np

    rows = [
        (math.log(a), math.log(b), math.log(c))
        for a, b, c in zip(d, n, y, strict=True)
        if None not in (a, b, c) and min(a, b, c) > 0
    ]
    if len(rows) < 3:
        return None
    m = np.asarray(rows)
    design = np.column_stack([np.ones(len(m)), m[:, 0], m[:, 1]])
    if np.linalg.matrix_rank(design, tol=1e-9) < 3:
        return None
    coef, *_ = np.linalg.lstsq(design, m[:, 2], rcond=None)
    return {"d": float(coef[1]), "N": float(coef[2])}


def slopes(rows: list[dict]) -> dict:
    """For each timing (and the peak memory): its log-log slope against d and against N across
    the completed ``rows``, and the joint fit when d and N vary apart."""
    done = [r for r in rows if r.get("package")]
    d = [r["d"] for r in done]
    n = [r["N"] for r in done]
    result = {}
    for key in (*TIMED_SLOPES, "peak_rss"):
        y = [r["package"].get(key) for r in done]
        result[key] = {
            "d": loglog_slope(d, y),
            "N": loglog_slope(n, y),
            "joint": loglog_joint(d, n, y),
        }
    return result


def against_targets(rows: list[dict]) -> list[dict]:
    """Each of ``TARGETS`` beside its measured figure: ``name``, ``target``, ``measured`` (None
    when its size was not run with 20 observations per group, or its part did not finish) and
    ``met``. Peaks are in GB of :math:`10^9` bytes; the time per step over plain Pyro's is the
    worst size's."""

    def size(groups: int) -> dict:
        return next(
            (
                r
                for r in rows
                if r["groups"] == groups and r["N"] == 20 * groups and r.get("package")
            ),
            {"package": {}},
        )

    def gb(value):
        return None if value is None else value / 1e9

    def over(a, b):
        return a / b if a is not None and b else None

    j1000, j10000 = size(1000), size(10000)
    p1000 = j1000["package"]
    steps, bases = [], []
    for r in rows:  # the alternating ratio where it was measured, else the back-to-back one
        for key, basis in (("step_over_pyro_alternating", "alternating"), ("step_over_pyro", "")):
            if r.get(key) is not None:
                steps.append(r[key])
                bases.append((r["groups"], basis or "back to back"))
                break
    measured = {
        "J1000_run_seconds_idle": p1000.get("total"),
        "J1000_run_over_nuts": j1000.get("run_over_nuts"),
        "J1000_peak_gb": gb(p1000.get("peak_rss")),
        "J1000_diagnose_over_fit": over(p1000.get("diagnose"), p1000.get("fit")),
        "J10000_run_seconds": j10000["package"].get("total"),
        "J10000_peak_gb": gb(j10000["package"].get("peak_rss")),
        "fit_step_over_pyro": max(steps) if steps else None,
    }
    checked = [
        {
            "name": name,
            "target": target,
            "measured": measured[name],
            "met": None if measured[name] is None else measured[name] <= target,
        }
        for name, target in TARGETS.items()
    ]
    kinds = {basis for _, basis in bases}
    step = next(t for t in checked if t["name"] == "fit_step_over_pyro")
    step["basis"] = (
        None
        if not bases
        else kinds.pop()
        if len(kinds) == 1
        else ", ".join(f"J = {groups:,}: {basis}" for groups, basis in bases)
    )
    return checked


# --------------------------------------------------------------------------- one size (worker)


def peak_rss() -> int:
    """This process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_package(config, out: Path, profile: Path | None = None) -> tuple[dict, object]:
    """Run :func:`ppl_models.jobs.fit.run.execute` once and take it apart: wall and CPU seconds
    of the run, the fit (start, steps timed inside :func:`ppl_models.svi.train`, the rest), each
    part of the diagnosis, the report and files, and the peak RSS after each. Returns the
    measurements and the diagnosis."""
    from ..jobs.fit import run as fit_run
    from ..vi import fitting

    originals = fitting.fit_svi, fitting.train, fit_run.diagnose
    marks: dict = {}
    loops: list[dict] = []

    def timed_train(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        result = originals[1](*args, **kwargs)
        loops.append(
            {
                "steps": len(result.losses),
                "seconds": time.perf_counter() - start,
                "cpu_seconds": time.process_time() - cpu,
            }
        )
        return result

    def marked(original, part: str, rss_part: str):
        """``original``, recording its CPU seconds and the peak RSS after it in ``marks``."""

        def timed(*args, **kwargs):
            cpu = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                marks[f"{part}_cpu"] = time.process_time() - cpu
                marks[f"peak_rss_{rss_part}"] = peak_rss()

        return timed

    fitting.fit_svi = marked(originals[0], "fit", "fit")
    fitting.train = timed_train
    fit_run.diagnose = marked(originals[2], "diagnose", "diagnosis")
    profiler = None
    try:
        start, cpu = time.perf_counter(), time.process_time()
        if profile is not None:
            import cProfile

            profiler = cProfile.Profile()
            _, diagnosis = profiler.runcall(fit_run.execute, config, out=out, progress=False)
        else:
            _, diagnosis = fit_run.execute(config, out=out, progress=False)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        fitting.fit_svi, fitting.train, fit_run.diagnose = originals
    if profiler is not None:
        _write_profile(profiler, profile)
    s, fit = diagnosis.summary, diagnosis.fit
    timings = s["timings"]
    steps = sum(loop["steps"] for loop in loops)
    step_seconds = sum(loop["seconds"] for loop in loops)
    measured = {
        "total": total,
        "total_cpu": cpu,
        "fit": fit.seconds,
        "fit_cpu": marks.get("fit_cpu"),
        "fit_init": fit.init_seconds,
        "fit_steps": step_seconds,
        "fit_steps_cpu": sum(loop["cpu_seconds"] for loop in loops),
        "fit_other": fit.seconds - fit.init_seconds - step_seconds,
        "steps": steps,
        "fits": len(loops),  # 2: a MAP start was doubted and the guide fitted again
        "step_ms": 1000 * step_seconds / steps if steps else None,
        "diagnose": timings["total"],
        "diagnose_cpu": marks.get("diagnose_cpu"),
        **{f"diagnose_{k}": v for k, v in timings.items() if k != "total"},
        "report_and_files": total - fit.seconds - timings["total"],
        "report_and_files_cpu": _minus(cpu, marks.get("fit_cpu"), marks.get("diagnose_cpu")),
        "draws": s["draws"],
        "draws_reason": s["draws_reason"],
        "draws_kept": s.get("draws_kept"),
        "verdict": s["verdict"],
        "psis_khat": s["psis_khat"],
        "mode_search": _mode_search_counts(s.get("mode_search")),
        "vectorized": fit.vectorized,
        "max_plate_nesting": fit.max_plate_nesting,
        "threads": fit.settings.get("threads"),
        "batch_size": config.batch_size,
        "peak_rss_fit": marks.get("peak_rss_fit"),
        "peak_rss_diagnosis": marks.get("peak_rss_diagnosis"),
        "peak_rss": peak_rss(),
    }
    return measured, diagnosis


def _minus(total: float, *parts: float | None) -> float | None:
    return None if None in parts else total - sum(parts)


def _mode_search_counts(search: dict | None) -> dict | None:
    if not search:
        return None
    return {k: v for k, v in search.items() if isinstance(v, int | float | str | bool)}


def _write_profile(profiler, path: Path, lines: int = 60) -> None:
    import io
    import pstats

    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs().sort_stats("cumulative")
    stats.print_stats(lines)
    Path(path).write_text(text.getvalue())


def time_plain_pyro(script, data: dict, dtype, run: dict | None, settings: dict) -> dict:
    """Plain Pyro's ``AutoNormal`` + ``Trace_ELBO`` on the script's model and data converted as
    the package converts them, in the fit's float ``dtype``, vectorized as the package's fit was
    and on its torch threads (:func:`ppl_models.bench.fit.time_plain_pyro`, from Pyro's own
    start). Without the package's ``run`` (it failed): vectorized particles, one plate, torch's
    threads."""
    from ..svi import default_dtype
    from ..vi.script import model_data
    from .fit import time_plain_pyro as plain

    run = run or {"vectorized": True, "max_plate_nesting": 1, "threads": None}
    with default_dtype(dtype):
        result = plain(
            script.model,
            model_data(script.model, data, dtype=dtype),
            "auto-normal",
            steps=settings["steps"],
            particles=settings["particles"],
            lr=settings["lr"],
            vectorize=run["vectorized"],
            max_plate_nesting=run["max_plate_nesting"],
            threads=run["threads"],
        )
    result["steps"] = settings["steps"]
    result["step_ms"] = 1000 * result["seconds"] / settings["steps"]
    result["dtype"] = str(dtype).removeprefix("torch.")
    result["threads"] = run["threads"]
    return result


def step_times(stamps: list[tuple[int, float, float]]) -> dict:
    """The steps' wall and CPU seconds from ``(step, wall clock, CPU clock)`` stamps taken at
    the end of every step. A step index that does not grow starts a new loop (the package's
    refit from Pyro's start); each loop is timed from the end of its first step to the end of
    its last, so that its first step (where Pyro builds its guide) is left out: a loop of
    :math:`n` stamps times :math:`n - 1` steps."""
    loops: list[list[tuple[int, float, float]]] = []
    for stamp in stamps:
        if not loops or stamp[0] <= loops[-1][-1][0]:
            loops.append([])
        loops[-1].append(stamp)
    steps = sum(len(loop) - 1 for loop in loops)
    seconds = sum(loop[-1][1] - loop[0][1] for loop in loops)
    cpu = sum(loop[-1][2] - loop[0][2] for loop in loops)
    return {
        "steps": steps,
        "loops": len(loops),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "step_ms": 1000 * seconds / steps if steps else None,
        "step_cpu_ms": 1000 * cpu / steps if steps else None,
    }


def _stamp(stamps: list, step: int) -> None:
    stamps.append((step, time.perf_counter(), time.process_time()))


def package_steps(script, data, config, steps: int, folder: Path) -> dict:
    """``steps`` steps of the package's own fit, as ``ppl-models fit`` runs it
    (:func:`ppl_models.vi.fitting.fit_svi` with the run's settings, its metrics logged to a run
    folder's ``metrics.jsonl``), but ``steps`` of them; only the steps are timed
    (:func:`step_times` of stamps taken by the fit's ``on_step`` hook, after each step's
    recording and logging), not the fit's start nor what follows its loop."""
    from ..jobs.fit.run import data_plate
    from ..runs import Run
    from ..vi import fitting

    settings = config.fit_settings(data_plate(config, script)).replace(steps=steps)
    guide = script.guide if config.guide == "custom" else config.guide
    stamps: list = []
    run = Run.create("alternating", out=folder)
    hooks = fitting.FitHooks(
        on_log=lambda record: run.log_metrics(**record),
        on_step=lambda step, loss, guide: _stamp(stamps, step),
    )
    fitting.fit_svi(script.model, guide, data, settings, hooks=hooks)
    return step_times(stamps)


def pyro_steps(script, data: dict, dtype, run: dict, steps: int, settings: dict) -> dict:
    """``steps`` steps of plain Pyro's SVI as :func:`time_plain_pyro` takes them, only the
    steps timed (:func:`step_times` of stamps taken after each ``SVI.step``, the first of which,
    building the guide, is left out)."""
    from pyro.infer import SVI

    stamps: list = []
    step = SVI.step

    def stamped(self, *args, **kwargs):
        loss = step(self, *args, **kwargs)
        _stamp(stamps, len(stamps))
        return loss

    SVI.step = stamped
    try:
        time_plain_pyro(script, data, dtype, run, settings | {"steps": steps})
    finally:
        SVI.step = step
    return step_times(stamps)


def alternating_steps(script, data, config, dtype, run: dict, settings: dict, spec: dict, folder):
    """The package's steps and plain Pyro's, timed alternately in this process (``spec``'s
    ``rounds`` rounds of ``steps`` steps each, None: chosen from the CPU time of the run's
    steps), the one that goes first taking turns; :func:`alternating_summary` of the rounds."""
    rounds = int(spec["rounds"])
    # the CPU time of a step where it was measured: a crowded machine stretches the wall clock
    cpu = run.get("fit_steps_cpu")
    step_ms = 1000 * cpu / run["steps"] if cpu else run["step_ms"]
    steps = spec.get("steps") or max(
        ALTERNATE_MIN_STEPS, math.ceil(1000 * ALTERNATE_BLOCK_SECONDS / step_ms)
    )
    timed = []
    for i in range(rounds):
        order = ("package", "pyro") if i % 2 == 0 else ("pyro", "package")
        result = {"first": order[0]}
        for side in order:
            if side == "package":
                result[side] = package_steps(script, data, config, steps, folder / f"round{i}")
            else:
                result[side] = pyro_steps(script, data, dtype, run, steps, settings)
        timed.append(result)
    return {"steps": steps, **alternating_summary(timed)}


def alternating_summary(rounds: list[dict]) -> dict:
    r"""Rounds of ``{"first", "package", "pyro"}`` (each side a :func:`step_times`) summed up:
    every round's ratio of the package's time per step to Pyro's, and the ratio of the
    medians over the rounds, in wall and in CPU seconds,

    .. math:: \frac{\operatorname{median}_r t^{\rm package}_r}
        {\operatorname{median}_r t^{\rm Pyro}_r};

    a ratio is None where a side took no timed step."""
    import statistics

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def over(a, b):
        return a / b if a is not None and b else None

    summary: dict = {"rounds": rounds}
    for unit, key in (("", "step_ms"), ("_cpu", "step_cpu_ms")):
        package = median(r["package"][key] for r in rounds)
        pyro = median(r["pyro"][key] for r in rounds)
        summary[f"package{unit}_ms"] = package
        summary[f"pyro{unit}_ms"] = pyro
        summary[f"ratio{unit}"] = over(package, pyro)
        summary[f"round_ratios{unit}"] = [over(r["package"][key], r["pyro"][key]) for r in rounds]
    return summary


def numpyro_available() -> bool:
    """Whether NumPyro and JAX can be imported (the ``bench`` extra)."""
    return all(importlib.util.find_spec(name) is not None for name in ("numpyro", "jax"))


def numpyro_model(J: int):
    """The hierarchical logistic regression of ``runs/hierarchical_logistic.py`` in NumPyro,
    with the number of groups fixed (a plate's size is static under ``jit``)."""
    import numpyro
    import numpyro.distributions as dist

    def model(group, x, y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 2.0))
        with numpyro.plate("groups", J):
            alpha = numpyro.sample("alpha", dist.Normal(mu, sigma))
        with numpyro.plate("obs", y.shape[0]):
            numpyro.sample("y", dist.Bernoulli(logits=alpha[group] + beta * x), obs=y)

    return model


def time_numpyro_svi(data: dict, *, steps: int, particles: int, lr: float, seed: int = 0) -> dict:
    """NumPyro's ``AutoNormal`` + ``Trace_ELBO`` SVI: the whole ``svi.run`` as a user calls it
    (compilation included), then the steady time per step of a jitted ``svi.update`` (one
    untimed step compiles it)."""
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    model = numpyro_model(int(data["J"]))
    float_dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    arrays = {
        "group": jnp.asarray(data["group"], dtype=jnp.int32),
        "x": jnp.asarray(data["x"], dtype=float_dtype),
        "y": jnp.asarray(data["y"], dtype=float_dtype),
    }
    svi = SVI(model, AutoNormal(model), numpyro.optim.Adam(lr), Trace_ELBO(num_particles=particles))
    start, cpu = time.perf_counter(), time.process_time()
    result = svi.run(jax.random.PRNGKey(seed), steps, progress_bar=False, **arrays)
    jax.block_until_ready(result.losses)
    run_seconds, run_cpu = time.perf_counter() - start, time.process_time() - cpu
    update = jax.jit(svi.update)
    state = svi.init(jax.random.PRNGKey(seed + 1), **arrays)
    state, loss = update(state, **arrays)
    jax.block_until_ready(loss)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        state, loss = update(state, **arrays)
    jax.block_until_ready(loss)
    seconds, step_cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "run_seconds": run_seconds,
        "run_cpu_seconds": run_cpu,
        "steps": steps,
        "step_ms": 1000 * seconds / steps,
        "step_cpu_ms": 1000 * step_cpu / steps,
        "final_loss": float(result.losses[-1]),
        "dtype": str(jnp.dtype(float_dtype)),
    }


def time_numpyro_nuts(data: dict, *, warmup: int, draws: int, chains: int, seed: int = 0) -> dict:
    """NumPyro's NUTS: ``chains`` chains of ``warmup`` + ``draws``, in parallel when JAX has a
    CPU device per chain, else one after the other; its max R-hat, min ESS and divergences."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from numpyro.diagnostics import summary
    from numpyro.infer import MCMC, NUTS

    model = numpyro_model(int(data["J"]))
    float_dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    arrays = {
        "group": jnp.asarray(data["group"], dtype=jnp.int32),
        "x": jnp.asarray(data["x"], dtype=float_dtype),
        "y": jnp.asarray(data["y"], dtype=float_dtype),
    }
    method = "parallel" if chains > 1 and jax.local_device_count() >= chains else "sequential"
    mcmc = MCMC(
        NUTS(model),
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method=method,
        progress_bar=False,
    )
    start, cpu = time.perf_counter(), time.process_time()
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=("diverging",), **arrays)
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    stats = summary({k: np.asarray(v) for k, v in samples.items()})
    rhat = [float(np.nanmax(s["r_hat"])) for s in stats.values() if "r_hat" in s]
    ess = [float(np.nanmin(s["n_eff"])) for s in stats.values() if "n_eff" in s]
    rhat_max = max(rhat) if rhat and chains > 1 else None
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "warmup": warmup,
        "draws": draws,
        "chains": chains,
        "chain_method": method,
        "max_rhat": rhat_max if rhat_max is None or math.isfinite(rhat_max) else None,
        "min_ess": min(ess) if ess else None,
        "divergences": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()),
        "dtype": str(jnp.dtype(float_dtype)),
    }


def _failure(err: BaseException) -> dict:
    first = (str(err).strip().splitlines() or [""])[0]
    return {"error": f"{type(err).__name__}: {first}"}


def measure(spec: dict, partial: Path | None = None) -> dict:
    """Everything of one size: simulate its data, run the package, plain Pyro and NumPyro on
    it. ``spec`` holds ``groups``, ``per_group``, ``seed``, ``script`` (the model script),
    ``settings`` (steps, particles, lr, draws), ``overrides`` (``--set`` pairs), ``nuts``,
    ``baselines``, ``numpyro``, ``numpyro_x64``, ``threads`` (torch's, or None), ``profile``
    (a file or None) and ``alternate`` (``rounds`` and ``steps``, None for steps chosen from the
    run's; None: no alternating comparison). After each part the row so far is written to
    ``partial`` (when given), so that a size stopped by a time limit keeps what it finished."""
    row: dict = {
        "groups": spec["groups"],
        "per_group": spec["per_group"],
        "d": spec["groups"] + 3,
        "N": spec["groups"] * spec["per_group"],
        "load_before": list(os.getloadavg()),
    }

    def save(stage: str) -> None:
        row["stage"] = stage
        row["load_after"] = list(os.getloadavg())
        if partial is not None:
            tmp = Path(f"{partial}.tmp")
            tmp.write_text(json.dumps(row, default=_json_default))
            tmp.replace(partial)

    start = time.perf_counter()
    from ..config import load_config
    from ..jobs.fit.config import FitConfig
    from ..jobs.fit.run import run_dtype  # torch, Pyro and the package: the imports timed
    from ..vi.script import load_script

    row["import_seconds"] = time.perf_counter() - start
    import torch

    if spec.get("threads"):  # not given: torch's default, and the fit's own choice from it
        torch.set_num_threads(int(spec["threads"]))
    row["torch_threads"] = torch.get_num_threads()
    row["peak_rss_imports"] = peak_rss()  # torch, Pyro and the package, before any work
    settings = spec["settings"]
    script = load_script(spec["script"])
    simulate = getattr(script.module, "simulate", None)
    if simulate is None:
        raise ValueError(f"{spec['script']} has no simulate(groups, per_group, seed)")
    data = simulate(spec["groups"], spec["per_group"], spec["seed"])
    with tempfile.TemporaryDirectory(prefix="ppl-models-bench-scaling-") as tmp:
        data_file = Path(tmp) / "data.json"
        data_file.write_text(json.dumps(data))
        values = {
            "script": str(spec["script"]),
            "data": str(data_file),
            "steps": settings["steps"],
            "particles": settings["particles"],
            "lr": settings["lr"],
            "draws": settings["draws"],
            "device": "cpu",
            "seed": spec["seed"],
        }
        config = load_config(FitConfig, None, values | dict(spec.get("overrides") or {}))
        row["config"] = {k: getattr(config, k) for k in ("steps", "particles", "lr", "draws")}
        row["config"]["batch_size"] = config.batch_size
        profile = spec.get("profile")
        try:
            row["package"], diagnosis = run_package(
                config, Path(tmp) / "run", Path(profile) if profile else None
            )
            del diagnosis  # its draws are not the baselines' memory
        except Exception as err:  # noqa: BLE001 - a failed run is a row, not a crash
            row["package"] = None
            row["package_error"] = _failure(err)["error"]
            row["package_traceback"] = "".join(traceback.format_exception(err))
            row["peak_rss_failed_run"] = peak_rss()
        save("package")
        minibatch = bool(config.batch_size)
        skip = (
            "a minibatch fit has no like-for-like baseline"
            if minibatch
            else None
            if spec.get("baselines", True)
            else "--no-baselines"
        )
        baseline = {"steps": config.steps, "particles": config.particles, "lr": config.lr}
        row["plain_pyro"] = {"skipped": skip}
        if skip is None:
            try:
                dtype = run_dtype(config)
                row["plain_pyro"] = time_plain_pyro(script, data, dtype, row["package"], baseline)
            except Exception as err:  # noqa: BLE001 - a baseline that fails is reported
                row["plain_pyro"] = _failure(err)
        save("plain Pyro")
        # before NumPyro: with JAX loaded in the process, Pyro's steps measured slower
        alternate = spec.get("alternate")
        if alternate is None:
            row["alternating"] = {"skipped": "--alternate-rounds 0"}
        elif skip is not None:
            row["alternating"] = {"skipped": skip}
        elif not (row["package"] and row["plain_pyro"].get("step_ms")):
            row["alternating"] = {"skipped": "the package's run or plain Pyro failed"}
        else:
            try:
                row["alternating"] = alternating_steps(
                    script,
                    data,
                    config,
                    run_dtype(config),
                    row["package"],
                    baseline,
                    alternate,
                    Path(tmp) / "alternating",
                )
            except Exception as err:  # noqa: BLE001 - a comparison that fails is reported
                row["alternating"] = _failure(err)
        save("alternating")
        if skip is None and not spec.get("numpyro", True):
            skip = "--no-numpyro"
        if skip is None and not numpyro_available():
            skip = "NumPyro is not installed (pip install 'ppl_models[bench]')"
        row["numpyro_svi"] = {"skipped": skip}
        row["numpyro_nuts"] = {"skipped": skip}
        if skip is None:
            import jax

            if spec.get("numpyro_x64"):
                jax.config.update("jax_enable_x64", True)
            try:
                row["numpyro_svi"] = time_numpyro_svi(data, seed=spec["seed"], **baseline)
            except Exception as err:  # noqa: BLE001
                row["numpyro_svi"] = _failure(err)
            save("NumPyro SVI")
            nuts = spec["nuts"]
            if nuts is None:
                row["numpyro_nuts"] = {"skipped": "--no-nuts"}
            else:
                try:
                    row["numpyro_nuts"] = time_numpyro_nuts(data, seed=spec["seed"], **nuts)
                except Exception as err:  # noqa: BLE001
                    row["numpyro_nuts"] = _failure(err)
    _ratios(row)
    save("done")
    return row


def _ratios(row: dict) -> None:
    """The package's time per step over each peer's, and its run over NumPyro's NUTS."""
    p = row.get("package") or {}

    def over(a, b):
        return a / b if a and b else None

    pyro = row.get("plain_pyro") or {}
    row["step_over_pyro"] = over(p.get("step_ms"), pyro.get("step_ms"))
    # both run on the fit's threads; on one thread, CPU seconds are what an idle machine's wall
    # clock would read, and a crowded machine does not stretch them as it stretches wall time
    row["step_over_pyro_cpu"] = over(
        p["fit_steps_cpu"] / p["steps"] if p.get("steps") else None,
        pyro["cpu_seconds"] / pyro["steps"] if pyro.get("cpu_seconds") else None,
    )
    row["step_over_numpyro"] = over(p.get("step_ms"), row.get("numpyro_svi", {}).get("step_ms"))
    row["run_over_nuts"] = over(p.get("total"), row.get("numpyro_nuts", {}).get("seconds"))
    alternating = row.get("alternating") or {}  # timed in turns: the robust ratio
    row["step_over_pyro_alternating"] = alternating.get("ratio")
    row["step_over_pyro_alternating_cpu"] = alternating.get("ratio_cpu")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def worker_main(argv: list[str]) -> int:
    """``python -m ppl_models.bench.fit_scaling SPEC.json RESULT.json``: measure one size, with
    the allocator the command sets (:func:`ppl_models.allocator.tune`), for every timing of the
    process alike."""
    allocator.tune()
    spec_path, result_path = (Path(a) for a in argv)
    spec = json.loads(spec_path.read_text())
    measure(spec, partial=result_path)
    return 0


# --------------------------------------------------------------------------- the parent


def run_size(
    spec: dict, folder: Path, timeout: float | None = None, memory_limit: float | None = None
) -> dict:
    """Measure one size in a fresh Python process; its row, with the child's peak RSS as the
    kernel counted it (``wait4``), its wall time, and its fate when it did not finish: stopped
    after ``timeout`` seconds, or when its resident set passed ``memory_limit`` bytes (so that
    a size too big for the machine ends without pushing other work out of memory)."""
    tag = f"J{spec['groups']}-P{spec['per_group']}"
    spec_file, result_file = folder / f"{tag}.spec.json", folder / f"{tag}.json"
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ)
    chains = (spec.get("nuts") or {}).get("chains", 1)
    flags = env.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:  # one CPU device per NUTS chain
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={chains}".strip()
    package_root = str(Path(__file__).resolve().parents[2])  # this checkout first
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "ppl_models.bench.fit_scaling", str(spec_file)]
    start = time.perf_counter()
    child = subprocess.Popen([*command, str(result_file)], env=env)
    status, usage, fate = _wait(child, timeout, memory_limit)
    child.returncode = status  # reaped by wait4
    seconds = time.perf_counter() - start
    row = json.loads(result_file.read_text()) if result_file.is_file() else {}
    row.setdefault("groups", spec["groups"])
    row.setdefault("per_group", spec["per_group"])
    row.setdefault("d", spec["groups"] + 3)
    row.setdefault("N", spec["groups"] * spec["per_group"])
    row["process_seconds"] = seconds
    row["process_peak_rss"] = usage.ru_maxrss * 1024
    if fate is None and status != 0:
        signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        fate = (
            f"the process was killed by signal {signal}"
            + (" (out of memory?)" if signal == 9 else "")
            if signal
            else f"the process exited with status {os.WEXITSTATUS(status)}"
        )
    if fate is not None:
        row["failed"] = f"{fate} during {_next_stage(row)}"
    row.setdefault("package", None)
    _ratios(row)
    return row


def _next_stage(row: dict) -> str:
    """What a child that did not finish was doing: the part after the last one it saved."""
    return {
        "start": "the package's run",
        "package": "plain Pyro",
        "plain Pyro": "the alternating comparison of the steps",
        "alternating": "NumPyro SVI",
        "NumPyro SVI": "NumPyro NUTS",
    }.get(row.get("stage", "start"), "its last writes")


def _wait(child: subprocess.Popen, timeout: float | None, memory_limit: float | None):
    """``os.wait4`` of ``child`` (its own resource usage, not every child's), killing it past
    ``timeout`` seconds or ``memory_limit`` bytes of resident memory. Returns ``(status,
    usage, fate)``, ``fate`` None when it ended by itself."""
    deadline = None if timeout is None else time.monotonic() + timeout
    fate = None
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            return status, usage, fate
        if fate is None and deadline is not None and time.monotonic() > deadline:
            fate = f"stopped after the --timeout of {timeout:g} s"
        rss = resident_bytes(child.pid)
        if fate is None and memory_limit is not None and rss and rss > memory_limit:
            fate = (
                f"stopped at the --memory-limit of {memory_limit / 2**30:.3g} GB (resident "
                f"{rss / 2**30:.2f} GB)"
            )
        if fate is not None:
            child.kill()
            _, status, usage = os.wait4(child.pid, 0)
            return status, usage, fate
        time.sleep(0.2)


def resident_bytes(pid: int) -> int | None:
    """The resident set of process ``pid`` now (Linux's ``/proc/PID/status``), else None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def add_arguments(group) -> None:
    """Add the options of the alternating comparison (d) to the scaling mode's ``group`` of
    ``bench fit``'s parser."""
    group.add_argument(
        "--alternate-rounds",
        type=int,
        default=ALTERNATE_ROUNDS,
        dest="alternate_rounds",
        metavar="R",
        help="rounds of the package's steps and plain Pyro's timed in turns in each size's "
        f"process (default {ALTERNATE_ROUNDS}; 0: none, the back-to-back ratio only)",
    )
    group.add_argument(
        "--alternate-steps",
        type=int,
        dest="alternate_steps",
        metavar="K",
        help="steps of each side in each round (default: about "
        f"{ALTERNATE_BLOCK_SECONDS:g} s of the run's steps, at least {ALTERNATE_MIN_STEPS})",
    )


def check_args(args: argparse.Namespace) -> dict:
    """Check the scaling mode's flags before anything runs; returns the resolved settings.

    Raises
    ------
    ValueError
        Naming the bad flag and what it expects.
    """
    from ..config import load_config, parse_overrides
    from ..jobs.fit.config import FitConfig

    groups = parse_sizes(args.groups or DEFAULT_GROUPS, "--groups")
    per_group = parse_sizes(args.per_group or DEFAULT_PER_GROUP, "--per-group")
    for flag in ("steps", "particles"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.draws < 100 or not args.lr > 0:
        raise ValueError(f"--draws must be >= 100 and --lr > 0; got {args.draws} and {args.lr}")
    nuts = {
        "warmup": NUTS_DEFAULTS["warmup"] if args.nuts_warmup is None else args.nuts_warmup,
        "draws": NUTS_DEFAULTS["draws"] if args.nuts_draws is None else args.nuts_draws,
        "chains": NUTS_DEFAULTS["chains"] if args.nuts_chains is None else args.nuts_chains,
    }
    if nuts["warmup"] < 0 or nuts["draws"] < 1 or nuts["chains"] < 1:
        raise ValueError(
            "--nuts-warmup must be >= 0, --nuts-draws and --nuts-chains >= 1; got "
            f"{nuts['warmup']}, {nuts['draws']} and {nuts['chains']}"
        )
    if args.timeout is not None and not args.timeout > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    rounds = getattr(args, "alternate_rounds", ALTERNATE_ROUNDS)
    steps = getattr(args, "alternate_steps", None)
    if rounds < 0:
        raise ValueError(
            f"--alternate-rounds must be >= 0 (0: no alternating comparison), got {rounds}"
        )
    if steps is not None and steps < 2:
        raise ValueError(f"--alternate-steps must be >= 2 (the first is not timed), got {steps}")
    if args.memory_limit is not None and not args.memory_limit > 0:
        raise ValueError(f"--memory-limit must be a positive number of GB, got {args.memory_limit}")
    overrides = parse_overrides(args.overrides)
    fixed = {"script", "data", "device"} & set(overrides)
    if fixed:
        raise ValueError(
            f"--set {', '.join(sorted(fixed))} is fixed by the scaling benchmark (the model "
            "script, its simulated data and the CPU)"
        )
    script = Path(args.scripts) / SCRIPT
    if not script.is_file():
        raise FileNotFoundError(f"the scaling benchmark's model script is missing: {script}")
    settings = {"steps": args.steps, "particles": args.particles, "lr": args.lr}
    settings["draws"] = args.draws
    load_config(FitConfig, None, settings | overrides)  # bad keys and values fail here
    return {
        "groups": groups,
        "per_group": per_group,
        "settings": settings,
        "overrides": overrides,
        "nuts": None if args.no_nuts else nuts,
        "script": script,
        "alternate": {"rounds": rounds, "steps": steps} if rounds else None,
    }


def main(args: argparse.Namespace) -> int:
    """Measure every size, print the tables, write ``bench.json``; returns 0 (a size that
    fails is a row that says so)."""
    from ..runs import atomic_write_json, environment
    from . import make_out_dir

    checked = check_args(args)
    out = make_out_dir(args.out)
    numpyro = not args.no_numpyro and numpyro_available()
    env = environment(seed=0, device="cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ppl-models-bench-scaling-") as tmp:
        for groups in checked["groups"]:
            for per_group in checked["per_group"]:
                spec = {
                    "groups": groups,
                    "per_group": per_group,
                    "seed": 0,
                    "script": str(checked["script"].resolve()),
                    "settings": checked["settings"],
                    "overrides": checked["overrides"],
                    "nuts": checked["nuts"],
                    "baselines": not args.no_baselines,
                    "numpyro": not args.no_numpyro,
                    "numpyro_x64": args.numpyro_x64,
                    "threads": args.threads,
                    "alternate": checked["alternate"],
                    "profile": (
                        str((out / f"profile-J{groups}-P{per_group}.txt").resolve())
                        if args.profile
                        else None
                    ),
                }
                print(f"J = {groups:,}, {per_group} per group ...", file=sys.stderr, flush=True)
                limit = None if args.memory_limit is None else args.memory_limit * 2**30
                row = run_size(spec, Path(tmp), args.timeout, limit)
                rows.append(row)
                total = (row.get("package") or {}).get("total")
                said = row.get("failed") or row.get("package_error") or f"run {total:.1f} s"
                print(f"J = {groups:,}: {said}", file=sys.stderr, flush=True)
    result = {
        "benchmark": "fit-scaling",
        "script": str(checked["script"]),
        "settings": checked["settings"],
        "overrides": checked["overrides"],
        "nuts": checked["nuts"],
        "alternate": checked["alternate"],
        "numpyro": _numpyro_versions() if numpyro else None,
        "numpyro_x64": bool(args.numpyro_x64),
        "torch_threads": args.threads,  # None: torch's default in each process
        "rows": rows,
        "slopes": slopes(rows),
        "targets": against_targets(rows),
        "cpu_count": os.cpu_count(),
        **{key: env[key] for key in ("device", "device_name", "versions", "python", "created")},
        "git_commit": env.get("git_commit"),
    }
    atomic_write_json(out / "bench.json", json.loads(json.dumps(result, default=_json_default)))
    print_tables(result)
    print(f"wrote {out / 'bench.json'}")
    return 0


def _numpyro_versions() -> dict:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("numpyro", "jax", "jaxlib")}


# --------------------------------------------------------------------------- the tables

TIME_COLUMNS = (
    ("J", 7),
    ("d", 8),
    ("N", 11),
    ("run", 8),
    ("(cpu)", 8),
    ("fit", 8),
    ("init", 7),
    ("steps", 8),
    ("ms/step", 8),
    ("diagnose", 9),
    ("draws", 8),
    ("w+bounds", 9),
    ("compare", 8),
    ("modes", 8),
    ("other", 7),
    ("report", 8),
    ("S", 8),
    ("peak MB", 8),
    ("load", 10),
)
PEER_COLUMNS = (
    ("J", 7),
    ("ms/step", 8),
    ("pyro", 8),
    ("/pyro", 7),
    ("(cpu)", 7),
    ("alt", 7),
    ("(cpu)", 7),
    ("npyro", 8),
    ("/npyro", 7),
    ("npyro run", 10),
    ("nuts", 8),
    ("run/nuts", 9),
    ("rhat", 7),
    ("ess", 6),
    ("div", 5),
)


def _line(cells, columns) -> str:
    return "".join(
        f"{cell:>{width}}" if i else f"{cell:<{width}}"
        for i, (cell, (_, width)) in enumerate(zip(cells, columns, strict=True))
    )


def _sec(x) -> str:
    return "—" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _ratio(x) -> str:
    return "—" if x is None else f"{x:.2f}x"


def _num(x, spec: str) -> str:
    """``x`` formatted by ``spec``, or a dash where it was not measured."""
    return "—" if x is None else format(x, spec)


def print_tables(result: dict) -> None:
    """Print a scaling ``bench.json``: the package's times per size, then its peers'."""
    s = result["settings"]
    print(
        f"ppl-models fit on {Path(result['script']).name} ({s['steps']} steps, "
        f"{s['particles']} particles, draws up to {s['draws']:,}"
        + "".join(f", {k}={v}" for k, v in result["overrides"].items())
        + f"); seconds, {result['device_name']}"
    )
    print(_line([c for c, _ in TIME_COLUMNS], TIME_COLUMNS))
    for r in result["rows"]:
        p = r.get("package") or {}
        peak = p.get("peak_rss") or r.get("process_peak_rss")
        load = r.get("load_before"), r.get("load_after")
        cells = [
            f"{r['groups']:,}",
            f"{r['d']:,}",
            f"{r['N']:,}",
            _sec(p.get("total")),
            _sec(p.get("total_cpu")),
            _sec(p.get("fit")),
            _sec(p.get("fit_init")),
            _sec(p.get("fit_steps")),
            _num(p.get("step_ms"), ".2f"),
            _sec(p.get("diagnose")),
            _sec(p.get("diagnose_draws")),
            _sec(p.get("diagnose_weights_and_bounds")),
            _sec(p.get("diagnose_compare")),
            _sec(p.get("diagnose_mode_search")),
            _sec(_diagnose_other(p)),
            _sec(p.get("report_and_files")),
            _num(p.get("draws"), ","),
            "—" if peak is None else f"{peak / 2**20:,.0f}",
            "/".join("—" if v is None else f"{v[0]:.1f}" for v in load),
        ]
        print(_line(cells, TIME_COLUMNS))
    print("load: the 1-minute load average before/after the size; peak MB: the package's run")
    print()
    print("the same data, same steps and particles; ratios are the package's time over the peer's")
    print(_line([c for c, _ in PEER_COLUMNS], PEER_COLUMNS))
    for r in result["rows"]:
        p = r.get("package") or {}
        pyro, svi, nuts = (r.get(k) or {} for k in ("plain_pyro", "numpyro_svi", "numpyro_nuts"))
        cells = [
            f"{r['groups']:,}",
            _num(p.get("step_ms"), ".2f"),
            _num(pyro.get("step_ms"), ".2f"),
            _ratio(r.get("step_over_pyro")),
            _ratio(r.get("step_over_pyro_cpu")),
            _ratio(r.get("step_over_pyro_alternating")),
            _ratio(r.get("step_over_pyro_alternating_cpu")),
            _num(svi.get("step_ms"), ".3f"),
            _ratio(r.get("step_over_numpyro")),
            _sec(svi.get("run_seconds")),
            _sec(nuts.get("seconds")),
            _ratio(r.get("run_over_nuts")),
            _num(nuts.get("max_rhat"), ".3f"),
            _num(nuts.get("min_ess"), ".0f"),
            _num(nuts.get("divergences"), ""),
        ]
        print(_line(cells, PEER_COLUMNS))
    print("pyro, npyro: ms per step (NumPyro's jitted update, compiled; 'npyro run' is svi.run")
    print("with its compilation); nuts: NumPyro's NUTS run, seconds; (cpu): /pyro in CPU seconds,")
    print("which reads as an idle machine's wall clock only on one thread (see --threads);")
    print("/pyro times the two one after the other, alt in turns (the ratio of the medians of")
    print("rounds of the steps alone, the starts left out; its rounds below)")
    for r in result["rows"]:
        alternating = r.get("alternating") or {}
        if alternating.get("rounds"):
            print(_alternating_line(r["groups"], alternating))
    for r in result["rows"]:
        for part in ("plain_pyro", "numpyro_svi", "numpyro_nuts"):
            value = r.get(part) or {}
            if value.get("error"):
                print(f"J = {r['groups']:,}: {part} failed: {value['error']}")
        if (r.get("alternating") or {}).get("error"):
            print(f"J = {r['groups']:,}: the alternating comparison failed: ", end="")
            print(r["alternating"]["error"])
        skipped = {(r.get(k) or {}).get("skipped") for k in ("plain_pyro", "numpyro_svi")}
        for reason in sorted(s for s in skipped if s):
            print(f"J = {r['groups']:,}: skipped: {reason}")
        if r.get("failed"):
            print(f"J = {r['groups']:,}: {r['failed']}")
        if r.get("package_error"):
            print(f"J = {r['groups']:,}: the package's run failed: {r['package_error']}")
        p = r.get("package") or {}
        if p.get("draws_reason"):
            print(f"J = {r['groups']:,}: {p['draws_reason']}")
    print()
    print("log-log slopes across the sizes (time ~ d^b, time ~ N^b)")
    for key, value in result["slopes"].items():
        joint = value["joint"]
        text = f"  {key:<22} d: {_slope(value['d'])}  N: {_slope(value['N'])}"
        if joint:
            text += f"  joint: d {joint['d']:.2f}, N {joint['N']:.2f}"
        print(text)
    print()
    print("targets (at most; the run's seconds are for an idle machine, see the load column)")
    for t in result["targets"]:
        fate = "not measured" if t["met"] is None else "met" if t["met"] else "MISSED"
        value = "—" if t["measured"] is None else f"{t['measured']:.3g}"
        basis = f", {t['basis']}" if t.get("basis") else ""
        print(f"  {t['name']:<26} {value:>8} (target {t['target']:g}{basis}): {fate}")


def _alternating_line(groups: int, alternating: dict) -> str:
    """One size's rounds: each side's ms per step (wall, then CPU), who went first, the ratio of
    the medians."""
    rounds = alternating["rounds"]
    cells = "; ".join(
        f"{'P' if r['first'] == 'package' else 'pyro'} first "
        f"{_num(r['package']['step_ms'], '.2f')}/{_num(r['pyro']['step_ms'], '.2f')} "
        f"(cpu {_num(r['package']['step_cpu_ms'], '.2f')}/{_num(r['pyro']['step_cpu_ms'], '.2f')})"
        for r in rounds
    )
    return (
        f"J = {groups:,}: alternating, {len(rounds)} rounds of {alternating['steps']} steps, "
        f"ms per step package/pyro: {cells}; medians "
        f"{_num(alternating['package_ms'], '.2f')}/{_num(alternating['pyro_ms'], '.2f')} = "
        f"{_ratio(alternating['ratio'])} (cpu {_ratio(alternating['ratio_cpu'])})"
    )


def _slope(b) -> str:
    return "—" if b is None else f"{b:.2f}"


def _diagnose_other(p: dict) -> float | None:
    if p.get("diagnose") is None:
        return None
    named = ("draws", "weights_and_bounds", "compare", "mode_search")
    return p["diagnose"] - sum(p.get(f"diagnose_{k}") or 0.0 for k in named)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(worker_main(sys.argv[1:]))
