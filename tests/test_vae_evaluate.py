"""Evaluation against a linear-Gaussian VAE, whose evidence, posterior and ELBO are closed forms.

Decoder x = W z + b with orthogonal columns w_j, Normal(scale 1) likelihood, prior N(0, I):
p(x) = N(b, W W^T + I); the posterior is N(S W^T (x - b), S) with S = diag(1 / (1 + |w_j|^2)),
diagonal, so the diagonal guide family contains it.
"""

import math
from dataclasses import fields

import numpy as np
import pytest
import torch
from torch import nn

from ppl_models import diagnostics
from ppl_models.vae import evaluate
from ppl_models.vae.model import build_vae

P, D = 6, 2


class LinearPosterior(nn.Module):
    """Encoder returning the exact posterior, its location moved by ``shift`` and scale times
    ``stretch``."""

    def __init__(self, weight, bias, shift=0.0, stretch=1.0):
        super().__init__()
        self.weight, self.bias, self.shift, self.stretch = weight, bias, shift, stretch
        self.var = 1 / (1 + (weight**2).sum(0))

    def forward(self, x):
        loc = (x - self.bias) @ self.weight * self.var + self.shift
        log_scale = (self.var.sqrt() * self.stretch).log().expand_as(loc)
        return loc, log_scale


def linear_vae(shift=0.0, stretch=1.0):
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(P, D, generator=generator))
    weight = q * torch.tensor([2.0, 1.0])
    bias = torch.randn(P, generator=generator) * 0.3
    decoder = nn.Linear(D, P)
    decoder.weight.data, decoder.bias.data = weight.clone(), bias.clone()
    model, guide = build_vae(LinearPosterior(weight, bias, shift, stretch), decoder, D, "normal")
    evidence = torch.distributions.MultivariateNormal(
        bias.double(), weight.double() @ weight.double().T + torch.eye(P, dtype=torch.float64)
    )
    torch.manual_seed(1)
    x = evidence.sample((200,)).float()
    return model, guide, x, evidence.log_prob(x.double()).numpy(), weight, bias


def closed_form_elbo(x, weight, bias, loc, scale):
    """E_q[log N(x; Wz + b, I)] - KL(q || N(0, I)) for q = N(loc, diag scale^2)."""
    resid = x - loc @ weight.T - bias
    expected_loglik = -P / 2 * math.log(2 * math.pi) - 0.5 * (
        (resid**2).sum(1) + (scale**2 * (weight**2).sum(0)).sum(1)
    )
    kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(1)
    return (expected_loglik - kl).double().numpy()


def test_exact_guide_gives_the_evidence_for_every_draw_and_k():
    model, guide, x, log_px, *_ = linear_vae()
    draws = evaluate.importance_draws(model, guide, x, 300, keep=7, chunk=97)
    # log p(x, z) - log q(z | x) = log p(x) exactly when q is the posterior
    np.testing.assert_allclose(draws.log_weights, np.repeat(log_px[:, None], 300, 1), atol=2e-4)
    for k, (bound, _) in evaluate.iw_bounds(draws.log_weights, [1, 10, 100]).items():
        assert bound == pytest.approx(log_px.mean(), abs=2e-4), k
    gains, gains_se = evaluate.iw_gains(draws.log_weights, [1, 10, 100])
    np.testing.assert_allclose(gains, 0, atol=1e-4)
    assert draws.z.shape == (7, 200, D)
    np.testing.assert_allclose(draws.log_joint - draws.log_q, draws.log_weights[:, :7].T, atol=1e-4)


