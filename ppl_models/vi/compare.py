r"""Per-element comparison of the variational draws with a reference posterior.

For every scalar element (``beta[1]`` style, 1-based) of every latent and deterministic site:

- the variational draws' summary: mean and sd (from all draws), the 94% HDI (from at most
  :data:`SUMMARY_DRAWS` of them), and their ESS, which for independent draws is their number;
- the PSIS-corrected mean and sd (self-normalised importance sampling with Pareto-smoothed
  weights) and their Monte Carlo standard errors;
- against a reference with draws :math:`y` (mean :math:`m_r`, sd :math:`s_r`): the
  standardised mean error :math:`(m_q - m_r)/s_r`, the sd ratio :math:`s_q/s_r`,
  :math:`W_1(q, r)/s_r` (on the draws, so for any support) and the two-sample
  Kolmogorov-Smirnov distance, both from one sort of each sample (:func:`ks_and_wasserstein`,
  the statistics of ``scipy.stats.wasserstein_distance`` and ``ks_2samp``); the reference's
  own Monte Carlo errors (ArviZ's ``mcse_mean``/``mcse_sd`` and ESS, which account for its
  chains' autocorrelation) and its rank-normalised split R-hat are kept so that the verdict
  can allow for them, and refuse a reference whose chains disagree.

Elements without reference draws get ``None`` in the reference columns.
"""

from __future__ import annotations

import math

import numpy as np

from .. import diagnostics
from ..importance import WeightedMoments
from .logweights import element_names
from .references import Reference

SUMMARY_DRAWS = 20_000
HDI_PROB = 0.94


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _khat(psis, field: str, j: int) -> float | None:
    """Element ``j``'s function-specific k-hat, or None where it was not estimated or the tail
    is flat (no variation: nothing for the estimate to be unreliable about)."""
    k = None if psis is None else getattr(psis, field)
    if k is None or k[j] == -math.inf:
        return None
    return float(k[j])


def flatten_sites(values: dict[str, np.ndarray], lead: int = 1) -> dict[str, np.ndarray]:
    """Site arrays ``(*lead_dims, *shape)`` -> element name -> ``(*lead_dims,)`` arrays."""
    out = {}
    for site, arr in values.items():
        shape = arr.shape[lead:]
        flat = arr.reshape(*arr.shape[:lead], -1)
        for j, name in enumerate(element_names(site, shape)):
            out[name] = flat[..., j]
    return out


def hdi(draws: np.ndarray, prob: float = HDI_PROB) -> tuple[np.ndarray, np.ndarray]:
    """The ``prob`` highest-density interval of each column of ``draws`` ``(n, E)``: the
    shortest interval holding ``ceil(prob n)`` of the sorted draws (ArviZ's rule, at once for
    every column)."""
    ordered = np.sort(draws, axis=0)
    n = len(ordered)
    inside = int(math.floor(prob * n))
    widths = ordered[inside:] - ordered[: n - inside]
    start = np.argmin(widths, axis=0)
    columns = np.arange(ordered.shape[1])
    return ordered[start, columns], ordered[start + inside, columns]


