"""Exponential-normal closed forms (evidence, posterior, ELBO, KL, optimal guides) against scipy
quadrature and Monte Carlo."""

import math

import numpy as np
import pytest
import torch
from exp_normal_reference import DATASETS, quad_posterior, ref_log_joint, scipy_kl
from scipy import integrate, optimize, stats

from ppl_models import exp_normal as en


def test_log_joint_matches_scipy_densities(dataset):
    x, rate = dataset
    z = np.array([0.0, 0.01, 0.5, 1.0, 3.0, 10.0])
    np.testing.assert_allclose(en.log_joint(z, x, rate), ref_log_joint(z, x, rate), rtol=1e-13)
    assert en.log_joint(-0.1, x, rate) == -math.inf


def test_log_evidence_matches_quadrature(dataset):
    x, rate = dataset
    integral, c = quad_posterior(lambda z: 1.0, x, rate)
    reference = c + math.log(integral)
    assert en.log_evidence(x, rate) == pytest.approx(reference, rel=1e-10, abs=1e-10)


def test_datasets_cover_sum_below_rate():
    assert DATASETS["sum_below_rate"][0].sum() < DATASETS["sum_below_rate"][1]
    assert DATASETS["negative_mean"][0].sum() < 0


def test_exact_posterior_moments_match_quadrature(dataset):
    x, rate = dataset
    mass, _ = quad_posterior(lambda z: 1.0, x, rate)
    mean = quad_posterior(lambda z: z, x, rate)[0] / mass
    var = quad_posterior(lambda z: (z - mean) ** 2, x, rate)[0] / mass
    post = en.exact_posterior(x, rate)
    assert float(post.mean) == pytest.approx(mean, rel=1e-9)
    assert float(post.variance) == pytest.approx(var, rel=1e-8)


def test_optimal_theta_maximises_elbo(dataset):
    x, rate = dataset
    result = optimize.minimize_scalar(
        lambda t: -en.elbo(t, x, rate),
        bounds=(1e-3, 1e4),
        method="bounded",
        options={"xatol": 1e-12},
    )
    assert en.optimal_theta(x, rate) == pytest.approx(result.x, rel=1e-6)


@pytest.mark.parametrize("theta", [0.3, 1.0, 4.0])
def test_elbo_matches_quadrature_expectation(dataset, theta):
    x, rate = dataset
    q = stats.expon(scale=1.0 / theta)
    integrand = lambda z: q.pdf(z) * (ref_log_joint(z, x, rate)[0] - q.logpdf(z))  # noqa: E731
    edges = [0.0, *q.ppf([1e-6, 0.5, 1 - 1e-6]), np.inf]
    reference = sum(
        integrate.quad(integrand, a, b, epsabs=1e-13, epsrel=1e-13, limit=200)[0]
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    )
    assert en.elbo(theta, x, rate) == pytest.approx(reference, rel=1e-10)


def test_elbo_matches_monte_carlo():
    x, rate = DATASETS["n5"]
    theta = 0.8
    z = np.random.default_rng(7).exponential(1.0 / theta, 400_000)
    draws = ref_log_joint(z, x, rate) - stats.expon.logpdf(z, scale=1.0 / theta)
    stderr = draws.std() / math.sqrt(z.size)
    assert abs(en.elbo(theta, x, rate) - draws.mean()) < 4 * stderr


def test_elbo_and_kl_are_vectorised(dataset):
    x, rate = dataset
    thetas = np.array([[0.5, 1.0], [2.0, 3.0]])
    values = en.elbo(thetas, x, rate)
    assert values.shape == (2, 2)
    assert values[1, 0] == pytest.approx(en.elbo(2.0, x, rate), rel=1e-15)
    assert en.kl_to_posterior(thetas, x, rate).shape == (2, 2)


def test_kl_is_nonnegative_and_minimised_at_theta_star(dataset):
    x, rate = dataset
    thetas = np.geomspace(0.02, 50.0, 4001)
    kl = en.kl_to_posterior(thetas, x, rate)
    assert np.all(kl >= 0)
    best = thetas[np.argmin(kl)]
    step = thetas[1] / thetas[0]
    assert best / step <= en.optimal_theta(x, rate) <= best * step


def test_kl_equals_evidence_minus_elbo(dataset):
    x, rate = dataset
    theta = 1.3
    expected = en.log_evidence(x, rate) - en.elbo(theta, x, rate)
    assert en.kl_to_posterior(theta, x, rate) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_theta_must_be_positive():
    x, rate = DATASETS["n5"]
    with pytest.raises(ValueError, match="theta must be positive and finite, got -1.0"):
        en.elbo([1.0, -1.0], x, rate)


@pytest.mark.parametrize("family", en.GUIDE_FAMILIES)
def test_optimal_guide_params(family, dataset):
    x, rate = dataset
    params = en.optimal_guide_params(family, x, rate)
    kl = en.kl_of(en.guide_distribution(family, params), x, rate)
    assert kl >= -1e-12
    if family == "exponential":
        assert kl == pytest.approx(en.kl_to_posterior(en.optimal_theta(x, rate), x, rate), rel=1e-9)
    elif family == "truncated-normal":
        n, total = x.size, x.sum()
        assert params["loc"] == pytest.approx((total - rate) / n, rel=1e-4, abs=1e-5)
        assert params["scale"] == pytest.approx(1 / math.sqrt(n), rel=1e-4)
        assert kl < 1e-6
    # A local minimum: nudging any parameter by 1% raises the KL.
    for name in params:
        for factor in (0.99, 1.01):
            nudged = dict(params, **{name: params[name] * factor})
            assert en.kl_of(en.guide_distribution(family, nudged), x, rate) > kl


@pytest.mark.parametrize("theta", [0.2, 1.0, 5.0])
def test_kl_of_exponential_matches_closed_form(dataset, theta):
    x, rate = dataset
    q = torch.distributions.Exponential(torch.tensor(theta, dtype=torch.float64))
    assert en.kl_of(q, x, rate) == pytest.approx(en.kl_to_posterior(theta, x, rate), rel=1e-10)
    assert en.elbo_of(q, x, rate) == pytest.approx(en.elbo(theta, x, rate), rel=1e-10)


def test_kl_of_gamma_matches_scipy_quadrature():
    x, rate = DATASETS["n5"]
    reference = scipy_kl(stats.gamma(a=20.0, scale=1 / 7.0), x, rate)
    gamma = en.guide_distribution("gamma", {"concentration": 20.0, "rate": 7.0})
    assert en.kl_of(gamma, x, rate) == pytest.approx(reference, rel=1e-9)


def test_kl_of_without_icdf_matches_scipy_quadrature():
    # torch's InverseGamma has no icdf, so kl_of splits its range at mean +- k sd instead.
    x, rate = DATASETS["n200"]
    q_torch = torch.distributions.InverseGamma(
        torch.tensor(30.0, dtype=torch.float64), torch.tensor(25.0, dtype=torch.float64)
    )
    reference = scipy_kl(stats.invgamma(a=30.0, scale=25.0), x, rate)
    assert en.kl_of(q_torch, x, rate) == pytest.approx(reference, rel=1e-9)


def test_kl_of_the_exact_posterior_is_zero_never_negative(dataset):
    # the quadrature's pieces can round to -1e-17 in sum; a KL is clipped at 0
    x, rate = dataset
    assert en.kl_of(en.exact_posterior(x, rate), x, rate) == pytest.approx(0.0, abs=1e-10)
    assert en.kl_of(en.exact_posterior(x, rate), x, rate) >= 0.0
