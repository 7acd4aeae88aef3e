"""Statistics of importance weights against closed forms and numpy."""

import math

import numpy as np
import pytest
from scipy import special, stats

from ppl_models import importance


def _log_weights(lam, n, seed=0):
    """log w of q = Exponential(lam) against p = Exponential(1): p(x) = 1, so log p(x) = 0."""
    z = np.random.default_rng(seed).exponential(1.0, n)
    return np.log(lam) + (1 - lam) * z


def test_iw_bounds_rise_towards_the_evidence():
    lam = 0.5
    lw = _log_weights(lam, 400_000, seed=1)
    k1, se1 = importance.iw_bound(lw, 1)
    assert k1 == pytest.approx(math.log(lam) + 1 - lam, abs=4 * se1)
    values = [importance.iw_bound(lw, k)[0] for k in (1, 10, 100, 1000)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] < 0 and values[-1] > -0.01  # log p(x) = 0
    with pytest.raises(ValueError, match="K must be between 1"):
        importance.iw_bound(lw[:10], 11)


def test_iw_bound_per_row_averages_rows():
    rows = np.stack([np.full(100, -1.0), np.full(100, -3.0)])
    mean, se = importance.iw_bound(rows, 10)
    assert mean == pytest.approx(-2.0) and se == pytest.approx(1.0)


def test_importance_ess():
    assert importance.importance_ess(np.zeros(500)) == pytest.approx(500)
    assert importance.importance_ess(np.array([0.0, -800.0, -900.0])) == pytest.approx(1.0)


def test_cubo_is_stable_for_huge_log_weights():
    log_w = np.array([1000.0, 1000.0, 999.0, 998.0] * 5)
    expected = 1000 + 0.5 * math.log(np.mean(np.exp(2 * (log_w - 1000))))
    assert importance.cubo2(log_w) == pytest.approx(expected, rel=1e-12)
    assert importance.d2_bound(np.full(50, 3.0)) == 0.0


def test_weighted_moments_against_numpy_and_importance_sampling():
    rng = np.random.default_rng(1)
    f = rng.normal(2.0, 3.0, size=(50_000, 2))
    equal = np.full(len(f), -math.log(len(f)))
    m = importance.weighted_moments(f, equal)
    np.testing.assert_allclose(m.mean, f.mean(0))
    np.testing.assert_allclose(m.sd, f.std(0))
    np.testing.assert_allclose(m.mcse_mean, f.std(0) / math.sqrt(len(f)), rtol=1e-9)
    # q = N(0, 2^2) re-weighted to p = N(1, 1): moments (1, 1)
    z = rng.normal(0.0, 2.0, size=200_000)
    lw = stats.norm.logpdf(z, 1.0, 1.0) - stats.norm.logpdf(z, 0.0, 2.0)
    m = importance.weighted_moments(z, lw - special.logsumexp(lw))
    assert abs(m.mean[0] - 1.0) < 4 * m.mcse_mean[0]
    assert abs(m.sd[0] - 1.0) < 4 * m.mcse_sd[0]
