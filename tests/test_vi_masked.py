"""Missing data through ``obs_mask`` (:mod:`ppl_models.vi.masked`), against closed forms.

The imputation site's observed entries have no density in the model; the package gives them a
standard-normal stand-in. On a conjugate normal mean with missing entries the fit must then
give the exact posterior of the mean and of the missing entries, and an ELBO equal to the
observed data's log evidence (both in closed form here), where plain Pyro's scales of those
entries grow without bound.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from scipy import stats

from ppl_models.svi import local_params
from ppl_models.vi.fitting import fit_svi
from ppl_models.vi.masked import StandInWhereMasked, masked_imputations, with_stand_ins
from ppl_models.vi.reparam import funnel_sites, loc_scale

F64 = torch.float64
PRIOR_SD = 10.0


def _missing_normal_mean(y, observed):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), PRIOR_SD))
    with pyro.plate("obs", y.shape[-1]):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y, obs_mask=observed)


def _data():
    rng = np.random.default_rng(0)
    y = rng.normal(1.5, 1.0, 12)
    observed = np.ones(12, dtype=bool)
    observed[[2, 5, 7, 10]] = False
    y[~observed] = 0.0
    return torch.tensor(y, dtype=F64), torch.tensor(observed)


def test_stand_in_density_is_a_standard_normal_in_the_unconstrained_coordinate():
    base = dist.LogNormal(torch.tensor([0.5, 0.5, 0.5], dtype=F64), 2.0)
    mask = torch.tensor([True, False, False])
    x = torch.tensor([0.3, 0.7, 4.0], dtype=F64)
    got = StandInWhereMasked(base, mask).log_prob(x).numpy()
    assert math.isclose(
        got[0], stats.lognorm(s=2.0, scale=math.exp(0.5)).logpdf(0.3), rel_tol=1e-12
    )
    for value, g in zip((0.7, 4.0), got[1:], strict=True):  # N(log x; 0, 1) / x
        assert math.isclose(g, stats.norm.logpdf(math.log(value)) - math.log(value), rel_tol=1e-12)
    expanded = StandInWhereMasked(base, mask).expand([2, 3])
    assert expanded.log_prob(x).shape == (2, 3)
    # the non-centring rung must leave it alone: no loc-scale family shows through
    assert not loc_scale(StandInWhereMasked(dist.Normal(0.0, 1.0).expand([3]), mask))


def test_only_obs_mask_imputations_with_observed_entries_get_a_stand_in():
    y, observed = _data()
    assert masked_imputations(_missing_normal_mean, {"y": y, "observed": observed}) == [
        "y_unobserved"
    ]
    all_observed = torch.ones_like(observed)  # the whole imputation site is then improper
    assert masked_imputations(_missing_normal_mean, {"y": y, "observed": all_observed}) == [
        "y_unobserved"
    ]
    none_observed = torch.zeros_like(observed)  # every entry imputed: nothing to stand in for
    assert masked_imputations(_missing_normal_mean, {"y": y, "observed": none_observed}) == []

    def masked_latent(y):  # a latent the user masks but uses: its model is left as written
        with pyro.plate("obs", 3), poutine.mask(mask=torch.tensor([True, False, True])):
            a = pyro.sample("a_unobserved", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(a.sum(), 1.0), obs=y)

    assert masked_imputations(masked_latent, {"y": torch.tensor(0.0)}) == []


def test_fit_gives_the_exact_posterior_and_evidence_of_a_normal_mean_with_missing_data():
    y, observed = _data()
    y_obs = y[observed].numpy()
    n = len(y_obs)
    precision = 1.0 / PRIOR_SD**2 + n
    mean, var = y_obs.sum() / precision, 1.0 / precision
    evidence = stats.multivariate_normal(np.zeros(n), np.eye(n) + PRIOR_SD**2).logpdf(y_obs)
    fit = fit_svi(
        _missing_normal_mean,
        "auto-mvn",
        {"y": y, "observed": observed},
        steps=300,
        particles=64,
        dtype=F64,
    )
    assert any("stand-in" in note for note in fit.notes)
    with local_params():  # at the exact q, log p - log q is the log evidence at every draw
        elbo = -Trace_ELBO(num_particles=200).loss(fit.model, fit.guide, **fit.data)
    assert abs(elbo - evidence) < 0.02, (elbo, evidence)
    draws = fit.guide.get_posterior().sample((40_000,)).numpy()
    mu = draws[:, 0]
    imputed = draws[:, 1:]
    assert abs(mu.mean() - mean) < 0.03 * math.sqrt(var)
    assert abs(mu.std() / math.sqrt(var) - 1) < 0.03
    missing = ~observed.numpy()
    predictive_sd = math.sqrt(1.0 + var)  # a missing entry: N(mean, 1 + var)
    assert np.all(np.abs(imputed[:, missing].mean(0) - mean) < 0.03 * predictive_sd)
    assert np.all(np.abs(imputed[:, missing].std(0) / predictive_sd - 1) < 0.03)
    # the observed entries' stand-in: a standard normal, independent of mu
    assert np.all(np.abs(imputed[:, ~missing].mean(0)) < 0.03)
    assert np.all(np.abs(imputed[:, ~missing].std(0) - 1) < 0.03)


def test_wrapped_model_keeps_its_name_and_leaves_other_sites_alone():
    y, observed = _data()
    wrapped = with_stand_ins(_missing_normal_mean, ["y_unobserved"])
    assert wrapped.__wrapped__ is _missing_normal_mean
    trace = poutine.trace(wrapped).get_trace(y, observed)
    assert isinstance(trace.nodes["y_unobserved"]["fn"], StandInWhereMasked)
    assert trace.nodes["y_unobserved"]["mask"] is None
    assert not isinstance(trace.nodes["mu"]["fn"], StandInWhereMasked)


def test_the_non_centring_rung_leaves_the_imputation_site_as_written():
    y, observed = _data()

    def unknown_scale(y, observed):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), PRIOR_SD))
        sigma = pyro.sample("sigma", dist.HalfNormal(torch.ones((), dtype=y.dtype)))
        with pyro.plate("obs", y.shape[-1]):
            pyro.sample("y", dist.Normal(mu, sigma), obs=y, obs_mask=observed)

    assert "y_unobserved" not in funnel_sites(unknown_scale, {"y": y, "observed": observed})
