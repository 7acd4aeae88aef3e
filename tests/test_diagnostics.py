"""Diagnostics against closed forms built from pairs of exponential distributions.

For z ~ q = Exponential(1) and a normalised target p = Exponential(lam), lam < 1, the weights
w = p/q = lam exp((1 - lam) z) have P(w > t) proportional to t^(-1/(1-lam)): a Pareto tail with
shape k = 1 - lam. The evidence is 1, so every importance-weighted bound is <= 0, and
E[log w] = log lam - (lam - 1) E[z] = log lam + 1 - lam.
"""

import math

import numpy as np
import pytest
import torch

from ppl_models import diagnostics


def _log_weights(lam, n, seed=0):
    z = np.random.default_rng(seed).exponential(1.0, n)
    return np.log(lam) + (1 - lam) * z


@pytest.mark.parametrize("lam", [0.9, 0.5, 0.25])
def test_khat_recovers_the_pareto_shape(lam):
    khat = diagnostics.psis_khat(_log_weights(lam, 200_000))
    assert float(khat) == pytest.approx(1 - lam, abs=0.06)


def test_khat_of_q_equal_to_p_is_low_and_rows_are_independent():
    flat = np.full(1000, -3.2)
    rows = np.stack([flat, _log_weights(0.25, 1000)])
    khat = diagnostics.psis_khat(rows)
    assert khat.shape == (2,)
    assert khat[0] == -np.inf  # equal weights: the degenerate limit
    assert khat[1] > 0.5
    with pytest.raises(ValueError, match="NaN or infinite"):
        diagnostics.psis_khat(np.array([np.nan] * 20))
    with pytest.raises(ValueError, match=">= 10 draws"):
        diagnostics.psis_khat(np.zeros(5))


def test_threshold_follows_vehtari_et_al():
    assert diagnostics.khat_threshold(100) == pytest.approx(0.5)
    assert diagnostics.khat_threshold(1000) == pytest.approx(1 - 1 / 3)
    assert diagnostics.khat_threshold(10**6) == 0.7


def test_distances_between_exponentials_match_closed_forms():
    a, b = 2.0, 0.5
    qa = torch.distributions.Exponential(torch.tensor(a, dtype=torch.float64))
    qb = torch.distributions.Exponential(torch.tensor(b, dtype=torch.float64))
    # CDFs are ordered, so W1 is the difference of means; KS is at z* = log(a/b) / (a - b).
    assert diagnostics.wasserstein1(qa, qb) == pytest.approx(1 / b - 1 / a, rel=1e-6)
    z = math.log(a / b) / (a - b)
    assert diagnostics.ks_distance(qa, qb) == pytest.approx(
        math.exp(-b * z) - math.exp(-a * z), rel=1e-6
    )


def test_inference_data_and_summary_row(tmp_path):
    draws = np.random.default_rng(3).normal(2.0, 0.5, 4000)
    idata = diagnostics.inference_data(draws, log_joint=-(draws**2), log_q=np.zeros(4000))
    assert idata.posterior["z"].shape == (4, 1000)
    assert np.array_equal(idata.sample_stats["log_joint"].values.ravel(), -(draws**2))
    row = diagnostics.summary_row(draws)
    assert row["mean"] == pytest.approx(draws.mean())
    assert row["sd"] == pytest.approx(draws.std(ddof=1), rel=1e-3)
    inside = np.mean((draws >= row["hdi_3%"]) & (draws <= row["hdi_97%"]))
    assert inside == pytest.approx(0.94, abs=0.01)
    merged = diagnostics.merge_methods({"a": idata, "b": diagnostics.inference_data(draws + 1)})
    path = tmp_path / "p.nc"
    merged.to_netcdf(str(path))
    back = diagnostics.load(path)
    assert np.allclose(diagnostics.method_posterior(back, "b")["z"].values.ravel(), draws + 1)
    with pytest.raises(ValueError, match="multiple of chains"):
        diagnostics.inference_data(np.zeros(10))


def test_summary_row_names_the_hdi_of_any_probability():
    draws = np.random.default_rng(4).normal(0.0, 1.0, 4000)
    row = diagnostics.summary_row(draws, hdi_prob=0.9)
    inside = np.mean((draws >= row["hdi_5%"]) & (draws <= row["hdi_95%"]))
    assert inside == pytest.approx(0.9, abs=0.01)
    assert "hdi_3%" not in row


def _torch_and_scipy(name, *params):
    """The same distribution in torch (float64) and scipy.stats (the independent reference)."""
    from scipy import stats

    t = [torch.tensor(float(v), dtype=torch.float64) for v in params]
    if name == "normal":
        return torch.distributions.Normal(*t), stats.norm(*params)
    if name == "exponential":
        return torch.distributions.Exponential(*t), stats.expon(scale=1 / params[0])
    low, high = params
    return torch.distributions.Uniform(*t), stats.uniform(low, high - low)


@pytest.mark.parametrize(
    "q, p",
    [
        (("normal", 0.0, 1.0), ("normal", 1.5, 2.0)),
        (("exponential", 1.0), ("normal", 0.5, 1.0)),  # supports [0, inf) and the whole line
        (("uniform", -1.0, 1.0), ("normal", 0.0, 0.5)),  # a bounded support
    ],
    ids=["normals", "exponential-normal", "uniform-normal"],
)
def test_distances_on_any_support_match_quadrature(q, p):
    from scipy import integrate

    (tq, sq), (tp, sp) = _torch_and_scipy(*q), _torch_and_scipy(*p)

    def gap(z):
        return abs(sq.cdf(z) - sp.cdf(z))

    breaks = [-1.0, 0.0, 1.0]
    w1 = integrate.quad(gap, -60.0, 60.0, points=breaks, limit=400)[0]
    ks = gap(np.linspace(-20.0, 20.0, 400_001)).max()
    assert diagnostics.wasserstein1(tq, tp) == pytest.approx(w1, rel=1e-5)
    assert diagnostics.ks_distance(tq, tp) == pytest.approx(ks, rel=1e-4)


def test_two_normals_have_closed_form_distances():
    a = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    b = torch.distributions.Normal(torch.tensor(1.0, dtype=torch.float64), 1.0)
    # a shift: W1 is the shift, KS is 2 Phi(1/2) - 1
    assert diagnostics.wasserstein1(a, b) == pytest.approx(1.0, rel=1e-6)
    ks = 2 * float(torch.distributions.Normal(0.0, 1.0).cdf(torch.tensor(0.5))) - 1
    assert diagnostics.ks_distance(a, b) == pytest.approx(ks, rel=1e-5)


def test_from_dict_takes_chains_with_no_draws_without_a_warning():
    """A NUTS run cut in its warm-up keeps no draws: no ArviZ guess that the array is
    transposed reaches the user."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idata = diagnostics.from_dict(
            posterior={"a": np.zeros((4, 0))}, reference_posterior={"a": np.zeros((4, 0))}
        )
    assert idata.posterior["a"].shape == (4, 0)
