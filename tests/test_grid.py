"""Grid posteriors in log space, against the exact exponential-normal posterior and known densities.

The reference posterior is ``scipy.stats.truncnorm`` with loc (S - rate)/N and scale 1/sqrt(N),
and the reference evidence is ``exp_normal.log_evidence`` (itself checked against quadrature in
``test_exp_normal.py``).
"""

import math

import numpy as np
import pytest
from scipy import stats

from ppl_models import exp_normal as en
from ppl_models.grid import GridPosterior


def _data(n, rate, seed, z):
    return np.random.default_rng(seed).normal(z, 1.0, n), rate


DATASETS = {
    "n5": _data(5, 1.0, 0, 0.8),
    "n1000": _data(1000, 1.0, 1, 0.3),
    "n100000": _data(100_000, 1.0, 2, 1.2),
    "n5_sum_below_rate": _data(5, 4.0, 3, 0.1),
    "n1000_sum_below_rate": _data(1000, 2.0, 4, 0.0),
}


@pytest.fixture(scope="module", params=list(DATASETS), ids=list(DATASETS))
def case(request):
    x, rate = DATASETS[request.param]
    loc, scale = (x.sum() - rate) / x.size, 1.0 / math.sqrt(x.size)
    exact = stats.truncnorm(-loc / scale, np.inf, loc=loc, scale=scale)
    return x, rate, exact, en.grid_posterior(x, rate)


def test_datasets_cover_sum_below_rate():
    for name in ("n5_sum_below_rate", "n1000_sum_below_rate"):
        x, rate = DATASETS[name]
        assert x.sum() < rate


def test_pdf_matches_exact_posterior(case):
    x, rate, exact, grid = case
    z = np.concatenate([grid.points, exact.ppf(np.linspace(1e-9, 1 - 1e-9, 501))])
    reference = exact.pdf(z)
    # sup-norm error relative to the largest density (the grid is dense around the mode)
    assert np.max(np.abs(grid.pdf(z) - reference)) < 1e-6 * reference.max()


def test_log_normalizer_is_the_log_evidence(case):
    x, rate, _, grid = case
    assert grid.log_normalizer == pytest.approx(en.log_evidence(x, rate), rel=1e-14, abs=1e-9)


def test_moments_match_exact_posterior(case):
    _, _, exact, grid = case
    assert grid.mean == pytest.approx(exact.mean(), rel=1e-9)
    assert grid.variance == pytest.approx(exact.var(), rel=1e-8)


def test_cdf_matches_exact_and_inverts_quantile(case):
    _, _, exact, grid = case
    q = np.linspace(1e-6, 1 - 1e-6, 201)
    z = grid.quantile(q)
    np.testing.assert_allclose(grid.cdf(z), q, atol=1e-12)
    np.testing.assert_allclose(z, exact.ppf(q), rtol=1e-8)
    np.testing.assert_allclose(grid.cdf(grid.points), exact.cdf(grid.points), atol=1e-10)
    assert grid.cdf(grid.points[0] - 1.0) == 0.0 and grid.cdf(grid.points[-1] + 1.0) == 1.0


def test_samples_follow_exact_posterior(case):
    _, _, exact, grid = case
    draws = grid.sample(20_000, np.random.default_rng(0))
    assert draws.shape == (20_000,) and np.all(draws >= 0)
    assert stats.kstest(draws, exact.cdf).pvalue > 1e-3


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0])
def test_kl_from_exponential_matches_closed_form(case, factor):
    x, rate, _, grid = case
    theta = factor * en.optimal_theta(x, rate)
    kl = grid.kl_from(lambda z: stats.expon.logpdf(z, scale=1.0 / theta))
    assert kl == pytest.approx(en.kl_to_posterior(theta, x, rate), rel=1e-9, abs=1e-6)


def test_large_n_stays_finite_where_exp_then_normalise_underflows():
    x, rate = DATASETS["n100000"]
    log_joint = en.log_joint(np.linspace(0.0, 15.0, 2000), x, rate)
    with np.errstate(invalid="ignore"):
        naive = np.exp(log_joint) / np.sum(np.exp(log_joint))  # the notebook's recipe
    assert np.all(np.isnan(naive))
    grid = en.grid_posterior(x, rate)
    values = [grid.log_normalizer, grid.mean, grid.variance, grid.kl_from(lambda z: -z)]
    assert np.all(np.isfinite(values)) and grid.variance > 0
    assert np.all(np.isfinite(grid.pdf(grid.points)))
    assert np.all(np.isfinite(grid.sample(1000, np.random.default_rng(1))))


