"""Posterior modes q never visits: found by the mode search, and never called trustworthy.

The bimodal posterior of y_i ~ N(|theta|, 1), theta ~ N(m0, s0^2) is two Gaussians (one for
each sign of theta), so its modes, their masses and its moments have closed forms; scipy
quadrature checks the masses independently. A guide equal to the positive mode's Gaussian is
exact where it puts mass: its log weights are constant, k-hat and d_2 read as for an exact fit,
and only the mode search can see the other mode. A search split across two ranks (spawned as
torchrun would start them) is held to the one-process search of the same draws and seed, and a
rank whose share fails ends the search on rank 0 as a lost rank, not a hang.
"""

import math
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from ranks import spawned_ranks
from scipy import integrate, stats
from vi_helpers import FakeFit, gaussian_problem, normal_guide

from ppl_models import distributed
from ppl_models.vi import modes
from ppl_models.vi.diagnose import diagnose
from ppl_models.vi.logweights import draw_log_weights
from ppl_models.vi.modes import rank_starts, search_modes
from ppl_models.vi.references import Reference
from ppl_models.vi.verdict import MEANS_ONLY, NOT_TRUSTWORTHY, TRUSTWORTHY, decide

Y = torch.tensor([1.2, 2.5, 1.9, 2.2, 1.6, 2.8, 2.0, 1.7], dtype=torch.float64)
M0, S0 = 0.5, 3.0
DRAWS = 4_000


def bimodal_model(y):
    theta = pyro.sample("theta", dist.Normal(torch.tensor(M0, dtype=y.dtype), S0))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Normal(theta.abs(), 1.0), obs=y)


def _sign_mode(sign: float) -> tuple[float, float]:
    """Mean and sd of the Gaussian that is the posterior restricted to sign(theta) = sign."""
    n, ybar = len(Y), float(Y.mean())
    precision = 1 / S0**2 + n
    return (M0 / S0**2 + sign * n * ybar) / precision, math.sqrt(1 / precision)


def _quadrature_mass_below_zero() -> float:
    y = Y.numpy()

    def density(t):
        return stats.norm.pdf(t, M0, S0) * np.prod(stats.norm.pdf(y, abs(t), 1.0))

    neg = integrate.quad(density, -20, 0, points=[_sign_mode(-1)[0]])[0]
    pos = integrate.quad(density, 0, 20, points=[_sign_mode(1)[0]])[0]
    return neg / (neg + pos)


def _one_mode_fit():
    loc, scale = _sign_mode(1.0)

    def guide(y):
        pyro.sample("theta", dist.Normal(torch.tensor(loc, dtype=y.dtype), scale))

    return FakeFit(bimodal_model, guide, {"y": Y})


def test_a_mode_q_never_visits_is_found_with_its_mass_and_condemns_the_fit():
    summary = diagnose(_one_mode_fit(), None, draws=DRAWS, progress=False).summary
    assert summary["psis_khat"] is None or summary["psis_khat"] < 0.5  # q's draws reassure
    assert summary["d2"] < 1e-6
    missed = summary["mode_search"]["missed"]
    assert len(missed) == 1
    assert missed[0]["location"]["theta"] == pytest.approx(_sign_mode(-1.0)[0], abs=1e-4)
    assert missed[0]["share"] == pytest.approx(_quadrature_mass_below_zero(), abs=0.005)
    assert summary["verdict"] == NOT_TRUSTWORTHY
    assert summary["verdict_off"] == ["theta"]
    assert "never visits" in summary["verdict_reasons"][0]


def test_a_reference_stuck_in_the_same_mode_does_not_overrule_the_mode_search():
    # a sampler that stayed in the positive mode agrees with q there
    loc, scale = _sign_mode(1.0)
    draws = np.random.default_rng(0).normal(loc, scale, size=(4, 2500))
    stuck = Reference({"theta": draws}, "draws from one mode (test)")
    summary = diagnose(_one_mode_fit(), stuck, draws=DRAWS, progress=False).summary
    assert abs(summary["parameters"][0]["std_mean_error"]) < 0.1  # the reference agrees
    assert summary["verdict"] == NOT_TRUSTWORTHY


def test_a_unimodal_posterior_has_no_missed_mode():
    model, data, m, s = gaussian_problem(d=3, n=5)
    fit = FakeFit(model, normal_guide(m, torch.full_like(m, s)), data, max_plate_nesting=2)
    summary = diagnose(fit, None, draws=DRAWS, progress=False).summary
    search = summary["mode_search"]
    # every start ends at the one mode or is stopped on its way there, inside q's region
    assert search["missed"] == [] and search["modes_found"] <= 1
    assert search["minima"] + search["stopped_in_q"] == search["run"] == search["starts"]
    assert all(c["mean_shift"] == 0.0 for c in search["coordinates"])
    assert summary["verdict"] == TRUSTWORTHY


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_the_ranks_share_the_starts_once_in_order_and_always_run_the_first(world_size):
    for n in range(13):
        for least in sorted({0, 2, n, n + 3}):
            shares = [rank_starts(n, least, rank, world_size) for rank in range(world_size)]
            # in rank order, the shares are every start once, in one process's order
            assert [i for mine, _ in shares for i in mine] == list(range(n))
            sizes = [len(mine) for mine, _ in shares]
            assert max(sizes) - min(sizes) <= 1
            # the starts run whatever the budget are the first `least`, however many ranks
            assert [i for mine, k in shares for i in mine[:k]] == list(range(min(least, n)))


