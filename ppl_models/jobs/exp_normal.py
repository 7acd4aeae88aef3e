"""Fit the exponential-normal model by SVI and report it against the grid and exact posteriors.

z ~ Exponential(rate), x_i | z ~ Normal(z, 1), guide q(z) from a chosen family (the notebook's
Exponential(theta) by default). The run writes the run-directory contract of
:mod:`ppl_models.runs`; the report is rebuilt from the saved files alone.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import command_line_overrides, load_command_line_config, require
from ..report import Figure, Report, Table, write_report
from ..runs import Run, atomic_save, atomic_write_json, read_json, read_metrics


class _Lazy:
    """A module imported on first attribute access: building the command line (``--help``)
    then imports neither torch nor pyro. (A stop-gap until this module imports them inside
    its functions.)"""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


def _svi(name: str):
    def call(*args, **kwargs):
        return getattr(importlib.import_module("ppl_models.svi"), name)(*args, **kwargs)

    # a re-export of svi's function, documented there
    call.__module__, call.__name__, call.__qualname__ = "ppl_models.svi", name, name
    return call


def _local_params():
    """:func:`ppl_models.svi.local_params`, looked up when the decorated function runs."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return _svi("local_params")()(func)(*args, **kwargs)

        return wrapper

    return decorate


np = _Lazy("numpy")
torch = _Lazy("torch")
diagnostics = _Lazy("ppl_models.diagnostics")
exp_normal = _Lazy("ppl_models.exp_normal")
plots = _Lazy("ppl_models.plots")
make_elbo, make_objective, resolve_device, seed_everything, train = map(
    _svi, ("make_elbo", "make_objective", "resolve_device", "seed_everything", "train")
)
ELBO_KINDS = ("trace", "meanfield")  # ppl_models.svi.ELBO_KINDS; tests/test_cli.py checks
GUIDE_FAMILIES = ("exponential", "gamma", "lognormal", "truncated-normal")  # exp_normal's, too

MODEL = "exp-normal"
DEFAULT_CONFIG = Path("runs/exp_normal.toml")
IW_KS = (1, 10, 100, 1000)
IW_DRAWS = 200_000
TOLERANCE = 0.005  # the 0.5% on theta
# Adam's second-moment memory is kept short (0.9, not 0.999): far from theta* the gradient is
# orders of magnitude larger than near it, and a long memory of those early gradients shrinks the
# later steps until the fit stalls short of theta* (seen with N = 200 and N = 2, rate 5).
BETAS = (0.9, 0.9)


