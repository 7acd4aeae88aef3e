"""Evidence bounds, k-hat, d_2 and VIABEL's bounds against independent truths."""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import integrate, special, stats

from ppl_models import diagnostics, exp_normal, importance
from ppl_models.vi import bounds as vb
from ppl_models.vi.logweights import draw_log_weights

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

RATE = 1.0
X = np.array([0.9, 1.7, 0.2, 1.4, 0.6])  # N = 5: a posterior far from any exponential
N_DRAWS = 200_000


def _exact_log_evidence():
    """log p(x) by scipy quadrature of the joint density, independent of the closed form."""

    def log_joint(z):
        return math.log(RATE) - RATE * z + stats.norm.logpdf(X, z, 1.0).sum()

    peak = max(log_joint(z) for z in np.linspace(0, 5, 501))
    value, _ = integrate.quad(lambda z: math.exp(log_joint(z) - peak), 0, np.inf)
    return peak + math.log(value)


def _exact_posterior():
    """p(z | x) = N((sum x - rate)/N, 1/N) truncated to z > 0, as a scipy distribution."""
    n = len(X)
    loc, scale = (X.sum() - RATE) / n, 1 / math.sqrt(n)
    return stats.truncnorm((0 - loc) / scale, np.inf, loc=loc, scale=scale)


@pytest.fixture(scope="module")
def exp_normal_weights():
    theta = exp_normal.optimal_theta(X, RATE)
    x = torch.as_tensor(X, dtype=torch.float64)

    def guide(x, rate):
        pyro.sample("z", dist.Exponential(torch.tensor(theta, dtype=torch.float64)))

    lw = draw_log_weights(exp_normal.model, guide, {"x": x, "rate": RATE}, draws=N_DRAWS, seed=1)
    return theta, lw


def test_iw_bounds_rise_with_k_and_reach_the_exact_evidence(exp_normal_weights):
    theta, lw = exp_normal_weights
    log_p = _exact_log_evidence()
    assert log_p == pytest.approx(exp_normal.log_evidence(X, RATE), abs=1e-8)
    values, errors = importance.iw_bounds(lw.log_weights)
    ks = sorted(values, key=int)
    assert ks == ["1", "10", "100", "1000"]
    for lo, hi in zip(ks, ks[1:], strict=False):
        assert values[hi] > values[lo]
    assert values["1"] == pytest.approx(exp_normal.elbo(theta, X, RATE), abs=4 * errors["1"])
    gap = log_p - values["1000"]
    assert -4 * errors["1000"] < gap < 0.01  # within 0.01 nats of log p(x) from below
    assert log_p - values["1"] > 0.05  # the exponential guide is visibly off


def test_cubo_above_evidence_above_elbo_and_d2_bounds_the_renyi_divergence(exp_normal_weights):
    _, lw = exp_normal_weights
    log_p = _exact_log_evidence()
    cubo, elbo = importance.cubo2(lw.log_weights), importance.elbo(lw.log_weights)
    assert cubo >= log_p >= elbo
    # D_2(p || q) = log E_q[(p/q)^2] by quadrature, in z (it is the same in any coordinates)
    theta = exp_normal.optimal_theta(X, RATE)
    post = _exact_posterior()
    upper = float(post.ppf(1 - 1e-15))
    d2_true = math.log(
        integrate.quad(
            lambda z: math.exp(2 * post.logpdf(z) + theta * z) / theta, 0, upper, limit=200
        )[0]
    )
    assert importance.d2_bound(lw.log_weights) >= d2_true - 0.01
    assert 2 * (cubo - log_p) == pytest.approx(d2_true, abs=0.02)


def test_viabel_bounds_hold_against_the_exact_posterior(exp_normal_weights):
    """W1, W2, mean and sd errors in the guide's unconstrained space u = log z."""
    theta, lw = exp_normal_weights
    d2 = importance.d2_bound(lw.log_weights)
    bounds = vb.wasserstein_bounds(d2, lw.unconstrained["z"])
    q = stats.expon(scale=1 / theta)
    p = _exact_posterior()
    t = (np.arange(400_000) + 0.5) / 400_000  # quantile levels: W_r^r = int |F_q^-1 - F_p^-1|^r
    du = np.log(q.ppf(t)) - np.log(p.ppf(t))
    w1, w2 = float(np.mean(np.abs(du))), float(np.sqrt(np.mean(du**2)))

    def moments(d):
        m = integrate.quad(lambda z: math.log(z) * d.pdf(z), 0, np.inf, limit=200)[0]
        v = integrate.quad(lambda z: (math.log(z) - m) ** 2 * d.pdf(z), 0, np.inf, limit=200)[0]
        return m, math.sqrt(v)

    (mq, sq), (mp, sp) = moments(q), moments(p)
    assert mq == pytest.approx(-np.euler_gamma - math.log(theta), abs=1e-6)
    assert bounds["w1"] >= w1 and bounds["w2"] >= w2
    assert bounds["mean_error"] >= abs(mq - mp)
    assert bounds["sd_error"] >= abs(sq - sp)
    per = vb.coordinate_bounds(d2, lw.unconstrained["z"])
    assert per["mean_error"][0] >= abs(mq - mp) and per["sd_error"][0] >= abs(sq - sp)
    assert per["sd"][0] == pytest.approx(sq, rel=0.01)


def test_khat_equals_an_independent_psislw():
    rng = np.random.default_rng(3)
    for log_w in (rng.normal(size=5000), rng.standard_t(3, size=5000) * 2.0):
        with np.errstate(over="ignore"):
            smoothed_az, k_az = az.psislw(log_w.copy(), reff=1.0)
        smoothed, k = diagnostics.psis_smooth(log_w)
        assert k == pytest.approx(float(k_az), abs=1e-12)
        assert float(diagnostics.psis_khat(log_w)) == pytest.approx(float(k_az), abs=1e-12)
        np.testing.assert_allclose(smoothed, smoothed_az - special.logsumexp(smoothed_az))


def test_shifted_gaussian_d2_is_twice_delta_squared_while_khat_stays_low():
    """q = N(delta, 1), p = N(0, 1): log w = -delta^2/2 - delta eps is normal, so k-hat is
    low, yet D_2 = delta^2 and d_2 = 2 delta^2 expose the shift."""
    delta = 0.5
    rng = np.random.default_rng(0)
    z = rng.normal(delta, 1.0, size=100_000)
    log_w = stats.norm.logpdf(z) - stats.norm.logpdf(z, delta)
    assert float(diagnostics.psis_khat(log_w)) < 0.3
    assert importance.d2_bound(log_w) == pytest.approx(2 * delta**2, rel=0.05)
    b = vb.coordinate_bounds(importance.d2_bound(log_w), z)
    assert b["mean_error"][0] >= delta
