"""PSIS's sample-size requirement, against its closed form :math:`10^{1/(1-\\hat k)}`."""

import math

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

    from test_vi_logweights import Y, _positive_guide, _positive_model

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
    assert most[0] <= 1000 // 100 + 2, most[0]  # the 10 chunks kept whole, and one streaming