@dataclass(frozen=True)
class ExpNormalConfig:
    """One exponential-normal run; the defaults reproduce the notebook (rate 1, N 5, seed 0)."""

    data: str | None = None
    rate: float = 1.0
    n_obs: int = 5
    seed: int = 0
    guide: str = "exponential"
    elbo: str = "trace"
    particles: int = 4096
    steps: int = 300
    lr: float = 0.1
    lr_final: float = 0.001
    average_window: float = 0.7
    device: str = "auto"
    draws: int = 4000
    grid_points: int = 4001

    def __post_init__(self):
        exp_normal.validate_rate(self.rate)
        require(self.n_obs >= 1, "n_obs", self.n_obs, "an integer >= 1")
        require(
            self.guide in exp_normal.GUIDE_FAMILIES,
            "guide",
            self.guide,
            f"one of {', '.join(exp_normal.GUIDE_FAMILIES)}",
        )
        require(self.elbo in ELBO_KINDS, "elbo", self.elbo, f"one of {', '.join(ELBO_KINDS)}")
        require(self.particles >= 1, "particles", self.particles, "an integer >= 1")
        require(self.steps >= 1, "steps", self.steps, "an integer >= 1")
        require(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a positive number")
        require(
            0 < self.lr_final <= self.lr,
            "lr_final",
            self.lr_final,
            f"a positive number no larger than lr ({self.lr})",
        )
        require(
            0 < self.average_window <= 1,
            "average_window",
            self.average_window,
            "a fraction in (0, 1]",
        )
        require(self.draws >= 100, "draws", self.draws, "an integer >= 100")
        require(self.grid_points >= 101, "grid_points", self.grid_points, "an integer >= 101")


# ----------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class Fit:
    """A finished SVI fit: averaged guide parameters, per-step traces and elapsed seconds."""

    params: dict[str, float]
    losses: np.ndarray
    traces: dict[str, np.ndarray]
    raw_traces: dict[str, np.ndarray]
    elapsed: np.ndarray
    seconds: float


@_local_params()
def fit(
    x: torch.Tensor, config: ExpNormalConfig, run: Run | None = None, progress: bool = True
) -> Fit:
    r"""Fit the guide by SVI: Adam on :math:`-\mathrm{ELBO}`, step size decaying geometrically
    from ``lr`` to ``lr_final``, and suffix averaging of the iterates.

    After step :math:`t` the reported parameter is the mean of the iterates
    :math:`\theta_s` for :math:`(1 - w)\,t < s \le t`, :math:`w` = ``average_window``: the
    average cancels the gradient noise left in the last iterate, and, unlike averaging from a
    fixed step, it forgets the early transient as the run goes on. ``traces`` hold the reported
    parameters per step, ``raw_traces`` the iterates.
    """
    guide = exp_normal.make_guide(config.guide, x, config.rate)
    loss_fn = make_objective(exp_normal.model, guide, make_elbo(config.elbo, config.particles))
    loss_fn.to(x.device)
    loss_fn(x, config.rate)  # builds the parameters before the optimizer sees them
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=config.lr, betas=BETAS)
    decay = (config.lr_final / config.lr) ** (1.0 / config.steps)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, decay)
    names = list(guide.params())
    raw = {name: np.empty(config.steps) for name in names}
    prefix = {name: np.zeros(config.steps + 1) for name in names}  # prefix sums of raw
    traces = {name: np.empty(config.steps) for name in names}
    elapsed = np.empty(config.steps)
    start = time.perf_counter()

    def record(step: int, loss: float) -> bool:
        current = guide.params()
        first = int((step + 1) * (1 - config.average_window))
        for name in names:
            raw[name][step] = current[name]
            prefix[name][step + 1] = prefix[name][step] + current[name]
            traces[name][step] = (prefix[name][step + 1] - prefix[name][first]) / (step + 1 - first)
        elapsed[step] = time.perf_counter() - start
        if run is not None:
            run.log_metrics(
                step=step,
                loss=loss,
                lr=scheduler.get_last_lr()[0],
                **{name: traces[name][step] for name in names},
                **{f"{name}_iterate": current[name] for name in names},
            )
        return False

    result = train(
        loss_fn,
        optimizer,
        [(x, config.rate)] * config.steps,
        scheduler=scheduler,
        on_step=record,
        progress=progress,
        desc=f"SVI {config.guide}",
    )
    params = {name: float(traces[name][-1]) for name in names}
    return Fit(params, result.losses.numpy(), traces, raw, elapsed, result.seconds)


# ----------------------------------------------------------------------------- diagnostics