def _split_search(out: Path) -> None:
    with distributed.session(torch.device("cpu")) as ctx:
        fit = _one_mode_fit()
        diagnosis = diagnose(fit, None, draws=DRAWS, progress=False, context=ctx)
        # the same draws on every rank (one seed, each rank alone): the split search below and
        # the test's one-process search see the same q
        lw = draw_log_weights(fit.model, fit.guide, fit.data, draws=DRAWS, seed=1)
        split = search_modes(fit.model, fit.data, lw, seed=2, context=ctx)
        assert (diagnosis is None, split is None) == (not ctx.is_main,) * 2
        if ctx.is_main:
            torch.save({"summary": diagnosis.summary, "lw": lw, "split": split}, out)
        # then rank 1's share fails: rank 0 hears of it at the gather, well before the timeout
        if ctx.is_main:
            began = time.monotonic()
            with pytest.raises(distributed.RankFailure, match="rank 0 of 2 lost the other ranks"):
                search_modes(fit.model, fit.data, lw, starts=2, context=ctx)
            assert time.monotonic() - began < distributed.timeout_seconds() / 2
            return

        def broken(*args, **kwargs):
            raise RuntimeError("rank 1's start broke")

        modes.lbfgs_minimum = broken  # in this process only
        with pytest.raises(RuntimeError, match="rank 1's start broke"):
            search_modes(fit.model, fit.data, lw, starts=2, context=ctx)


def test_two_ranks_split_the_starts_and_find_the_modes_of_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "60")
    out = tmp_path / "search.pt"
    spawned_ranks(_split_search, out)
    saved = torch.load(out, weights_only=False)
    split = saved["split"]
    whole = search_modes(bimodal_model, {"y": Y}, saved["lw"], seed=2)
    assert (split.ranks, whole.ranks) == (2, 1)
    assert (split.run, split.in_q, split.minima) == (whole.run, whole.in_q, whole.minima)
    assert split.run == split.starts  # one dimension: every start runs, whatever the budget
    assert [m.starts for m in split.modes] == [m.starts for m in whole.modes]
    for a, b in zip(split.modes, whole.modes, strict=True):
        assert a.loc == pytest.approx(b.loc, abs=1e-8)
        assert a.visited == b.visited
    assert split.shares() == pytest.approx(whole.shares(), rel=1e-8)
    # both modes, where the closed form puts them
    # the mode q misses, where the closed form puts it; starts towards q's own mode stop
    # inside q's region, or reach that mode where q's region is left behind
    found = sorted(float(m.loc[0]) for m in whole.modes)
    assert found[0] == pytest.approx(_sign_mode(-1.0)[0], abs=1e-4)
    assert found[1:] == pytest.approx([_sign_mode(1.0)[0]] * len(found[1:]), abs=1e-4)
    assert whole.in_q + whole.minima == whole.run

    summary = saved["summary"]
    search = summary["mode_search"]
    assert search["ranks"] == 2 and search["run"] == search["starts"]
    [missed] = search["missed"]
    assert missed["location"]["theta"] == pytest.approx(_sign_mode(-1.0)[0], abs=1e-4)
    assert any("split across 2 processes" in note for note in summary["notes"])
    assert "8 L-BFGS starts split across 2 processes" in summary["verdict_reasons"][0]


def _search(share: float, shift: float, ratio: float) -> dict:
    return {
        "starts": 8,
        "minima": 8,
        "modes_found": 2,
        "missed": [{"location": {"a": 5.0}, "share": share, "starts": 3}],
        "coordinates": [{"name": "a", "mean_shift": shift, "sd_ratio": ratio}],
    }


@pytest.mark.parametrize(
    "search, label",
    [
        (_search(1e-4, 5e-4, 0.999), TRUSTWORTHY),  # found, too light to matter
        (_search(0.02, 0.05, 0.8), MEANS_ONLY),  # moves the sd, not the mean
        (_search(0.3, 0.9, 0.3), NOT_TRUSTWORTHY),
    ],
)
def test_a_missed_mode_is_judged_by_what_it_does_to_the_moments(search, label):
    row = {
        "name": "a",
        "site": "a",
        "kind": "latent",
        "mean": 0.0,
        "sd": 1.0,
        "psis_mean": 0.0,
        "psis_sd": 1.0,
        "ref_mean": None,
    }
    coords = [{"name": "a", "site": "a", "sd": 1.0, "mean_error": 0.01, "sd_error": 0.05}]
    v = decide(
        [row],
        converged=True,
        khat=0.1,
        khat_threshold=0.7,
        d2=1e-5,
        importance_ess=4000.0,
        draws=DRAWS,
        coordinates=coords,
        has_reference=False,
        mode_search=search,
    )
    assert v.label == label
    assert any("never visits" in r for r in v.reasons)


def test_a_traced_potential_is_used_only_where_it_agrees_with_the_model():
    # a smooth potential is compiled (its value and gradient those of the eager one at fresh
    # points); one whose Python branches on a value is traced down one branch, disagrees at a
    # point on the other side, and is kept eager
    def smooth(z):
        return (z**2).sum() / 2 + torch.logsumexp(z, 0)

    def branching(z):
        return (z**2).sum() if float(z[0]) > 0 else (z**4).sum()

    points = [torch.tensor(p, dtype=torch.float64) for p in ([0.3, -1.0], [1.5, 2.0], [-0.7, 0.4])]
    fast = modes.traced(smooth, points)
    assert fast is not smooth
    z = torch.tensor([-2.5, 0.25], dtype=torch.float64, requires_grad=True)
    value = fast(z)
    (grad,) = torch.autograd.grad(value, z)
    assert float(value.detach()) == pytest.approx(float(smooth(z.detach())), rel=1e-12)
    expected = (z + torch.softmax(z, 0)).detach().numpy()  # the gradient in closed form
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-12)
    assert modes.traced(branching, points) is branching
