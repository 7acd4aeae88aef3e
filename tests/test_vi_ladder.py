"""The escalation ladder (``fit_auto``, ``fit --auto``), each rung against an independent truth.

- the first rung suffices on a conjugate normal mean (closed-form posterior);
- the PSIS rung corrects a mean-field fit's sds on a correlated Gaussian (closed form);
- Neal's funnel (y ~ N(0, 3) marginally, exactly) is reached by the non-centred or NUTS rung;
- a banana (moments by quadrature on a grid) by a flow or a later rung;
- the NUTS sampler on a correlated Gaussian and a Student-t (closed forms), and the NUTS rung
  on a Poisson mixture whose components are summed out (quadrature);
- a budget that runs out, Ctrl-C and a kill leave the finished rungs and say so;
- ``ppl-models fit --auto`` end to end.

Sizes are small (few SVI steps, few draws) so the file runs in about two minutes on a loaded
2-core machine; the truths are computed here, never taken from the package.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from ppl_models import cli, diagnostics
from ppl_models.bench.adversarial import CAUCHY_Y, cauchy_location_model
from ppl_models.vi import ladder as vl
from ppl_models.vi.answers import mcmc_verdict
from ppl_models.vi.fitting import fit_svi
from ppl_models.vi.ladder import fit_auto
from ppl_models.vi.neutra import RETRY_TARGETS, mcmc_checks, retry_target, run_nuts
from ppl_models.vi.nuts import NutsRun, VectorizedNuts, compiled_potential
from ppl_models.vi.references import Reference
from ppl_models.vi.reparam import noncentred
from ppl_models.vi.settings import LadderSettings, NutsLadderSettings

REPO = Path(__file__).resolve().parents[1]
FAST_NUTS = NutsLadderSettings(warmup=150, draws=200, max_draws=1600)
FAST = LadderSettings(draws=4000, mode_starts=4, nuts=FAST_NUTS)
F64 = torch.float64


def _rows(ladder) -> dict[str, dict]:
    return {r["name"]: r for r in ladder.diagnosis.summary["parameters"]}


# ----------------------------------------------------------------------------- the rungs


def _normal_mean(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("obs", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


NORMAL_X = torch.tensor([2.3, 1.9, 3.1, 2.8, 1.4, 2.6, 2.2, 3.4, 1.8, 2.5], dtype=F64)


def test_conjugate_model_stops_at_the_first_rung():
    ladder = fit_auto(_normal_mean, {"x": NORMAL_X}, ladder=FAST, steps=300)
    precision = 1 / 10.0**2 + len(NORMAL_X)
    sd, mean = 1 / math.sqrt(precision), float(NORMAL_X.sum()) / precision
    assert ladder.stopped == "certified"
    assert [r.rung for r in ladder.rungs] == ["guide"]
    assert ladder.answer is ladder.rungs[0] and ladder.answer.answer
    row = _rows(ladder)["mu"]
    assert abs(row["mean"] - mean) < 0.05 * sd
    assert abs(row["sd"] / sd - 1) < 0.05
    record = ladder.to_dict()
    assert record["answer"] == 0 and record["rungs"][0]["verdict"] == "trustworthy"
    assert set(record["rungs"][0]) >= {"method", "seconds", "khat", "verdict", "stopped"}


def test_a_rung_whose_loss_became_nan_is_fitted_again_at_a_tenth_of_the_step(monkeypatch):
    """The retry's mechanics (a NaN is simulated above lr 0.05); the answer against the closed
    form."""
    from ppl_models.svi import NonFiniteLossError
    from ppl_models.vi import fitting

    real = fitting.fit_svi
    tried = []

    def nan_at_large_steps(model, guide, data, settings, **kw):
        tried.append(settings.lr)
        if settings.lr > 0.05:
            raise NonFiniteLossError("loss became nan at step 7")
        return real(model, guide, data, settings, **kw)

    monkeypatch.setattr(fitting, "fit_svi", nan_at_large_steps)
    ladder = fit_auto(_normal_mean, {"x": NORMAL_X}, ladder=FAST, steps=300, lr=0.1)
    assert tried == [0.1, 0.01]
    first = ladder.rungs[0]
    assert first.status == "done" and "a tenth of the step size" in first.facts["retried"]
    assert any("a tenth of the step size" in n for n in first.fit.notes)
    precision = 1 / 10.0**2 + len(NORMAL_X)
    sd, mean = 1 / math.sqrt(precision), float(NORMAL_X.sum()) / precision
    row = _rows(ladder)["mu"]
    assert abs(row["mean"] - mean) < 0.05 * sd and abs(row["sd"] / sd - 1) < 0.05


OFFSET = torch.nn.Linear(1, 1, bias=False, dtype=F64)  # a module the model script builds
torch.nn.init.constant_(OFFSET.weight, 0.5)


def _normal_mean_with_estimates(x):
    # point estimates of two kinds: a pyro.param site and a module's parameter
    noise = pyro.param("noise", torch.tensor(1.0, dtype=F64), constraint=dist.constraints.positive)
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("obs", len(x)):
        pyro.sample("x", dist.Normal(mu + OFFSET.weight[0, 0], noise), obs=x)


def test_a_second_attempt_starts_the_models_point_estimates_where_the_first_did(monkeypatch):
    # the first attempt leaves NaNs in the model's parameters (and a site of its own) when its
    # loss becomes NaN; the retry starts from the model's initial values, not from those
    from ppl_models.svi import NonFiniteLossError
    from ppl_models.vi import fitting

    real, starts = fitting.fit_svi, []

    def nan_then_fit(model, guide, data, settings, **kw):
        store = pyro.get_param_store()
        starts.append((sorted(store.keys()), float(OFFSET.weight.detach())))
        if len(starts) == 1:
            store["noise"] = torch.tensor(float("nan"), dtype=F64)
            store["left_behind"] = torch.tensor(3.0, dtype=F64)
            with torch.no_grad():
                OFFSET.weight.fill_(float("nan"))
            raise NonFiniteLossError("loss became nan at step 7")
        return real(model, guide, data, settings, **kw)

    monkeypatch.setattr(fitting, "fit_svi", nan_then_fit)
    with pyro.get_param_store().scope():
        ladder = fit_auto(
            _normal_mean_with_estimates, {"x": NORMAL_X}, ladder=FAST, steps=200, budget=60
        )
        noise = float(pyro.param("noise").detach())
    assert starts[0] == starts[1] == ([], 0.5)  # as the model's code starts them
    first = ladder.rungs[0]
    assert first.status == "done" and "a tenth of the step size" in first.facts["retried"]
    assert math.isfinite(noise) and math.isfinite(float(OFFSET.weight.detach()))


def _correlated_regression(rho: float = 0.5, n: int = 20, seed: int = 0):
    """beta ~ N(0, 10^2 I), y ~ N(X beta, 1) with X's columns correlated rho: the posterior is
    N(m, S), S = (X'X + I/100)^-1, m = S X'y, with correlation -rho (closed form)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, 2)))
    x = math.sqrt(n) * q @ np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]])).T
    y = x @ np.array([1.0, -0.5]) + rng.standard_normal(n)
    cov = np.linalg.inv(x.T @ x + np.eye(2) / 100)
    mean = cov @ x.T @ y

    def model(X, y):
        beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
        pyro.sample("y", dist.Normal((X * beta[..., None, :]).sum(-1), 1.0).to_event(1), obs=y)

    draws = rng.multivariate_normal(mean, cov, size=(4, 5000))
    data = {"X": torch.tensor(x), "y": torch.tensor(y)}
    return model, data, mean, np.sqrt(np.diag(cov)), Reference({"beta": draws}, "exact draws")


