"""Pareto k-hat of w h for each element: whether a PSIS mean or sd can be trusted.

Where the posterior's tails are heavier than q's, the weights' k-hat can be within its threshold
while the tail of w (theta - c)^2 is not: the PSIS-corrected sd then falls short of the
posterior's, and agreeing with it certified an sd 17% too small (a Cauchy likelihood)."""

import math

import numpy as np
import pytest
import torch
from test_vi_verdict import _decide, _row

from ppl_models.bench.adversarial import CAUCHY_Y, cauchy_location_model, cauchy_location_truth
from ppl_models.diagnostics import psis_khat
from ppl_models.pareto import family_threshold, squared_deviation_khat, tail_khat, tail_size
from ppl_models.vi.stream import MomentStream
from ppl_models.vi.verdict import MEANS_ONLY, NOT_TRUSTWORTHY, TRUSTWORTHY

LOG_TINY = math.log(np.finfo(float).tiny)


@pytest.mark.parametrize("draws", [100, 4000, 20_000])
def test_tail_khat_from_the_largest_values_alone_is_arviz_psislw(draws):
    rng = np.random.default_rng(draws)
    rows = [np.log(rng.pareto(1 / k, draws) + 1) for k in (0.1, 0.5, 0.9, 1.5)]
    rows += [
        rng.normal(size=draws),
        np.where(rng.random(draws) < 0.5, LOG_TINY, rng.normal(size=draws)),
    ]
    x = np.array(rows)
    top = -np.sort(-x, axis=1)[:, : tail_size(draws) + 1]
    rng.shuffle(top, axis=1)  # any order
    np.testing.assert_allclose(tail_khat(top), psis_khat(x), rtol=0, atol=1e-12)
    assert tail_khat(np.full((1, 20), 2.0))[0] == -math.inf  # a flat tail, as psis_khat says


def test_the_stream_estimates_each_elements_khat_as_if_every_draw_were_kept():
    rng = np.random.default_rng(0)
    n, chunks = 3000, 4
    # q = N(0, 1) against p = Student-t(5) in element 0; element 1 is exact
    z = rng.normal(size=(n * chunks, 2))
    t = torch.distributions.StudentT(5.0, 0.0, 1.0).log_prob(torch.tensor(z[:, 0]))
    log_w = t.numpy() + 0.5 * z[:, 0] ** 2
    stream = MomentStream(n * chunks)
    for i in range(chunks):
        part = slice(i * n, (i + 1) * n)
        stream.add(log_w[part], z[part])
    khat = float(psis_khat(log_w))
    k_mean, k_sd = stream.function_khats(khat)
    g = z - z[:n].mean(axis=0)  # the stream's centre: its first chunk's mean
    with np.errstate(divide="ignore"):
        plus = np.maximum(np.log(np.where(g > 0, g, 0)), LOG_TINY)
        minus = np.maximum(np.log(np.where(g < 0, -g, 0)), LOG_TINY)
    for j in range(2):
        expect_mean = max(khat, psis_khat(log_w + plus[:, j]), psis_khat(log_w + minus[:, j]))
        expect_sd = max(khat, psis_khat(log_w + 2 * np.log(np.abs(g[:, j]))))
        assert k_mean[j] == pytest.approx(float(expect_mean), abs=1e-12)
        assert k_sd[j] == pytest.approx(float(expect_sd), abs=1e-12)
    # the t's tails weigh more in w (theta - c) and w (theta - c)^2 than in the weights alone
    assert khat < 0.7 and min(k_mean[0], k_sd[0]) > khat + 0.05
    assert k_sd[1] == k_mean[1] == khat  # an element that does not enter the weights


def _self_row(**khats):
    row = _row("a", 0.0)
    for key in ("ref_mean", "ref_sd", "std_mean_error", "sd_ratio", "ks"):
        row[key] = None
    return dict(row, **khats)


def test_an_estimate_whose_own_khat_is_too_high_certifies_nothing():
    base = dict(has_reference=False, coordinates=[], khat=0.6)
    assert _decide([_self_row(psis_khat_mean=0.6, psis_khat_sd=0.65)], **base).label == TRUSTWORTHY
    sd_tails = _decide([_self_row(psis_khat_mean=0.6, psis_khat_sd=0.8)], **base)
    assert sd_tails.label == MEANS_ONLY
    assert any("PSIS cannot check the sds of a" in r for r in sd_tails.reasons)
    mean_tails = _decide([_self_row(psis_khat_mean=0.75, psis_khat_sd=0.8)], **base)
    assert mean_tails.label == NOT_TRUSTWORTHY
    assert any("PSIS cannot check the means of a" in r for r in mean_tails.reasons)
    nan = _decide([_self_row(psis_khat_mean=0.6, psis_khat_sd=float("nan"))], **base)
    assert nan.label == MEANS_ONLY


