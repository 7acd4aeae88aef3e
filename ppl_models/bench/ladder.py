"""Benchmark the escalation ladder: ``fit --auto`` against its NUTS rung alone and NumPyro.

For each shipped posteriordb script (``runs/eight_schools_*.py``, ``runs/kidiq_kidscore_momiq.py``,
``runs/sblri_blr.py``), Neal's funnel (``runs/neals_funnel.py``) and Gull's lighthouses
(``runs/lighthouses.py``: Cauchy data, polynomial tails, a posterior only NUTS certifies), the
last two with exact reference draws, on the same machine, one after the other, after one
untimed climb of the first model (the first run in a process pays imports and first calls, about
1.5 s here, that the runs after it do not):

(a) ``auto``: :func:`ppl_models.fit_auto` with the posterior's reference draws, so that each
    rung's verdict compares with them (the climb, not the report: writing the report takes the
    same few seconds whichever rung answers); its answer's largest standardised mean error and
    sd ratio against the reference;
(b) ``auto, no reference``: the same climb judged by the verdict's self-certification alone
    (``--no-self`` leaves it out);
(c) ``NUTS rung alone``: the requested guide fitted and NeuTra NUTS run from it on the model as
    written (:func:`ppl_models.vi.neutra.run_nuts`, the ladder's default settings), its checks
    and its errors against the reference;
(d) ``NumPyro``: NumPyro's NUTS (4 chains of 1,000 warm-up and 1,000 kept draws, its defaults,
    float64) on a twin of the model written here, best of its sequential and vectorized chain
    methods, compile time included; ``--no-numpyro`` leaves it out (NumPyro is a benchmark
    peer, never a dependency of the package).

Reported: wall and process CPU seconds of each; each climb's answer (its rung and verdict) and
its largest errors against the reference draws; the ratios (a)/(c) and (b)/(c) of CPU seconds
(targets: at most 0.3 where a variational rung answers, at most 1.5 where NUTS does or nothing is
certified) and (c)/(d), the NUTS rung's sampling time over NumPyro's. The targets are judged on
CPU seconds: on a machine shared with other work the wall clock stretches, while the CPU time of
these single-threaded runs is close to their wall time on an idle machine. ``--repeats N`` runs
(a), (b) and (c) N times in turns and keeps each one's least CPU time (:func:`least_cpu`), as
contention on a shared machine (caches, memory bandwidth) still adds to CPU time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .posteriors import DEFAULT_SCRIPTS, select

AUTO_VI_TARGET = 0.3  # --auto over the NUTS rung alone, where a variational rung certifies
AUTO_NUTS_TARGET = 1.5  # ... where only NUTS certifies


@dataclass(frozen=True)
class LadderModel:
    """A shipped script, its reference (``posteriordb:NAME`` or a path under ``runs/``)."""

    name: str
    reference: str


MODELS = (
    LadderModel("eight_schools_centered", "posteriordb:eight_schools-eight_schools_centered"),
    LadderModel("eight_schools_noncentered", "posteriordb:eight_schools-eight_schools_noncentered"),
    LadderModel("kidiq_kidscore_momiq", "posteriordb:kidiq-kidscore_momiq"),
    LadderModel("sblri_blr", "posteriordb:sblri-blr"),
    LadderModel("neals_funnel", "references/neals_funnel.json.zip"),
    LadderModel("lighthouses", "references/lighthouses.json.zip"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ppl-models bench ladder``; sizes left out are ``fit --auto``'s."""
    parser.add_argument("--models", help="comma-separated subset (default: all six)")
    parser.add_argument("--scripts", type=Path, default=DEFAULT_SCRIPTS, help="model scripts")
    parser.add_argument("--budget", type=float, default=900.0, help="--auto's budget (s)")
    parser.add_argument("--steps", type=int, help="SVI steps of every fit (default fit's)")
    parser.add_argument("--draws", type=int, help="most guide draws of each rung's diagnosis")
    parser.add_argument("--nuts-warmup", type=int, help="the NUTS rung's warm-up iterations")
    parser.add_argument(
        "--nuts-draws",
        type=int,
        help="the NUTS rung's first draws per chain (up to 16 times as many while its checks fail)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the climbs and the NUTS rung alone this many times, in turns, and keep each "
        "one's least CPU time (other work on a shared machine only adds to it)",
    )
    parser.add_argument("--no-numpyro", action="store_true", help="leave NumPyro out")
    parser.add_argument("--no-self", action="store_true", help="leave the no-reference climb out")
    parser.add_argument("--out", type=Path, default=Path("bench-ladder"), help="bench.json folder")