def test_psis_rung_corrects_a_mean_field_fits_sds():
    model, data, mean, sd, reference = _correlated_regression()
    settings = LadderSettings(draws=32_000, mode_starts=4, rungs=("guide", "psis"))
    ladder = fit_auto(model, data, reference=reference, ladder=settings, steps=300)
    guide, psis = ladder.rungs
    # mean-field q underestimates the sds of correlated coefficients (sqrt(1 - rho^2))
    assert guide.verdict != "trustworthy"
    q_rows = {r["name"]: r for r in guide.diagnosis.summary["parameters"]}
    assert q_rows["beta[2]"]["sd"] < 0.9 * sd[1]
    assert psis.rung == "psis" and psis.certified and ladder.answer is psis
    rows = _rows(ladder)
    for j, name in enumerate(["beta[1]", "beta[2]"]):
        assert abs(rows[name]["mean"] - mean[j]) < 0.1 * sd[j]
        assert abs(rows[name]["sd"] / sd[j] - 1) < 0.05
    summary = ladder.diagnosis.summary
    assert summary["answer"]["kind"] == "psis"
    assert summary["psis_resampling"]["importance_ess"] > 400
    # the answer's posterior is the resampled draws: their moments are the corrected ones
    beta = ladder.diagnosis.idata.posterior["beta"].values.reshape(-1, 2)
    assert abs(beta[:, 1].std() / sd[1] - 1) < 0.08