def analyse(x: np.ndarray, config: ExpNormalConfig, fitted: Fit) -> tuple[dict, object]:
    """All numbers of the report, and the InferenceData of the three posteriors."""
    rate = config.rate
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    exact = exp_normal.exact_posterior(x, rate)
    q = exp_normal.guide_distribution(config.guide, fitted.params, validate_args=False)
    grid = exp_normal.grid_posterior(x, rate, n_points=config.grid_points)

    def log_q(z: np.ndarray) -> np.ndarray:
        return q.log_prob(torch.as_tensor(z, dtype=torch.float64)).numpy()

    z_q = q.sample((config.draws,)).numpy()
    log_joint_q, log_q_q = exp_normal.log_joint(z_q, x, rate), log_q(z_q)
    draws = {
        "variational": diagnostics.inference_data(z_q, log_joint=log_joint_q, log_q=log_q_q),
        "grid": diagnostics.inference_data(grid.sample(config.draws, rng)),
        "exact": diagnostics.inference_data(exact.sample((config.draws,)).numpy()),
    }
    idata = diagnostics.merge_methods(draws)

    exact_mean, exact_sd = float(exact.mean), float(exact.variance.sqrt())
    q_lo, q_hi = (float(exact.icdf(torch.tensor(p, dtype=torch.float64))) for p in (0.03, 0.97))
    table = {}
    for method, data in draws.items():
        row = diagnostics.summary_row(data.posterior["z"].values.ravel())
        row["mean_error"] = row["mean"] - exact_mean
        row["sd_error"] = row["sd"] - exact_sd
        table[method] = row
    table["exact (closed form)"] = {"mean": exact_mean, "sd": exact_sd, "q_3%": q_lo, "q_97%": q_hi}

    log_w = log_joint_q - log_q_q
    khat = float(diagnostics.psis_khat(log_w))
    z_iw = q.sample((IW_DRAWS,)).numpy()
    log_w_iw = exp_normal.log_joint(z_iw, x, rate) - log_q(z_iw)
    iw = {str(k): diagnostics.iw_bound(log_w_iw, k) for k in IW_KS}

    theta_star = exp_normal.optimal_theta(x, rate)
    log_evidence = exp_normal.log_evidence(x, rate)
    theta_svi = fitted.params.get("theta")
    families = {}
    for family in exp_normal.GUIDE_FAMILIES:
        params = exp_normal.optimal_guide_params(family, x, rate)
        dist_f = exp_normal.guide_distribution(family, params)
        families[family] = {"params": params, "kl": exp_normal.kl_of(dist_f, x, rate)}

    z_grid = grid.points
    exact_pdf = exact.log_prob(torch.as_tensor(z_grid)).exp().numpy()
    summary = {
        "model": MODEL,
        "guide": config.guide,
        "guide_params_svi": fitted.params,
        "guide_params_optimal": families[config.guide]["params"],
        "theta_star": theta_star,
        "theta_svi": theta_svi,
        "theta_rel_error": None if theta_svi is None else abs(theta_svi - theta_star) / theta_star,
        "log_evidence_exact": log_evidence,
        "log_evidence_grid": grid.log_normalizer,
        "elbo_at_theta_star": float(exp_normal.elbo(theta_star, x, rate)),
        "elbo_at_svi": exp_normal.elbo_of(q, x, rate),
        "kl_at_theta_star": float(exp_normal.kl_to_posterior(theta_star, x, rate)),
        "kl_at_theta_star_grid": grid.kl_from(
            lambda z: (
                exp_normal.guide_distribution("exponential", {"theta": theta_star})
                .log_prob(torch.as_tensor(z))
                .numpy()
            )
        ),
        "kl_at_theta_svi": exp_normal.kl_of(q, x, rate),
        "kl_at_theta_svi_grid": grid.kl_from(log_q),
        "kl_by_family": {f: v["kl"] for f, v in families.items()},
        "guide_params_by_family": {f: v["params"] for f, v in families.items()},
        "psis_khat": khat,
        "psis_khat_threshold": diagnostics.khat_threshold(config.draws),
        "importance_ess": diagnostics.importance_ess(log_w),
        "draws": config.draws,
        "iw_bounds": {k: v[0] for k, v in iw.items()},
        "iw_bounds_se": {k: v[1] for k, v in iw.items()},
        "wasserstein1_to_exact": diagnostics.wasserstein1(q, exact),
        "ks_to_exact": diagnostics.ks_distance(q, exact),
        "grid_max_abs_pdf_error": float(np.max(np.abs(grid.pdf(z_grid) - exact_pdf))),
        "posterior_table": table,
        "fit_seconds": fitted.seconds,
        "steps": len(fitted.losses),
    }
    return summary, idata


# ----------------------------------------------------------------------------- the run


def observations(config: ExpNormalConfig) -> tuple[np.ndarray, dict]:
    """The data of the run and how it was obtained (file, or simulated as the notebook does)."""
    if config.data:
        x = exp_normal.load_observations(Path(config.data))
        return x, {"source": "file", "path": str(config.data), "count": len(x)}
    z, x = exp_normal.simulate(config.rate, config.n_obs, config.seed)
    return x, {"source": "simulated", "z_true": z, "count": len(x), "values": x.tolist()}


def execute(
    config: ExpNormalConfig, config_name: str, out: Path | None = None, progress: bool = True
) -> Run:
    """Do the whole run: data, fit, diagnostics, figures, report. Returns the finished run."""
    x, source = observations(config)
    device = resolve_device(config.device)
    with Run.create(config_name, out) as run:
        run.write_config(config)
        run.write_env(seed=config.seed, device=str(device))
        seed_everything(config.seed)
        x_t = torch.as_tensor(x, dtype=torch.float64, device=device)
        fitted = fit(x_t, config, run=run, progress=progress)
        summary, idata = analyse(x, config, fitted)
        summary["observations"] = source
        summary["device"] = str(device)
        atomic_save(run.file("posterior.nc"), lambda tmp: idata.to_netcdf(str(tmp)))
        atomic_write_json(run.file("observations.json"), {"x": x.tolist(), "rate": config.rate})
        build_report(run.path, summary)
        run.write_summary(summary)  # last: a summary with status "complete" means all is there
    return run


def rebuild_report(run_dir: Path) -> Path:
    """Regenerate figures and ``report.html`` from a finished run's files, without refitting."""
    return build_report(Path(run_dir), read_json(Path(run_dir) / "summary.json"))