# --- the generic grid ------------------------------------------------------------------------


def test_normalises_a_shifted_normal_in_log_space():
    offset = -1e5  # exp() of this underflows: the grid must never exponentiate before normalising
    grid = GridPosterior(lambda z: offset - 0.5 * ((z - 3.0) / 0.2) ** 2, guess=-10.0)
    expected = offset + math.log(0.2 * math.sqrt(2 * math.pi))
    assert grid.log_normalizer == pytest.approx(expected, rel=1e-15, abs=1e-10)
    assert grid.mode == pytest.approx(3.0, abs=1e-6)  # only anchors the grid
    assert grid.mean == pytest.approx(3.0, rel=1e-12)
    assert grid.variance == pytest.approx(0.04, rel=1e-10)
    assert grid.quantile(0.975) == pytest.approx(stats.norm.ppf(0.975, 3.0, 0.2), rel=1e-10)


def test_mode_on_the_support_bound():
    grid = GridPosterior(lambda z: -2.0 * z, low=0.0, n_points=2001)
    assert grid.mode == 0.0 and grid.points[0] == 0.0
    # Simpson's O(h^4) error where the density is cut off by the bound
    assert grid.log_normalizer == pytest.approx(math.log(0.5), abs=1e-10)
    assert grid.cdf(1.0) == pytest.approx(1 - math.exp(-2.0), rel=1e-12)
    assert grid.log_pdf(-1.0) == -math.inf


def test_given_mode_and_density_vanishing_at_the_bound():
    gamma = stats.gamma(a=3.0, scale=0.5)
    grid = GridPosterior(gamma.logpdf, low=0.0, mode=1.0)
    assert grid.log_normalizer == pytest.approx(0.0, abs=1e-10)
    assert grid.mean == pytest.approx(gamma.mean(), rel=1e-10)


def test_density_that_is_nan_on_the_bound():
    lognormal = stats.lognorm(s=0.3, scale=2.0)

    def log_q(z):  # -inf + inf = nan at z = 0, as torch's LogNormal.log_prob gives
        with np.errstate(divide="ignore", invalid="ignore"):
            log_z = np.log(z)
            return (
                -0.5 * ((log_z - np.log(2.0)) / 0.3) ** 2 - np.log(0.3 * np.sqrt(2 * np.pi)) - log_z
            )

    grid = GridPosterior(log_q, low=0.0, guess=2.0)
    assert grid.log_normalizer == pytest.approx(0.0, abs=1e-12)
    assert grid.mean == pytest.approx(lognormal.mean(), rel=1e-12)


def test_kl_from_rejects_an_unnormalised_q():
    grid = GridPosterior(lambda z: -0.5 * z**2)
    with pytest.raises(ValueError, match="normalised"):
        grid.kl_from(lambda z: -0.5 * z**2)
    kl = grid.kl_from(stats.norm(0.5, 1.0).logpdf)
    assert kl == pytest.approx(0.125, rel=1e-10)  # KL(N(0.5, 1) || N(0, 1)) = 0.5^2 / 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_points": 2}, "n_points must be an integer >= 3, got 2"),
        ({"scale": 0.0}, "scale must be a positive finite number"),
        ({"low": 1.0, "high": 0.0}, "need low < high"),
        ({"log_drop": -1.0}, "log_drop must be a positive finite number"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GridPosterior(lambda z: -(z**2), **kwargs)


def test_non_normalisable_density_is_reported():
    with pytest.raises(ValueError, match="does not fall"):
        GridPosterior(lambda z: np.zeros_like(z))
    with pytest.raises(ValueError, match="finite at guess"), np.errstate(divide="ignore"):
        GridPosterior(lambda z: np.log(z), low=0.0)


def test_quantile_levels_are_checked():
    grid = GridPosterior(lambda z: -0.5 * z**2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        grid.quantile([0.5, 1.5])