# ----------------------------------------------------------------------------- errors


def errors(values: dict, reference) -> dict:
    r"""The largest :math:`|\bar m - \bar m_{\rm ref}| / s_{\rm ref}` and
    :math:`|s / s_{\rm ref} - 1|` over the elements the reference draws have, with the element
    of each and both per element (``elements``); ``values``: site -> draws ``(N, *shape)``."""
    import numpy as np

    from ..vi.compare import flatten_sites

    rows = [
        {"name": k, "mean": float(np.mean(v)), "sd": float(np.std(v))}
        for k, v in flatten_sites(values).items()
    ]
    return row_errors(rows, reference)


def row_errors(rows: list[dict], reference) -> dict:
    """:func:`errors` from an answer's summary rows (its means and sds)."""
    from ..vi.compare import flatten_sites

    ref = flatten_sites(reference.draws, lead=2)
    worst_mean, worst_sd = (None, 0.0), (None, 0.0)
    each = {}
    for r in rows:
        if r["name"] not in ref:
            continue
        d = ref[r["name"]].ravel()
        e = float(abs(r["mean"] - d.mean()) / d.std())
        q = float(abs(r["sd"] / d.std() - 1))
        each[r["name"]] = [e, q]
        if e >= worst_mean[1]:
            worst_mean = (r["name"], e)
        if q >= worst_sd[1]:
            worst_sd = (r["name"], q)
    return {
        "max_mean_error_sd": worst_mean[1],
        "max_mean_error_element": worst_mean[0],
        "max_sd_error": worst_sd[1],
        "max_sd_error_element": worst_sd[0],
        "within_0.1sd_and_10pct": worst_mean[1] <= 0.1 and worst_sd[1] <= 0.1,
        "elements": each,
    }


# ----------------------------------------------------------------------------- the runs


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def ladder_settings(args: argparse.Namespace):
    """The climb's :class:`~ppl_models.vi.settings.LadderSettings` and the fits'
    :class:`~ppl_models.vi.settings.FitSettings` from the command's options (the defaults of
    ``fit --auto`` where an option is not given)."""
    import dataclasses

    from ..vi.settings import FitSettings, LadderSettings, NutsLadderSettings

    nuts = NutsLadderSettings()
    if args.nuts_warmup is not None:
        nuts = dataclasses.replace(nuts, warmup=args.nuts_warmup)
    if args.nuts_draws is not None:
        nuts = dataclasses.replace(nuts, draws=args.nuts_draws, max_draws=16 * args.nuts_draws)
    ladder = LadderSettings(budget=args.budget, nuts=nuts)
    if args.draws is not None:
        ladder = dataclasses.replace(ladder, draws=args.draws)
    fit = FitSettings(seed=args.seed)
    if args.steps is not None:
        fit = fit.replace(steps=args.steps)
    return ladder, fit


def run_auto(script, data, reference, check, ladder, fit) -> dict:
    """(a)/(b): the ladder judged with ``reference`` (None: self-certification); its answer's
    errors against ``check``, the reference draws, either way."""
    from ..vi.ladder import fit_auto

    climb, wall, cpu = _timed(
        lambda: fit_auto(script.model, data, reference=reference, ladder=ladder, settings=fit)
    )
    d = climb.diagnosis
    out = {
        "seconds": wall,
        "cpu_seconds": cpu,
        "stopped": climb.stopped,
        "verdict": climb.verdict,
        "answer": None if climb.answer is None else climb.answer.rung,
        "answer_method": None if climb.closest is None else climb.closest.method,
        "rungs": [r.record() for r in climb.rungs],
    }
    if d is not None:
        out["errors"] = row_errors(d.summary["parameters"], check)
    return out


def run_nuts_alone(script, data, reference, guide: str, ladder, settings) -> dict:
    """(c): the requested guide, then NeuTra NUTS from it, on the model as written."""
    import numpy as np

    from ..vi.fitting import fit_svi
    from ..vi.neutra import run_nuts

    fit, fit_wall, fit_cpu = _timed(lambda: fit_svi(script.model, guide, data, settings))
    draws, nuts_wall, nuts_cpu = _timed(lambda: run_nuts(fit, ladder.nuts, seed=settings.seed))
    values = {k: np.asarray(v).reshape(-1, *v.shape[2:]) for k, v in draws.values.items()}
    checks = {k: v for k, v in draws.checks.items() if k != "rules"}
    return {
        "seconds": fit_wall + nuts_wall,
        "cpu_seconds": fit_cpu + nuts_cpu,
        "fit_seconds": fit_wall,
        "fit_cpu_seconds": fit_cpu,
        "nuts_seconds": nuts_wall,
        "nuts_cpu_seconds": nuts_cpu,
        "certified": bool(checks.get("passed")),
        "checks": checks,
        "errors": errors(values, reference),
    }


