r"""``ppl-models bench fit --compare-pyro``: is the package's fit ever worse than plain Pyro's?

Every posterior of :mod:`ppl_models.bench.posteriors` is fitted twice with the same guide family
and the same budget of steps and particles per step (the package's defaults: 1,000 steps, 16
particles):

- **the package's way**: :func:`ppl_models.vi.fitting.fit_svi` with its defaults (its start,
  whitening, step-size schedule, iterate averaging and collapse guard) on the CPU;
- **plain Pyro's way**: Pyro's own autoguide of the family (``AutoNormal``,
  ``AutoMultivariateNormal``, ``AutoLowRankMultivariateNormal``) with its default
  ``init_loc_fn``, ``pyro.infer.SVI`` with ``Trace_ELBO(num_particles, vectorize_particles=True)``
  and ``pyro.optim.ClippedAdam({"lr": 0.02})``, the last iterate kept, as a ten-line script
  would fit it. Pyro's initialisers sample the prior, which a flat prior (``ImproperUniform``)
  cannot do; such a row says that plain Pyro could not start. What the model scripts hold is
  fitted as Pyro documents it: discrete latent sites (the sites the package sums out,
  :func:`ppl_models.vi.enumeration.find_discrete`) are enumerated in parallel, with
  ``TraceEnum_ELBO`` at the model's plate depth and the autoguide built on the model with them
  hidden (``poutine.block``); a ``PyroModule`` is the model itself, its ``PyroSample`` sites
  the guide's and any parameters of its own learned alongside; a model that does not broadcast
  over a particle dim (a step raises) is fitted again with Pyro's default,
  ``vectorize_particles=False``. Plain Pyro fixes each site's transform once, at set-up, so a
  support that depends on another latent (``garch11``) is plain Pyro's as it stands.

Both run on the same data tensors in the same float dtype (float64, torch's default within
each fit and restored after), on the same number of CPU threads, with Pyro's validation off in
the loop (it changes no number, only the time). The plain fit keeps its parameters in Pyro's
parameter store, as a script does, in a scope of its own: the caller's store is restored after.
Times are of one warm process: an untimed warm-up of both fits (a few steps of the first
posterior) pays the one-off imports and first-call costs first, unless ``--no-warmup``. Wall
seconds and the process's CPU seconds are both recorded; on a machine shared with other work
the CPU seconds are the figure that travels (both fits run on the same torch thread count).

Both fitted guides are then measured by the same estimators, the discrete sites summed out of
:math:`\log p(x, z)`; the package's flat guide is evaluated as its fit evaluates it (at its
unconstrained draws, for a model with dynamic supports or fitted under ``vmap``), Pyro's
autoguide from the traces of its draws, one at a time where the model does not broadcast under
a plate of draws:

- the **final ELBO**: the mean of :math:`\log p(x, z_s) - \log q(z_s)` over 2,048 guide draws
  (:data:`ppl_models.vi.restart.FINAL_ELBO_DRAWS`, seed 0, as
  :func:`ppl_models.vi.restart.final_elbo` computes it), with its standard error;
- where the posterior has a truth, every element's guide mean and sd from ``--moment-draws``
  further draws (seed 1), and from them the **maximum absolute mean error** in truth sds over
  the elements and the **range of sd ratios** (q sd / truth sd).

Each way is fitted once per seed (``--seeds``, default 5: seeds 0 to 4; the seed of the fit,
not of the measurements). A single fit's final iterate is itself a random draw: plain Pyro's
constant step size leaves its last iterate wandering around the optimum, so one seed can land
nearer the truth or farther from it by more than the rule's 0.05 sd. The rules therefore compare
the two ways' **means over the seeds**:

- the ELBO: the mean of the seeds' final ELBOs, with the standard error of that mean,
  :math:`\sqrt{(s^2 + \overline{se^2}) / n}` for :math:`n` seeds whose ELBOs spread with sample
  variance :math:`s^2` and carry Monte Carlo standard errors :math:`se` (the measurements use
  common random numbers, so :math:`s^2` alone would understate the noise);
- the maximum mean error: the mean over the seeds of each fit's maximum, its range beside it;
  the sd ratios: their range over every seed.

A row states whether the package is never worse: its mean ELBO at least plain Pyro's minus two
standard errors of the difference, :math:`\sqrt{se_1^2 + se_2^2}`, and its mean maximum mean
error at most plain Pyro's plus 0.05 truth sds.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .posteriors import Posterior, select

PYRO_LR = 0.02  # ClippedAdam's step size in the plain-Pyro measurement
MOMENT_DRAWS = 20_000  # mean errors' Monte Carlo sd: 0.007 truth sds at an sd ratio of 1
ELBO_SES = 2.0  # "never worse": package ELBO >= plain ELBO - 2 SE of the difference
MEAN_TOLERANCE = 0.05  # "never worse": package max mean error <= plain's + 0.05 truth sd
SEEDS = 5  # fits per way and posterior, seeds 0 to 4: the rules compare means over the seeds
PYRO_GUIDES = {
    "auto-normal": "AutoNormal",
    "auto-mvn": "AutoMultivariateNormal",
    "auto-lowrank": "AutoLowRankMultivariateNormal",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The comparison's own options (``bench fit`` adds ``--steps``, ``--particles``, ``--lr``,
    ``--models``, ``--scripts`` and ``--out``, which it shares)."""
    parser.add_argument(
        "--compare-pyro",
        action="store_true",
        dest="compare_pyro",
        help="instead of timing the fit command, fit every test posterior the package's way and "
        "plain Pyro's way (same guide family, steps and particles) and compare final ELBOs, "
        "mean errors and sd ratios; --models then names posteriors of "
        "ppl_models.bench.posteriors",
    )
    parser.add_argument(
        "--pyro-lr",
        type=float,
        default=PYRO_LR,
        dest="pyro_lr",
        help=f"plain Pyro's ClippedAdam step size (--compare-pyro; default {PYRO_LR})",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=SEEDS,
        help=f"fits per way and posterior, seeds 0 to N-1; the rules compare the means over "
        f"the seeds (--compare-pyro; default {SEEDS})",
    )
    parser.add_argument(
        "--moment-draws",
        type=int,
        default=MOMENT_DRAWS,
        dest="moment_draws",
        help=f"guide draws for the means and sds (--compare-pyro; default {MOMENT_DRAWS:,})",
    )