def test_a_richer_family_goes_on_where_it_gains_and_stops_where_it_cannot():
    """Full rank against mean field: on a Gaussian posterior with correlation -0.95 it gains
    -log(1 - rho^2) / 2 = 1.16 nats (closed form), runs its whole fit and is exact; in one
    dimension it is the same family as its start, gains nothing, and stops at NO_GAIN_STEP."""
    rho = 0.95
    model, data, mean, sd, reference = _correlated_regression(rho=rho)
    settings = LadderSettings(draws=8000, mode_starts=0, rungs=("guide", "richer"))
    ladder = fit_auto(model, data, reference=reference, ladder=settings, steps=1000)
    guide, richer = ladder.rungs
    gain = -0.5 * math.log(1 - rho**2)
    assert abs(richer.elbo - guide.elbo - gain) < 0.1, (richer.elbo, guide.elbo, gain)
    assert "no_gain" not in richer.facts and len(richer.fit.losses) == 1000
    assert ladder.answer is richer
    rows = _rows(ladder)
    for j, name in enumerate(["beta[1]", "beta[2]"]):
        assert abs(rows[name]["mean"] - mean[j]) < 0.1 * sd[j]
        assert abs(rows[name]["sd"] / sd[j] - 1) < 0.05

    y = torch.tensor(CAUCHY_Y, dtype=F64)
    ladder = fit_auto(cauchy_location_model, {"y": y}, ladder=settings, steps=1000)
    richer = ladder.rungs[-1]
    assert richer.rung == "richer" and richer.status == "done"
    assert len(richer.fit.losses) == vl.NO_GAIN_STEP
    assert "found nothing its start lacked" in richer.facts["no_gain"] in richer.stopped


@pytest.mark.parametrize(
    ("offset", "stops"), [(-2.0, False), (-0.1, True), (0.02, True), (0.3, False)]
)
def test_a_richer_fit_stops_only_where_it_is_back_at_its_starts_elbo(offset, stops):
    """At step 300 a fit whose ELBO sits at its start's (within -0.5 and +0.05 nats, widened by
    its noise) stops; one still 2 nats below (recovering from its first steps) or 0.3 above
    (gaining) goes on."""
    climb = types.SimpleNamespace(deadline=time.perf_counter() + 3600)
    watch = vl._GainWatch(climb, start_elbo=-50.0, window=100)
    rng = np.random.default_rng(0)
    losses = 50.0 - offset + 0.05 * rng.standard_normal(vl.NO_GAIN_STEP)
    asked = [watch(step, float(loss), None) for step, loss in enumerate(losses)]
    assert asked[-1] is stops and not any(asked[:-1])
    assert (watch.note is not None) is stops


def test_noncentred_model_maps_draws_back_to_the_users_site():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("j", len(y)):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("y", dist.Normal(theta, 10.0), obs=y)

    y = torch.tensor([28.0, 8.0, -3.0], dtype=F64)
    assert vl.funnel_sites(model, {"y": y}) == {"theta": ["tau"]}
    with torch.no_grad():
        trace = pyro.poutine.trace(noncentred(model, ["theta"])).get_trace(y=y)
    raw, theta = trace.nodes["theta_decentered"], trace.nodes["theta"]
    mu, tau = trace.nodes["mu"]["value"], trace.nodes["tau"]["value"]
    assert not raw["is_observed"] and theta["infer"].get("_deterministic")
    assert torch.allclose(theta["value"], mu + tau * raw["value"])
    assert isinstance(
        raw["fn"].base_dist if hasattr(raw["fn"], "base_dist") else raw["fn"], dist.Normal
    )


