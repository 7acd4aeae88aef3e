"""The exponential-normal Pyro model and its guide families: traces against scipy densities, SVI
against the closed-form optimum."""

import pyro
import pytest
import torch
from exp_normal_reference import DATASETS, ref_log_joint
from pyro import poutine
from pyro.infer import Trace_ELBO

from ppl_models import exp_normal as en
from ppl_models.exp_normal.pyro_model import _PARAM_CONSTRAINTS


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
