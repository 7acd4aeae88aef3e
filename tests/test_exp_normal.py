"""Exponential-normal model: closed forms against quadrature, the truncated normal against scipy and
mpmath, guides, the Pyro model, data handling."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from scipy import integrate, optimize, stats

from ppl_models import exp_normal as en
from ppl_models.exp_normal.pyro_model import _PARAM_CONSTRAINTS

mpmath = pytest.importorskip("mpmath")


def _data(n, rate, seed, z=None):
    """Observations from the model (or with a fixed z), as in the notebook's recipe."""
    rng = np.random.default_rng(seed)
    z = rng.exponential(1.0 / rate) if z is None else z
    return rng.normal(z, 1.0, n), rate


# (x, rate): the notebook's size, a larger N, and two with sum(x) < rate (posterior piled at 0).
DATASETS = {
    "n5": _data(5, 1.0, 0),
    "n200": _data(200, 0.5, 1),
    "sum_below_rate": _data(4, 3.0, 2, z=0.05),
    "negative_mean": _data(30, 1.0, 3, z=-0.4),
}


@pytest.fixture(params=list(DATASETS), ids=list(DATASETS))
def dataset(request):
    return DATASETS[request.param]


def ref_log_joint(z, x, rate):
    """log p(x, z) from scipy.stats densities, independent of the package."""
    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    return stats.expon.logpdf(z, scale=1.0 / rate) + stats.norm.logpdf(x[:, None], loc=z).sum(0)


def ref_evidence_parts(x, rate):
    """(c, mode, sd) for integrating exp(log p(x, z) - c) over z >= 0 by quadrature."""
    mode = optimize.minimize_scalar(
        lambda z: -ref_log_joint(z, x, rate)[0], bounds=(0.0, abs(x).max() + 10), method="bounded"
    ).x
    return ref_log_joint(mode, x, rate)[0], mode, 1.0 / math.sqrt(x.size)


def quad_posterior(f, x, rate):
    """integral of f(z) p(x, z) / exp(c) over z >= 0, split around the mode."""
    c, mode, sd = ref_evidence_parts(x, rate)
    g = lambda z: f(z) * math.exp(ref_log_joint(z, x, rate)[0] - c)  # noqa: E731
    hi = mode + 60 * sd
    pieces = [(0.0, mode), (mode, mode + 8 * sd), (mode + 8 * sd, hi)]
    total = sum(
        integrate.quad(g, a, b, epsabs=0, epsrel=1e-13, limit=200)[0] for a, b in pieces if b > a
    )
    return total, c


# --- closed forms ----------------------------------------------------------------------------


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


# --- the truncated normal ----------------------------------------------------------------------


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


# --- guides ----------------------------------------------------------------------------------


def test_unknown_family_is_rejected_with_the_valid_list():
    x, rate = DATASETS["n5"]
    with pytest.raises(ValueError, match="'normal'.*exponential.*truncated-normal"):
        en.make_guide("normal", x, rate)
    with pytest.raises(ValueError, match="'normal'"):
        en.guide_distribution("normal", {})
    with pytest.raises(ValueError, match="theta"):
        en.guide_distribution("exponential", {"rate": 1.0})


@pytest.mark.parametrize("family", en.GUIDE_FAMILIES)
def test_guides_are_module_local_float64_and_rebuildable(family):
    x, rate = DATASETS["n5"]
    guide = en.make_guide(family, x, rate)
    params = guide.params()
    assert set(params) == set(_PARAM_CONSTRAINTS[family])
    assert all(p.dtype == torch.float64 for p in guide.parameters())
    rebuilt = en.guide_distribution(family, params)
    z = torch.tensor([0.5, 2.0, 3.5], dtype=torch.float64)
    torch.testing.assert_close(rebuilt.log_prob(z), guide.distribution().log_prob(z).detach())
    trace = poutine.trace(guide).get_trace(torch.as_tensor(x), rate)
    assert trace.nodes["z"]["fn"].has_rsample
    if family == "exponential":
        assert params == {"theta": 1.0}


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


def _scipy_kl(q, x, rate) -> float:
    """KL(q || exact posterior) by scipy quadrature, q a frozen scipy distribution on z > 0."""
    log_ev = en.log_evidence(x, rate)

    def integrand(z):
        return q.pdf(z) * (q.logpdf(z) - (ref_log_joint(z, x, rate)[0] - log_ev))

    edges = [0.0, *q.ppf([1e-9, 0.5, 1 - 1e-9]), np.inf]
    return sum(
        integrate.quad(integrand, a, b, epsabs=1e-14, epsrel=1e-12, limit=200)[0]
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    )


def test_kl_of_gamma_matches_scipy_quadrature():
    x, rate = DATASETS["n5"]
    reference = _scipy_kl(stats.gamma(a=20.0, scale=1 / 7.0), x, rate)
    gamma = en.guide_distribution("gamma", {"concentration": 20.0, "rate": 7.0})
    assert en.kl_of(gamma, x, rate) == pytest.approx(reference, rel=1e-9)


def test_kl_of_without_icdf_matches_scipy_quadrature():
    # torch's InverseGamma has no icdf, so kl_of splits its range at mean +- k sd instead.
    x, rate = DATASETS["n200"]
    q_torch = torch.distributions.InverseGamma(
        torch.tensor(30.0, dtype=torch.float64), torch.tensor(25.0, dtype=torch.float64)
    )
    reference = _scipy_kl(stats.invgamma(a=30.0, scale=25.0), x, rate)
    assert en.kl_of(q_torch, x, rate) == pytest.approx(reference, rel=1e-9)