# ----------------------------------------------------------------------------- the two fits


def fit_package(
    model, guide: str, data: dict, *, steps: int, particles: int, lr: float, seed: int = 0
):
    """:func:`ppl_models.vi.fitting.fit_svi` with its defaults but for the budget and the seed,
    on the CPU."""
    from ..vi.fitting import fit_svi

    return fit_svi(
        model, guide, data, steps=steps, particles=particles, lr=lr, seed=seed, device="cpu"
    )


def pyro_init(guide: str) -> str:
    """The name of the ``init_loc_fn`` Pyro's autoguide of this family uses by default."""
    from pyro.infer import autoguide

    cls = getattr(autoguide, PYRO_GUIDES[guide])
    return inspect.signature(cls).parameters["init_loc_fn"].default.__name__


def fit_plain_pyro(
    model,
    guide: str,
    data: dict,
    *,
    steps: int,
    particles: int,
    lr: float = PYRO_LR,
    threads: int | None = None,
    dtype=None,
    seed: int = 0,
    discrete=None,
    then: Callable | None = None,
) -> dict:
    """Plain Pyro's fit: its autoguide (default init), ``SVI``, ``Trace_ELBO`` with vectorized
    particles, ``ClippedAdam``; the last iterate.

    A model with discrete latent sites (``discrete``: their names and the model's plate depth,
    a :class:`ppl_models.vi.enumeration.Discrete`) is fitted as Pyro documents it: the model
    with its discrete sites marked for parallel enumeration (``config_enumerate``, which keeps
    the script's own marks), the autoguide built on ``poutine.block(model, hide=those sites)``,
    and ``TraceEnum_ELBO(max_plate_nesting, num_particles, vectorize_particles=True)``.
    A model whose steps fail under vectorized particles (it does not broadcast over a
    particle dim: ``locs[assignment]``) is fitted again from the start with Pyro's default,
    ``vectorize_particles=False``, as its user would have to; ``vectorized`` says which.

    The fit keeps its parameters in Pyro's global parameter store, as a plain script does, in
    a scope of its own (:meth:`pyro.params.param_store.ParamStoreDict.scope`): the caller's
    store is restored after. ``then(guide)`` is called with the fitted guide while its
    parameters are in the store (``guide`` runs the autoguide outside ``module_local_params``,
    so it can be handed to code that turns that setting on).

    Returns
    -------
    dict
        ``losses``, ``seconds`` and ``cpu_seconds`` (the guide built and every step: wall
        clock, and this process's CPU time), ``vectorized`` (whether the particles were), and
        ``then``: what
        ``then(guide)`` returned (or ``then_error``: the exception it raised).
    """
    import pyro
    from pyro import poutine
    from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, autoguide, config_enumerate

    from ..svi import default_dtype

    cls = getattr(autoguide, PYRO_GUIDES[guide])
    guided = model
    if discrete:
        model = config_enumerate(model)
        guided = poutine.block(model, hide=list(discrete.sites))
    elbo_class = TraceEnum_ELBO if discrete else Trace_ELBO
    nesting = {"max_plate_nesting": discrete.max_plate_nesting} if discrete else {}

    def fitted_with(vectorize: bool):
        """A new autoguide and its losses, from a clear parameter store."""
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        auto = cls(guided)
        elbo = elbo_class(num_particles=particles, vectorize_particles=vectorize, **nesting)
        svi = SVI(model, auto, pyro.optim.ClippedAdam({"lr": lr}), elbo)
        with pyro.validation_enabled(False):  # as the package's loop runs; no number changes
            return auto, [svi.step(**data) for _ in range(steps)]

    plain_store = pyro.settings.context(module_local_params=False)
    with plain_store, pyro.get_param_store().scope(), default_dtype(dtype):
        with _torch_threads(threads):
            start, cpu = time.perf_counter(), time.process_time()
            vectorized = particles > 1
            try:
                auto, losses = fitted_with(vectorized)
            except (RuntimeError, ValueError, IndexError):
                if not vectorized:
                    raise
                vectorized = False  # the model does not broadcast over a particle dim
                auto, losses = fitted_with(vectorized)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        result = {
            "losses": np.asarray(losses),
            "seconds": seconds,
            "cpu_seconds": cpu,
            "vectorized": vectorized,
        }
        if then is not None:

            def fitted(*args, **kwargs):
                with pyro.settings.context(module_local_params=False):
                    return auto(*args, **kwargs)

            try:
                result["then"] = then(fitted)
            except Exception as err:  # noqa: BLE001 - the caller decides what a failure means
                result["then_error"] = err
    return result