def build_report(run_dir: Path, summary: dict) -> Path:
    """Draw the figures from the run's files and write ``report.html``; returns its path."""
    saved = read_json(run_dir / "observations.json")
    x, rate = np.asarray(saved["x"], dtype=np.float64), float(saved["rate"])
    idata = diagnostics.load(run_dir / "posterior.nc")
    metrics = read_metrics(run_dir)
    figures = plots.exp_normal_figures(run_dir / "figures", x, rate, summary, idata, metrics)
    report = Report(
        title=f"Exponential-normal model, {summary['guide']} guide: posterior diagnostics",
        verdict=verdict(summary),
        tables=tables(summary),
        figures=[Figure(title, path, caption) for title, path, caption in figures],
    )
    return write_report(run_dir, report)


def verdict(s: dict) -> list[str]:
    """Plain-words reading of the numbers: is the optimiser right, is the family adequate,
    and what do the importance weights say."""
    lines = []
    kl, best = s["kl_at_theta_svi"], s["kl_by_family"]
    if s["theta_svi"] is not None:
        within = s["theta_rel_error"] <= TOLERANCE
        lines.append(
            f"Optimisation: SVI found theta = {s['theta_svi']:.5g} against the closed-form "
            f"optimum theta* = {s['theta_star']:.5g}, a relative error of "
            f"{100 * s['theta_rel_error']:.2g}% ({'within' if within else 'OUTSIDE'} the 0.5% "
            "target)."
        )
    exact_row = s["posterior_table"]["exact (closed form)"]
    q_row = s["posterior_table"]["variational"]
    family_gap = best[s["guide"]]
    adequate = kl < 0.05
    lines.append(
        f"Approximation: the fitted {s['guide']} guide is {kl:.3g} nats from the exact posterior "
        f"(KL(q || p)); the best member of its family is {family_gap:.3g} nats away, so "
        f"{'almost all' if kl - family_gap < 0.1 * kl + 1e-3 else 'only part'} of the gap is the "
        f"family's, not the optimiser's. Its mean is {q_row['mean']:.4g} against the exact "
        f"{exact_row['mean']:.4g} and its sd {q_row['sd']:.4g} against {exact_row['sd']:.4g}; "
        f"Wasserstein-1 {s['wasserstein1_to_exact']:.3g}, KS {s['ks_to_exact']:.3g}. "
        + (
            "The fit can be trusted for this posterior."
            if adequate
            else "Do not use this guide's summaries as the posterior's: a family that contains the "
            f"posterior (truncated normal, {best['truncated-normal']:.2g} nats) or a closer one "
            f"(gamma {best['gamma']:.2g}, lognormal {best['lognormal']:.2g}) would."
        )
    )
    k, thr = s["psis_khat"], s["psis_khat_threshold"]
    ess_share = s["importance_ess"] / s["draws"]
    if k < 0.5:
        tail = (
            "q's tails are at least as heavy as the posterior's, so importance sampling "
            "from q is reliable"
        )
    elif k < thr:
        tail = "the weights' tail is moderately heavy: importance sampling from q converges slowly"
    else:
        tail = (
            "the weights' tail is too heavy: q misses posterior mass and importance "
            "sampling from q is not reliable"
        )
    lines.append(
        f"Importance weights: PSIS k-hat = {k:.3g} (threshold {thr:.2g}): {tail}; their "
        f"effective sample size is {s['importance_ess']:.0f} of {s['draws']} draws "
        f"({100 * ess_share:.2g}%)" + (", so many draws are needed." if ess_share < 0.1 else ".")
    )
    gap = s["log_evidence_exact"] - s["iw_bounds"]["1000"]
    error = 2 * s["iw_bounds_se"]["1000"]
    closing = (
        f"narrows the gap to {gap:.2g} nats"
        if gap > error
        else f"closes the gap to within its Monte Carlo error ({gap:.1e} ± {error:.1e} nats)"
    )
    lines.append(
        f"Evidence: log p(x) = {s['log_evidence_exact']:.6g} (grid {s['log_evidence_grid']:.6g}). "
        f"The ELBO is {s['log_evidence_exact'] - s['elbo_at_svi']:.3g} nats below it; "
        f"importance weighting with K = 1000 {closing}."
    )
    return lines