def _funnel(dim):
    y = pyro.sample("y", dist.Normal(0.0, 3.0))
    with pyro.plate("dims", dim):
        pyro.sample("x", dist.Normal(0.0, (y / 2).exp()))


def test_neals_funnel_is_reached_by_reparametrisation():
    """Non-centred, the funnel is exact for auto-normal. (NUTS on the same form follows it too,
    but no sampler's draws can estimate the sds of its x, so NUTS's verdict is means-only.)"""
    settings = LadderSettings(
        draws=4000, mode_starts=4, rungs=("guide", "psis", "reparam", "nuts"), nuts=FAST_NUTS
    )
    ladder = fit_auto(_funnel, {"dim": 4}, ladder=settings)
    assert ladder.answer is not None, ladder.summary_sentence()
    assert ladder.answer.rung in ("reparam", "psis")
    assert ladder.answer.model == "non-centred: x"
    reparam = next(r for r in ladder.rungs if r.rung == "reparam")
    assert reparam.facts["non_centred"] == {"x": ["y"]}
    y = _rows(ladder)["y"]  # exact: y ~ N(0, 3)
    assert abs(y["mean"]) < 0.15 * 3.0
    assert abs(y["sd"] / 3.0 - 1) < 0.1
    posterior = ladder.diagnosis.idata.posterior
    assert "x" in posterior and "x_decentered" in posterior  # the user's own site comes back
    x = posterior["x"].values.reshape(-1, 4)
    y_draws = posterior["y"].values.ravel()
    # x_k | y ~ N(0, e^{y/2}): the standardised draws are standard normal whatever y
    z = (x / np.exp(y_draws / 2)[:, None]).ravel()
    assert abs(z.std() - 1) < 0.1


BANANA_Y = torch.tensor([1.2, 0.8, 1.5, 0.6, 1.1, 0.9, 1.3, 0.7, 1.0, 0.9], dtype=F64)


def _banana(y):
    t1 = pyro.sample("t1", dist.Normal(0.0, 1.0))
    t2 = pyro.sample("t2", dist.Normal(0.0, 1.0))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Normal(t2 - t1**2, 1.0), obs=y)


def _banana_truth(seed: int = 0):
    """Moments and draws of the banana's posterior by quadrature on a fine grid."""
    g1, g2 = np.linspace(-4, 4, 801), np.linspace(-4, 8, 1201)
    t1, t2 = np.meshgrid(g1, g2, indexing="ij")
    y = BANANA_Y.numpy()
    log_p = -0.5 * t1**2 - 0.5 * t2**2
    log_p = log_p - 0.5 * ((y[None, None, :] - (t2 - t1**2)[..., None]) ** 2).sum(-1)
    p = np.exp(log_p - log_p.max())
    p /= p.sum()
    moments = {}
    for name, t in (("t1", t1), ("t2", t2)):
        m = float((p * t).sum())
        moments[name] = (m, math.sqrt(float((p * (t - m) ** 2).sum())))
    rng = np.random.default_rng(seed)
    index = rng.choice(p.size, size=20_000, p=p.ravel())
    jitter = rng.uniform(-0.005, 0.005, (2, index.size))
    draws = {
        "t1": (t1.ravel()[index] + jitter[0]).reshape(4, -1),
        "t2": (t2.ravel()[index] + jitter[1]).reshape(4, -1),
    }
    return moments, Reference(draws, "quadrature on a 801 x 1201 grid")


def test_banana_is_reached_by_a_flow_or_later_with_its_moments():
    moments, reference = _banana_truth()
    ladder = fit_auto(_banana, {"y": BANANA_Y}, reference=reference, ladder=FAST, steps=500)
    first = ladder.rungs[0]
    assert first.verdict != "trustworthy"  # a Gaussian cannot bend
    assert ladder.answer is not None, ladder.summary_sentence()
    assert ladder.answer.rung in ("flow", "psis", "nuts")
    rows = _rows(ladder)
    for name, (mean, sd) in moments.items():
        assert abs(rows[name]["mean"] - mean) < 0.1 * sd, name
        assert abs(rows[name]["sd"] / sd - 1) < 0.1, name