# ----------------------------------------------------------------------------- NumPyro twins


def numpyro_twins():
    """The six models written again for NumPyro (same priors, likelihoods and site names)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd

    def eight_schools_centered(J, y, sigma):
        mu = numpyro.sample("mu", nd.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", nd.HalfCauchy(5.0))
        with numpyro.plate("schools", J):
            theta = numpyro.sample("theta", nd.Normal(mu, tau))
            numpyro.sample("y", nd.Normal(theta, sigma), obs=y)

    def eight_schools_noncentered(J, y, sigma):
        mu = numpyro.sample("mu", nd.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", nd.HalfCauchy(5.0))
        with numpyro.plate("schools", J):
            theta_trans = numpyro.sample("theta_trans", nd.Normal(0.0, 1.0))
            theta = numpyro.deterministic("theta", mu + tau * theta_trans)
            numpyro.sample("y", nd.Normal(theta, sigma), obs=y)

    def kidiq_kidscore_momiq(N, kid_score, mom_iq, **other):
        beta = numpyro.sample("beta", nd.ImproperUniform(nd.constraints.real, (), (2,)))
        sigma = numpyro.sample("sigma", nd.HalfCauchy(2.5))
        numpyro.sample("kid_score", nd.Normal(beta[0] + beta[1] * mom_iq, sigma), obs=kid_score)

    def sblri_blr(N, D, X, y):
        beta = numpyro.sample("beta", nd.Normal(0.0, 10.0).expand([D]).to_event(1))
        sigma = numpyro.sample("sigma", nd.HalfNormal(10.0))
        numpyro.sample("y", nd.Normal(X @ beta, sigma), obs=y)

    def neals_funnel(dim):
        y = numpyro.sample("y", nd.Normal(0.0, 3.0))
        with numpyro.plate("dims", dim):
            numpyro.sample("x", nd.Normal(0.0, jnp.exp(y / 2)))

    def lighthouses(x):
        with numpyro.plate("lighthouses", x.shape[-1]):
            alpha = numpyro.sample("alpha", nd.Normal(0.0, 10.0))
            with numpyro.plate("flashes", x.shape[-2], dim=-2):
                numpyro.sample("x", nd.Cauchy(alpha, 1.0), obs=x)

    return {
        "eight_schools_centered": eight_schools_centered,
        "eight_schools_noncentered": eight_schools_noncentered,
        "kidiq_kidscore_momiq": kidiq_kidscore_momiq,
        "sblri_blr": sblri_blr,
        "neals_funnel": neals_funnel,
        "lighthouses": lighthouses,
    }


def run_numpyro(name: str, data: dict, reference, *, seed: int) -> dict:
    """(d): NumPyro's NUTS with its defaults, 4 chains, best of two chain methods."""
    import jax
    import numpy as np
    from numpyro.infer import MCMC, NUTS

    from .. import diagnostics
    from ..vi.compare import flatten_sites

    jax.config.update("jax_enable_x64", True)
    model = numpyro_twins()[name]
    args = {  # the scripts' data as their data() gives it: numbers and (nested) lists
        k: v if isinstance(v, int | float) else jax.numpy.asarray(np.asarray(v, dtype=np.float64))
        for k, v in data.items()
    }
    best = None
    for method in ("sequential", "vectorized"):

        def sample(method=method):
            mcmc = MCMC(
                NUTS(model),
                num_warmup=1000,
                num_samples=1000,
                num_chains=4,
                chain_method=method,
                progress_bar=False,
            )
            mcmc.run(jax.random.PRNGKey(seed), extra_fields=("diverging",), **args)
            return mcmc

        mcmc, wall, cpu = _timed(sample)
        samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        elements = flatten_sites(samples, lead=2)
        summary = diagnostics.summarize_draws(elements)
        finite = [s for s in summary.values() if math.isfinite(s["r_hat"])]
        result = {
            "chain_method": method,
            "seconds": wall,
            "cpu_seconds": cpu,
            "divergences": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()),
            "max_r_hat": max(s["r_hat"] for s in finite),
            "min_ess_bulk": min(s["ess_bulk"] for s in finite),
            "min_ess_tail": min(s["ess_tail"] for s in finite),
            "errors": errors(
                {k: v.reshape(-1, *v.shape[2:]) for k, v in samples.items()}, reference
            ),
        }
        if best is None or result["seconds"] < best["seconds"]:
            best = result | {"other": best}
    return best


