r"""Posterior diagnostics; the only module of the package that imports ArviZ.

Whether the tail of importance weights :math:`\log w = \log p(x, z) - \log q(z)`,
:math:`z \sim q`, is too heavy for any importance estimate (Pareto-smoothed importance sampling
k-hat, Yao et al. 2018; Vehtari et al. 2024), InferenceData assembly and summaries, and the
distances between one-dimensional distributions. Statistics that need only the weights (ESS,
bounds on the evidence) are in :mod:`ppl_models.importance`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from scipy.special import logsumexp

with warnings.catch_warnings():
    # ArviZ 0.2x announces its 1.0 refactor at import; the package pins arviz < 1.
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az


def khat_threshold(n_draws: int) -> float:
    r"""Sample-size dependent k-hat threshold :math:`\min(1 - 1/\log_{10} S,\ 0.7)`.

    Above it, Pareto-smoothed importance sampling with ``S`` draws is not reliable
    (Vehtari et al. 2024, section 3); ``0.7`` is the large-sample limit.
    """
    if n_draws <= 10:
        return 0.0
    return min(1.0 - 1.0 / math.log10(n_draws), 0.7)


def psis_khat(log_weights: np.ndarray) -> np.ndarray:
    r"""Pareto k-hat of the upper tail of importance weights, per row.

    Parameters
    ----------
    log_weights
        ``(n_draws,)`` or ``(n_rows, n_draws)`` log importance ratios
        :math:`\log p(x, z_s) - \log q(z_s)`, :math:`z_s \sim q` (any additive constant).

    Returns
    -------
    numpy.ndarray
        k-hat per row (a 0-d array for 1-D input). Low (< 0.5) means the weights are close to
        uniform in the tail and q covers p well; above :func:`khat_threshold` the weights'
        variance is effectively infinite. Rows of equal weights (q proportional to p) have a
        degenerate tail, the limit :math:`k \to -\infty`, and get ``-inf``.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim not in (1, 2) or lw.shape[-1] < 10:
        raise ValueError(
            f"log_weights must be (n_draws,) or (n_rows, n_draws) with >= 10 draws, "
            f"got shape {lw.shape}"
        )
    if not np.isfinite(lw).all():
        raise ValueError("log_weights contain NaN or infinite values")
    with np.errstate(over="ignore"):  # ArviZ's Pareto fit overflows harmlessly on bounded w
        _, khat = az.psislw(lw, reff=1.0)
    khat = np.asarray(khat, dtype=np.float64)
    # ArviZ's fit is undefined for a zero-width tail and returns +inf there; flip it to the limit.
    flat = np.ptp(lw, axis=-1) <= 1e-12 * np.maximum(1.0, np.abs(lw).max(axis=-1))
    return np.where(flat, -np.inf, khat)