def tables(s: dict) -> list[Table]:
    """The report's tables, from ``summary.json``'s contents."""
    numbers = [
        ["theta*", s["theta_star"]],
        ["theta (SVI)", s["theta_svi"]],
        ["relative error of theta", s["theta_rel_error"]],
        ["log evidence (exact)", s["log_evidence_exact"]],
        ["log evidence (grid)", s["log_evidence_grid"]],
        ["ELBO at theta*", s["elbo_at_theta_star"]],
        ["ELBO of the fitted guide", s["elbo_at_svi"]],
        ["KL at theta* (closed form)", s["kl_at_theta_star"]],
        ["KL at theta* (grid)", s["kl_at_theta_star_grid"]],
        ["KL of the fitted guide (quadrature)", s["kl_at_theta_svi"]],
        ["KL of the fitted guide (grid)", s["kl_at_theta_svi_grid"]],
        ["PSIS k-hat", s["psis_khat"]],
        ["k-hat threshold", s["psis_khat_threshold"]],
        ["importance-sampling ESS", s["importance_ess"]],
        ["draws", s["draws"]],
        ["Wasserstein-1 to exact", s["wasserstein1_to_exact"]],
        ["Kolmogorov-Smirnov to exact", s["ks_to_exact"]],
        ["grid max |pdf error|", s["grid_max_abs_pdf_error"]],
        ["SVI steps", s["steps"]],
        ["SVI seconds", s["fit_seconds"]],
    ]
    cols = ["mean", "sd", "hdi_3%", "hdi_97%", "q_3%", "q_97%", "mean_error", "sd_error"]
    posterior = [
        [method] + [row.get(c) for c in cols] for method, row in s["posterior_table"].items()
    ]
    bounds = [
        [k, v, s["iw_bounds_se"][k], s["log_evidence_exact"] - v] for k, v in s["iw_bounds"].items()
    ]
    families = [[f, kl] for f, kl in s["kl_by_family"].items()]
    return [
        Table("Numbers", ["quantity", "value"], numbers),
        Table(
            "Posterior summaries (ArviZ) against the exact posterior",
            ["method"] + cols,
            posterior,
            note="hdi: 94% highest-density interval of the draws; q: equal-tailed "
            "quantiles of the exact posterior; errors are against the exact "
            "mean and sd.",
        ),
        Table(
            "Importance-weighted bounds on log p(x)",
            ["K", "bound", "s.e.", "gap to exact"],
            bounds,
            note="K = 1 is the ELBO; the bound rises to log p(x) as K grows (Burda et al. 2016).",
        ),
        Table(
            "What each guide family costs",
            ["family", "KL(q* || p) at the family's optimum"],
            families,
            note="KL in nats at each family's best member, by quadrature.",
        ),
    ]


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``ppl-models exp-normal``'s options (each overrides the config file)."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML run configuration (default {DEFAULT_CONFIG} when present)",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a configuration key (repeatable)",
    )
    parser.add_argument("--data", help="observations file: .csv, .txt or .npy, one number per row")
    parser.add_argument("--rate", type=float, help="prior rate (> 0)")
    parser.add_argument("--n-obs", type=int, dest="n_obs", help="simulate N observations")
    parser.add_argument("--seed", type=int, help="seed for simulation and SVI")
    parser.add_argument("--guide", choices=GUIDE_FAMILIES, help="guide family")
    parser.add_argument("--elbo", choices=ELBO_KINDS, help="ELBO estimator")
    parser.add_argument("--particles", type=int, help="ELBO particles per step (vectorized)")
    parser.add_argument("--steps", type=int, help="SVI steps")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to fit")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<config>/<time>/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> tuple[ExpNormalConfig, str]:
    """The resolved configuration and its name (the config file's stem) from parsed options."""
    flags = ("data", "rate", "n_obs", "seed", "guide", "elbo", "particles", "steps", "device")
    overrides = command_line_overrides(args.overrides, {k: getattr(args, k) for k in flags})
    return load_command_line_config(
        ExpNormalConfig, args.config, DEFAULT_CONFIG, overrides, "exp_normal"
    )


def main(args: argparse.Namespace) -> int:
    """Run ``ppl-models exp-normal``: fit, report, print the key numbers; returns 0."""
    config, name = config_from_args(args)
    run = execute(config, name, out=args.out, progress=not args.quiet)
    summary = read_json(run.file("summary.json"))
    if summary["theta_svi"] is not None:
        print(
            f"theta_svi = {summary['theta_svi']:.6g}, theta* = {summary['theta_star']:.6g} "
            f"(relative error {summary['theta_rel_error']:.2e})"
        )
    print(
        f"KL(q || p) = {summary['kl_at_theta_svi']:.4g} nats, PSIS k-hat = "
        f"{summary['psis_khat']:.3g}"
    )
    print(f"report: {run.file('report.html')}")
    return 0