@contextlib.contextmanager
def _torch_threads(n: int | None):
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- measurements


def measure(
    model,
    guide,
    data: dict,
    *,
    vectorized: bool,
    max_plate_nesting: int,
    discrete=None,
    unconstrained: str | None = None,
    moment_draws: int = MOMENT_DRAWS,
    dtype=None,
) -> dict:
    r"""The final ELBO of a fitted guide with its standard error (2,048 draws, seed 0: the
    estimator of :func:`ppl_models.vi.restart.final_elbo`), and every element's mean and sd
    from ``moment_draws`` draws (seed 1).

    ``discrete`` sites are summed out of :math:`\log p(x, z)`; ``unconstrained`` evaluates the
    model at a flat guide's unconstrained draws as the package's fit does (for a model with
    dynamic supports or one fitted under ``vmap``), None from the traces of guide and model
    (:func:`ppl_models.vi.logweights.draw_log_weights`)."""
    import torch

    from ..svi import default_dtype
    from ..vi.compare import flatten_sites
    from ..vi.logweights import draw_log_weights
    from ..vi.restart import FINAL_ELBO_DRAWS

    def draws(n: int, seed: int):
        return draw_log_weights(
            model,
            guide,
            data,
            draws=n,
            vectorized=vectorized,
            unconstrained=unconstrained,
            max_plate_nesting=max_plate_nesting,
            discrete=discrete or None,
            seed=seed,
            device=torch.device("cpu"),
        )

    with default_dtype(dtype):
        log_w = draws(FINAL_ELBO_DRAWS, 0).log_weights
        values = draws(moment_draws, 1).values
    moments = {
        name: (float(np.mean(x)), float(np.std(x)))
        for name, x in flatten_sites(values, lead=1).items()
    }
    finite = bool(np.isfinite(log_w).all())
    return {
        "elbo": float(log_w.mean()) if finite else None,
        "elbo_se": float(log_w.std(ddof=1) / math.sqrt(len(log_w))) if finite else None,
        "elbo_draws": len(log_w),
        "moments": moments,
    }