# ----------------------------------------------------------------------------- the command


def least_cpu(runs: list[dict]) -> dict:
    """The run of least CPU time among repeats of one measurement, with every repeat's CPU
    seconds beside it: on a shared machine other work only ever adds time, so the least of
    several turns is the closest to the cost itself (``timeit``'s rule)."""
    best = min(runs, key=lambda r: r["cpu_seconds"])
    return best | {"cpu_seconds_repeats": [r["cpu_seconds"] for r in runs]}


def _ratios(auto: dict, nuts: dict) -> None:
    """A climb's time over the NUTS rung alone (wall and CPU) and its target: 0.3 where a
    variational rung answered, 1.5 where NUTS did (or nothing was certified)."""
    auto["over_nuts"] = auto["seconds"] / nuts["seconds"]
    auto["over_nuts_cpu"] = auto["cpu_seconds"] / nuts["cpu_seconds"]
    vi = auto["verdict"] == "trustworthy" and auto["answer"] != "nuts"
    auto["target"] = AUTO_VI_TARGET if vi else AUTO_NUTS_TARGET
    auto["meets_target"] = auto["over_nuts_cpu"] <= auto["target"]


def main(args: argparse.Namespace) -> int:
    """Run the four measurements on every model, print the table, write ``bench.json``."""
    import torch

    from ..runs import atomic_write_json, environment
    from ..svi import default_dtype
    from ..vi.references import load_reference
    from ..vi.script import load_script
    from . import make_out_dir

    if not args.budget > 0:
        raise ValueError(f"--budget must be positive, got {args.budget}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    ladder, fit = ladder_settings(args)
    out = make_out_dir(args.out)
    torch.set_num_threads(1)  # the fits use one thread at these sizes; so do the samplers
    results = []
    warm = False
    for m in select(args.models, MODELS):
        path = Path(args.scripts) / f"{m.name}.py"
        with default_dtype(torch.float64):  # as fit loads a script on the CPU
            script = load_script(path)
            data = script.load_data()
        ref_path = m.reference
        if not ref_path.startswith("posteriordb:"):
            ref_path = str(Path(args.scripts) / ref_path)
        reference = load_reference(ref_path)
        guide = "auto-normal"  # --auto's default first rung
        entry = {"model": m.name, "reference": m.reference, "guide": guide}
        if not warm:  # the first climb pays imports and first calls that later runs do not
            print(f"{m.name}: --auto, untimed warm-up ...", file=sys.stderr, flush=True)
            run_auto(script, data, reference, reference, ladder, fit)
            warm = True
        turns: dict[str, list[dict]] = {"auto": [], "auto_self": [], "nuts_rung": []}
        for turn in range(args.repeats):
            of = f" ({turn + 1} of {args.repeats})" if args.repeats > 1 else ""
            print(f"{m.name}: --auto with the reference{of} ...", file=sys.stderr, flush=True)
            turns["auto"].append(run_auto(script, data, reference, reference, ladder, fit))
            if not args.no_self:
                print(f"{m.name}: --auto without a reference{of} ...", file=sys.stderr, flush=True)
                turns["auto_self"].append(run_auto(script, data, None, reference, ladder, fit))
            print(f"{m.name}: NUTS rung alone{of} ...", file=sys.stderr, flush=True)
            turns["nuts_rung"].append(run_nuts_alone(script, data, reference, guide, ladder, fit))
        entry |= {key: least_cpu(runs) for key, runs in turns.items() if runs}
        if not args.no_numpyro:
            print(f"{m.name}: NumPyro ...", file=sys.stderr, flush=True)
            try:
                entry["numpyro"] = run_numpyro(m.name, data, reference, seed=args.seed)
            except ImportError as err:
                entry["numpyro"] = {"error": f"NumPyro is not installed ({err})"}
        nuts = entry["nuts_rung"]
        for key in ("auto", "auto_self"):
            if key in entry:
                _ratios(entry[key], nuts)
        numpyro = entry.get("numpyro") or {}
        if numpyro.get("seconds"):
            entry["nuts_over_numpyro"] = nuts["nuts_seconds"] / numpyro["seconds"]
            entry["nuts_over_numpyro_cpu"] = nuts["nuts_cpu_seconds"] / numpyro["cpu_seconds"]
        results.append(entry)
        print(_line(entry), file=sys.stderr, flush=True)
    env = environment(seed=args.seed, device="cpu")
    result = {
        "benchmark": "ladder",
        "budget": args.budget,
        "targets": {"auto_over_nuts_vi": AUTO_VI_TARGET, "auto_over_nuts_nuts": AUTO_NUTS_TARGET},
        "models": results,
        "cpu_threads": torch.get_num_threads(),
        **{key: env[key] for key in ("device", "device_name", "versions", "python", "created")},
    }
    try:
        import jax
        import numpyro

        result["versions"] = dict(result.get("versions") or {}) | {
            "numpyro": numpyro.__version__,
            "jax": jax.__version__,
        }
    except ImportError:
        pass
    atomic_write_json(out / "bench.json", result)
    print(_table(result))
    print(f"wrote {out / 'bench.json'}")
    return 0


def _fmt(x, digits=1):
    return "—" if x is None else f"{x:.{digits}f}"


CLIMBS = (("auto", "with ref"), ("auto_self", "no ref"))


def _line(e: dict) -> str:
    n = e["nuts_rung"]
    parts = []
    for key, judged in CLIMBS:
        a = e.get(key)
        if a is None:
            continue
        err = a.get("errors") or {}
        parts.append(
            f"auto ({judged}) {a['cpu_seconds']:.1f} CPU s, {a['answer'] or 'none'} "
            f"{a['verdict']}, mean err {_fmt(err.get('max_mean_error_sd'), 3)} sd, sd err "
            f"{_fmt(err.get('max_sd_error'), 3)}, over NUTS {a['over_nuts_cpu']:.2f} "
            f"(target {a['target']})"
        )
    cert = "certified" if n["certified"] else "not certified"
    parts.append(f"NUTS rung {n['cpu_seconds']:.1f} CPU s ({cert})")
    return f"{e['model']}: " + "; ".join(parts)


def _errs(err: dict) -> str:
    return f"{_fmt(err.get('max_mean_error_sd'), 3):>8s} {_fmt(err.get('max_sd_error'), 3):>6s}"


def _table(r: dict) -> str:
    """One row per climb: its CPU and wall seconds, answer, verdict, errors against the
    reference draws, and its CPU time over the NUTS rung's, then the NUTS rung and NumPyro."""
    head = (
        f"{'model':27s} {'run':>9s} {'CPU s':>6s} {'wall s':>6s} {'answer':>7s} "
        f"{'verdict':>15s} {'mean err':>8s} {'sd err':>6s} {'/NUTS':>6s} {'target':>6s}"
    )
    lines = [head]
    for e in r["models"]:
        n, np_ = e["nuts_rung"], e.get("numpyro") or {}
        for key, judged in CLIMBS:
            a = e.get(key)
            if a is None:
                continue
            err = a.get("errors") or {}
            lines.append(
                f"{e['model']:27s} {judged:>9s} {a['cpu_seconds']:6.1f} {a['seconds']:6.1f} "
                f"{a['answer'] or '—':>7s} {a['verdict'] or '—':>15s} "
                f"{_errs(err)} {a['over_nuts_cpu']:6.2f} {a['target']:6.1f}"
            )
        err = n.get("errors") or {}
        lines.append(
            f"{e['model']:27s} {'NUTS rung':>9s} {n['cpu_seconds']:6.1f} {n['seconds']:6.1f} "
            f"{'nuts':>7s} {'passed' if n['certified'] else 'failed':>15s} "
            f"{_errs(err)}"
        )
        if np_.get("seconds"):
            err = np_.get("errors") or {}
            lines.append(
                f"{e['model']:27s} {'NumPyro':>9s} {np_['cpu_seconds']:6.1f} "
                f"{np_['seconds']:6.1f} {np_['chain_method'][:7]:>7s} "
                f"{'R-hat ' + format(np_['max_r_hat'], '.3f'):>15s} "
                f"{_errs(err)}  NUTS rung's sampling / NumPyro: "
                f"{_fmt(e.get('nuts_over_numpyro'), 2)}"
            )
    return "\n".join(lines)
