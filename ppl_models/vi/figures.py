"""Figures of a variational fit's report, drawn from the run's files alone.

Every builder takes ``summary`` (``summary.json``), ``idata`` (``posterior.nc``) and ``metrics``
(``metrics.jsonl``), so ``ppl-models report RUN_DIR`` redraws them without refitting. Figures are
``matplotlib.figure.Figure`` objects (:func:`ppl_models.plots.new_figure`), never pyplot.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import FuncFormatter, LogFormatter, NullFormatter
from scipy.special import logsumexp

from ..plots import fixed_layout, new_figure, save_figure
from .logweights import element_names

Q_COLOR, REF_COLOR, PSIS_COLOR = "tab:blue", "black", "tab:orange"
MAX_MARGINALS = 24
MAX_PAIRS = 4
MAX_COORDINATES = 40  # bars of the error-bounds figure; summary.json holds every coordinate


ANSWER_LABELS = {"psis": "PSIS-resampled draws", "nuts": "NUTS draws"}


def _answer_kind(summary: dict) -> str:
    """What ``posterior`` holds: ``vi`` (draws of q), or an escalation ladder's ``psis``
    (q's draws resampled by their smoothed weights) or ``nuts`` answer."""
    return (summary.get("answer") or {}).get("kind", "vi")


def _drawn_label(summary: dict) -> str:
    return ANSWER_LABELS.get(_answer_kind(summary), "q")


def _element_draws(idata, group: str, names) -> dict[str, np.ndarray]:
    """The draws of the elements ``names`` (Stan-style) in ``idata[group]``, each flattened over
    chains and draws; names the group lacks are left out. Only these elements are copied: a
    copy of every element would cost as much memory as the draws themselves."""
    if group not in idata.groups():
        return {}
    wanted = set(names)
    ds = idata[group]
    out = {}
    for site in ds.data_vars:
        shape = ds[site].shape
        columns = [
            (j, name) for j, name in enumerate(element_names(site, shape[2:])) if name in wanted
        ]
        if columns:
            flat = np.asarray(ds[site].values).reshape(shape[0] * shape[1], -1)
            out |= {name: flat[:, j].copy() for j, name in columns}
    return out


def error_score(row: dict) -> float:
    """How far off an element looks: against the reference when there is one, else against
    its PSIS-corrected moments (in sds)."""
    if row.get("std_mean_error") is not None and row.get("sd_ratio") is not None:
        return abs(row["std_mean_error"]) + abs(math.log(max(row["sd_ratio"], 1e-12)))
    pm, ps, sd = row.get("psis_mean"), row.get("psis_sd"), row.get("sd")
    if pm is not None and ps and sd:
        return abs(row["mean"] - pm) / ps + abs(math.log(sd / ps))
    return 0.0


FURTHEST_OFF = (
    "|standardised mean error| + |log sd ratio| against the reference, else against the "
    "PSIS-corrected moments"
)


def globals_and_furthest_off(items: list[dict], score, cap: int) -> list[dict]:
    """At most ``cap`` of ``items`` (dicts with ``name`` and ``site``), in their order: all of
    them when there are no more; else the elements of scalar sites (the globals) first, then
    the items of larger sites with the highest ``score(item)``."""
    if len(items) <= cap:
        return list(items)
    size = Counter(item["site"] for item in items)
    scalar = [i for i, item in enumerate(items) if size[item["site"]] == 1][:cap]
    others = [i for i, item in enumerate(items) if size[item["site"]] > 1]
    others.sort(key=lambda i: score(items[i]), reverse=True)
    return [items[i] for i in sorted(scalar + others[: cap - len(scalar)])]


def shown_words(shown: list[dict], items: list[dict], what: str, rest: str) -> str:
    """What :func:`globals_and_furthest_off` kept and why, and ``rest`` (where the others
    are), as a sentence with a leading space; '' when it kept every item."""
    if len(shown) == len(items):
        return ""
    size = Counter(item["site"] for item in items)
    scalar = sum(size[item["site"]] == 1 for item in shown)
    return (
        f" Shown: {len(shown)} of the {len(items):,} {what}, too many to read at once: those of "
        f"the scalar sites ({scalar}) and the {len(shown) - scalar} furthest off "
        f"({FURTHEST_OFF}); {rest}."
    )


def chosen_coordinates(summary: dict, cap: int) -> list[dict]:
    """At most ``cap`` of the unconstrained coordinates in ``summary``, chosen by
    :func:`globals_and_furthest_off` with the score of the element of the same name."""
    score = {row["name"]: error_score(row) for row in summary["parameters"]}
    every = summary.get("error_bounds_per_coordinate") or []
    return globals_and_furthest_off(every, lambda c: score.get(c["name"], 0.0), cap)


def marginals(fig_dir: Path, summary: dict, idata) -> tuple[str, Path, str] | None:
    """Histogram densities of q's draws against the reference's, one panel per element."""
    rows = summary["parameters"]
    if not rows:
        return None
    order = globals_and_furthest_off(rows, error_score, MAX_MARGINALS)
    names = [row["name"] for row in order]
    q = _element_draws(idata, "posterior", names)
    ref = _element_draws(idata, "reference_posterior", names)
    n = len(order)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    # a fixed layout: constrained layout doubles the drawing time of a many-panel figure
    fig = MplFigure(figsize=(3.1 * ncols, 2.4 * nrows))
    fixed_layout(
        fig, nrows, ncols, left=0.2, right=0.2, bottom=0.3, top=0.3, wspace=0.35, hspace=0.6
    )
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    off = set(summary.get("verdict_off", []))
    for ax, row in zip(axes, order, strict=False):
        name = row["name"]
        draws = [q[name]] + ([ref[name]] if name in ref else [])
        pooled = np.concatenate(draws)
        lo, hi = np.quantile(pooled, [0.002, 0.998])
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 50)
        ax.hist(
            q[name],
            bins=bins,
            density=True,
            histtype="stepfilled",
            alpha=0.45,
            color=Q_COLOR,
            label=_drawn_label(summary),
        )
        if name in ref:
            ax.hist(
                ref[name],
                bins=bins,
                density=True,
                histtype="step",
                lw=1.6,
                color=REF_COLOR,
                label="reference",
            )
        if row.get("psis_mean") is not None:
            ax.axvline(row["psis_mean"], color=PSIS_COLOR, ls=":", lw=1.2, label="PSIS mean")
        ax.set_title(
            name + ("  (off)" if name in off else ""),
            fontsize=9,
            color="tab:red" if name in off else "black",
        )
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="best")
    return (
        "Marginal posteriors",
        save_figure(fig, Path(fig_dir) / "marginals.png"),
        f"Histogram densities of the {_drawn_words(summary)} (filled) against the reference "
        "draws (black line), with the PSIS-corrected mean (dotted); elements the verdict names "
        "are titled '(off)'."
        + shown_words(order, rows, "elements", "posterior.nc holds every element's draws"),
    )


