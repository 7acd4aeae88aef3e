"""The per-element summaries of q's draws: the vectorized HDI against ArviZ's and a normal's
closed form."""

import arviz as az
import numpy as np
from scipy import stats

from ppl_models.vi.compare import hdi


def test_the_hdi_of_every_column_at_once_is_arvizs_and_a_normals_closed_form():
    rng = np.random.default_rng(0)
    draws = np.column_stack([rng.normal(size=40_000), rng.gamma(2.0, size=40_000)])
    low, high = hdi(draws, 0.94)
    for j in range(draws.shape[1]):
        np.testing.assert_allclose([low[j], high[j]], az.hdi(draws[:, j], hdi_prob=0.94))
    z = stats.norm.ppf(0.97)  # a symmetric density's HDI is its central interval
    np.testing.assert_allclose([low[0], high[0]], [-z, z], atol=0.03)
