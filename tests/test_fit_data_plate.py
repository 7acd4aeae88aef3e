"""A model script's data plate (issue 9, item 7): minibatches and data-parallel ``fit``.

Truths: the normal-mean model's closed-form posterior and scipy's normal log-density; the
full-data gradient of one process, against which the gradient DistributedDataParallel averages
over two ranks' halves of the data is compared.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from ranks import cli_ok, spawned_ranks
from scipy import stats

from ppl_models import cli, distributed, svi
from ppl_models.batches import index_batches
from ppl_models.runs import read_json
from ppl_models.vi.data_plate import check_indexing, find_data_plate, subsampled
from ppl_models.vi.fitting import fit_svi
from ppl_models.vi.logweights import draw_log_weights
from ppl_models.vi.script import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "runs" / "normal_mean.py"
X = torch.tensor([2.3, 1.9, 3.1, 2.8, 1.4, 2.6, 2.2, 3.4, 1.8, 2.5], dtype=torch.float64)
SIGMA, TAU0 = 0.8, 10.0


def model(x):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), TAU0))
    with pyro.plate("obs", len(x)) as i:
        pyro.sample("x", dist.Normal(mu, SIGMA), obs=x[i])


def unindexed_model(x):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), TAU0))
    with pyro.plate("obs", len(x)):
        pyro.sample("x", dist.Normal(mu, SIGMA), obs=x)


def local_latent_model(x):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), TAU0))
    with pyro.plate("obs", len(x)) as i:
        u = pyro.sample("u", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(u, SIGMA), obs=x[i])


def exact_posterior(x=X) -> tuple[float, float]:
    """Normal(m, s^2): 1/s^2 = 1/tau0^2 + N/sigma^2, m = s^2 sum(x)/sigma^2 (prior mean 0)."""
    precision = 1 / TAU0**2 + len(x) / SIGMA**2
    return float(x.sum()) / SIGMA**2 / precision, precision**-0.5


def trace_of(fn, *args):
    return poutine.trace(fn).get_trace(*args)


# ----------------------------------------------------------------------------- the pieces


def test_a_subsampled_plate_scales_its_batch_to_the_full_data():
    indices = torch.tensor([0, 3, 5])
    mu = torch.tensor(2.0, dtype=torch.float64)
    with subsampled("obs", indices):
        trace = trace_of(poutine.condition(model, {"mu": mu}), X)
    site = trace.nodes["x"]
    assert site["value"].tolist() == X[indices].tolist()
    logpdf = stats.norm(2.0, SIGMA).logpdf(X[indices].numpy()).sum()
    trace.compute_log_prob()
    assert float(site["log_prob"].sum()) == pytest.approx(len(X) / 3 * logpdf, rel=1e-12)


def test_the_data_plate_is_found_and_checked():
    plate = find_data_plate(trace_of(model, X), "obs")
    assert (plate.name, plate.size, plate.sites) == ("obs", 10, ("x",))
    with pytest.raises(ValueError, match=r"data_plate 'data' is not a plate of the model .*'obs'"):
        find_data_plate(trace_of(model, X), "data")
    # a latent inside the plate is a local latent, indexed along the plate's dim
    local = find_data_plate(trace_of(local_latent_model, X), "obs")
    assert (local.sites, local.latents, local.latent_dims) == (("x",), ("u",), (-1,))


def self_subsampling_model(x):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), TAU0))
    with pyro.plate("obs", len(x), subsample_size=4) as i:
        pyro.sample("x", dist.Normal(mu, SIGMA), obs=x[i])


def test_a_plate_that_draws_its_own_subsample_is_refused_before_fitting():
    # its log p(x, z) would be a random estimate: the diagnosis would measure that noise
    with pytest.raises(ValueError, match=r"subsample_size=4\) draws its own subsample"):
        fit_svi(self_subsampling_model, "auto-normal", {"x": X}, steps=10)


def test_a_model_that_does_not_index_its_data_by_the_plate_is_refused():
    latents = {"mu": torch.tensor(2.0, dtype=torch.float64)}
    check_indexing(model, latents, {"x": X}, find_data_plate(trace_of(model, X), "obs"))
    plate = find_data_plate(trace_of(unindexed_model, X), "obs")
    with pytest.raises(ValueError, match=r"must index its data by the indices of pyro.plate"):
        check_indexing(unindexed_model, latents, {"x": X}, plate)


@pytest.mark.parametrize("batch_size", [0, 2, 3])
def test_index_batches_give_every_rank_the_same_steps_and_together_disjoint_strides(batch_size):
    size, steps, world = 11, 7, 2
    ranks = [
        list(index_batches(size, batch_size, steps, seed=4, rank=r, world_size=world))
        for r in range(world)
    ]
    assert [len(r) for r in ranks] == [steps, steps]
    for step in range(steps):
        a, b = (set(r[step].tolist()) for r in ranks)
        assert len(a) == len(b) == len(ranks[0][step]) and not a & b
    # one pass over the 10 shared observations per ceil(5 / batch) steps, every one once
    per_pass = math.ceil(5 / (batch_size or 5))
    first_pass = torch.cat([r[s] for r in ranks for s in range(per_pass)]).tolist()
    assert len(first_pass) == len(set(first_pass)) == 10
    with pytest.raises(ValueError, match="batch_size must be between 0 .* and 5 .* got 6"):
        next(index_batches(size, 6, steps, seed=4, world_size=world))


def test_minibatch_fit_recovers_the_exact_posterior():
    fit = fit_svi(model, "auto-normal", {"x": X}, data_plate="obs", batch_size=2, steps=1500)
    mean, sd = exact_posterior()
    with svi.local_params():
        posterior = fit.guide.get_posterior(x=X)
        loc, scale = posterior.mean.detach(), posterior.stddev.detach()
    # Laplace-whitened AutoNormal: an affine transform of a diagonal Normal over mu
    assert abs(float(loc) - mean) < 0.1 * sd
    assert float(scale) / sd == pytest.approx(1.0, abs=0.1)
    assert any("batch of 2" in note for note in fit.notes)
    assert fit.settings["data_plate"] == "obs" and fit.settings["batch_size"] == 2


SEEN_BATCHES: list[int] = []


def unbroadcast_model(x):
    b = pyro.sample("b", dist.Normal(torch.zeros(2, dtype=x.dtype), TAU0).to_event(1))
    with pyro.plate("obs", len(x)) as i:
        SEEN_BATCHES.append(len(i))
        pyro.sample("x", dist.Normal(b[0], SIGMA), obs=x[i])  # b[0]: vmapped, not plated


def test_a_vmapped_model_takes_the_fits_subsample():
    # torch.func.vmap's evaluation blocks the model's sample sites from the fit's handler:
    # the plate must still get each step's indices, not run on all the data
    SEEN_BATCHES.clear()
    fit = fit_svi(
        unbroadcast_model, "auto-normal", {"x": X}, data_plate="obs", batch_size=3, steps=20
    )
    assert fit.vectorization == "vmap"
    # a pass over 10 observations in batches of 3 is 3, 3, 3 and 1: 20 steps are 5 passes
    assert SEEN_BATCHES.count(3) >= 15 and SEEN_BATCHES.count(1) >= 5, SEEN_BATCHES


# ----------------------------------------------------------------------------- two processes


def _ddp_gradient(out: Path) -> None:
    """On each rank: the same guide and noise, the rank's half of the data, DDP's average."""
    with distributed.session(torch.device("cpu")) as ctx, svi.local_params():
        loss_fn = _objective()
        wrapped = ctx.wrap(loss_fn)
        [indices] = index_batches(len(X), 0, 1, seed=0, rank=ctx.rank, world_size=2)
        pyro.set_rng_seed(1)
        with subsampled("obs", indices):
            loss = wrapped(X)
        loss.backward()
        losses = ctx.gather(float(loss.detach()))  # each rank's own estimate, from its own half
        if ctx.is_main:
            grads = {n: p.grad for n, p in loss_fn.named_parameters()}
            torch.save({"grads": grads, "losses": losses}, out)


def _objective() -> torch.nn.Module:
    guide = AutoNormal(model)
    loss_fn = svi.make_objective(model, guide, Trace_ELBO(num_particles=3))
    pyro.set_rng_seed(0)
    loss_fn(X)  # creates the guide's parameters, the same on every rank
    with torch.no_grad():
        for p in loss_fn.parameters():
            p.add_(0.3)  # away from the initial values, so the gradient is not special
    return loss_fn


def test_ddp_averages_the_full_data_gradient(tmp_path):
    out = tmp_path / "gradients.pt"
    spawned_ranks(_ddp_gradient, out)
    with svi.local_params():
        loss_fn = _objective()
        pyro.set_rng_seed(1)
        loss = loss_fn(X)
        loss.backward()
        full = {n: p.grad for n, p in loss_fn.named_parameters()}
    saved = torch.load(out)
    # the ranks saw different halves, and their losses average to the full data's
    first, second = saved["losses"]
    assert abs(first - second) > 1e-3
    assert (first + second) / 2 == pytest.approx(float(loss.detach()), rel=1e-12)
    averaged = saved["grads"]
    assert averaged.keys() == full.keys() and full
    for name, grad in full.items():
        assert torch.allclose(averaged[name], grad, rtol=1e-10, atol=1e-12), name


def test_two_process_fit_matches_the_exact_posterior_with_identical_parameters(tmp_path):
    import arviz as az

    run = tmp_path / "run"
    spawned_ranks(cli_ok, ["fit", str(SCRIPT), "--draws", "4000", "--quiet", "--out", str(run)])
    s = read_json(run / "summary.json")
    assert s["status"] == "complete" and s["world_size"] == 2 and s["backend"] == "gloo"
    assert len(s["parameter_digests"]) == 2
    assert s["parameter_digests"][0] == s["parameter_digests"][1]
    assert any("on each of 2 processes" in note for note in s["notes"])
    assert s["mode_search"]["ranks"] == 2  # the ranks shared the mode search's starts
    data = load_script(SCRIPT).load_data()
    mean, sd = exact_posterior(torch.tensor(data["x"], dtype=torch.float64))
    draws = az.from_netcdf(run / "posterior.nc").posterior["mu"].values.ravel()
    assert abs(draws.mean() - mean) < 0.1 * sd
    assert np.std(draws) / sd == pytest.approx(1.0, abs=0.1)


# ----------------------------------------------------------------------------- bad input


def _script(tmp_path, text: str) -> Path:
    path = tmp_path / "m.py"
    path.write_text(
        "import pyro, pyro.distributions as dist\n" + text + "\ndef model(x):\n"
        "    mu = pyro.sample('mu', dist.Normal(0.0, 10.0))\n"
        "    with pyro.plate('obs', len(x)) as i:\n"
        "        pyro.sample('x', dist.Normal(mu, 1.0), obs=x[i])\n"
        "def data():\n    return {'x': [0.5, 1.5, 1.0, 2.0]}\n"
    )
    return path


@pytest.mark.parametrize(
    ("header", "args", "message"),
    [
        ("", ["--nproc", "2"], r"--nproc 2 needs the model's data plate"),
        ("", ["--set", "batch_size=2"], r"batch_size 2 needs the model's data plate"),
        ("DATA_PLATE = 3\n", [], r"DATA_PLATE in model script .* must name a plate"),
        ("DATA_PLATE = 'data'\n", [], r"data_plate 'data' is not a plate of the model"),
        ("", ["--set", "batch_size=-1"], r"batch_size"),
        ("DATA_PLATE = 'obs'\n", ["--set", "batch_size=5"], r"batch_size must be between 0"),
    ],
)
def test_bad_data_plate_input_is_one_line_and_exit_2(tmp_path, capsys, header, args, message):
    import re

    out = tmp_path / "out"
    code = cli.main(["fit", str(_script(tmp_path, header)), "--quiet", "--out", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err


def _sharded_draws(out: Path) -> None:
    with distributed.session(torch.device("cpu")) as ctx, svi.local_params():
        fit = fit_svi(model, "auto-normal", {"x": X}, data_plate="obs", steps=50, context=ctx)
        lw = draw_log_weights(fit.model, fit.guide, fit.data, draws=1001, seed=3, context=ctx)
        mine = draw_log_weights(
            fit.model,
            fit.guide,
            fit.data,
            draws=len(range(1001)[ctx.share(1001)]),
            seed=distributed.rank_seed(3, ctx.rank),
        )
        parts = ctx.gather(mine)  # a collective: every rank calls it
        if ctx.is_main:
            torch.save({"gathered": lw, "parts": parts}, out)


def test_the_diagnosis_draws_are_shared_among_ranks_and_gathered_in_order(tmp_path):
    out = tmp_path / "draws.pt"
    spawned_ranks(_sharded_draws, out)
    saved = torch.load(out, weights_only=False)
    gathered, (first, second) = saved["gathered"], saved["parts"]
    assert gathered.draws == 1001 and (first.draws, second.draws) == (501, 500)
    expected = np.concatenate([first.log_weights, second.log_weights])
    assert np.array_equal(gathered.log_weights, expected)
    assert not np.array_equal(first.log_weights[:500], second.log_weights)  # own seeds
    assert np.array_equal(
        gathered.values["mu"], np.concatenate([first.values["mu"], second.values["mu"]])
    )


KILLED_AT_CALL = """
import itertools, os, signal
CALLS = itertools.count()
DATA_PLATE = "obs"
def model(x):
    # rank 1 dies by SIGKILL in the middle of the SVI loop
    if os.environ.get("RANK") == "1" and next(CALLS) == 300:
        os.kill(os.getpid(), signal.SIGKILL)
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("obs", len(x)) as i:
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x[i])
def data():
    return {"x": [0.5, 1.5, 1.0, 2.0]}
"""


def test_a_killed_rank_ends_the_fit_with_one_line_and_a_failed_run(tmp_path, capsys):
    script = tmp_path / "killed.py"
    script.write_text("import pyro, pyro.distributions as dist\n" + KILLED_AT_CALL)
    run = tmp_path / "run"
    code = cli.main(["fit", str(script), "--nproc", "2", "--quiet", "--out", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    # torchrun logs, and rank 0 says it lost its peer; the command's last line names the dead rank
    assert code == 2
    assert err[-1].startswith("ppl-models: error: rank 1 of 2 died of signal SIGKILL"), err
    s = read_json(run / "summary.json")
    assert s["status"] == "failed" and "rank 1 of 2 died of signal SIGKILL" in s["error"]