def test_nuts_rung_runs_again_from_the_best_gaussian_where_the_flows_run_fails(monkeypatch):
    """A flow preconditions NUTS only where its ELBO is a nat above the Gaussian's (set here);
    its run is made to fail its checks (simulated), and the rung's second run, preconditioned by
    the Gaussian fit, is its answer, with the banana's moments by quadrature."""
    import dataclasses

    from ppl_models.vi import neutra
    from ppl_models.vi.settings import FitSettings

    moments, _ = _banana_truth()
    data = {"y": BANANA_Y}
    fits = fit_auto(
        _banana, data, ladder=dataclasses.replace(FAST, rungs=("guide", "flow")), steps=300
    )
    assert [r.fit.guide_name for r in fits.rungs if r.fit is not None] == [
        "auto-normal",
        "auto-iaf",
    ]
    gaussian, flow = [r for r in fits.rungs if r.fit is not None]
    flow.elbo = gaussian.elbo + 0.5  # within a nat: the flow's extra cost buys too little
    assert vl._preconditioner([gaussian, flow]) is gaussian
    flow.elbo = gaussian.elbo + 5.0  # a flow that clearly fits better preconditions first
    assert vl._preconditioner([gaussian, flow]) is flow
    real, preconditioners = neutra.run_nuts, []

    def flow_fails(fit, settings, **kw):
        preconditioners.append(fit.guide_name)
        draws = real(fit, settings, **kw)
        if fit.guide_name == "auto-iaf":
            draws.checks = dict(draws.checks, passed=False, failed=["3 divergent transitions"])
        return draws

    monkeypatch.setattr(neutra, "run_nuts", flow_fails)
    climb = vl._Climb(
        _banana,
        data,
        "auto-normal",
        FitSettings(steps=500),
        FAST,
        None,
        0,
        time.perf_counter() + 600,
        False,
        None,
        rungs=[r for r in fits.rungs if r.fit is not None],
    )
    rung = vl._nuts_rung(climb)
    assert preconditioners == ["auto-iaf", "auto-normal"]
    assert rung.fit.guide_name == "auto-normal" and "the flow's run failed" in rung.method
    assert "3 divergent transitions" in " ".join(rung.diagnosis.summary["notes"])
    rows = {r["name"]: r for r in rung.diagnosis.summary["parameters"]}
    for name, (mean, sd) in moments.items():
        assert abs(rows[name]["mean"] - mean) < 0.1 * sd, name
        assert abs(rows[name]["sd"] / sd - 1) < 0.1, name


# ----------------------------------------------------------------------------- the NUTS sampler


def test_nuts_warms_up_again_after_divergences_and_stops_where_they_are_the_geometry():
    # Neal's funnel (y ~ N(0, 3), x ~ N(0, e^{y/2})) preconditioned by a diagonal Gaussian:
    # no step size suits both the neck and the mouth, so the chains diverge at 0.8, are warmed
    # up again towards 0.95 (Stan's advice), and still diverge there in more than 1% of their
    # transitions: the geometry, which 0.99 would not cure either, so the run fails its checks
    def funnel():
        y = pyro.sample("y", dist.Normal(0.0, 3.0))
        pyro.sample("x", dist.Normal(0.0, torch.exp(y / 2)))

    fit = fit_svi(funnel, "auto-normal", {}, steps=300, device="cpu", dtype=F64)
    settings = NutsLadderSettings(warmup=150, draws=100, max_draws=100)
    draws = run_nuts(fit, settings, seed=0)
    checks = draws.checks
    assert checks["target_accept"] == RETRY_TARGETS[0] == 0.95
    assert len(checks["divergences_before_retry"]) == 1
    assert checks["divergences"] > 0.01 * 4 * 100 and not checks["passed"]
    assert "towards 0.95" in next(n for n in draws.notes if "warmed up again" in n)


