"""The SVI fit of ``ppl-models exp-normal``: Adam with a decaying step size and suffix averaging.

:func:`fit` takes the run's :class:`~ppl_models.jobs.exp_normal.ExpNormalConfig` (any object with
its fields will do) and returns a :class:`Fit`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..runs import Run
from ..svi import local_params, make_elbo, make_objective, train
from . import pyro_model

if TYPE_CHECKING:
    from ..jobs.exp_normal import ExpNormalConfig

# Adam's second-moment memory is kept short (0.9, not 0.999): far from theta* the gradient is
# orders of magnitude larger than near it, and a long memory of those early gradients shrinks the
# later steps until the fit stalls short of theta* (seen with N = 200 and N = 2, rate 5).
BETAS = (0.9, 0.9)


@dataclass(frozen=True)
class Fit:
    """A finished SVI fit: averaged guide parameters, per-step traces and elapsed seconds."""

    params: dict[str, float]
    losses: np.ndarray
    traces: dict[str, np.ndarray]
    raw_traces: dict[str, np.ndarray]
    elapsed: np.ndarray
    seconds: float


@local_params()
def fit(
    x: torch.Tensor, config: ExpNormalConfig, run: Run | None = None, progress: bool = True
) -> Fit:
    r"""Fit the guide by SVI: Adam on :math:`-\mathrm{ELBO}`, step size decaying geometrically
    from ``lr`` to ``lr_final``, and suffix averaging of the iterates.

    After step :math:`t` the reported parameter is the mean of the iterates
    :math:`\theta_s` for :math:`(1 - w)\,t < s \le t`, :math:`w` = ``average_window``: the
    average cancels the gradient noise left in the last iterate, and, unlike averaging from a
    fixed step, it forgets the early transient as the run goes on. ``traces`` hold the reported
    parameters per step, ``raw_traces`` the iterates.
    """
    guide = pyro_model.make_guide(config.guide, x, config.rate)
    loss_fn = make_objective(pyro_model.model, guide, make_elbo(config.elbo, config.particles))
    loss_fn.to(x.device)
    loss_fn(x, config.rate)  # builds the parameters before the optimizer sees them
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=config.lr, betas=BETAS)
    decay = (config.lr_final / config.lr) ** (1.0 / config.steps)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, decay)
    names = list(guide.params())
    raw = {name: np.empty(config.steps) for name in names}
    prefix = {name: np.zeros(config.steps + 1) for name in names}  # prefix sums of raw
    traces = {name: np.empty(config.steps) for name in names}
    elapsed = np.empty(config.steps)
    start = time.perf_counter()

    def record(step: int, loss: float) -> bool:
        current = guide.params()
        first = int((step + 1) * (1 - config.average_window))
        for name in names:
            raw[name][step] = current[name]
            prefix[name][step + 1] = prefix[name][step] + current[name]
            traces[name][step] = (prefix[name][step + 1] - prefix[name][first]) / (step + 1 - first)
        elapsed[step] = time.perf_counter() - start
        if run is not None:
            run.log_metrics(
                step=step,
                loss=loss,
                lr=scheduler.get_last_lr()[0],
                **{name: traces[name][step] for name in names},
                **{f"{name}_iterate": current[name] for name in names},
            )
        return False

    result = train(
        loss_fn,
        optimizer,
        [(x, config.rate)] * config.steps,
        scheduler=scheduler,
        on_step=record,
        progress=progress,
        desc=f"SVI {config.guide}",
    )
    params = {name: float(traces[name][-1]) for name in names}
    return Fit(params, result.losses.numpy(), traces, raw, elapsed, result.seconds)