def _drawn_words(summary: dict) -> str:
    return {
        "psis": "guide's draws resampled by their Pareto-smoothed importance weights",
        "nuts": "NUTS draws",
    }.get(_answer_kind(summary), "variational draws")


MAX_FUNNEL_PANELS = 3
PAIR_DRAWS = 2000


def _site(name: str) -> str:
    return name.split("[", 1)[0]


def _funnel_pairs(summary: dict, rows: list[dict]) -> tuple[list[tuple[str, str]], str]:
    """(x, y) element pairs where y is the scale of x in the model (a funnel when y can go to
    zero), the x elements furthest off first; and how they were picked, in words."""
    scales = ((summary.get("model_structure") or {}).get("scale_parents")) or {}
    by_site: dict[str, list[dict]] = {}
    for r in rows:
        by_site.setdefault(_site(r["name"]), []).append(r)
    pairs, words = [], []
    for child, parents in scales.items():
        elements = sorted(by_site.get(child, []), key=error_score, reverse=True)
        for parent in parents:
            parent_rows = by_site.get(parent, [])
            if not elements or not parent_rows:
                continue
            shown = elements[: MAX_FUNNEL_PANELS - len(pairs)]
            for r in shown:
                index = r["name"][len(child) :]
                match = next((p for p in parent_rows if p["name"] == parent + index), None)
                pairs.append((r["name"], (match or parent_rows[0])["name"]))
            picked = (
                f"the {len(shown)} of {len(elements)} {child} elements furthest off"
                if len(elements) > len(shown)
                else f"{', '.join(r['name'] for r in shown)}"
            )
            words.append(f"{parent} is the scale of {child} in the model ({picked})")
            if len(pairs) >= MAX_FUNNEL_PANELS:
                break
    return pairs, "; ".join(words)