def ks_and_wasserstein(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    r"""The two-sample Kolmogorov-Smirnov statistic :math:`\sup_x |F_a(x) - F_b(x)|` and the
    1-Wasserstein distance :math:`\int |F_a(x) - F_b(x)|\,dx` of the empirical CDFs of ``a``
    and ``b``, from one sort of each (``scipy.stats.ks_2samp`` and
    ``scipy.stats.wasserstein_distance`` each sort both samples again)."""
    a, b = np.sort(a.ravel()), np.sort(b.ravel())
    pooled = np.sort(np.concatenate([a, b]))
    gap = np.abs(
        np.searchsorted(a, pooled, side="right") / len(a)
        - np.searchsorted(b, pooled, side="right") / len(b)
    )
    return float(gap.max()), float(np.sum(gap[:-1] * np.diff(pooled)))


def compare(
    values: dict[str, np.ndarray],
    kinds: dict[str, str],
    psis: WeightedMoments | None,
    reference: Reference | None,
    q_moments: tuple[np.ndarray, np.ndarray] | None = None,
    draws: int | None = None,
) -> list[dict]:
    """One entry per scalar element, in site order.

    Parameters
    ----------
    values
        Site -> ``(S, *shape)`` variational draws (latent sites, then deterministic).
    kinds
        Site -> ``"latent"`` or ``"deterministic"``.
    psis
        PSIS-corrected moments of the flattened elements, in the same order (or None).
    reference
        Matched reference (:func:`ppl_models.vi.references.match_sites`) or None.
    q_moments, draws
        q's mean and sd of every element from all :math:`S` = ``draws`` draws, where
        ``values`` keeps only some of them (:mod:`ppl_models.vi.precision`); the HDI, ESS and
        the distances to the reference then come from the kept draws (``ks_draws`` says how
        many).

    Returns
    -------
    list of dict
        Keys ``name``, ``site``, ``kind``, ``mean``, ``sd``, ``mcse_mean``, ``mcse_sd``,
        ``hdi_low``, ``hdi_high``, ``ess_bulk``, ``psis_mean``, ``psis_sd``,
        ``psis_mcse_mean``, ``psis_mcse_sd``, ``psis_khat_mean``, ``psis_khat_sd``,
        ``q_khat_mean``, ``q_khat_sd``, ``ref_mean``, ``ref_sd``, ``ref_mcse_mean``,
        ``ref_mcse_sd``, ``ref_ess``, ``ref_r_hat``, ``std_mean_error``, ``sd_ratio``,
        ``w1_over_sd``, ``ks`` (``None`` where not defined).
    """
    elements = flatten_sites(values)
    site_of = {}
    for site, arr in values.items():
        for name in element_names(site, arr.shape[1:]):
            site_of[name] = site
    kept = len(next(iter(elements.values()))) if elements else 0
    n = draws or kept
    m = min(kept, SUMMARY_DRAWS)
    matrix = np.stack([v[:m] for v in elements.values()], axis=1) if elements else None
    low, high = hdi(matrix) if matrix is not None else (None, None)
    ref_elements, ref_summaries = {}, {}
    if reference is not None and reference.draws:
        ref_elements = flatten_sites(reference.draws, lead=2)
        ref_summaries = diagnostics.summarize_draws(ref_elements)
    rows = []
    for j, (name, draws_j) in enumerate(elements.items()):
        if q_moments is None:
            mean, sd = float(np.mean(draws_j)), float(np.std(draws_j))
        else:
            mean, sd = float(q_moments[0][j]), float(q_moments[1][j])
        row = {
            "name": name,
            "site": site_of[name],
            "kind": kinds.get(site_of[name], "latent"),
            "mean": mean,
            "sd": sd,
            "mcse_mean": sd / math.sqrt(n),
            "mcse_sd": sd / math.sqrt(2 * n),
            "hdi_low": _finite(low[j]),
            "hdi_high": _finite(high[j]),
            "ess_bulk": float(n),  # q's draws are independent: their ESS is their number
            "psis_mean": None if psis is None else _finite(psis.mean[j]),
            "psis_sd": None if psis is None else _finite(psis.sd[j]),
            "psis_mcse_mean": None if psis is None else _finite(psis.mcse_mean[j]),
            "psis_mcse_sd": None if psis is None else _finite(psis.mcse_sd[j]),
            "psis_khat_mean": _khat(psis, "khat_mean", j),
            "psis_khat_sd": _khat(psis, "khat_sd", j),
            "q_khat_mean": _khat(psis, "own_khat_mean", j),
            "q_khat_sd": _khat(psis, "own_khat_sd", j),
            "ref_mean": None,
            "ref_sd": None,
            "ref_mcse_mean": None,
            "ref_mcse_sd": None,
            "ref_ess": None,
            "ref_r_hat": None,
            "std_mean_error": None,
            "sd_ratio": None,
            "w1_over_sd": None,
            "ks": None,
            "ks_draws": None,
        }
        if name in ref_elements:
            ref = ref_elements[name]
            rs = ref_summaries[name]
            flat_ref = ref.ravel()
            if np.ptp(flat_ref) == 0:  # a constant (data a deterministic site passes through):
                ref_mean, ref_sd = float(flat_ref[0]), 0.0  # exact, not rounded sums
            else:
                ref_mean, ref_sd = float(np.mean(flat_ref)), float(np.std(flat_ref))
            ess = [e for e in (rs["ess_bulk"], rs["ess_tail"]) if math.isfinite(e)]
            ks, w1 = ks_and_wasserstein(draws_j, flat_ref)
            row.update(
                ref_mean=ref_mean,
                ref_sd=ref_sd,
                ref_mcse_mean=_finite(rs["mcse_mean"]),
                ref_mcse_sd=_finite(rs["mcse_sd"]),
                ref_ess=min(ess) if ess else None,
                ref_r_hat=_finite(rs["r_hat"]),
                ks=ks,
                ks_draws=kept,
            )
            if ref_sd > 0:
                row.update(
                    std_mean_error=(mean - ref_mean) / ref_sd,
                    sd_ratio=sd / ref_sd,
                    w1_over_sd=w1 / ref_sd,
                )
        rows.append(row)
    return rows