def accuracy(moments: dict[str, tuple[float, float]], truth) -> dict | None:
    """The largest ``|q mean - truth mean| / truth sd`` over the truth's elements, and the
    smallest and largest ``q sd / truth sd``, each with the element where it occurs."""
    common = [name for name in truth.moments if name in moments]
    if not common:
        return None
    errors = {n: abs(moments[n][0] - truth.moments[n][0]) / truth.moments[n][1] for n in common}
    ratios = {n: moments[n][1] / truth.moments[n][1] for n in common}
    worst = max(errors, key=errors.get)
    low, high = min(ratios, key=ratios.get), max(ratios, key=ratios.get)
    return {
        "elements": len(common),
        "max_mean_error": errors[worst],
        "max_mean_error_at": worst,
        "sd_ratio": [ratios[low], ratios[high]],
        "sd_ratio_at": [low, high],
        "missing": [n for n in truth.moments if n not in moments],
    }


def _error(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}"


def compare_posterior(
    posterior: Posterior,
    scripts: Path,
    *,
    steps: int,
    particles: int,
    lr: float,
    pyro_lr: float = PYRO_LR,
    moment_draws: int = MOMENT_DRAWS,
    seeds: int = 1,
) -> dict:
    """Both fits of one posterior, once per seed, their measurements pooled over the seeds, as
    one row of ``bench.json`` (each seed's own in the ways' ``runs``).

    Raises
    ------
    FileNotFoundError, ValueError
        When the posterior's script, data or reference cannot be read (the fits' own failures
        are recorded in the row instead).
    """
    from ..vi.diagnose import unconstrained_mode
    from ..vi.vmapped import PLATE

    model, data = posterior.build(scripts)
    truth = posterior.truth(scripts) if posterior.truth is not None else None
    row = {
        "posterior": posterior.name,
        "guide": posterior.guide,
        "about": posterior.about,
        "truth": None if truth is None else truth.source,
        "truth_elements": 0 if truth is None else len(truth.moments),
        "seeds": seeds,
    }
    init = pyro_init(posterior.guide)
    plain = {"guide": PYRO_GUIDES[posterior.guide], "init": init, "lr": pyro_lr}
    package_runs, plain_runs = [], []
    for seed in range(seeds):
        print(f"{posterior.name}: package fit, seed {seed} ...", file=sys.stderr, flush=True)
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            fit = fit_package(
                model, posterior.guide, data, steps=steps, particles=particles, lr=lr, seed=seed
            )
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        except Exception as err:  # noqa: BLE001 - a fit that fails is reported in its row
            row.update(package={"error": _error(err), "seed": seed}, plain_pyro=None)
            return _judged(row)

        def measured(guide, fit=fit, flat=False):
            # the package's flat guide as its fit evaluates it; Pyro's autoguide from traces,
            # one draw at a time where the model does not broadcast under a plate of draws
            return measure(
                fit.model,
                guide,
                fit.data,
                vectorized=fit.vectorized if flat else fit.vectorization == PLATE,
                max_plate_nesting=fit.max_plate_nesting,
                discrete=fit.discrete,
                unconstrained=unconstrained_mode(fit) if flat else None,
                moment_draws=moment_draws,
                dtype=fit.dtype,
            )

        start = getattr(fit.guide, "start", None)
        package_runs.append(
            _run(
                measured(fit.guide, flat=True),
                truth,
                seed=seed,
                seconds=wall,  # the whole fit_svi call: its start, the steps, any refit
                cpu_seconds=cpu,
                start=fit.settings.get("init") if start is None else start.method,
                restart=fit.extras.get("restart"),
                converged=fit.converged,
                threads=fit.settings.get("threads"),
                notes=list(fit.notes),
            )
        )
        if "error" in plain:  # plain Pyro could not start: its other seeds cannot either
            continue
        print(f"{posterior.name}: plain Pyro fit, seed {seed} ...", file=sys.stderr, flush=True)
        try:
            result = fit_plain_pyro(
                fit.model,
                posterior.guide,
                fit.data,
                steps=steps,
                particles=particles,
                lr=pyro_lr,
                threads=fit.settings.get("threads"),
                dtype=fit.dtype,
                seed=seed,
                discrete=fit.discrete,
                then=measured,
            )
        except Exception as err:  # noqa: BLE001 - Pyro's initialisers fail on flat priors
            why = (
                f"Pyro's {init} samples the prior, and a flat prior (ImproperUniform) cannot be "
                "sampled: plain Pyro cannot start"
                if posterior.flat_prior
                else "plain Pyro's fit failed"
            )
            plain["error"] = f"{why} ({_error(err)})"
            continue
        if "then_error" in result:  # a guide whose draws cannot be scored
            plain["error"] = (
                f"plain Pyro's guide could not be measured ({_error(result['then_error'])})"
            )
            continue
        plain_runs.append(
            _run(
                result["then"],
                truth,
                seed=seed,
                seconds=result["seconds"],
                cpu_seconds=result["cpu_seconds"],
                final_loss=float(result["losses"][-1]),
                vectorized=result["vectorized"],
            )
        )
    row["package"] = _pooled(package_runs)
    row["plain_pyro"] = plain if "error" in plain else {**plain, **_pooled(plain_runs)}
    return _judged(row)