def _mode_pairs(summary: dict) -> tuple[list[tuple[str, str]], str]:
    """The two coordinates that the missed modes move most, when the mode search found any."""
    search = summary.get("mode_search") or {}
    if not search.get("missed"):
        return [], ""
    coords = sorted(search.get("coordinates") or [], key=lambda c: c["mean_shift"], reverse=True)
    if len(coords) < 2:
        return [], ""
    a, b = coords[0]["name"], coords[1]["name"]
    return [(a, b)], f"{a} and {b} are the coordinates the missed modes move most"


def _psis_resampled(idata, n: int, rng) -> np.ndarray | None:
    """Indices into the stored draws of q, resampled in proportion to their Pareto-smoothed
    importance weights: what importance sampling makes of q's draws."""
    from .. import diagnostics

    if "sample_stats" not in idata.groups() or "posterior" not in idata.groups():
        return None
    stats = idata["sample_stats"]
    if "log_joint" not in stats or "log_q" not in stats:
        return None
    per = idata["posterior"].sizes["draw"]
    log_w = (stats["log_joint"] - stats["log_q"]).values[:, :per].ravel()
    if not np.isfinite(log_w).any():
        return None
    smoothed, _ = diagnostics.psis_smooth(np.where(np.isfinite(log_w), log_w, -np.inf))
    weights = np.exp(smoothed)
    weights = weights / weights.sum()
    return rng.choice(len(weights), size=n, replace=True, p=weights)


def _positive(*arrays) -> bool:
    return all(a is not None and len(a) and np.all(a > 0) for a in arrays)


def pairs(fig_dir: Path, summary: dict, idata) -> tuple[str, Path, str] | None:
    """Pair plots of the pairs the checks blame, with what q misses beside q's draws.

    The pairs: a site and the latent site that is its scale in the model (a funnel), the
    elements furthest off first; else the two coordinates the missed modes move most; else the
    elements furthest off. Beside q's draws: the reference's draws, or (without a reference)
    q's draws resampled by their PSIS weights, and the missed modes' locations.
    """
    rows = summary["parameters"]
    if len(rows) < 2:
        return None
    funnel, how = _funnel_pairs(summary, rows)
    chosen = funnel
    if not chosen:
        chosen, how = _mode_pairs(summary)
    top = [r["name"] for r in sorted(rows, key=error_score, reverse=True)[:MAX_PAIRS]]
    q = _element_draws(idata, "posterior", [*top, *(n for pair in chosen for n in pair)])
    chosen = [(a, b) for a, b in chosen if a in q and b in q]
    if not chosen:
        top = [n for n in top if n in q]
        if len(top) < 2:
            return None
        chosen = [(top[j], top[i]) for i in range(len(top)) for j in range(i)]
        how = f"the {len(top)} elements furthest off ({FURTHEST_OFF}), in pairs"
    ref = _element_draws(idata, "reference_posterior", [n for pair in chosen for n in pair])
    rng = np.random.default_rng(0)
    n = len(next(iter(q.values())))
    q_idx = rng.choice(n, size=min(PAIR_DRAWS, n), replace=False)
    has_ref = all(a in ref and b in ref for a, b in chosen)
    if has_ref:
        m = len(ref[chosen[0][0]])
        r_idx = rng.choice(m, size=min(PAIR_DRAWS, m), replace=False)
        other, other_label, other_color = ref, "reference", REF_COLOR
    else:  # an answer resampled already, or NUTS's, has no weights to resample by
        vi = _answer_kind(summary) == "vi"
        w_idx = _psis_resampled(idata, min(PAIR_DRAWS, n), rng) if vi else None
        other, other_label, other_color = (q, "q resampled by PSIS weights", PSIS_COLOR)
        r_idx = w_idx
    modes = [m["location"] for m in (summary.get("mode_search") or {}).get("missed") or []]
    k = len(chosen)
    ncols = min(3, k)
    nrows = math.ceil(k / ncols)
    fig = MplFigure(figsize=(3.6 * ncols, 3.3 * nrows))
    fixed_layout(
        fig, nrows, ncols, left=0.75, right=0.15, bottom=0.5, top=0.4, wspace=0.8, hspace=0.6
    )
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (x, y) in zip(axes, chosen, strict=False):
        ax.tick_params(labelsize=7)
        if r_idx is not None:
            ax.scatter(
                other[x][r_idx], other[y][r_idx], s=3, color=other_color, alpha=0.3,
                label=other_label, rasterized=True,
            )  # fmt: skip
        ax.scatter(
            q[x][q_idx], q[y][q_idx], s=3, color=Q_COLOR, alpha=0.3, label=_drawn_label(summary),
            rasterized=True,
        )  # fmt: skip
        for location in modes:
            if x in location and y in location:
                ax.scatter(
                    location[x], location[y], marker="X", s=60, color="tab:red",
                    label="missed mode",
                )  # fmt: skip
        if _positive(q[y], other.get(y) if r_idx is not None else q[y]) and funnel:
            ax.set_yscale("log")  # a scale near zero is where the funnel's neck is
            for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                axis_formatter(LogFormatter())  # 1.2, not 1.2 x 10^0
            ax.tick_params(which="both", labelsize=7)
        ax.set_xlabel(x, fontsize=8)
        ax.set_ylabel(y + (" (log axis)" if ax.get_yscale() == "log" else ""), fontsize=8)
    for ax in axes[k:]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=False))
    fig.legend(
        unique.values(), unique.keys(), loc="upper center", ncol=len(unique), fontsize=8,
        markerscale=3, frameon=False,
    )  # fmt: skip
    beside = (
        "the reference's draws (black)"
        if has_ref
        else "q's draws resampled in proportion to their PSIS weights (orange: where "
        "importance sampling moves q's mass)"
        if r_idx is not None
        else "nothing else"
    )
    title = "Pairs the checks blame" if funnel or modes else "Pairs of the elements furthest off"
    return (
        title,
        save_figure(fig, Path(fig_dir) / "pairs.png"),
        f"How the pairs were picked: {how}. The {_drawn_words(summary)} (blue) beside {beside}"
        + ("; red crosses: modes the mode search found outside q's draws" if modes else "")
        + f"; {min(PAIR_DRAWS, n):,} of each. Dependence that q misses (a funnel's neck, a "
        "second mode) shows as a different shape of the clouds.",
    )


