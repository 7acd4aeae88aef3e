"""The one stochastic-variational-inference loop every model uses.

The objective is Pyro's ELBO used as a ``torch.nn.Module`` (the pattern of Pyro's
``examples/svi_torch.py``): ``loss_fn = Trace_ELBO(...)(model, guide)`` holds the parameters of
model and guide, so any ``torch.optim`` optimizer and scheduler drive it, and the same module can
be wrapped by ``DistributedDataParallel`` under ``torchrun``. This module knows nothing about any
one model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

# tqdm.auto would pick the notebook widget, which warns on stderr without ipywidgets; the bar
# only ever shows on a terminal (disable=None below), where the plain one is the right one
from tqdm import tqdm

from .options import DEVICES, ELBO_KINDS, OBJECTIVE_KINDS


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the parameters after that step are not trustworthy."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's global, torch's (CPU and CUDA) and so Pyro's generators."""
    pyro.set_rng_seed(seed)


def resolve_device(name: str) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda`` into a device; ``auto`` picks CUDA when present.

    Raises
    ------
    ValueError
        For an unknown name, or ``cuda`` on a machine without a CUDA GPU.
    """
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available")
    return torch.device(name)


def make_elbo(kind: str = "trace", particles: int = 1, max_plate_nesting: int = 1) -> ELBO:
    r"""Build the ELBO estimator.

    ``trace`` is :class:`pyro.infer.Trace_ELBO`, the Monte Carlo estimate
    :math:`\frac1P\sum_p [\log p(x, z_p) - \log q(z_p)]`, :math:`z_p \sim q`;
    ``meanfield`` is :class:`pyro.infer.TraceMeanField_ELBO`, which replaces
    :math:`E_q[\log q - \log p(z)]` by the analytic KL wherever one is registered.
    Particles are vectorized (one batched pass, no Python loop over particles).
    """
    if kind not in ELBO_KINDS:
        raise ValueError(f"elbo must be one of {', '.join(ELBO_KINDS)}, got {kind!r}")
    if particles < 1:
        raise ValueError(f"particles must be >= 1, got {particles}")
    cls = Trace_ELBO if kind == "trace" else TraceMeanField_ELBO
    return cls(
        num_particles=particles,
        vectorize_particles=particles > 1,
        max_plate_nesting=max_plate_nesting,
    )


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Within the block, ``dtype`` is torch's default float dtype (unchanged for None); the
    previous default is restored after. A fit runs its model under its own dtype, so constants a
    model makes with the default dtype (``torch.eye(n)``, ``torch.as_tensor(v,
    dtype=torch.get_default_dtype())``) agree with the latents it is handed."""
    before = torch.get_default_dtype()
    if dtype is not None and dtype != before:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        if torch.get_default_dtype() != before:
            torch.set_default_dtype(before)


@contextlib.contextmanager
def local_params() -> Iterator[None]:
    """Within the block, parameters of ``PyroModule`` s live in their modules, not in Pyro's
    global parameter store (``module_local_params``); the previous setting is restored after.

    The package's own fits build their modules and train inside this block, so two fits never
    share state and importing the package changes no global Pyro setting.
    """
    with pyro.settings.context(module_local_params=True):
        yield


class Objective(torch.nn.Module):
    r"""The negative ELBO :math:`-\mathcal L` of ``model``/``guide`` as an ``nn.Module``.

    Its :meth:`parameters` are those of model and guide when they are ``nn.Module`` s
    (``PyroModule`` s, autoguides, networks) and, after the first call, the unconstrained values
    of any ``pyro.param`` sites the two used (a plain-function guide keeps its parameters in
    Pyro's parameter store), so a ``torch.optim`` optimizer built after one warm-up call sees
    every parameter either way. A subclass that estimates the loss another way overrides
    :meth:`loss` (and may pass ``elbo=None``).
    """

    def __init__(self, model: Callable, guide: Callable, elbo: ELBO | None):
        super().__init__()
        if elbo is not None:
            self.elbo = elbo(model, guide)
        self._store_names: list[str] | None = None

    def loss(self, *args, **kwargs) -> torch.Tensor:
        """The negative ELBO estimate for the model's arguments."""
        return self.elbo(*args, **kwargs)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if self._store_names is not None:
            return self.loss(*args, **kwargs)
        with poutine.trace(param_only=True) as tape:
            loss = self.loss(*args, **kwargs)
        store = pyro.get_param_store()
        self._store_names = [name for name in tape.trace.nodes if name in store]
        return loss

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        seen = set()
        store = pyro.get_param_store()
        store_values = [store[name].unconstrained() for name in self._store_names or ()]
        for value in [*super().parameters(recurse), *store_values]:
            if id(value) not in seen:
                seen.add(id(value))
                yield value