def _run(measured: dict, truth, **about) -> dict:
    """One seed's fit: its final ELBO and standard error, its accuracy against ``truth``."""
    return {
        **about,
        "elbo": measured["elbo"],
        "elbo_se": measured["elbo_se"],
        "accuracy": None if truth is None else accuracy(measured["moments"], truth),
    }


def _pooled(runs: list[dict]) -> dict:
    r"""One way's fits over the seeds: the mean ELBO with the standard error of that mean,
    :math:`\sqrt{(s^2 + \overline{se^2}) / n}`, the mean of the maximum mean errors (and their
    range), the range of the sd ratios, the mean seconds per fit, and ``runs``, each seed's own.

    The seeds' ELBOs share the measurements' random numbers, so their spread :math:`s^2`
    understates the Monte Carlo part of the noise; each fit's :math:`se^2` adds it back.
    """
    n = len(runs)
    elbos = [r["elbo"] for r in runs]
    pooled = {
        "seconds": float(np.mean([r["seconds"] for r in runs])),
        "cpu_seconds": float(np.mean([r["cpu_seconds"] for r in runs])),
        "elbo": None,
        "elbo_se": None,
        "accuracy": None,
        "runs": runs,
    }
    if all(e is not None for e in elbos):
        spread = float(np.var(elbos, ddof=1)) if n > 1 else 0.0
        mc = float(np.mean([r["elbo_se"] ** 2 for r in runs]))
        pooled.update(elbo=float(np.mean(elbos)), elbo_se=math.sqrt((spread + mc) / n))
    accs = [r["accuracy"] for r in runs]
    if accs and all(accs):
        errors = [a["max_mean_error"] for a in accs]
        worst = int(np.argmax(errors))
        pooled["accuracy"] = {
            "elements": accs[0]["elements"],
            "max_mean_error": float(np.mean(errors)),
            "max_mean_error_range": [min(errors), max(errors)],
            "max_mean_error_at": accs[worst]["max_mean_error_at"],
            "sd_ratio": [min(a["sd_ratio"][0] for a in accs), max(a["sd_ratio"][1] for a in accs)],
            "missing": accs[0]["missing"],
        }
    starts = sorted({r["start"] for r in runs if r.get("start")})
    if starts:
        pooled["start"] = "/".join(starts)
    return pooled


