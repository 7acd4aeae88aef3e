"""The streamed moments equal those computed with every draw kept (ppl_models.vi.stream).

The truth is :func:`ppl_models.importance.weighted_moments` over all draws with ArviZ-style
PSIS-smoothed weights, and NumPy's own mean and sd for q's moments: the stream keeps power sums
and the largest-weight draws only, in small chunks, with the running shift of its weights moved
several times."""

import numpy as np
import pytest

from ppl_models.diagnostics import psis_smooth
from ppl_models.importance import weighted_moments
from ppl_models.vi.stream import MomentStream


@pytest.mark.parametrize("chunk", [7, 46, 500])
def test_streamed_psis_moments_are_those_of_every_draw_kept(chunk):
    rng = np.random.default_rng(chunk)
    s, e = 3000, 5
    f = rng.normal(size=(s, e)) * [1.0, 2.0, 0.5, 3.0, 1.0] + [0.0, 5.0, -1.0, 2.0, 100.0]
    # heavy-ish weights that grow along the draws, so the stream's shift is raised often
    log_w = 0.4 * rng.standard_t(4, size=s) + np.linspace(0.0, 1.0, s) + 0.2 * f[:, 0]
    stream = MomentStream(s)
    for start in range(0, s, chunk):
        stream.add(log_w[start : start + chunk], f[start : start + chunk])
    smoothed, khat = psis_smooth(log_w)
    assert khat < 0.7  # PSIS smooths a real tail here
    got = stream.psis_moments(smoothed)
    want = weighted_moments(f, smoothed)
    for name in ("mean", "sd", "mcse_mean", "mcse_sd"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-9, atol=1e-12)
    q_mean, q_sd = stream.q_moments()
    np.testing.assert_allclose(q_mean, f.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(q_sd, f.std(axis=0), rtol=1e-10)
