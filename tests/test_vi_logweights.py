"""The log-weight engine against independent scipy densities."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from vi_helpers import gaussian_problem, normal_guide

from ppl_models.vi.logweights import draw_log_weights, element_names


def _positive_model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 3.0))
    sigma = pyro.sample("sigma", dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    pyro.deterministic("twice_mu", 2 * mu)
    with pyro.plate("n", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def _positive_guide(y):
    pyro.sample("mu", dist.Normal(torch.tensor(0.5, dtype=torch.float64), 0.3))
    pyro.sample("sigma", dist.Gamma(torch.tensor(4.0, dtype=torch.float64), 3.0))


Y = torch.tensor([0.3, 1.1, -0.4, 0.9], dtype=torch.float64)


def _scipy_log_joint(mu, sigma):
    lp = stats.norm(0, 3).logpdf(mu) + stats.lognorm(s=1.0).logpdf(sigma)
    return lp + stats.norm.logpdf(Y.numpy()[None, :], mu[:, None], sigma[:, None]).sum(1)


def _scipy_log_q(mu, sigma):
    return stats.norm(0.5, 0.3).logpdf(mu) + stats.gamma(a=4.0, scale=1 / 3.0).logpdf(sigma)


@pytest.mark.parametrize("vectorized", [True, False])
def test_log_densities_values_and_unconstrained_match_scipy(vectorized):
    lw = draw_log_weights(
        _positive_model, _positive_guide, {"y": Y}, draws=600, vectorized=vectorized, chunk=128
    )
    mu, sigma = lw.values["mu"], lw.values["sigma"]
    assert lw.draws == 600 and mu.shape == (600,) and sigma.shape == (600,)
    np.testing.assert_allclose(lw.log_joint, _scipy_log_joint(mu, sigma), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(lw.log_q, _scipy_log_q(mu, sigma), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(lw.values["twice_mu"], 2 * mu)
    np.testing.assert_allclose(lw.unconstrained["sigma"], np.log(sigma))
    np.testing.assert_allclose(lw.unconstrained["mu"], mu)
    assert lw.latent_sites == ["mu", "sigma"] and lw.deterministic_sites == ["twice_mu"]
    assert lw.transforms["mu"] == "identity" and lw.transforms["sigma"].startswith("exp")
    # the draws follow the guide: Gamma(4, 3) has mean 4/3
    assert abs(sigma.mean() - 4 / 3) < 4 * sigma.std() / np.sqrt(600)


def test_loop_uses_fewer_draws_and_says_so():
    lw = draw_log_weights(
        _positive_model, _positive_guide, {"y": Y}, draws=1000, vectorized=False, loop_draws=50
    )
    assert lw.draws == 50
    assert any("one at a time" in n for n in lw.notes)


def test_site_shapes_in_plates_and_exact_weights():
    model, data, m, s = gaussian_problem(d=3, n=4)
    guide = normal_guide(m + 0.1, torch.full_like(m, 0.5))
    lw = draw_log_weights(model, guide, data, draws=2000, max_plate_nesting=2)
    mu = lw.values["mu"]
    assert mu.shape == (2000, 3)
    y = data["y"].numpy()
    expected = (
        stats.norm(0, 10).logpdf(mu).sum(1)
        + stats.norm.logpdf(y[None], mu[:, None, :], 1.0).sum((1, 2))
        - stats.norm.logpdf(mu, (m + 0.1).numpy(), 0.5).sum(1)
    )
    np.testing.assert_allclose(lw.log_weights, expected, rtol=1e-10, atol=1e-8)
    u, names = lw.unconstrained_matrix()
    assert u.shape == (2000, 3) and names == ["mu[1]", "mu[2]", "mu[3]"]


def test_seeded_and_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = draw_log_weights(_positive_model, _positive_guide, {"y": Y}, draws=100, seed=7)
    after = torch.rand(3)
    b = draw_log_weights(_positive_model, _positive_guide, {"y": Y}, draws=100, seed=7)
    torch.testing.assert_close(after, expected)
    np.testing.assert_array_equal(a.log_weights, b.log_weights)


def test_element_names_are_one_based_row_major():
    assert element_names("mu", ()) == ["mu"]
    assert element_names("beta", (2,)) == ["beta[1]", "beta[2]"]
    assert element_names("b", (2, 3))[:4] == ["b[1,1]", "b[1,2]", "b[1,3]", "b[2,1]"]


def test_a_big_data_plate_is_scored_in_slices_exactly(monkeypatch):
    # a budget small enough that one draw's likelihood over 2,000 observations exceeds it
    from scipy import stats

    from ppl_models.vi import logweights
    from ppl_models.vi.fitting import fit_svi

    monkeypatch.setattr(logweights, "_CHUNK_ELEMENTS", 2**12)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("obs", len(x)) as i:
            pyro.sample("x", dist.Normal(mu, 0.8), obs=x[i])

    x = torch.randn(2000, dtype=torch.float64) * 0.8 + 2.0
    fit = fit_svi(model, "auto-normal", {"x": x}, steps=100, data_plate="obs")
    drawer = logweights.Drawer(
        fit.model, fit.guide, fit.data, max_plate_nesting=1, data_plate="obs"
    )
    with drawer:
        assert drawer.slices is not None and drawer.slices[1] < 2000  # sliced
        parts = list(drawer.chunks(40))
    mu = np.concatenate([p[2]["mu"] for p in parts])
    log_joint = np.concatenate([p[0] for p in parts])
    exact = stats.norm(0, 10).logpdf(mu) + stats.norm(mu[:, None], 0.8).logpdf(x.numpy()).sum(1)
    np.testing.assert_allclose(log_joint, exact, rtol=1e-10)


@pytest.mark.parametrize(("budget", "sliced"), [(2**16, False), (2**15, True)])
def test_a_data_plate_is_sliced_only_where_four_draws_exceed_the_budget(
    monkeypatch, budget, sliced
):
    # one draw holds y and its log density over 2,000 observations and mu's four numbers:
    # 4,004 numbers, so four draws (with a factor 4 for the model's arithmetic) need 64,064
    from ppl_models.vi import logweights

    monkeypatch.setattr(logweights, "_CHUNK_ELEMENTS", budget)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 10.0))
        with pyro.plate("obs", len(x)) as i:
            pyro.sample("x", dist.Normal(mu, 0.8), obs=x[i])

    def guide(x):
        pyro.sample("mu", dist.Normal(torch.tensor(2.0, dtype=torch.float64), 0.1))

    x = torch.zeros(2000, dtype=torch.float64)
    with logweights.Drawer(model, guide, {"x": x}, data_plate="obs") as drawer:
        assert (drawer.slices is not None) is sliced
        assert drawer.size == (logweights.SLICED_DRAWS if sliced else budget // (4 * 4004))


def test_draws_without_validation_are_the_same_draws_and_leave_the_callers_setting():
    # a fit run without Pyro's validation is diagnosed without it: the checks cost some 13% of
    # the draws at J = 1,000 and change no number
    from pyro.infer.util import is_validation_enabled

    from ppl_models.vi.logweights import Drawer

    seen = []

    def model(y):
        seen.append(is_validation_enabled())
        _positive_model(y)

    runs = {}
    for validate in (True, False):
        seen.clear()
        with pyro.validation_enabled(True):
            with Drawer(model, _positive_guide, {"y": Y}, validate=validate) as drawer:
                runs[validate] = list(drawer.chunks(200))
            assert is_validation_enabled()  # the caller's setting, as it was
        assert set(seen) == {validate}
    for on, off in zip(runs[True], runs[False], strict=True):
        np.testing.assert_array_equal(on[0], off[0])
        np.testing.assert_array_equal(on[1], off[1])