def _judged(row: dict) -> dict:
    """The row with its two rules: ``elbo_not_worse`` and ``mean_error_not_worse`` (None where
    a rule cannot be applied), and ``never_worse``: both that apply hold."""
    pkg, plain = row.get("package") or {}, row.get("plain_pyro") or {}
    elbo_ok = mean_ok = None
    if pkg.get("error"):
        elbo_ok = False  # a package fit that fails is worse than anything
    elif pkg.get("elbo") is not None and plain.get("elbo") is not None:
        margin = ELBO_SES * math.hypot(pkg["elbo_se"], plain["elbo_se"])
        elbo_ok = pkg["elbo"] >= plain["elbo"] - margin
    elif pkg.get("elbo") is None and plain.get("elbo") is not None:
        elbo_ok = False  # a non-finite ELBO where plain Pyro's is finite
    a, b = pkg.get("accuracy"), plain.get("accuracy")
    if a and b:
        mean_ok = a["max_mean_error"] <= b["max_mean_error"] + MEAN_TOLERANCE
    rules = [ok for ok in (elbo_ok, mean_ok) if ok is not None]
    row.update(
        elbo_not_worse=elbo_ok,
        mean_error_not_worse=mean_ok,
        never_worse=all(rules) if rules else None,
    )
    return row


# ----------------------------------------------------------------------------- the command