def elbo_trace(fig_dir: Path, summary: dict, metrics: list[dict]) -> tuple[str, Path, str] | None:
    """The ELBO estimate per step, its running mean, and where convergence was declared."""
    losses = [(m["step"], m["loss"]) for m in metrics if "loss" in m and "step" in m]
    if not losses:
        return None
    steps = np.array([s for s, _ in losses], dtype=float)
    elbo = -np.array([v for _, v in losses], dtype=float)
    fig, ax = new_figure(figsize=(8, 3.8))
    ax.plot(steps, elbo, lw=0.6, alpha=0.5, color=Q_COLOR, label="ELBO estimate per step")
    w = max(1, len(elbo) // 50)
    if w > 1:
        smooth = np.convolve(elbo, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, color="navy", lw=1.5, label=f"running mean ({w} steps)")
    ax.axhline(summary["elbo"], color="tab:green", ls="--", label="ELBO (S draws)")
    if summary.get("iw_bounds"):
        top = max(summary["iw_bounds"], key=int)
        ax.axhline(
            summary["iw_bounds"][top], color="tab:purple", ls=":", label=f"IW bound K = {top}"
        )
    step = (summary.get("convergence") or {}).get("step")
    if step is not None:
        ax.axvline(step, color="tab:red", ls="--", lw=1, label=f"converged at step {step}")
    lo, hi = np.percentile(elbo, [5, 100])
    hi = max(hi, summary["elbo"])
    ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.15 * (hi - lo + 1e-9))
    ax.set_xlabel("step")
    ax.set_ylabel("nats")
    ax.legend(fontsize=8, loc="lower right")
    rule = summary.get("convergence_rule") or "no rule recorded"
    return (
        "ELBO trace",
        save_figure(fig, Path(fig_dir) / "trace.png"),
        f"Convergence rule: {rule}. The fit {'met' if summary.get('converged') else 'did NOT meet'}"
        " it. The y-axis starts at the 5th percentile of the trace.",
    )


