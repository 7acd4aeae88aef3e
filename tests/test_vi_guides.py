"""Guides by name and their Laplace start, against closed forms."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from ppl_models.svi import local_params
from ppl_models.vi.guides import make_guide
from ppl_models.vi.initialization import feasible_init, laplace_start
from ppl_models.vi.settings import GUIDES


def regression(X, y, sigma):
    """y ~ Normal(X beta, sigma) with a flat prior on beta: posterior N(b, sigma^2 (X'X)^-1)."""
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (X.shape[-1],)))
    pyro.sample("y", dist.Normal(beta @ X.T, sigma).to_event(1), obs=y)


def regression_data(n=30, d=3, sigma=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X[:, 1] += 0.8 * X[:, 0]  # correlated posterior
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)[:d] + sigma * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    return {"X": X, "y": y, "sigma": sigma}


def exact_posterior(data):
    X, y, s = data["X"], data["y"], data["sigma"]
    precision = X.T @ X / s**2
    cov = torch.linalg.inv(precision)
    return cov @ X.T @ y / s**2, cov, precision


def test_laplace_of_a_gaussian_potential_is_exact():
    a = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    m = torch.tensor([1.0, -3.0], dtype=torch.float64)

    def potential(z):
        return 0.5 * (z - m) @ a @ (z - m)

    start = laplace_start(potential, torch.zeros(2, dtype=torch.float64))
    assert start.method == "laplace" and start.converged
    torch.testing.assert_close(start.loc, m, atol=1e-6, rtol=0)
    torch.testing.assert_close(start.precision, a, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(start.scale_tril @ start.scale_tril.T, torch.linalg.inv(a))
    torch.testing.assert_close(start.diag_scale, torch.diagonal(a).rsqrt())


def test_no_minimum_starts_where_pyro_starts_and_names_the_site_that_ran_to_its_bound():
    # A funnel-like potential without a minimum: it decreases without bound as z0 -> -inf,
    # z0 being the log of a positive scale.
    def potential(z):
        return 3.0 * z[0] + 0.5 * z[1] ** 2 * torch.exp(-2 * z[0])

    origin = torch.zeros(2, dtype=torch.float64)
    start = laplace_start(
        potential, origin, iterations=50, coordinates=[("tau", "lower"), ("theta", "")]
    )
    assert start.method == "prior" and not start.converged
    torch.testing.assert_close(start.loc, origin)  # the feasible point, not the funnel's neck
    assert start.init_scale == 0.1  # Pyro's init_scale
    torch.testing.assert_close(start.diag_scale, torch.ones(2, dtype=torch.float64))
    assert "No MAP initialisation" in start.notes[0]
    assert "tau runs towards its lower bound" in start.notes[0]
    assert "theta" not in start.notes[0]


def test_feasible_init_never_samples_a_flat_prior():
    init = feasible_init(torch.float64)
    flat = {"fn": dist.ImproperUniform(constraints.positive, (), (3,)), "name": "s"}
    value = init(flat)
    assert value.dtype == torch.float64 and value.shape == (3,)
    torch.testing.assert_close(value, torch.ones(3, dtype=torch.float64))  # exp(0)
    normal = {"fn": dist.Normal(torch.tensor(2.0), 1.0), "name": "m"}
    assert float(init(normal)) == 2.0  # the prior mean
    simplex = {"fn": dist.ImproperUniform(constraints.simplex, (), (4,)), "name": "p"}
    torch.testing.assert_close(init(simplex), torch.full((4,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("name", GUIDES)
def test_every_guide_starts_at_the_laplace_approximation(name):
    """For a Gaussian posterior the Laplace approximation is exact, and so is the start."""
    data = regression_data()
    mean, cov, precision = exact_posterior(data)
    with local_params():
        guide = make_guide(name, regression)
        guide.setup(**data)
        assert guide.start.method == "laplace"
        posterior = guide.get_posterior()
        if name == "auto-iaf":
            z = posterior.sample((40000,))
            q_mean, q_cov = z.mean(0), torch.cov(z.T)
            sd = cov.diagonal().sqrt()
            assert ((q_mean - mean).abs() / sd).max() < 0.03
            assert ((q_cov.diagonal().sqrt() / sd) - 1).abs().max() < 0.03
        elif name == "auto-normal":
            # the mean-field optimum for a Gaussian target: sds 1 / sqrt(precision_ii)
            torch.testing.assert_close(posterior.mean, mean, atol=1e-6, rtol=0)
            torch.testing.assert_close(posterior.stddev, precision.diagonal().rsqrt())
        elif name == "auto-mvn":
            torch.testing.assert_close(posterior.mean, mean, atol=1e-6, rtol=0)
            torch.testing.assert_close(posterior.covariance_matrix, cov, atol=1e-8, rtol=1e-5)
        else:  # low rank (rank 2 of 3): the start captures the correlation's leading direction
            torch.testing.assert_close(posterior.mean, mean, atol=1e-6, rtol=0)
            sd = cov.diagonal().sqrt()
            ratio = posterior.covariance_matrix.diagonal().sqrt() / sd
            assert (ratio - 1).abs().max() < 0.1
        # guides work under a particle plate (vectorized particles and draws)
        with pyro.plate("particles", 5, dim=-1):
            draws = guide(**data)
        assert draws["beta"].shape == (5, 3)


def test_flat_prior_on_a_positive_site_and_a_tiny_sd():
    """sd 1e-3 around 1 (the sblri-blr trap): the Laplace start has the right scale."""
    g = torch.Generator().manual_seed(0)
    x = 1.0 + 0.01 * torch.randn(100, generator=g, dtype=torch.float64)

    def model(x):
        mu = pyro.sample("mu", dist.ImproperUniform(constraints.positive, (), ()))
        with pyro.plate("n", len(x)):
            pyro.sample("x", dist.Normal(mu, 0.01), obs=x)

    with local_params():
        guide = make_guide("auto-normal", model)
        guide.setup(x=x)
    # unconstrained log mu: sd of log mu is sd(mu) / mu = 0.001 / x.mean()
    assert guide.start.method == "laplace"
    assert math.isclose(float(guide.start.diag_scale[0]), 0.001 / float(x.mean()), rel_tol=1e-3)
    # the mode of U(log mu) = -log p(x, mu) - log mu: mu = xbar + sigma^2 / (N mu)
    xbar = float(x.mean())
    mode = 0.5 * (xbar + math.sqrt(xbar**2 + 4 * 0.01**2 / 100))
    assert math.isclose(math.exp(float(guide.start.loc[0])), mode, rel_tol=1e-9)


def test_unknown_guide_and_custom_without_guide():
    with pytest.raises(ValueError, match="guide must be one of"):
        make_guide("auto-magic", regression)
    with pytest.raises(ValueError, match="guide 'custom' needs"):
        make_guide("custom", regression)
    assert make_guide("custom", regression, custom=np.mean) is np.mean