def inference_data(
    draws: np.ndarray,
    *,
    log_joint: np.ndarray | None = None,
    log_q: np.ndarray | None = None,
    var_name: str = "z",
    chains: int = 4,
) -> az.InferenceData:
    r"""InferenceData of independent ``draws`` and, when given, per-draw log densities.

    The draws are independent, so cutting them into ``chains`` pseudo-chains loses nothing and
    lets ArviZ compute its multi-chain summaries (ESS, R-hat) without warnings. ``log_joint``
    (:math:`\log p(x, z)`) and ``log_q`` (:math:`\log q(z)`) go to ``sample_stats``, so the
    importance weights can be recomputed from the file alone.
    """
    n = len(draws)
    if n % chains:
        raise ValueError(f"the number of draws ({n}) must be a multiple of chains ({chains})")

    def shaped(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        return values.reshape(chains, n // chains, *values.shape[1:])

    stats = {
        name: shaped(v) for name, v in (("log_joint", log_joint), ("log_q", log_q)) if v is not None
    }
    # Per-item log densities (say one row per image) share their dimension names, so that
    # log_joint - log_q subtracts element-wise instead of broadcasting to an outer product.
    dims = {name: [f"item_dim_{i}" for i in range(v.ndim - 2)] for name, v in stats.items()}
    return az.from_dict(posterior={var_name: shaped(draws)}, sample_stats=stats or None, dims=dims)


def merge_methods(datasets: dict[str, az.InferenceData]) -> az.InferenceData:
    """One InferenceData holding several methods' posteriors as groups ``posterior_<method>``.

    The first method's posterior (and sample stats) stay the main ``posterior`` group, so ArviZ
    functions act on it by default; the others remain comparable side by side in the same file.
    """
    names = list(datasets)
    main = datasets[names[0]]
    extra = {f"posterior_{name.replace('-', '_')}": ds.posterior for name, ds in datasets.items()}
    merged = az.InferenceData(
        posterior=main.posterior,
        **({"sample_stats": main.sample_stats} if "sample_stats" in main.groups() else {}),
    )
    for group, ds in extra.items():
        merged.add_groups({group: ds}, warn_on_custom_groups=False)
    return merged


def method_posterior(idata: az.InferenceData, method: str) -> xr.Dataset:
    """The posterior dataset of ``method`` from :func:`merge_methods`."""
    return idata[f"posterior_{method.replace('-', '_')}"]


def summary_row(draws: np.ndarray, hdi_prob: float = 0.94) -> dict[str, float]:
    """ArviZ summary statistics of one scalar's independent draws: mean, sd, HDI, bulk ESS.

    The HDI's ends keep ArviZ's names: ``hdi_3%`` and ``hdi_97%`` for the default 94%,
    ``hdi_5%`` and ``hdi_95%`` for ``hdi_prob=0.9``.
    """
    table = az.summary(
        inference_data(draws),
        hdi_prob=hdi_prob,
        round_to="none",
    )
    row = table.iloc[0]
    lower, upper = (name for name in table.columns if name.startswith("hdi_"))
    return {
        "mean": float(row["mean"]),
        "sd": float(row["sd"]),
        lower: float(row[lower]),
        upper: float(row[upper]),
        "ess_bulk": float(row["ess_bulk"]),
    }


def load(path: Path) -> az.InferenceData:
    """Read an InferenceData written by a run (``posterior.nc``)."""
    return az.from_netcdf(str(path))


def _cdf(d: torch.distributions.Distribution, z: torch.Tensor) -> torch.Tensor:
    """The CDF of ``d`` at ``z``, 0 below and 1 above its support (where ``cdf`` may refuse)."""
    lo, hi = _support(d)
    inside = d.cdf(z.clamp(lo, hi))
    return torch.where(z < lo, 0.0, torch.where(z > hi, 1.0, inside))


def _support(d: torch.distributions.Distribution) -> tuple[float, float]:
    return (
        float(getattr(d.support, "lower_bound", -math.inf)),
        float(getattr(d.support, "upper_bound", math.inf)),
    )


def _cdf_grid(
    q: torch.distributions.Distribution,
    p: torch.distributions.Distribution,
    n_points: int = 200_001,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both CDFs on one fine grid [L, U] that holds all but 1e-12 of each distribution's mass:
    an end of the supports' union where it is finite, else found by doubling a step outwards;
    the supports' finite ends inside [L, U] are grid points."""
    supports = [_support(d) for d in (q, p)]
    centre = float(p.mean) if math.isfinite(float(p.mean)) else 0.0
    width = 10 * float(p.variance.sqrt()) + 1.0 if math.isfinite(float(p.variance)) else 1.0
    ends = []
    for side, bound in ((-1, min(s[0] for s in supports)), (1, max(s[1] for s in supports))):
        if math.isfinite(bound):
            ends.append(bound)
            continue
        step = width
        for _ in range(60):
            end = torch.tensor(centre + side * step, dtype=torch.float64)
            tails = [float(_cdf(d, end)) for d in (q, p)]
            if (side < 0 and max(tails) < 1e-12) or (side > 0 and min(tails) > 1 - 1e-12):
                break
            step *= 2
        ends.append(float(end))
    z = torch.linspace(ends[0], ends[1], n_points, dtype=torch.float64)
    # the supports' finite ends are grid points too: a CDF's kink (or jump) sits there
    kinks = [b for s in supports for b in s if ends[0] < b < ends[1]]
    z = torch.cat([z, torch.tensor(kinks, dtype=torch.float64)]).sort().values
    return z.numpy(), _cdf(q, z).numpy(), _cdf(p, z).numpy()


def wasserstein1(q: torch.distributions.Distribution, p: torch.distributions.Distribution) -> float:
    r"""Wasserstein-1 distance :math:`\int |F_q(z) - F_p(z)|\,dz` of two distributions on the
    real line (any supports, bounded or not), by the trapezoid rule on a fine grid."""
    z, fq, fp = _cdf_grid(q, p)
    return float(np.trapezoid(np.abs(fq - fp), z))


def ks_distance(q: torch.distributions.Distribution, p: torch.distributions.Distribution) -> float:
    r"""Kolmogorov-Smirnov distance :math:`\sup_z |F_q(z) - F_p(z)|` of two distributions on
    the real line (any supports), on a fine grid."""
    _, fq, fp = _cdf_grid(q, p)
    return float(np.max(np.abs(fq - fp)))


# ---------------------------------------------------------------------------------------------
# The generic fit's diagnostics (ppl_models.vi): smoothed weights, many-variable summaries, MCSE
# ---------------------------------------------------------------------------------------------


def psis_smooth(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    r"""Pareto-smoothed, self-normalised log weights and k-hat (ArviZ's ``psislw``).

    Parameters
    ----------
    log_weights
        ``(n_draws,)`` raw log importance ratios :math:`\log p(x, z_s) - \log q(z_s)`.

    Returns
    -------
    (numpy.ndarray, float)
        :math:`\log \tilde w_s` with :math:`\sum_s \tilde w_s = 1`, the largest raw weights
        replaced by the quantiles of the generalised Pareto fitted to the tail (Vehtari et al.
        2024), and k-hat as :func:`psis_khat` reports it (``-inf`` for equal weights).
    """
    lw = np.asarray(log_weights, dtype=np.float64).ravel()
    khat = float(psis_khat(lw))
    with np.errstate(over="ignore"):
        smoothed, _ = az.psislw(lw.copy(), reff=1.0)
    smoothed = np.asarray(smoothed, dtype=np.float64)
    if not np.isfinite(smoothed).all():  # degenerate tail: fall back to the raw weights
        smoothed = lw - logsumexp(lw)
    return smoothed - logsumexp(smoothed), khat


def summarize_draws(
    draws: dict[str, np.ndarray], hdi_prob: float = 0.94
) -> dict[str, dict[str, float]]:
    """ArviZ summaries of many scalar quantities at once.

    Parameters
    ----------
    draws
        Element name -> ``(chain, draw)`` array (independent draws may be cut into pseudo-chains).

    Returns
    -------
    dict
        Per element: ``mean``, ``sd``, ``hdi_low``, ``hdi_high`` (the ``hdi_prob`` highest-density
        interval), ``mcse_mean``, ``mcse_sd``, ``ess_bulk``, ``ess_tail``, ``r_hat``.
    """
    if not draws:
        return {}
    keys = [f"v{i}" for i in range(len(draws))]
    data = {k: np.asarray(v, dtype=np.float64) for k, v in zip(keys, draws.values(), strict=True)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant draws give NaN ESS/R-hat: that is the answer
        table = az.summary(
            az.from_dict(posterior=data), hdi_prob=hdi_prob, round_to="none", kind="all"
        )
    low, high = (f"hdi_{100 * (1 - hdi_prob) / 2:g}%", f"hdi_{100 * (1 + hdi_prob) / 2:g}%")
    out = {}
    for key, name in zip(keys, draws, strict=True):
        row = table.loc[key]
        out[name] = {
            "mean": float(row["mean"]),
            "sd": float(row["sd"]),
            "hdi_low": float(row[low]),
            "hdi_high": float(row[high]),
            "mcse_mean": float(row["mcse_mean"]),
            "mcse_sd": float(row["mcse_sd"]),
            "ess_bulk": float(row["ess_bulk"]),
            "ess_tail": float(row["ess_tail"]),
            "r_hat": float(row["r_hat"]),
        }
    return out


def to_netcdf(idata: az.InferenceData, path: Path) -> None:
    """Write an InferenceData to ``path`` (NetCDF), uncompressed: zlib saves about 3% of a
    file of random float draws and takes ten times as long to write it."""
    idata.to_netcdf(str(path), compress=False)


def from_dict(**groups) -> az.InferenceData:
    """``arviz.from_dict`` for the package's modules that must not import ArviZ themselves.

    Groups other than ArviZ's standard ones (``reference_posterior``) are added as extra groups.
    The arrays are the package's own, chains first: ArviZ's guess that an array with fewer
    draws than chains is transposed (a NUTS run cut in its warm-up keeps none) is silenced.
    """
    standard = {"posterior", "sample_stats", "observed_data", "prior", "posterior_predictive"}
    dims = groups.pop("dims", None)
    extra = {k: v for k, v in groups.items() if k not in standard and v is not None}
    base = {k: v for k, v in groups.items() if k in standard and v is not None}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="More chains .* than draws")
        idata = az.from_dict(**base, dims=dims)
        for name, values in extra.items():
            ds = az.from_dict(posterior=values).posterior
            idata.add_groups({name: ds}, warn_on_custom_groups=False)
    return idata