def check_arguments(args: argparse.Namespace) -> None:
    """One-line ``ValueError`` s for options the comparison cannot use."""
    for flag in ("steps", "particles"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.moment_draws < 100:
        raise ValueError(f"--moment-draws must be >= 100, got {args.moment_draws}")
    for flag in ("lr", "pyro_lr"):
        value = getattr(args, flag)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0, got {value}")


def main(args: argparse.Namespace) -> int:
    """Compare the two fits on every selected posterior, print the table, write ``bench.json``."""
    import torch

    from ..runs import atomic_write_json, environment
    from . import make_out_dir

    check_arguments(args)
    chosen = select(args.models)
    out = make_out_dir(args.out)
    scripts = Path(args.scripts)
    rows, skipped = [], []
    if not args.no_warmup:  # imports and first calls, not timed
        print("warm-up (not timed) ...", file=sys.stderr, flush=True)
        try:
            compare_posterior(
                chosen[0], scripts, steps=5, particles=2, lr=args.lr, moment_draws=100
            )
        except (FileNotFoundError, ValueError):
            pass  # reported when the posterior's turn comes
    for posterior in chosen:
        try:
            row = compare_posterior(
                posterior,
                scripts,
                steps=args.steps,
                particles=args.particles,
                lr=args.lr,
                pyro_lr=args.pyro_lr,
                moment_draws=args.moment_draws,
                seeds=args.seeds,
            )
        except (FileNotFoundError, ValueError) as err:  # its script, data or reference
            skipped.append(f"{posterior.name}: {(str(err).splitlines() or [''])[0]}")
            continue
        rows.append(row)
    if not rows:
        raise ValueError("no posterior could be built: " + "; ".join(skipped))
    env = environment(seed=0, device="cpu")
    from ..vi.restart import FINAL_ELBO_DRAWS

    result = {
        "benchmark": "fit",
        "mode": "compare-pyro",
        "settings": {
            "steps": args.steps,
            "particles": args.particles,
            "lr": args.lr,
            "pyro_lr": args.pyro_lr,
            "pyro_optimizer": "ClippedAdam",
            "elbo_draws": FINAL_ELBO_DRAWS,
            "moment_draws": args.moment_draws,
            "seeds": args.seeds,
        },
        "rules": {
            "elbo": f"package ELBO >= plain ELBO - {ELBO_SES:g} SE of the difference",
            "mean_error": f"package max mean error <= plain's + {MEAN_TOLERANCE:g} truth sd",
        },
        "posteriors": rows,
        "skipped": skipped,
        "cpu_threads": torch.get_num_threads(),
        **{key: env[key] for key in ("device", "device_name", "versions", "python", "created")},
    }
    atomic_write_json(out / "bench.json", result)
    print_table(result)
    print(f"wrote {out / 'bench.json'}")
    return 0


COLUMNS = (
    ("posterior", 28),
    ("guide", 12),
    ("package ELBO", 20),
    ("plain Pyro ELBO", 20),
    ("ok", 4),
    ("max|err| pkg", 24),
    ("plain", 22),
    ("ok", 4),
    ("sd ratio pkg", 14),
    ("plain", 12),
    ("s pkg (cpu)", 13),
    ("plain", 12),
    ("start", 8),
)


def _elbo(part: dict | None) -> str:
    if not part or part.get("error"):
        return "failed"
    if part.get("elbo") is None:
        return "not finite"
    return f"{part['elbo']:.2f} ± {part['elbo_se']:.2g}"


def _acc(part: dict | None, key: str) -> str:
    a = (part or {}).get("accuracy")
    if not a:
        return "—"
    if key == "error":
        lo, hi = a.get("max_mean_error_range", [a["max_mean_error"]] * 2)
        spread = f" ({lo:.3f}-{hi:.3f})" if hi > lo else ""
        return f"{a['max_mean_error']:.3f}{spread}"
    lo, hi = a["sd_ratio"]
    return f"{lo:.2f}-{hi:.2f}"


def _ok(value: bool | None) -> str:
    return "—" if value is None else "yes" if value else "NO"


def print_table(r: dict) -> None:
    """The comparison as a fixed-width table, then failures and violations in words."""
    s = r["settings"]
    print(
        f"package fit (fit_svi defaults) vs plain Pyro (autoguide, default init, ClippedAdam lr "
        f"{s['pyro_lr']:g}): {s['steps']} steps x {s['particles']} particles; final ELBO from "
        f"{s['elbo_draws']:,} draws, moments from {s['moment_draws']:,}; means over "
        f"{s['seeds']} seed(s) per way (max|err|: mean (range))"
    )
    print(
        "".join(
            f"{name:>{width}}" if i else f"{name:<{width}}"
            for i, (name, width) in enumerate(COLUMNS)
        )
    )
    for row in r["posteriors"]:
        pkg, plain = row.get("package") or {}, row.get("plain_pyro") or {}

        def sec(part):
            if part.get("seconds") is None:
                return "—"
            return f"{part['seconds']:.1f} ({part['cpu_seconds']:.1f})"

        cells = [
            row["posterior"],
            row["guide"],
            _elbo(pkg),
            _elbo(plain),
            _ok(row["elbo_not_worse"]),
            _acc(pkg, "error"),
            _acc(plain, "error"),
            _ok(row["mean_error_not_worse"]),
            _acc(pkg, "ratio"),
            _acc(plain, "ratio"),
            sec(pkg),
            sec(plain),
            pkg.get("start") or "—",
        ]
        print(
            "".join(
                f"{cell:>{width}}" if i else f"{cell:<{width}}"
                for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
            )
        )
    rules = r["rules"]
    print(f"ok: {rules['elbo']}; {rules['mean_error']}")
    for row in r["posteriors"]:
        for part in ("package", "plain_pyro"):
            if (row.get(part) or {}).get("error"):
                print(f"{row['posterior']}: {part} failed: {row[part]['error']}")
        for run in (row.get("package") or {}).get("runs", []):
            restart = run.get("restart")
            if restart:
                if restart["collapsed"]:
                    why = f"{', '.join(restart['collapsed'])} collapsed"
                elif restart["start_gain"] is not None:
                    why = (
                        f"the fit from the MAP start rose {restart['start_gain'][0]:.3g} nats "
                        "above its start's ELBO"
                    )
                else:
                    why = "the fit from the MAP start did not converge"
                print(
                    f"{row['posterior']}, seed {run['seed']}: the package refitted from Pyro's "
                    f"start ({why}) and kept the {restart['kept']} fit"
                )
    worse = [row["posterior"] for row in r["posteriors"] if row["never_worse"] is False]
    print(f"never worse than plain Pyro: {'VIOLATED by ' + ', '.join(worse) if worse else 'held'}")
    for line in r["skipped"]:
        print(f"skipped {line}")