def test_retry_target_follows_stans_advice_and_spares_hopeless_geometry():
    assert retry_target(0.8, 300, 4000) == 0.95  # the first retry whatever the count
    assert retry_target(0.95, 1, 4000) == 0.99  # a few left: shorter steps may cure them
    assert retry_target(0.95, 40, 4000) == 0.99  # 1% exactly
    assert retry_target(0.95, 41, 4000) is None  # more: the geometry
    assert retry_target(0.99, 1, 4000) is None  # nothing higher to try
    assert retry_target(0.9, 1, 4000) == 0.95


def test_vectorized_nuts_samples_a_correlated_gaussian_and_a_student_t():
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    precision = torch.tensor(np.linalg.inv(cov))

    def potential(x):
        gauss = 0.5 * ((x[..., :2] @ precision) * x[..., :2]).sum(-1)
        return gauss + 3.0 * torch.log1p(x[..., 2] ** 2 / 5)  # t with 5 degrees of freedom

    c = 4
    example = [
        torch.randn(c, 3, dtype=F64, generator=torch.Generator().manual_seed(i)) for i in (1, 2)
    ]
    compiled = compiled_potential(potential, example[0], example[1:])
    assert compiled.how == "jit"
    sampler = VectorizedNuts(compiled.fn, example[0].numpy(), seed=0)
    sampler.warmup(300)
    sampler.sample(1500)
    run = sampler.result()
    x = run.draws.reshape(-1, 3)
    assert run.diverging.sum() == 0
    assert np.allclose(np.cov(x[:, :2].T), cov, atol=0.1)
    assert abs(x[:, :2].mean(0)).max() < 0.1
    # the t's tail mass beyond 2: 10.2%
    assert abs(np.mean(np.abs(x[:, 2]) > 2) - 2 * stats.t(5).sf(2)) < 0.025


COUNTS = (0, 0, 3, 5, 1, 0, 4, 6, 2, 0, 0, 7, 3, 0, 5, 4, 0, 1, 6, 0)
OTHER_RATE, OTHER_WEIGHT = 1.0, 0.3


def _poisson_mixture(y):
    """Each count from Poisson(lam) or, with probability 0.3, from Poisson(1), its component
    a discrete latent summed out by enumeration."""
    lam = pyro.sample("lam", dist.Gamma(torch.tensor(2.0, dtype=y.dtype), 0.5))
    with pyro.plate("obs", y.shape[-1]):
        other = pyro.sample("other", dist.Bernoulli(OTHER_WEIGHT), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Poisson(torch.where(other.bool(), OTHER_RATE, lam)), obs=y)


def test_nuts_rung_sums_out_discrete_latents():
    """NeuTra NUTS on a Poisson mixture with its components enumerated: lam's posterior mean
    and sd by quadrature of the marginal likelihood on a grid."""
    y = np.asarray(COUNTS, dtype=float)
    grid = np.linspace(1e-3, 15.0, 30_001)
    mixture = (1 - OTHER_WEIGHT) * stats.poisson(grid[:, None]).pmf(
        y
    ) + OTHER_WEIGHT * stats.poisson(OTHER_RATE).pmf(y)
    log_post = stats.gamma(2.0, scale=2.0).logpdf(grid) + np.log(mixture).sum(1)
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    mean = float((w * grid).sum())
    sd = math.sqrt(float((w * (grid - mean) ** 2).sum()))
    fit = fit_svi(_poisson_mixture, "auto-normal", {"y": torch.tensor(y, dtype=F64)}, steps=300)
    assert fit.discrete
    draws = run_nuts(fit, FAST_NUTS, seed=0)
    assert draws.checks["passed"], draws.checks
    lam = draws.values["lam"].ravel()
    assert abs(lam.mean() - mean) < 0.1 * sd, (lam.mean(), mean, sd)
    assert abs(lam.std() / sd - 1) < 0.12, (lam.std(), sd)


