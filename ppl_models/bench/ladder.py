"""Benchmark the escalation ladder: ``fit --auto`` against its NUTS rung alone and NumPyro.

For each shipped posteriordb script (``runs/eight_schools_*.py``, ``runs/kidiq_kidscore_momiq.py``,
``runs/sblri_blr.py``) and Neal's funnel (``runs/neals_funnel.py``, exact reference draws), on
the same machine, one after the other:

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

Reported: wall and process CPU seconds of each; the ratio (a)/(c) (targets: at most 0.3 where a
variational rung certifies, at most 1.5 where only NUTS does) and (c)/(d), the NUTS rung's time
as a ratio to NumPyro's. On a machine shared with other work the wall clock stretches; the CPU
seconds of these single-threaded runs are close to their wall time on an idle machine.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .posteriors import DEFAULT_SCRIPTS

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
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", help="comma-separated subset (default: all five)")
    parser.add_argument("--scripts", type=Path, default=DEFAULT_SCRIPTS, help="model scripts")
    parser.add_argument("--budget", type=float, default=900.0, help="--auto's budget (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-numpyro", action="store_true", help="leave NumPyro out")
    parser.add_argument("--no-self", action="store_true", help="leave the no-reference climb out")
    parser.add_argument("--out", type=Path, default=Path("bench-ladder"), help="bench.json folder")


# ----------------------------------------------------------------------------- errors


def errors(values: dict, reference) -> dict:
    """The largest |standardised mean error| and |sd ratio - 1|, against the reference's
    draws, over every element the reference has, with the element of each; ``values`` maps
    sites to draws ``(N, *shape)``."""
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
    for r in rows:
        if r["name"] not in ref:
            continue
        d = ref[r["name"]].ravel()
        e = abs(r["mean"] - d.mean()) / d.std()
        q = abs(r["sd"] / d.std() - 1)
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
    }


# ----------------------------------------------------------------------------- the runs


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_auto(script, data, reference, *, budget: float, seed: int) -> dict:
    """(a)/(b): the ladder with ``reference`` (None: self-certification)."""
    from ..vi.ladder import fit_auto
    from ..vi.settings import LadderSettings

    ladder, wall, cpu = _timed(
        lambda: fit_auto(
            script.model, data, reference=reference, ladder=LadderSettings(budget=budget), seed=seed
        )
    )
    d = ladder.diagnosis
    out = {
        "seconds": wall,
        "cpu_seconds": cpu,
        "stopped": ladder.stopped,
        "verdict": ladder.verdict,
        "answer": None if ladder.answer is None else ladder.answer.rung,
        "answer_method": None if ladder.closest is None else ladder.closest.method,
        "rungs": [r.record() for r in ladder.rungs],
    }
    if d is not None and reference is not None:
        out["errors"] = row_errors(d.summary["parameters"], reference)
    return out


def run_nuts_alone(script, data, reference, guide: str, *, seed: int) -> dict:
    """(c): the requested guide, then NeuTra NUTS from it, on the model as written."""
    import numpy as np

    from ..vi.fitting import fit_svi
    from ..vi.neutra import run_nuts

    def both():
        fit = fit_svi(script.model, guide, data, seed=seed)
        return fit, run_nuts(fit, seed=seed)

    (fit, draws), wall, cpu = _timed(both)
    values = {k: np.asarray(v).reshape(-1, *v.shape[2:]) for k, v in draws.values.items()}
    checks = {k: v for k, v in draws.checks.items() if k != "rules"}
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "fit_seconds": fit.seconds,
        "nuts_seconds": draws.seconds,
        "certified": bool(checks.get("passed")),
        "checks": checks,
        "errors": errors(values, reference),
    }


# ----------------------------------------------------------------------------- NumPyro twins


def numpyro_twins():
    """The five models written again for NumPyro (same priors, likelihoods and site names)."""
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

    return {
        "eight_schools_centered": eight_schools_centered,
        "eight_schools_noncentered": eight_schools_noncentered,
        "kidiq_kidscore_momiq": kidiq_kidscore_momiq,
        "sblri_blr": sblri_blr,
        "neals_funnel": neals_funnel,
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
    args = {
        k: (jax.numpy.asarray(v.numpy()) if hasattr(v, "numpy") else v) for k, v in data.items()
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


def _select(names: str | None):
    if not names:
        return MODELS
    known = {m.name: m for m in MODELS}
    wanted = [n.strip().removesuffix(".py") for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise ValueError(f"--models must name some of {', '.join(known)}; got {names!r}")
    return tuple(known[n] for n in wanted)


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
    out = make_out_dir(args.out)
    torch.set_num_threads(1)  # the fits use one thread at these sizes; so do the samplers
    results = []
    for m in _select(args.models):
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
        print(f"{m.name}: --auto with the reference ...", file=sys.stderr, flush=True)
        entry["auto"] = run_auto(script, data, reference, budget=args.budget, seed=args.seed)
        if not args.no_self:
            print(f"{m.name}: --auto without a reference ...", file=sys.stderr, flush=True)
            entry["auto_self"] = run_auto(script, data, None, budget=args.budget, seed=args.seed)
        print(f"{m.name}: NUTS rung alone ...", file=sys.stderr, flush=True)
        entry["nuts_rung"] = run_nuts_alone(script, data, reference, guide, seed=args.seed)
        if not args.no_numpyro:
            print(f"{m.name}: NumPyro ...", file=sys.stderr, flush=True)
            try:
                entry["numpyro"] = run_numpyro(m.name, data, reference, seed=args.seed)
            except ImportError as err:
                entry["numpyro"] = {"error": f"NumPyro is not installed ({err})"}
        auto, nuts = entry["auto"], entry["nuts_rung"]
        entry["auto_over_nuts"] = auto["seconds"] / nuts["seconds"]
        entry["auto_over_nuts_cpu"] = auto["cpu_seconds"] / nuts["cpu_seconds"]
        vi = auto["answer"] not in (None, "nuts")
        entry["target"] = AUTO_VI_TARGET if vi else AUTO_NUTS_TARGET
        entry["meets_target"] = entry["auto_over_nuts"] <= entry["target"]
        numpyro = entry.get("numpyro") or {}
        if numpyro.get("seconds"):
            entry["nuts_over_numpyro"] = nuts["nuts_seconds"] / numpyro["seconds"]
            entry["nuts_over_numpyro_cpu"] = nuts["cpu_seconds"] / numpyro["cpu_seconds"]
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


def _line(e: dict) -> str:
    a, n = e["auto"], e["nuts_rung"]
    err = a.get("errors") or {}
    return (
        f"{e['model']}: auto {a['seconds']:.1f} s ({a['answer'] or 'none'}, {a['verdict']}, "
        f"mean err {_fmt(err.get('max_mean_error_sd'), 3)} sd, sd err "
        f"{_fmt(err.get('max_sd_error'), 3)}); NUTS rung {n['seconds']:.1f} s "
        f"({'certified' if n['certified'] else 'not certified'}); auto/NUTS "
        f"{e['auto_over_nuts']:.2f} (target {e['target']})"
    )


def _table(r: dict) -> str:
    head = (
        f"{'model':27s} {'auto s':>7s} {'answer':>8s} {'mean err':>9s} {'sd err':>7s} "
        f"{'self s':>7s} {'self ans':>9s} {'NUTS s':>7s} {'cert':>5s} {'auto/NUTS':>9s} "
        f"{'NumPyro s':>9s} {'NUTS/NP':>8s}"
    )
    lines = [head]
    for e in r["models"]:
        a, n = e["auto"], e["nuts_rung"]
        s = e.get("auto_self") or {}
        np_ = e.get("numpyro") or {}
        err = a.get("errors") or {}
        lines.append(
            f"{e['model']:27s} {a['seconds']:7.1f} {a['answer'] or '—':>8s} "
            f"{_fmt(err.get('max_mean_error_sd'), 3):>9s} {_fmt(err.get('max_sd_error'), 3):>7s} "
            f"{_fmt(s.get('seconds')):>7s} {s.get('answer') or '—':>9s} {n['seconds']:7.1f} "
            f"{'yes' if n['certified'] else 'no':>5s} {e['auto_over_nuts']:9.2f} "
            f"{_fmt(np_.get('seconds')):>9s} {_fmt(e.get('nuts_over_numpyro'), 2):>8s}"
        )
    return "\n".join(lines)
