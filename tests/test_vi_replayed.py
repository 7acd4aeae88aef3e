"""The diagnosis's chunks replayed from a traced graph: the plain chunks' numbers exactly, the
log densities against scipy's, and the plain chunks wherever a graph cannot be trusted."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from ppl_models.vi import replayed
from ppl_models.vi.logweights import Drawer

F64 = torch.float64
Y = torch.tensor([0.3, 1.1, -0.4, 0.9, 2.0], dtype=F64)
GROUP = torch.tensor([0, 2, 1, -1, 0])  # the last group counted from the end


def model(y, group):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 3.0))
    given_mu(mu, y, group)


def given_mu(mu, y, group):
    sigma = pyro.sample("sigma", dist.LogNormal(torch.tensor(0.0, dtype=F64), 1.0))
    with pyro.plate("groups", 3):
        alpha = pyro.sample("alpha", dist.Normal(mu, 1.0))
    pyro.deterministic("twice_mu", 2 * mu)
    with pyro.plate("n", len(y)):
        pyro.sample("y", dist.Normal(alpha[..., group], sigma), obs=y)


def guide(y, group):
    pyro.sample("mu", dist.Normal(torch.tensor(0.5, dtype=F64), 0.3))
    pyro.sample("sigma", dist.Gamma(torch.tensor(4.0, dtype=F64), 3.0))
    with pyro.plate("groups", 3):
        pyro.sample("alpha", dist.Normal(torch.tensor([0.1, 0.4, -0.2], dtype=F64), 0.5))


def draw(model_fn, total, chunk=4):
    with Drawer(model_fn, guide, {"y": Y, "group": GROUP}, chunk=chunk, seed=3) as drawer:
        parts = list(drawer.chunks(total))
        return parts, drawer._replayed


def joined(parts, k, name=None):
    return np.concatenate([p[k] if name is None else p[k][name] for p in parts])


def test_replayed_chunks_are_the_plain_chunks_and_match_scipy(monkeypatch):
    total = 4 * replayed.REPLAY_AFTER + 3  # a last chunk of 3 draws stays plain
    parts, replay = draw(model, total)
    assert replay.graph is not None and replay.fallback_reason is None
    monkeypatch.setattr(replayed, "REPLAY_AFTER", 10**9)
    plain, never = draw(model, total)
    assert never.graph is None
    for k in (0, 1):
        np.testing.assert_array_equal(joined(parts, k), joined(plain, k))
    for name in ("mu", "sigma", "alpha", "twice_mu"):
        np.testing.assert_array_equal(joined(parts, 2, name), joined(plain, 2, name))
    np.testing.assert_array_equal(joined(parts, 3, "sigma"), joined(plain, 3, "sigma"))
    mu, sigma, alpha = (joined(parts, 2, name) for name in ("mu", "sigma", "alpha"))
    exact = (
        stats.norm(0, 3).logpdf(mu)
        + stats.lognorm(s=1.0).logpdf(sigma)
        + stats.norm(mu[:, None], 1.0).logpdf(alpha).sum(1)
        + stats.norm(alpha[:, GROUP.numpy()], sigma[:, None]).logpdf(Y.numpy()).sum(1)
    )
    np.testing.assert_allclose(joined(parts, 0), exact, rtol=1e-12)
    assert len(np.unique(mu)) == total  # fresh draws in every replayed chunk


def test_a_short_request_is_not_traced():
    parts, replay = draw(model, 4 * (replayed.REPLAY_AFTER - 1))
    assert replay.graph is None and replay.fallback_reason is None


def test_a_model_reading_its_draws_into_python_keeps_the_plain_chunks(monkeypatch):
    def branching(y, group):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 3.0))
        if float(mu.sum()) > 1e9:  # a graph would freeze the branch taken while tracing
            raise AssertionError("not reached")
        given_mu(mu, y, group)

    total = 4 * replayed.REPLAY_AFTER
    parts, replay = draw(branching, total)
    assert replay.graph is None and "cannot be traced" in replay.fallback_reason
    monkeypatch.setattr(replayed, "REPLAY_AFTER", 10**9)
    plain, _ = draw(branching, total)
    np.testing.assert_array_equal(joined(parts, 0), joined(plain, 0))


@pytest.mark.parametrize("total", [0, 5])
def test_few_draws_never_trace(total):
    parts, replay = draw(model, total, chunk=None)
    assert replay.graph is None
