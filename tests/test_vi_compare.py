"""The per-element summaries of q's draws: the vectorized HDI against ArviZ's and a normal's
closed form; a constant element against a constant reference."""

import arviz as az
import numpy as np
import pytest
from scipy import stats

from ppl_models.vi.compare import compare, hdi, ks_and_wasserstein
from ppl_models.vi.references import Reference
from ppl_models.vi.verdict import VerdictRules, reference_checks


def test_the_hdi_of_every_column_at_once_is_arvizs_and_a_normals_closed_form():
    rng = np.random.default_rng(0)
    draws = np.column_stack([rng.normal(size=40_000), rng.gamma(2.0, size=40_000)])
    low, high = hdi(draws, 0.94)
    for j in range(draws.shape[1]):
        np.testing.assert_allclose([low[j], high[j]], az.hdi(draws[:, j], hdi_prob=0.94))
    z = stats.norm.ppf(0.97)  # a symmetric density's HDI is its central interval
    np.testing.assert_allclose([low[0], high[0]], [-z, z], atol=0.03)


def test_an_element_constant_in_both_q_and_the_reference_agrees_and_is_not_standardised():
    """Data that a deterministic site passes through (``obs_mask``'s observed entries): equal
    constants in q's and the reference's draws, whose rounded means and sds must not turn into
    a "1 sd" error or an sd ratio of 0."""
    rng = np.random.default_rng(1)
    constant = 2.448105346  # a value whose sum over many copies is not exact
    q = np.column_stack([np.full(20_000, constant), rng.normal(1.0, 2.0, 20_000)])
    ref = np.stack([np.column_stack([np.full(500, constant), rng.normal(1.0, 2.0, 500)])] * 4)
    rows = compare(
        {"y": q}, {"y": "deterministic"}, None, Reference(draws={"y": ref}, source="test")
    )
    fixed, varying = rows
    assert fixed["ref_sd"] == 0.0 and fixed["ref_mean"] == constant
    assert fixed["std_mean_error"] is None and fixed["sd_ratio"] is None
    assert reference_checks(fixed, 20_000, VerdictRules())["certified"]
    assert abs(varying["std_mean_error"]) < 0.3 and varying["sd_ratio"] > 0.8
    off = fixed | {"mean": constant + 1e-3}
    assert not reference_checks(off, 20_000, VerdictRules())["certified"]


def test_ks_and_wasserstein_are_scipys_statistics():
    # one sort of each sample gives scipy's two-sample KS statistic and 1-Wasserstein distance,
    # ties (rounded draws) and samples of different sizes and tails included
    rng = np.random.default_rng(3)
    pairs = [
        (rng.normal(size=20_000), rng.standard_t(3, size=4_000)),
        (rng.normal(size=50), rng.normal(0.3, 2.0, size=70)),
        (np.round(rng.normal(size=1_000), 1), np.round(rng.normal(size=800), 1)),
        (rng.exponential(size=(300, 2)), rng.exponential(size=(2, 250))),
    ]
    for a, b in pairs:
        ks, w1 = ks_and_wasserstein(a, b)
        assert ks == pytest.approx(stats.ks_2samp(a.ravel(), b.ravel()).statistic, abs=1e-12)
        assert w1 == pytest.approx(stats.wasserstein_distance(a.ravel(), b.ravel()), abs=1e-12)
