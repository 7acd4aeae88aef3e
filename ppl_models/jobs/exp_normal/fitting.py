r"""The SVI fit of ``ppl-models exp-normal``, by the generic
:func:`~ppl_models.vi.fitting.fit_svi`.

The guide is one of the model's own families (:func:`~ppl_models.exp_normal.pyro_model.make_guide`),
fitted by the generic machinery: Adam with a step size decaying geometrically from ``lr`` to
``lr_final``, and suffix averaging of the iterates. This module adds what the exponential-normal
report shows beyond the generic fit: the guide's parameters per step, as iterates and as running
suffix averages, and the wall time of every step (for the benchmark's time to the theta* band).

:func:`fit` takes the run's :class:`~ppl_models.jobs.exp_normal.config.ExpNormalConfig` (any object
with its fields will do) and returns a :class:`Fit`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...exp_normal import pyro_model

if TYPE_CHECKING:
    from ...runs import Run
    from .config import ExpNormalConfig

# Adam's second-moment memory is kept short (0.9, not 0.999): far from theta* the gradient is
# orders of magnitude larger than near it, and a long memory of those early gradients shrinks the
# later steps until the fit stalls short of theta* (seen with N = 200 and N = 2, rate 5).
BETAS = (0.9, 0.9)


@dataclass(frozen=True)
class Fit:
    """A finished SVI fit: averaged guide parameters, per-step traces and elapsed seconds.

    Attributes
    ----------
    params
        The fitted guide's constrained parameters, e.g. ``{"theta": 0.6055}``: the suffix average
        that :func:`~ppl_models.vi.fitting.fit_svi` leaves in the guide.
    losses
        The loss (negative ELBO estimate) of every step.
    traces, raw_traces
        Per parameter and step: the running suffix average (the mean of the iterates
        :math:`\\theta_s`, :math:`(1 - w)\\,t < s \\le t`) and the iterate itself.
    elapsed
        Seconds from the call of :func:`fit` to the end of each step.
    seconds
        Seconds of the whole fit, set-up included.
    svi
        The generic :class:`~ppl_models.vi.fitting.SviFit` (model, fitted guide, data,
        convergence), which :func:`~ppl_models.vi.diagnose.diagnose` reads.
    """

    params: dict[str, float]
    losses: np.ndarray
    traces: dict[str, np.ndarray]
    raw_traces: dict[str, np.ndarray]
    elapsed: np.ndarray
    seconds: float
    svi: Any = None


def fit(
    x: torch.Tensor,
    config: ExpNormalConfig,
    run: Run | None = None,
    progress: bool = True,
    seed: int | None = None,
) -> Fit:
    r"""Fit the guide family ``config.guide`` by SVI with :func:`~ppl_models.vi.fitting.fit_svi`.

    Adam (``betas`` :data:`BETAS`) on :math:`-\mathrm{ELBO}` with ``config.particles``
    vectorized particles, step size decaying geometrically from ``lr`` to ``lr_final`` over
    ``steps``, and suffix averaging over the last ``average_window`` of the iterates. After step
    :math:`t` the trace of a parameter holds the mean of the iterates :math:`\theta_s` for
    :math:`(1 - w)\,t < s \le t`, :math:`w` = ``average_window``: the average cancels the
    gradient noise left in the last iterate and, unlike averaging from a fixed step, forgets the
    early transient as the run goes on. With ``run``, every step is logged to
    ``metrics.jsonl`` (loss, learning rate, averaged parameters and iterates). ``config.elbo``
    picks ``Trace_ELBO`` or ``TraceMeanField_ELBO``.

    Parameters
    ----------
    x
        Observations, float64, on the device to fit on.
    config
        The run's configuration.
    seed
        Seed of the fit (default ``config.seed``).
    """
    from ...svi import local_params
    from ...vi.fitting import fit_svi

    start = time.perf_counter()
    steps = config.steps
    with local_params():  # the guide's parameters live in the module, as fit_svi expects
        guide = pyro_model.make_guide(config.guide, x, config.rate).to(x.device)
        names = list(guide.params())  # its family's parameters, in the family's order
    raw = {name: np.empty(steps) for name in names}
    prefix = {name: np.zeros(steps + 1) for name in names}  # prefix sums of raw
    traces = {name: np.empty(steps) for name in names}
    elapsed = np.empty(steps)
    logged: dict = {}  # fit_svi's record of the step (step, loss, lr), passed to on_log

    def keep(record_of_step: dict) -> None:
        logged.clear()
        logged.update(record_of_step)

    def record(step: int, loss: float, fitted_guide) -> bool:
        current = fitted_guide.params()
        first = int((step + 1) * (1 - config.average_window))
        for name in names:
            raw[name][step] = current[name]
            prefix[name][step + 1] = prefix[name][step] + current[name]
            traces[name][step] = (prefix[name][step + 1] - prefix[name][first]) / (step + 1 - first)
        elapsed[step] = time.perf_counter() - start
        if run is not None:
            run.log_metrics(
                **logged,
                **{name: traces[name][step] for name in names},
                **{f"{name}_iterate": current[name] for name in names},
            )
        return False

    with local_params():
        svi = fit_svi(
            pyro_model.model,
            guide,
            {"x": x, "rate": config.rate},
            steps=steps,
            particles=config.particles,
            lr=config.lr,
            lr_final=config.lr_final,
            average_window=config.average_window,
            betas=BETAS,
            elbo=config.elbo,
            seed=config.seed if seed is None else seed,
            device=x.device,
            dtype=x.dtype,
            progress=progress,
            on_step=record,
            on_log=keep,  # called before on_step at every step
        )
        params = guide.params()
    return Fit(
        params=params,
        losses=svi.losses,
        traces=traces,
        raw_traces=raw,
        elapsed=elapsed,
        seconds=time.perf_counter() - start,
        svi=svi,
    )
