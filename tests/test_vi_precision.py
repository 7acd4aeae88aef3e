"""PSIS's sample-size requirement, against its closed form :math:`10^{1/(1-\\hat k)}`."""

import math

import numpy as np
import pytest

from ppl_models.vi.precision import draws_for_khat


def test_the_draws_psis_needs_are_ten_to_one_over_one_minus_khat_and_never_overflow():
    assert draws_for_khat(0.5) == pytest.approx(100.0)
    assert draws_for_khat(2 / 3) == pytest.approx(1000.0)  # S = 1000's threshold 1 - 1/log10 S
    assert draws_for_khat(0.99) == pytest.approx(1e100)
    # 10^500 exceeds a float: a k-hat just under 1 (a poor fit's) needs infinitely many draws
    assert draws_for_khat(0.998) == math.inf
    assert draws_for_khat(1.0) == math.inf and draws_for_khat(1.4) == math.inf


def test_one_process_streams_a_round_a_chunk_at_a_time(monkeypatch):
    # memory that does not grow with S: past the draws kept whole, each chunk is released once
    # streamed, instead of a whole round's chunks being drawn before any is streamed (a round
    # of 50,000 draws of 1,003 elements held 0.8 GB)
    import weakref

    from test_vi_logweights import Y, _positive_guide, _positive_model, _scipy_log_joint

    from ppl_models.vi import logweights, precision
    from ppl_models.vi.precision import draw_by_precision

    alive, most = set(), [0]
    chunks = logweights.Drawer.chunks

    def tracked(self, total):
        for i, part in enumerate(chunks(self, total)):
            token = (id(self), total, i)
            alive.add(token)
            weakref.finalize(part[2]["mu"], alive.discard, token)
            most[0] = max(most[0], len(alive))
            yield part

    monkeypatch.setattr(logweights.Drawer, "chunks", tracked)
    monkeypatch.setattr(precision, "keep_size", lambda dimension, cap: 1000)
    lw = draw_by_precision(
        _positive_model,
        _positive_guide,
        {"y": Y},
        draws=8000,
        min_draws=1000,
        precision=1e-9,  # never resolved: the rounds run to the cap, 1,000 to 8,000 draws
        loop_draws=8000,
        chunk=100,
    )
    assert lw.draws == 8000 and len(lw.values["mu"]) == 1000
    # the kept draws are copied out of their chunks: one chunk alive at a time (two while the
    # next is drawn), however many are kept
    assert most[0] <= 2, most[0]
    # and they are the first 1,000 draws: their scipy log densities are those of the first
    # 1,000 log weights
    mu, sigma = lw.values["mu"], lw.values["sigma"]
    np.testing.assert_allclose(lw.log_joint[:1000], _scipy_log_joint(mu, sigma), rtol=1e-10)
    np.testing.assert_allclose(lw.unconstrained["sigma"], np.log(sigma))


def _shifted_normal(shift: float):
    """p = N(0, 1) and q = N(shift, 1): log w = -shift z - shift^2 / 2 for z ~ q is normal with
    variance shift^2, so ESS / S tends to 1 / E_q[w^2] = exp(-shift^2) (w lognormal)."""
    import pyro
    import pyro.distributions as dist
    import torch

    def model():
        pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))

    def guide():
        pyro.sample("z", dist.Normal(torch.tensor(shift, dtype=torch.float64), 1.0))

    return model, guide


@pytest.mark.parametrize("shift", [3.0, 0.3])
def test_the_rounds_stop_once_the_importance_ess_share_falls_short_twice(monkeypatch, shift):
    # ESS / S does not grow with S: once short of the verdict's 1% in two rounds, the fit cannot
    # certify itself at the cap either. k-hat is kept from settling, so that only this rule or
    # the cap ends the rounds
    from ppl_models.importance import importance_ess
    from ppl_models.vi import precision
    from ppl_models.vi.precision import draw_by_precision
    from ppl_models.vi.verdict import VerdictRules

    monkeypatch.setattr(precision, "KHAT_STABLE", -1.0)
    model, guide = _shifted_normal(shift)
    common = dict(draws=32_000, min_draws=1000, precision=0.025, loop_draws=32_000, seed=0)
    with_floor = draw_by_precision(model, guide, {}, ess_rules=VerdictRules(), **common)
    at_cap = draw_by_precision(model, guide, {}, ess_rules=None, **common)
    assert at_cap.draws == 32_000
    share = importance_ess(at_cap.log_joint - at_cap.log_q) / at_cap.draws
    if math.exp(-(shift**2)) < 0.01:  # the share's limit is below the verdict's 1%
        assert 4000 <= with_floor.draws < 32_000, with_floor.draws_reason
        assert "importance ESS" in with_floor.draws_reason
        stopped = importance_ess(with_floor.log_joint - with_floor.log_q) / with_floor.draws
        assert stopped < 0.01 and share < 0.01  # short at the stop, and at the cap too
    else:  # an ESS share near 1: the rule never fires, and the draws are the cap's
        assert share > 0.5 and with_floor.draws == 32_000
        np.testing.assert_array_equal(with_floor.log_joint, at_cap.log_joint)