def test_mcmc_verdict_refuses_failing_chains():
    label, reasons, _ = mcmc_verdict([], {"passed": False, "failed": ["2 divergent transitions"]})
    assert label == "not-trustworthy" and "divergent" in reasons[0]
    checks = {
        "passed": True,
        "failed": [],
        "chains": 4,
        "max_r_hat": 1.001,
        "min_ess_bulk": 900.0,
        "min_ess_tail": 800.0,
    }
    row = {
        "name": "a",
        "mean": 1.0,
        "sd": 1.0,
        "mcse_mean": 0.03,
        "mcse_sd": 0.02,
        "ref_mean": 1.5,
        "ref_sd": 1.0,
        "ref_mcse_mean": 0.01,
        "ref_mcse_sd": 0.01,
        "ref_ess": 4000.0,
        "std_mean_error": -0.5,
        "sd_ratio": 1.0,
        "ks": 0.2,
        "ks_draws": 900,
    }
    assert mcmc_verdict([row], checks)[0] == "not-trustworthy"
    good = row | {"ref_mean": 1.0, "std_mean_error": 0.0, "ks": 0.01}
    assert mcmc_verdict([good], checks)[0] == "trustworthy"


def _iid_run(draws: np.ndarray) -> NutsRun:
    """A NUTS run whose kept states are ``draws`` ``(C, N, D)``, without a divergence, its
    energies independent draws."""
    c, n, _ = draws.shape
    zeros = np.zeros((c, n))
    return NutsRun(
        draws=draws,
        diverging=zeros.astype(bool),
        tree_depth=zeros + 3,
        steps=zeros + 7,
        accept=zeros + 0.8,
        energy=np.random.default_rng(1).chisquare(draws.shape[2], (c, n)),
        step_size=np.ones(c),
        inverse_mass=np.ones(draws.shape[2]),
        warmup=100,
    )


@pytest.mark.parametrize(
    ("nu", "heavy", "label"),
    [
        (None, False, "trustworthy"),  # a normal: squared deviations with k = 0
        (10 / 3, True, "trustworthy"),  # k = 0.6: no fourth moment, the sd's error a bound
        (2.0, True, "means-only"),  # k = 1: no variance, so no sd to estimate
        (1.0, True, "not-trustworthy"),  # Cauchy, k = 2: no mean either
    ],
)
def test_the_chains_tails_decide_which_moments_their_draws_can_estimate(nu, heavy, label):
    """Student's t with nu degrees of freedom has tail index nu: its squared deviations have
    k = 2 / nu. Below 1/2 the sd and its Monte Carlo error are sound; from 1/2 to 0.7 (the
    sample-size threshold) the sd is sound and its error a lower bound; above 0.7 no sd can be
    estimated, and above 1.4 no mean. R-hat and ESS, on ranks, pass in every case."""
    rng = np.random.default_rng(0)
    c, n = 4, 50_000
    x = rng.normal(size=(c, n)) if nu is None else rng.standard_t(nu, (c, n))
    flip = (rng.random((c, n)) < 0.3).astype(float)  # two values: too few to fit a tail to
    values = {"x": x, "flip": flip}
    checks, _ = mcmc_checks(values, _iid_run(np.stack([x, flip], axis=-1)))
    assert checks["passed"], checks
    assert (checks["heavy_tails"] == ["x"]) is heavy, checks["max_sd_tail_khat"]
    assert "flip" not in checks["unreliable_sds"]
    got, reasons, _ = mcmc_verdict([], checks)
    assert got == label, (checks["max_sd_tail_khat"], reasons)
    if nu == 10 / 3:
        assert "lower bounds" in reasons[1] and "of x rests" in reasons[1]
    if nu == 2.0:
        assert "sds of x cannot be estimated" in reasons[0]
    if nu == 1.0:
        assert "cannot estimate the means of x" in reasons[0]
    # independent energies: E (e_n - e_n-1)^2 = 2 var e, so the E-BFMI is 2
    assert abs(checks["min_e_bfmi"] - 2) < 0.1


def _cauchy_prior():
    pyro.sample("theta", dist.Cauchy(torch.tensor(0.0, dtype=F64), 1.0))


def test_nuts_draws_of_a_cauchy_pass_their_rank_checks_and_are_still_refused():
    """A Cauchy has no mean and no sd: the chains mix (rank-normalised R-hat and ESS pass),
    but the tails of their draws say that no sd can be estimated from them."""
    fit = fit_svi(_cauchy_prior, "auto-normal", {}, steps=300)
    draws = run_nuts(fit, FAST_NUTS, seed=0)
    checks = draws.checks
    assert checks["max_r_hat"] <= 1.01 and checks["divergences"] == 0, checks["failed"]
    assert checks["unreliable_sds"] == ["theta"], checks["max_sd_tail_khat"]
    label, reasons, _ = mcmc_verdict([], checks)
    assert label != "trustworthy" and "sds of theta cannot be estimated" in reasons[0]


