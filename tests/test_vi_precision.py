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