def make_objective(
    model: Callable, guide: Callable, elbo: ELBO, kind: str = "plain", *, warn: bool = True
) -> Objective:
    """Return the negative-ELBO loss of ``model``/``guide`` as an :class:`Objective` module.

    ``kind`` is ``plain`` (Pyro runs model and guide under its handlers on every call) or
    ``traced`` (:class:`ppl_models.traced.TracedObjective`: the same loss, traced once per input
    signature and replayed as a graph of tensor operations, for a pair with a static structure;
    it falls back to the plain path where tracing cannot be trusted, with a warning unless
    ``warn`` is false).

    Call it once before building the optimizer: parameters are created on first use.
    """
    if kind not in OBJECTIVE_KINDS:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVE_KINDS)}, got {kind!r}")
    if kind == "traced":
        from .traced import TracedObjective  # imported on demand: it loads torch.fx's tracer

        return TracedObjective(model, guide, elbo, warn=warn)
    return Objective(model, guide, elbo)


@dataclass(frozen=True)
class TrainResult:
    """What one call of :func:`train` did.

    ``losses`` holds the loss of every step taken, on the CPU; ``stopped_early`` is true when
    ``on_step`` asked to stop.
    """

    losses: torch.Tensor
    seconds: float
    stopped_early: bool

    @property
    def steps(self) -> int:
        return len(self.losses)


def train(
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple],
    *,
    total: int | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    on_step: Callable[[int, float], bool] | None = None,
    sync_every: int = 1,
    items_per_step: int | None = None,
    progress: bool = True,
    desc: str = "SVI",
) -> TrainResult:
    """Take one optimizer step per batch: ``loss_fn(*batch)``, backward, step, schedule.

    Parameters
    ----------
    loss_fn, optimizer
        The objective from :func:`make_objective` and a ``torch.optim`` optimizer over its
        parameters.
    batches
        Argument tuples for ``loss_fn``; their number (or ``total``) sizes the progress bar.
    scheduler
        Optional learning-rate scheduler, stepped after every optimizer step.
    on_step
        Called at every synchronisation point with ``(step, loss)``; returning ``True`` stops
        the loop (a convergence rule).
    sync_every
        Losses stay on the device and are read back (and checked for finiteness) every this many
        steps, so a GPU is not stalled by a host synchronisation per step.
    items_per_step
        Items (for example images) per step, to show a throughput in the progress bar.

    Raises
    ------
    NonFiniteLossError
        When a loss is NaN or infinite; raised at the first synchronisation after it.
    """
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)
    losses: list[torch.Tensor] = []
    checked = 0
    stopped = False
    start = time.perf_counter()
    # disable=None: tqdm draws the bar on a terminal only, so logs and CI get no carriage returns
    bar = tqdm(total=total, desc=desc, unit="step", disable=None if progress else True, leave=False)
    try:
        for step, batch in enumerate(batches):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(*batch)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.detach())
            if (step + 1) % sync_every:
                continue
            chunk = torch.stack(losses[checked:]).cpu()
            _check_finite(chunk, first_step=checked)
            bar.update(len(chunk))
            checked = len(losses)
            last = float(chunk[-1])
            postfix = {"loss": f"{last:.4g}"}
            if items_per_step:
                rate = items_per_step * checked / (time.perf_counter() - start)
                postfix["items/s"] = f"{rate:.0f}"
            bar.set_postfix(postfix, refresh=False)
            if on_step is not None and on_step(step, last):
                stopped = True
                break
        all_losses = torch.stack(losses).cpu() if losses else torch.empty(0)
        _check_finite(all_losses[checked:], first_step=checked)
    finally:
        bar.close()
    return TrainResult(all_losses, time.perf_counter() - start, stopped)


def _check_finite(losses: torch.Tensor, first_step: int) -> None:
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        step = first_step + int(bad[0])
        raise NonFiniteLossError(
            f"loss became {float(losses[int(bad[0])])} at step {step}; "
            "lower the learning rate or check the data"
        )
