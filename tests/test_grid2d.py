"""2-D grid posteriors against closed forms: a linear-Gaussian model's exact posterior and
evidence, Gaussian quantiles and highest-density regions, and a two-component mixture."""

import math

import numpy as np
import pytest
from scipy import stats

from ppl_models.grid2d import GridPosterior2D, grid_posteriors


def linear_gaussian(rng, n_images=4, dim=6, noise=0.3):
    """x = W z + b + noise, z ~ N(0, I_2): W, b, the images and their exact posteriors."""
    w = rng.normal(size=(dim, 2)) * np.array([1.0, 0.4])
    b = rng.normal(size=dim)
    z = rng.normal(size=(n_images, 2))
    x = z @ w.T + b + noise * rng.normal(size=(n_images, dim))
    precision = np.eye(2) + w.T @ w / noise**2
    cov = np.linalg.inv(precision)
    mean = (x - b) @ w @ cov / noise**2  # cov is symmetric
    marginal = stats.multivariate_normal(b, w @ w.T + noise**2 * np.eye(dim))
    log_evidence = np.array([marginal.logpdf(xi) for xi in x])

    def log_joint(index, zz):
        resid = x[index][:, None, :] - zz @ w.T - b
        log_norm = dim * math.log(noise * math.sqrt(2 * math.pi))
        log_lik = -0.5 * (resid**2).sum(-1) / noise**2 - log_norm
        return log_lik - 0.5 * (zz**2).sum(-1) - math.log(2 * math.pi)

    return log_joint, mean, cov, log_evidence


def test_linear_gaussian_grid_matches_the_exact_posterior_and_evidence():
    rng = np.random.default_rng(0)
    log_joint, mean, cov, log_evidence = linear_gaussian(rng)
    # a poor guess: centres off by several sds, scales ten times too wide or too narrow
    sd = np.sqrt(np.diag(cov))
    center = mean + np.array([[4.0, -3.0], [0.0, 0.0], [-6.0, 1.0], [2.0, 2.0]]) * sd
    scale = np.array([[10.0, 10.0], [0.1, 0.1], [1.0, 0.05], [1.0, 1.0]]) * sd
    grids = grid_posteriors(log_joint, center, scale, n_points=401, chunk=5000)
    for g, m, le in zip(grids, mean, log_evidence, strict=True):
        assert g.log_normalizer == pytest.approx(le, abs=1e-6)
        np.testing.assert_allclose(g.mean, m, atol=1e-6 * sd.max())
        np.testing.assert_allclose(g.cov, cov, rtol=1e-6, atol=1e-9)
        assert g.corr == pytest.approx(cov[0, 1] / (sd[0] * sd[1]), abs=1e-6)
        assert g.edge_drop >= 30.0
        assert g.log_z_error < 1e-6
        # the box is tight: the posterior spans a good share of it, not a few cells
        assert (g.u[-1] - g.u[0]) < 30 * sd[0] and (g.v[-1] - g.v[0]) < 30 * sd[1]


def test_refining_or_widening_the_grid_leaves_log_z_unchanged():
    rng = np.random.default_rng(1)
    log_joint, mean, cov, _ = linear_gaussian(rng, n_images=2)
    scale = np.broadcast_to(np.sqrt(np.diag(cov)), mean.shape)
    base = grid_posteriors(log_joint, mean, scale, n_points=401)
    finer = grid_posteriors(log_joint, mean, scale, n_points=801)
    wider = grid_posteriors(log_joint, mean, scale, n_points=401, log_drop=45.0)
    coarser = grid_posteriors(log_joint, mean, scale, n_points=201)
    for a, b, c, d in zip(base, finer, wider, coarser, strict=True):
        assert b.log_normalizer == pytest.approx(a.log_normalizer, abs=1e-9)
        assert c.log_normalizer == pytest.approx(a.log_normalizer, abs=1e-9)
        assert d.log_normalizer == pytest.approx(a.log_normalizer, abs=1e-9)


def test_quantiles_draws_and_density_levels_of_a_gaussian():
    rng = np.random.default_rng(2)
    log_joint, mean, cov, _ = linear_gaussian(rng, n_images=1)
    sd = np.sqrt(np.diag(cov))
    (g,) = grid_posteriors(log_joint, mean, sd[None], n_points=401)
    levels = np.array([0.03, 0.25, 0.5, 0.9, 0.97])
    exact = stats.norm.ppf(levels[:, None], mean[0], sd)
    # the cell histogram's quantiles: O(h^2) off, h about 0.04 sd
    np.testing.assert_allclose(g.quantile(levels), exact, atol=2e-3 * sd.max())
    draws = g.sample(40000, np.random.default_rng(3))
    se = sd / math.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - mean[0]) < 5 * se)
    np.testing.assert_allclose(np.cov(draws.T), cov, rtol=0.03, atol=0.03 * sd.prod())
    # highest-density region of a 2-D Gaussian holding mass m: log f >= peak + log(1 - m)
    masses = np.array([0.393, 0.865, 0.989])
    peak = g.log_normalizer - math.log(2 * math.pi * math.sqrt(np.linalg.det(cov)))
    np.testing.assert_allclose(g.density_levels(masses), peak + np.log1p(-masses), atol=0.02)


def test_the_search_box_finds_a_second_mode_the_guess_misses():
    centres = np.array([[-2.0, 1.0], [2.5, -1.5]])
    sds, weights = 0.2, np.array([0.3, 0.7])

    def log_mixture(index, z):
        comp = [
            math.log(w) - ((z - c) ** 2).sum(-1) / (2 * sds**2) - math.log(2 * math.pi * sds**2)
            for w, c in zip(weights, centres, strict=True)
        ]
        return np.logaddexp(*comp) + 3.0  # log Z = 3

    start = dict(center=centres[:1], scale=np.full((1, 2), sds))
    (alone,) = grid_posteriors(log_mixture, **start)
    assert alone.log_normalizer == pytest.approx(3.0 + math.log(0.3), abs=1e-4)
    (g,) = grid_posteriors(log_mixture, **start, search_box=(np.full(2, -6.0), np.full(2, 6.0)))
    assert g.log_normalizer == pytest.approx(3.0, abs=1e-6)
    np.testing.assert_allclose(g.mean, weights @ centres, atol=1e-6)


def test_bad_input_is_refused():
    def flat(index, z):
        return np.zeros(z.shape[:2])

    one = dict(center=np.zeros((1, 2)), scale=np.ones((1, 2)))
    with pytest.raises(ValueError, match="did not settle|still reach"):
        grid_posteriors(flat, **one)
    with pytest.raises(ValueError, match="odd integer"):
        grid_posteriors(flat, **one, n_points=400)
    with pytest.raises(ValueError, match=r"\(b, 2\)"):
        grid_posteriors(flat, center=np.zeros(2), scale=np.ones(2))
    with pytest.raises(ValueError, match="not finite anywhere"):
        grid_posteriors(lambda i, z: np.full(z.shape[:2], -np.inf), **one)
    with pytest.raises(ValueError, match="equally spaced"):
        GridPosterior2D(np.array([0.0, 1.0, 3.0]), np.arange(3.0), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        GridPosterior2D(np.arange(3.0), np.arange(3.0), np.full((3, 3), np.nan))