def weights(fig_dir: Path, summary: dict, idata) -> tuple[str, Path, str] | None:
    """Histogram of log weights and the tail of the normalised weights with k-hat (of the
    guide's draws: for a PSIS answer, those it was resampled from; None for a NUTS answer)."""
    group = "importance" if _answer_kind(summary) == "psis" else "sample_stats"
    if group not in idata.groups() or "log_joint" not in idata[group]:
        return None
    stats = idata[group]
    log_w = (stats["log_joint"] - stats["log_q"]).values.ravel()
    norm = np.sort(log_w - logsumexp(log_w))[::-1]
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(10, 3.8))
    ax1.hist(log_w - log_w.max(), bins=80, color=Q_COLOR, alpha=0.8)
    ax1.set_xlabel("log w - max log w")
    ax1.set_ylabel("draws")
    ax1.set_title("log importance weights", fontsize=10)
    # about 400 log-spaced ranks draw the same curve as all S points, much faster
    rank = np.unique(np.geomspace(1, len(norm), 400).astype(int))
    ax2.loglog(rank, np.exp(norm[rank - 1]), color=Q_COLOR, label="normalised weights, sorted")
    ax2.axhline(1 / len(norm), color="gray", ls=":", label="uniform 1/S")
    k, thr = summary.get("psis_khat"), summary["psis_khat_threshold"]
    k_text = "-inf (equal weights)" if k is None else f"{k:.3g}"
    ax2.set_title(
        f"PSIS k-hat = {k_text} (threshold {thr:.2g})",
        fontsize=10,
        color="tab:red" if k is not None and k > thr else "black",
    )
    ax2.set_xlabel("rank")
    ax2.set_ylabel("weight")
    ax2.legend(fontsize=8)
    return (
        "Importance weights",
        save_figure(fig, Path(fig_dir) / "weights.png"),
        f"log w = log p(x, z) - log q(z) for {len(log_w):,} draws of q; importance ESS "
        f"{summary['importance_ess']:.0f}. A few dominating weights (a steep rank plot) and "
        "k-hat above the threshold mean q misses posterior mass.",
    )


def bounds_vs_errors(fig_dir: Path, summary: dict) -> tuple[str, Path, str] | None:
    """Per unconstrained coordinate: VIABEL's mean and sd error bounds, and (with a reference)
    the measured errors, all in units of q's sd."""
    every = summary.get("error_bounds_per_coordinate") or []
    if not every:
        return None
    coords = chosen_coordinates(summary, MAX_COORDINATES)
    names = [c["name"] for c in coords]
    sd = np.array([c["sd"] or np.nan for c in coords], dtype=float)

    def col(key):
        return np.array([np.nan if c.get(key) is None else c[key] for c in coords], dtype=float)

    x = np.arange(len(coords))
    fig, axes = new_figure(1, 2, figsize=(max(8, 0.5 * len(coords) + 4), 3.8))
    for ax, kind in zip(axes, ("mean", "sd"), strict=True):
        bound = col(f"{kind}_error") / sd
        ax.bar(
            x - 0.2,
            np.where(np.isfinite(bound), bound, np.nan),
            0.4,
            color="lightgray",
            edgecolor="gray",
            label="VIABEL bound",
        )
        measured = col(f"measured_{kind}_error") / sd
        if np.isfinite(measured).any():
            ax.bar(x + 0.2, measured, 0.4, color="tab:red", label="measured vs reference")
        shown = np.concatenate([bound, measured])
        positive = shown[np.isfinite(shown) & (shown > 0)]
        if positive.size:  # a log axis needs a positive value
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(f"|{kind} error| / sd_q")
        lo, hi = ax.get_ylim()
        if ax.get_yscale() == "log":  # bars a decade tall at least, room for the legend
            ax.set_ylim(min(lo, positive.min() / 10), hi * 30)
        ax.set_title(f"{kind} error, unconstrained space", fontsize=10)
        ax.legend(fontsize=8)
    return (
        "Error bounds and measured errors",
        save_figure(fig, Path(fig_dir) / "bounds.png"),
        "Huggins et al. (2020) bounds from d_2 = "
        f"{summary['d2']:.3g}, per coordinate of the guide's unconstrained space (each latent "
        "site mapped by the inverse of its support's bijection), in units of q's sd there; "
        "where a reference exists, its measured errors in the same space. A bound below a "
        "measured error would be a bug: a bound holds whenever k-hat is below 0.5."
        + shown_words(coords, every, "coordinates", "summary.json holds every coordinate's bounds"),
    )


def all_figures(fig_dir: Path, summary: dict, idata, metrics: list[dict]):
    """Every figure of the report as ``(title, path, caption)``, in the report's order."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    nuts = _answer_kind(summary) == "nuts"  # no weights, and q's bounds are not its
    out = [
        marginals(fig_dir, summary, idata),
        pairs(fig_dir, summary, idata),
        elbo_trace(fig_dir, summary, metrics),
        None if nuts else weights(fig_dir, summary, idata),
        None if nuts else bounds_vs_errors(fig_dir, summary),
    ]
    return [f for f in out if f is not None]