def test_a_gaussian_fit_of_a_cauchy_likelihood_is_not_certified_on_the_weights_khat_alone():
    from ppl_models.vi.diagnose import diagnose
    from ppl_models.vi.fitting import fit_svi

    y = torch.tensor(CAUCHY_Y, dtype=torch.float64)
    fit = fit_svi(cauchy_location_model, "auto-normal", {"y": y}, seed=1)
    s = diagnose(fit, None, progress=False).summary
    (row,) = s["parameters"]
    _, truth_sd = cauchy_location_truth(CAUCHY_Y).moments["mu"]
    assert row["sd"] / truth_sd < 0.9  # the truth (quadrature): q's sd is too small
    assert s["psis_khat"] <= s["psis_khat_threshold"]  # the weights' k-hat would certify it
    assert row["psis_khat_sd"] > s["psis_khat_threshold"]
    assert s["verdict"] != TRUSTWORTHY
    assert any("PSIS cannot check" in r for r in s["verdict_reasons"])


def test_one_element_is_held_to_the_threshold_and_many_get_the_noise_of_their_largest():
    assert family_threshold(0.7, 1, 100_000) == 0.7
    assert 0.7 < family_threshold(0.7, 2, 100_000) < family_threshold(0.7, 1000, 100_000)
    assert family_threshold(0.7, 1000, 100_000) < family_threshold(0.7, 1000, 8000)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_allowance_covers_the_noise_of_the_largest_of_a_thousand_estimates(seed):
    # q is the posterior (equal weights): every element's function k-hat estimates the same
    # light tail, and only noise sets the largest of 1,000 apart from the typical one
    rng = np.random.default_rng(seed)
    draws, d = 8000, 1000
    z = rng.normal(size=(draws, d))
    stream = MomentStream(draws)
    stream.add(np.zeros(draws), z)
    k_mean, k_sd = stream.function_khats(-math.inf)
    allowance = family_threshold(0.7, d, draws) - 0.7
    for k in (k_mean, k_sd):
        assert k.max() - np.median(k) < allowance


def test_a_tail_that_q_own_draws_share_is_not_the_weights_doing():
    base = dict(has_reference=False, coordinates=[], khat=0.3)
    shared = _self_row(psis_khat_mean=0.5, psis_khat_sd=0.95, q_khat_mean=0.5, q_khat_sd=0.93)
    assert _decide([shared], **base).label == TRUSTWORTHY
    added = dict(shared, q_khat_sd=0.1)  # the weights made the tail heavy
    assert _decide([added], **base).label == MEANS_ONLY


def _funnel(scale_sd=3.0):
    import pyro
    import pyro.distributions as dist

    y = pyro.sample("y", dist.Normal(torch.tensor(0.0, dtype=torch.float64), scale_sd))
    with pyro.plate("k", 9):
        z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    pyro.deterministic("x", torch.exp(y / 2) * z)


def _exact_funnel_guide():
    import pyro
    import pyro.distributions as dist

    pyro.sample("y", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 3.0))
    with pyro.plate("k", 9):
        pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))


def test_an_exact_guide_of_the_non_centred_funnel_is_trustworthy_though_x_has_heavy_tails():
    # q is the posterior (the prior: no data), so every weight is equal; x = e^(y/2) z has
    # kurtosis about 3 e^9, so the tails of w x and w x^2 are heavy, as over any sampler's draws
    from vi_helpers import FakeFit

    from ppl_models.vi.diagnose import diagnose

    fit = FakeFit(_funnel, _exact_funnel_guide, {}, max_plate_nesting=1)
    s = diagnose(fit, None, draws=20_000, progress=False, mode_starts=0).summary
    x = [r for r in s["parameters"] if r["name"].startswith("x")]
    assert max(r["psis_khat_sd"] for r in x) > s["psis_khat_threshold"]
    assert s["verdict"] == TRUSTWORTHY


def test_squared_deviations_khat_is_two_over_the_degrees_of_freedom():
    """Student's t with nu degrees of freedom has tail index nu, so (x - mean)^2 has k = 2/nu;
    a normal's squared deviations have an exponential tail, k = 0."""
    rng = np.random.default_rng(3)
    draws = 40_000
    x = np.stack([rng.standard_t(nu, draws) for nu in (3, 5, 8)] + [rng.normal(size=draws)])
    k = squared_deviation_khat(x)
    np.testing.assert_allclose(k[:3], [2 / 3, 2 / 5, 2 / 8], atol=0.1)
    assert abs(k[3]) < 0.1