# --- the Pyro model --------------------------------------------------------------------------


@pytest.mark.parametrize("z", [0.0, 0.4, 2.5])
def test_model_trace_log_prob_is_the_log_joint(dataset, z):
    x, rate = dataset
    conditioned = poutine.condition(en.model, data={"z": torch.tensor(z, dtype=torch.float64)})
    trace = poutine.trace(conditioned).get_trace(torch.as_tensor(x), rate)
    assert float(trace.log_prob_sum()) == pytest.approx(ref_log_joint(z, x, rate)[0], rel=1e-12)
    assert float(trace.log_prob_sum()) == pytest.approx(en.log_joint(z, x, rate), rel=1e-12)


def test_vectorised_elbo_estimates_the_closed_form():
    x, rate = DATASETS["n5"]
    theta = 0.9
    guide = en.ExponentialGuide(theta_init=theta)
    loss = Trace_ELBO(num_particles=100_000, vectorize_particles=True).loss(
        en.model, guide, torch.as_tensor(x), rate
    )
    # ELBO sd per particle is ~4 here, so the standard error is ~0.013.
    assert -loss == pytest.approx(en.elbo(theta, x, rate), abs=0.06)


def test_svi_with_module_local_params_reaches_theta_star():
    x, rate = DATASETS["n5"]
    x_t = torch.as_tensor(x)
    with pyro.settings.context(module_local_params=True):
        guide = en.make_guide("exponential", x, rate)
        loss_fn = Trace_ELBO(num_particles=256, vectorize_particles=True)(en.model, guide)
        optimizer = torch.optim.Adam(loss_fn.parameters(), lr=0.05)
        for _ in range(300):
            optimizer.zero_grad()
            loss_fn(x_t, rate).backward()
            optimizer.step()
    assert not pyro.get_param_store().keys()
    assert guide.params()["theta"] == pytest.approx(en.optimal_theta(x, rate), rel=0.05)


# --- data ------------------------------------------------------------------------------------


def test_simulate_reproduces_the_notebook():
    torch.manual_seed(0)
    sampled_z = torch.distributions.Exponential(1.0).sample()
    sampled_x = torch.distributions.Normal(sampled_z, 1.0).sample((5,))
    z, x = en.simulate(1, 5, 0)
    assert z == float(sampled_z)
    np.testing.assert_array_equal(x, sampled_x.double().numpy())
    assert x.dtype == np.float64 and x.shape == (5,)


def test_observation_validation_names_the_bad_row():
    with pytest.raises(ValueError, match="row 3 is not finite: nan"):
        en.validate_observations([1.0, 2.0, 3.0, float("nan"), 5.0])
    with pytest.raises(ValueError, match="row 0 is not finite: inf"):
        en.validate_observations(np.array([np.inf]))
    with pytest.raises(ValueError, match="empty"):
        en.validate_observations([])
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        en.validate_observations(np.zeros((2, 2)))
    np.testing.assert_array_equal(en.validate_observations(torch.ones(3, 1)), np.ones(3))


@pytest.mark.parametrize("rate", [-1.0, 0.0, float("nan"), float("inf"), "fast"])
def test_rate_must_be_positive_and_finite(rate):
    with pytest.raises(ValueError, match="rate must be a positive finite number, got"):
        en.validate_rate(rate)
    with pytest.raises(ValueError, match="rate must be a positive finite number"):
        en.log_evidence([1.0], rate)


def test_rate_error_names_the_value():
    with pytest.raises(ValueError, match=r"rate must be a positive finite number, got -1\.0$"):
        en.validate_rate(-1.0)


@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_load_text_observations(tmp_path, suffix):
    path = tmp_path / f"obs{suffix}"
    path.write_text("1.5\n\n-2\n  3e-1 \n")
    np.testing.assert_array_equal(en.load_observations(path), [1.5, -2.0, 0.3])


def test_load_npy_observations(tmp_path):
    np.save(tmp_path / "flat.npy", np.arange(3.0))
    np.save(tmp_path / "column.npy", np.arange(3.0)[:, None])
    for name in ("flat.npy", "column.npy"):
        np.testing.assert_array_equal(en.load_observations(tmp_path / name), [0.0, 1.0, 2.0])


def test_load_rejects_a_non_numeric_row(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text("1.0\n2.0\n\nabc\n")
    with pytest.raises(ValueError, match="line 4 is not a finite number: 'abc'"):
        en.load_observations(path)
    path.write_text("1.0\nnan\n")
    with pytest.raises(ValueError, match="line 2 is not a finite number: 'nan'"):
        en.load_observations(path)


def test_load_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing.csv"
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        en.load_observations(missing)
    other = tmp_path / "obs.json"
    other.write_text("[1]")
    with pytest.raises(ValueError, match=r"'\.json'.*\.csv, \.npy, \.txt"):
        en.load_observations(other)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no observations"):
        en.load_observations(empty)


def test_kl_of_the_exact_posterior_is_zero_never_negative(dataset):
    # the quadrature's pieces can round to -1e-17 in sum; a KL is clipped at 0
    x, rate = dataset
    assert en.kl_of(en.exact_posterior(x, rate), x, rate) == pytest.approx(0.0, abs=1e-10)
    assert en.kl_of(en.exact_posterior(x, rate), x, rate) >= 0.0