def test_k1_is_the_elbo_and_the_bound_rises_towards_the_evidence():
    model, guide, x, log_px, weight, bias = linear_vae(shift=0.7, stretch=0.8)
    draws = evaluate.importance_draws(model, guide, x, 1000, chunk=5000)
    lw = draws.log_weights
    q = guide.posterior(x).base_dist
    elbo = closed_form_elbo(x, weight, bias, q.loc, q.scale)
    # K = 1 averages log w over all draws: an unbiased estimate of the closed-form ELBO
    diff = lw.mean() - elbo.mean()
    assert abs(diff) < 5 * (lw - lw.mean(1, keepdims=True)).std() / math.sqrt(lw.size)
    ks = [1, 10, 100, 1000]
    bounds = evaluate.iw_bounds(lw, ks)
    values = [bounds[k][0] for k in ks]
    assert values == sorted(values)  # the guide is off, so each step up in K gains clearly
    gains, gains_se = evaluate.iw_gains(lw, ks)
    np.testing.assert_allclose(gains, np.diff(values), rtol=1e-10)
    assert (gains > 5 * gains_se).all()
    assert (gains_se < [bounds[k][1] for k in ks[1:]]).all()  # pairing removes image spread
    assert values[0] < log_px.mean()
    assert values[-1] <= log_px.mean() + 3 * bounds[1000][1]
    assert log_px.mean() - values[-1] < 0.2 * (log_px.mean() - values[0])
    # the per-image one-draw ELBO estimates the same ELBO
    single = evaluate.elbo_per_image(model, guide, x)
    assert single.shape == (200,)
    assert abs(single.mean() - elbo.mean()) < 5 * single.std() / math.sqrt(200)


@pytest.mark.parametrize("stretch", [0.25, 0.4])
def test_khat_of_a_too_narrow_guide_matches_the_tail_index(stretch):
    # z ~ N(0, c^2 s^2) against N(0, s^2): w = exp(a z^2) with 2 a c^2 s^2 = 1 - c^2, so
    # P(w > t) = P(|z| > sqrt(log t / a)) ~ t^(-1 / (1 - c^2)): a Pareto tail with k = 1 - c^2
    model, guide, x, *_ = linear_vae(stretch=stretch)
    khat = diagnostics.psis_khat(evaluate.importance_draws(model, guide, x, 1000).log_weights)
    assert abs(np.median(khat) - (1 - stretch**2)) < 0.1
    if stretch == 0.25:
        assert (khat > diagnostics.khat_threshold(1000)).mean() > 0.8


def test_khat_of_a_wide_guide_is_low():
    # c > 1: the weights are bounded (k <= 0), so every image passes
    model, guide, x, *_ = linear_vae(stretch=1.3)
    khat = diagnostics.psis_khat(evaluate.importance_draws(model, guide, x, 1000).log_weights)
    assert (khat < 0.5).all()


def test_active_units_count_variance_of_posterior_means():
    rng = np.random.default_rng(0)
    loc = rng.normal(size=(5000, 4)) * np.sqrt([1.0, 0.05, 0.004, 0.0])
    assert evaluate.active_units(loc) == 2
    model, guide, x, *_ = linear_vae()
    loc, scale = evaluate.latent_moments(guide, x, chunk=33)
    q = guide.posterior(x).base_dist
    np.testing.assert_allclose(loc, q.loc.numpy())
    np.testing.assert_allclose(scale, q.scale.numpy())


def test_mean_and_se():
    mean, se = evaluate.mean_and_se(np.array([1.0, 2.0, 3.0, 6.0]))
    assert mean == 3.0
    assert se == pytest.approx(np.std([1, 2, 3, 6], ddof=1) / 2)


def test_evaluation_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f.name: rng.normal(size=3) for f in fields(evaluate.Evaluation)}
    arrays["iw_draws"] = np.asarray(100)
    ev = evaluate.Evaluation(**arrays)
    ev.save(tmp_path / "evaluation.npz")
    back = evaluate.Evaluation.load(tmp_path / "evaluation.npz")
    for name, value in arrays.items():
        np.testing.assert_array_equal(getattr(back, name), value)
    assert back.threshold == pytest.approx(0.5)  # min(1 - 1 / log10(100), 0.7)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        evaluate.Evaluation.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "partial.npz", khat=np.zeros(3))
    with pytest.raises(ValueError, match="lacks the arrays"):
        evaluate.Evaluation.load(tmp_path / "partial.npz")


def test_bad_arguments():
    model, guide, x, *_ = linear_vae()
    with pytest.raises(ValueError, match="draws and chunk"):
        evaluate.importance_draws(model, guide, x, 0)
    with pytest.raises(ValueError, match="iw_images must be between 1 and 200"):
        evaluate.evaluate(model, guide, x, x, torch.zeros(200), iw_images=500, ks=[1, 10])
