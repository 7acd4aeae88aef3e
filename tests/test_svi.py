"""The shared loop: device choice, ELBO choice, stopping, and the non-finite guard."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule, PyroParam

from ppl_models.svi import (
    NonFiniteLossError,
    local_params,
    make_elbo,
    make_objective,
    resolve_device,
    train,
)


def model(x):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


class Guide(PyroModule):
    def __init__(self):
        super().__init__()
        self.loc = PyroParam(torch.tensor(0.0, dtype=torch.float64))
        self.scale = PyroParam(
            torch.tensor(1.0, dtype=torch.float64), constraint=dist.constraints.positive
        )

    def forward(self, x):
        return pyro.sample("mu", dist.Normal(self.loc, self.scale))


def _fit(elbo_kind, steps=1500):
    x = torch.tensor([1.0, 2.0, 3.0, 4.5], dtype=torch.float64)
    guide = Guide()
    loss_fn = make_objective(model, guide, make_elbo(elbo_kind, particles=64))
    loss_fn(x)
    opt = torch.optim.Adam(loss_fn.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.01 ** (1 / steps))
    result = train(loss_fn, opt, [(x,)] * steps, scheduler=sched, progress=False)
    return x, guide, result


@pytest.mark.parametrize("kind", ["trace", "meanfield"])
def test_conjugate_normal_posterior_is_recovered(kind):
    x, guide, result = _fit(kind)
    # Normal(0, 10^2) prior, unit-variance likelihood: posterior precision n + 1/100.
    precision = len(x) + 0.01
    assert guide.loc.item() == pytest.approx(x.sum().item() / precision, abs=0.02)
    assert guide.scale.item() == pytest.approx(precision**-0.5, rel=0.05)
    assert result.steps == 1500 and not result.stopped_early


def test_on_step_can_stop_the_loop():
    x = torch.tensor([0.5], dtype=torch.float64)
    loss_fn = make_objective(model, Guide(), make_elbo("trace"))
    loss_fn(x)
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.01)
    result = train(loss_fn, opt, [(x,)] * 50, on_step=lambda step, loss: step == 9, progress=False)
    assert result.steps == 10 and result.stopped_early


@pytest.mark.parametrize("sync_every", [1, 4])
def test_non_finite_loss_stops_with_the_step(sync_every):
    x = torch.tensor([0.5], dtype=torch.float64)
    loss_fn = make_objective(model, Guide(), make_elbo("trace"))
    loss_fn(x)
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.01)
    batches = [(x,)] * 3 + [(torch.tensor([float("inf")], dtype=torch.float64),)] * 3
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) at step 3"):
        train(loss_fn, opt, batches, sync_every=sync_every, progress=False)


def test_choices_are_validated():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda, got 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="elbo must be one of"):
        make_elbo("renyi")
    with pytest.raises(ValueError, match="particles must be >= 1, got 0"):
        make_elbo("trace", particles=0)


def param_guide(x):
    loc = pyro.param("q_loc", torch.tensor(0.0, dtype=x.dtype))
    scale = pyro.param(
        "q_scale", torch.tensor(1.0, dtype=x.dtype), constraint=dist.constraints.positive
    )
    pyro.sample("mu", dist.Normal(loc, scale))


def test_objective_optimises_a_pyro_param_guide():
    x = torch.tensor([1.0, 2.0, 3.0, 4.5], dtype=torch.float64)
    loss_fn = make_objective(model, param_guide, make_elbo("meanfield", particles=64))
    loss_fn(x)
    params = list(loss_fn.parameters())
    assert len(params) == 2
    opt = torch.optim.Adam(params, lr=0.02)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.01 ** (1 / 1500))
    train(loss_fn, opt, [(x,)] * 1500, scheduler=sched, progress=False)
    precision = len(x) + 0.01  # Normal(0, 10^2) prior, unit-variance likelihood
    assert pyro.param("q_loc").item() == pytest.approx(x.sum().item() / precision, abs=0.02)
    assert pyro.param("q_scale").item() == pytest.approx(precision**-0.5, rel=0.05)


def test_local_params_is_restored_after_the_block():
    before = pyro.settings.get("module_local_params")
    with local_params():
        assert pyro.settings.get("module_local_params") is True
    assert pyro.settings.get("module_local_params") == before


IMPORT_EVERYTHING = """
import importlib, pkgutil, json, os
import pyro, torch
before = (dict(pyro.settings.get()), torch.get_default_dtype(), torch.get_num_threads(),
          os.umask(0o22))
os.umask(before[3])
import ppl_models
for info in pkgutil.walk_packages(ppl_models.__path__, "ppl_models."):
    if info.name != "ppl_models.__main__":
        importlib.import_module(info.name)
after = (dict(pyro.settings.get()), torch.get_default_dtype(), torch.get_num_threads(),
         os.umask(0o22))
assert before == after, (before, after)
import matplotlib
assert matplotlib.get_backend() == os.environ.get("EXPECTED_BACKEND", matplotlib.get_backend())

# A user's ordinary script: SVI with an autoguide keeps its parameters in the param store.
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
import pyro.distributions as dist
def model():
    pyro.sample("a", dist.Normal(0.0, 1.0))
guide = AutoNormal(model)
svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
svi.step()
assert len(pyro.get_param_store().keys()) == 2, list(pyro.get_param_store().keys())
print("ok")
"""


def test_importing_the_package_changes_no_global_state():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