# ------------------------------------------------------------------------ budget, interruptions


def test_a_budget_that_runs_out_ends_with_the_best_rung_so_far():
    settings = LadderSettings(budget=0.5, draws=4000, mode_starts=0)
    ladder = fit_auto(_funnel, {"dim": 4}, ladder=settings, steps=2000)
    assert ladder.stopped == "budget"
    assert ladder.answer is None and ladder.closest is ladder.rungs[0]
    assert ladder.closest.diagnosis is not None  # the first rung is always diagnosed
    assert "budget" in ladder.summary_sentence()
    assert len(ladder.rungs[0].fit.losses) < 2000  # the fit stopped at the deadline
    record = ladder.diagnosis.summary["ladder"]
    assert record["stopped"] == "budget" and record["closest"] == 0


def test_ctrl_c_ends_the_climb_with_the_rungs_finished_so_far():
    def interrupt(rung, index):
        if rung.rung == "psis":
            raise KeyboardInterrupt

    ladder = fit_auto(_funnel, {"dim": 4}, ladder=FAST, steps=200, on_rung=interrupt)
    assert ladder.stopped == "interrupted"
    assert [r.rung for r in ladder.rungs] == ["guide", "psis"]
    assert ladder.closest is ladder.rungs[0]


def _fit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ppl_models", "fit", *args]


def test_a_killed_run_leaves_its_finished_rungs(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        _fit_command(
            str(REPO / "runs" / "neals_funnel.py"),
            "--auto",
            "--out",
            str(out),
            "--quiet",
            "--set",
            "steps=200",
            "--draws",
            "4000",
        ),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = out / "rungs" / "01-guide" / "summary.json"
    try:
        deadline = time.monotonic() + 240
        while not first.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.exists(), "the first rung was never written"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    record = json.loads(first.read_text())
    assert record["status"] == "complete" and record["rung"]["rung"] == "guide"
    assert record["diagnosis"]["verdict"] == record["rung"]["verdict"]
    idata = diagnostics.load(first.parent / "posterior.nc")
    assert "y" in idata.posterior
    ladder = json.loads((out / "ladder.json").read_text())
    assert ladder["status"] == "running" and ladder["rungs"][0]["rung"] == "guide"
    assert not list(out.rglob("*.tmp*"))  # nothing half-written


# ----------------------------------------------------------------------------- the command line


def test_fit_auto_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        [
            "fit",
            str(REPO / "runs" / "normal_mean.py"),
            "--auto",
            "--budget",
            "300",
            "--out",
            str(out),
            "--quiet",
            "--draws",
            "4000",
            "--set",
            "steps=300",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "Certified at the guide rung" in printed and "trustworthy" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["verdict"] == "trustworthy"
    ladder = summary["ladder"]
    assert ladder["stopped"] == "certified" and ladder["answer"] == 0 and ladder["budget"] == 300
    rung = ladder["rungs"][0]
    assert {"method", "seconds", "khat", "verdict", "stopped"} <= set(rung)
    assert diagnostics.load(out / "posterior.nc").posterior["mu"].size >= 1000
    assert json.loads((out / "ladder.json").read_text())["status"] == "complete"
    assert (out / "rungs" / "01-guide" / "posterior.nc").is_file()
    html = (out / "report.html").read_text()
    assert "Escalation ladder" in html and "◀ answer" in html
    assert "Use this posterior" in html


def test_auto_refuses_a_bad_budget(capsys):
    code = cli.main(["fit", str(REPO / "runs" / "normal_mean.py"), "--auto", "--budget", "-1"])
    assert code == 2
    assert "budget must be a positive number" in capsys.readouterr().err


@pytest.mark.parametrize("rungs", ["guide,bogus", ""])
def test_ladder_settings_check_the_rungs(rungs):
    from ppl_models.jobs.fit.config import FitConfig

    if rungs:
        with pytest.raises(ValueError, match="rungs must be some of"):
            FitConfig(auto=True, auto_rungs=rungs)
    else:
        assert FitConfig(auto=True).rungs == vl.RUNGS
