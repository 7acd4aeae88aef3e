"""The truncated normal against scipy and mpmath."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ppl_models import exp_normal as en

mpmath = pytest.importorskip("mpmath")


def _tn(loc, scale):
    return en.TruncatedNormal(
        torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)
    )


@pytest.mark.parametrize("loc, scale", [(0.3, 0.5), (-1.0, 0.4), (2.0, 1.5), (-0.2, 0.1)])
def test_truncated_normal_matches_scipy(loc, scale):
    d = _tn(loc, scale)
    ref = stats.truncnorm(-loc / scale, np.inf, loc=loc, scale=scale)
    z = ref.ppf(np.linspace(0.001, 0.999, 41))
    zt = torch.tensor(z, dtype=torch.float64)
    np.testing.assert_allclose(d.log_prob(zt).numpy(), ref.logpdf(z), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d.cdf(zt).numpy(), ref.cdf(z), rtol=1e-12)
    u = np.array([1e-4, 0.1, 0.5, 0.9, 1 - 1e-4])  # the far tails are checked against mpmath
    np.testing.assert_allclose(
        d.icdf(torch.tensor(u, dtype=torch.float64)).numpy(), ref.ppf(u), rtol=1e-9
    )
    assert float(d.mean) == pytest.approx(ref.mean(), rel=1e-12)
    assert float(d.variance) == pytest.approx(ref.var(), rel=1e-11)
    outside = torch.tensor(-1e-9, dtype=torch.float64)
    with pytest.raises(ValueError, match="support"):
        d.log_prob(outside)
    unchecked = en.TruncatedNormal(d.loc, d.scale, validate_args=False)
    assert unchecked.log_prob(outside) == -math.inf


# loc/scale = -40, -1000: almost no mass is kept (a far upper tail); +40: truncation irrelevant.
@pytest.mark.parametrize("loc, scale", [(-8.0, 0.2), (-1000.0, 1.0), (8.0, 0.2), (-3.0, 1.0)])
def test_truncated_normal_deep_tails_match_mpmath(loc, scale):
    mp = mpmath.mp
    mp.dps = 60
    m_loc, m_scale = mp.mpf(loc), mp.mpf(scale)
    alpha = -m_loc / m_scale
    mass = mp.ncdf(-alpha)

    def cdf(z):
        xi = (mp.mpf(z) - m_loc) / m_scale
        if alpha > 0:  # survival form: mpmath is exact, this just avoids a long subtraction
            return 1 - mp.ncdf(-xi) / mass
        return (mp.ncdf(xi) - mp.ncdf(alpha)) / mass

    def log_pdf(z):
        return mp.log(mp.npdf((mp.mpf(z) - m_loc) / m_scale) / (m_scale * mass))

    d = _tn(loc, scale)
    u = [1e-12, 1e-6, 0.1, 0.5, 0.9, 1 - 1e-6, 1 - 1e-12]
    z = d.icdf(torch.tensor(u, dtype=torch.float64)).numpy()
    assert np.all(z > 0) and np.all(np.diff(z) > 0)
    for ui, zi in zip(u, z, strict=True):
        # icdf: mpmath's CDF at our quantile gives back u (and 1 - u) to near machine precision
        assert float(cdf(zi)) == pytest.approx(ui, rel=1e-12)
        assert float(1 - cdf(zi)) == pytest.approx(1 - ui, rel=1e-12)
        zt = torch.tensor(zi, dtype=torch.float64)
        assert float(d.cdf(zt)) == pytest.approx(float(cdf(zi)), rel=1e-12)
        assert float(d.log_prob(zt)) == pytest.approx(float(log_pdf(zi)), abs=1e-12)
    lam = mp.npdf(alpha) / mass
    assert float(d.mean) == pytest.approx(float(m_loc + m_scale * lam), rel=1e-12)
    var = m_scale**2 * (1 + alpha * lam - lam**2)
    assert float(d.variance) == pytest.approx(float(var), rel=1e-12)


def test_truncated_normal_rsample_gradient_matches_finite_differences():
    loc = torch.tensor(-0.7, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    z = en.TruncatedNormal(loc, scale).rsample((5,))
    assert z.requires_grad
    u = torch.tensor([1e-6, 0.2, 0.5, 0.8, 1 - 1e-6], dtype=torch.float64)
    z = en.TruncatedNormal(loc, scale).icdf(u)
    g_loc, g_scale = torch.autograd.grad(z.sum(), [loc, scale])

    def total(lc, sc):
        return float(_tn(lc, sc).icdf(u).sum())

    h = 1e-6
    assert float(g_loc) == pytest.approx((total(-0.7 + h, 0.5) - total(-0.7 - h, 0.5)) / (2 * h))
    assert float(g_scale) == pytest.approx((total(-0.7, 0.5 + h) - total(-0.7, 0.5 - h)) / (2 * h))


def test_truncated_normal_samples_follow_its_cdf():
    torch.manual_seed(0)
    draws = _tn(0.4, 0.7).sample((20_000,)).numpy()
    ref = stats.truncnorm(-0.4 / 0.7, np.inf, loc=0.4, scale=0.7)
    assert stats.kstest(draws, ref.cdf).pvalue > 1e-3


def test_truncated_normal_expands_for_batched_sites():
    d = _tn(0.3, 0.5).expand((4, 1))
    assert d.batch_shape == (4, 1)
    assert d.rsample().shape == (4, 1)
