r"""Fit any Pyro model by SVI: :func:`fit_svi` returns an :class:`SviFit`.

The machinery is the exponential-normal fit's (:mod:`ppl_models.svi`): the negative ELBO as a
module (:func:`~ppl_models.svi.make_objective`), Adam, a step size decaying geometrically from
``lr`` to ``lr_final``, the shared loop :func:`~ppl_models.svi.train`, and suffix averaging of
the iterates: the fitted parameters are the mean of the iterates
:math:`\theta_s,\ s \ge \lfloor (1 - w) T \rfloor` over the last fraction :math:`w` of the
:math:`T` steps, which cancels the gradient noise left in the last iterate.

**Convergence** is monitored as Stan's ADVI does: every ``eval_every`` steps the mean loss
:math:`\bar L_k` (the negative ELBO) over the last window is compared with the previous
window's. The rule holds at window :math:`k` when the relative change
:math:`|\bar L_k - \bar L_{k-1}| / |\bar L_k|` is below ``tolerance`` (Stan's
``tol_rel_obj``, 0.01) **and** the absolute change is within three standard errors of the
difference of the two window means (or 0.05 nats): a relative rule alone is met trivially when
:math:`|\mathrm{ELBO}|` is large. The fit is called converged when the rule holds at the last
window; it never stops early unless asked (``stop_early=True``).

**Vectorized particles.** :func:`vectorization_ok` checks that the model gives the same
:math:`\log p(x, z) - \log q(z)` for draws taken together under a particle plate as one by
one; a model that indexes ``beta[0]`` fails it, and the fit then loops over particles
(``Trace_ELBO(vectorize_particles=False)``) and says so in :attr:`SviFit.notes`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample

from ..batches import index_batches
from ..distributed import Context, rank_seed
from ..svi import ELBO_KINDS, local_params, make_objective, resolve_device, seed_everything, train
from .data_plate import (
    DataPlate,
    check_indexing,
    find_data_plate,
    refuse_own_subsampling,
    subsampled,
)
from .guides import CUSTOM, GUIDES, WhitenedGuide, make_guide, max_plate_nesting
from .script import check_data_keys, convert_data

DEFAULT_STEPS = 1000
DEFAULT_PARTICLES = 16
DEFAULT_LR = 0.1
DEFAULT_LR_FINAL = 0.002
DEFAULT_AVERAGE_WINDOW = 0.7
DEFAULT_BETAS = (0.9, 0.999)
DEFAULT_EVAL_EVERY = 100
DEFAULT_TOLERANCE = 0.01  # Stan ADVI's tol_rel_obj


@dataclass
class SviFit:
    """A finished SVI fit of ``model`` with ``guide`` on ``data`` (see the package spec).

    Attributes
    ----------
    model, guide
        Called as ``model(**data)`` and ``guide(**data)``; the guide holds the averaged
        parameters. Call both inside :func:`ppl_models.svi.local_params`.
    data
        The converted data (tensors on ``device`` in ``dtype``).
    guide_name
        ``auto-normal``, ``auto-mvn``, ``auto-lowrank``, ``auto-iaf`` or ``custom``.
    losses
        The loss (negative ELBO estimate) of every step.
    averaged_elbo
        The mean ELBO estimate over the averaging window's steps.
    converged, convergence
        Whether the convergence rule held at the end; ``convergence["rule"]`` states it in
        words, ``convergence["step"]`` is the step from which it held to the end (or None).
    vectorized
        True when particles (and the diagnosis's draws) can be vectorized under a plate.
    max_plate_nesting
        The model's plate depth; a particle plate goes at dim ``-(max_plate_nesting + 1)``.
    notes
        Sentences the report must show (initialisation, fallbacks).
    settings
        The fit's settings (steps, particles, lr, ..., seed, device, dtype, init).
    """

    model: Callable
    guide: Callable
    data: dict[str, Any]
    guide_name: str
    losses: np.ndarray
    averaged_elbo: float | None
    converged: bool
    convergence: dict
    vectorized: bool
    max_plate_nesting: int
    notes: list[str]
    settings: dict
    seconds: float
    device: torch.device
    dtype: torch.dtype
    init_seconds: float = 0.0
    extras: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- vectorization


def _per_particle(log_prob: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """Sum a site's log-density over every dim except the particle dim ``dim`` (negative)."""
    if log_prob.dim() < -dim or log_prob.shape[dim] == 1:
        return log_prob.sum().expand(n)
    return log_prob.movedim(dim, 0).reshape(log_prob.shape[dim], -1).sum(-1)


def _base(fn):
    while isinstance(fn, dist.Independent | dist.MaskedDistribution):
        fn = fn.base_dist
    return fn


def _log_weight_vectorized(model, guide, data, n, dim) -> torch.Tensor:
    with pyro.plate("_vectorization_check", n, dim=dim):
        guide_trace = poutine.trace(guide).get_trace(**data)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**data)
    total = torch.zeros(n, dtype=torch.float64)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                total = (
                    total + sign * _per_particle(site["log_prob"], dim, n).to(torch.float64).cpu()
                )
    return total, guide_trace


def vectorization_ok(
    model: Callable, guide: Callable, data: Mapping[str, Any], max_plate_nesting: int
) -> bool:
    r"""Whether ``model``/``guide`` give the same :math:`\log p(x, z) - \log q(z)` for 3 draws
    taken together under a plate at dim ``-(max_plate_nesting + 1)`` as one by one.

    The draws of the vectorized run are replayed one at a time (the guide conditioned on its
    non-deterministic sites' values for that draw), so the two computations see the same
    :math:`z`. False when the vectorized run raises or the two disagree (``allclose``, relative
    tolerance 1e-6 in float64, 1e-3 in float32): a model that indexes ``beta[0]`` silently
    broadcasts wrongly under a particle plate. Errors of the one-by-one run propagate (the model
    itself is broken then).
    """
    n, dim = 3, -(max_plate_nesting + 1)
    with torch.no_grad(), local_params():
        single = poutine.trace(guide).get_trace(**data)
        try:
            vectorized, guide_trace = _log_weight_vectorized(model, guide, data, n, dim)
        except Exception:  # noqa: BLE001 - any failure under the plate means: do not vectorize
            return False
        looped = []
        for i in range(n):
            values = {}
            for name, site in guide_trace.nodes.items():
                if (
                    site["type"] != "sample"
                    or site_is_subsample(site)
                    or isinstance(_base(site["fn"]), dist.Delta)
                ):
                    continue
                shape = single.nodes[name]["value"].shape
                value = site["value"]
                axis = value.dim() - site["fn"].event_dim + dim
                if axis >= 0 and value.shape[axis] == n:
                    value = value.select(axis, i)
                try:
                    values[name] = value.reshape(shape)
                except RuntimeError:
                    return False
            g = poutine.trace(poutine.condition(guide, values)).get_trace(**data)
            for name in values:  # conditioned, yet still the guide's draws for replay
                g.nodes[name]["is_observed"] = False
            m = poutine.trace(poutine.replay(model, trace=g)).get_trace(**data)
            looped.append(float(m.log_prob_sum()) - float(g.log_prob_sum()))
    looped = torch.tensor(looped, dtype=torch.float64)
    if not bool(torch.isfinite(vectorized).all()):
        return False
    rtol = 1e-3 if _floating_dtype(data) == torch.float32 else 1e-6
    return bool(torch.allclose(vectorized, looped, rtol=rtol, atol=rtol))


def _floating_dtype(data: Mapping[str, Any]) -> torch.dtype:
    for value in data.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return torch.float64


# ----------------------------------------------------------------------------- convergence


def convergence_report(
    losses: np.ndarray, eval_every: int = DEFAULT_EVAL_EVERY, tolerance: float = DEFAULT_TOLERANCE
) -> dict:
    """Apply the convergence rule (module docstring) to a loss trace.

    Returns a dict with ``rule`` (words), ``held`` (at the last window), ``step`` (from which
    it held to the end, or None), and per window ``window_steps``, ``window_means``,
    ``relative_changes``, ``absolute_changes``, ``noise``.
    """
    losses = np.asarray(losses, dtype=np.float64)
    k = len(losses) // eval_every
    means, ses = [], []
    for i in range(k):
        window = losses[i * eval_every : (i + 1) * eval_every]
        means.append(float(window.mean()))
        ses.append(float(window.std(ddof=1) / math.sqrt(len(window))))
    rel, absolute, noise, held = [], [], [], []
    for i in range(1, k):
        change = abs(means[i] - means[i - 1])
        r = change / max(abs(means[i]), 1e-300)
        allowed = max(3.0 * math.hypot(ses[i], ses[i - 1]), 0.05)
        rel.append(r)
        absolute.append(change)
        noise.append(allowed)
        held.append(r < tolerance and change <= allowed)
    since = None
    for i in range(len(held) - 1, -1, -1):
        if not held[i]:
            break
        since = (i + 2) * eval_every
    rule = (
        f"every {eval_every} steps, the mean loss (-ELBO) over the last {eval_every} steps is "
        f"compared with the previous window's; converged when the relative change is below "
        f"{tolerance:g} (Stan ADVI's tol_rel_obj) and the absolute change is within three "
        "standard errors of the window means' difference (at least 0.05 nats)"
    )
    if not held:
        status = f"not assessed: fewer than two windows of {eval_every} steps"
    elif held[-1]:
        status = f"held from step {since} to the end ({len(losses)} steps)"
    else:
        status = (
            f"did not hold at the end: the last windows' means differ by {absolute[-1]:.3g} "
            f"nats (relative {rel[-1]:.2g}; allowed {noise[-1]:.3g} nats)"
        )
    return {
        "rule": rule,
        "status": status,
        "held": bool(held[-1]) if held else False,
        "step": since,
        "eval_every": eval_every,
        "tolerance": tolerance,
        "window_steps": [(i + 1) * eval_every for i in range(k)],
        "window_means": means,
        "relative_changes": rel,
        "absolute_changes": absolute,
        "noise": noise,
    }


# ----------------------------------------------------------------------------- fitting


def fit_svi(
    model: Callable,
    guide: str | Callable = "auto-normal",
    data: Mapping[str, Any] | None = None,
    *,
    steps: int = DEFAULT_STEPS,
    particles: int = DEFAULT_PARTICLES,
    lr: float = DEFAULT_LR,
    lr_final: float = DEFAULT_LR_FINAL,
    average_window: float = DEFAULT_AVERAGE_WINDOW,
    betas: tuple[float, float] = DEFAULT_BETAS,
    seed: int = 0,
    device: str | torch.device = "auto",
    dtype: torch.dtype | str | None = None,
    init: str = "laplace",
    vectorize: bool | None = None,
    eval_every: int = DEFAULT_EVAL_EVERY,
    tolerance: float = DEFAULT_TOLERANCE,
    stop_early: bool = False,
    guide_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    on_step: Callable[[int, float, Callable], bool | None] | None = None,
    on_log: Callable[[dict], None] | None = None,
    log_every: int = 1,
    validate: bool = False,
    threads: int | None = None,
    elbo: str = "trace",
    data_plate: str | None = None,
    batch_size: int = 0,
    context: Context | None = None,
) -> SviFit:
    r"""Fit ``guide`` to ``model``'s posterior given ``data`` by SVI.

    Maximises :math:`\mathcal L = E_q[\log p(x, z) - \log q(z)]` with ``particles`` draws per
    step (``Trace_ELBO``), Adam with ``betas``, the step size decaying geometrically from ``lr``
    to ``lr_final`` over ``steps``, and suffix averaging of the last ``average_window`` of the
    iterates (module docstring). Runs inside :func:`ppl_models.svi.local_params`: the fitted
    autoguide keeps its parameters itself, and nothing global changes.

    Parameters
    ----------
    model
        A Pyro model called as ``model(**data)``.
    guide
        A name from :data:`ppl_models.vi.guides.GUIDES` (an autoguide initialised at the
        Laplace approximation and fitted in whitened coordinates), or the user's guide callable
        (``guide_name`` "custom"; a ``pyro.param`` guide keeps its parameters in Pyro's
        parameter store).
    data
        Keyword arguments of the model; lists become tensors and floating tensors are cast to
        ``dtype`` on ``device`` (:func:`ppl_models.vi.script.convert_data`).
    steps, particles, lr, lr_final, average_window, betas
        The optimisation. With whitened guides ``lr`` is in posterior standard deviations.
    seed
        Seeds torch, Pyro and NumPy before the guide is built.
    device, dtype
        ``auto`` picks CUDA when present; the default dtype is float64 on the CPU and float32
        on CUDA.
    init
        ``laplace`` or ``feasible`` (:class:`ppl_models.vi.guides.WhitenedGuide`).
    vectorize
        None: decided by :func:`vectorization_ok`; False forces the loop over particles.
    eval_every, tolerance, stop_early
        The convergence rule (module docstring); ``stop_early`` stops once it holds.
    guide_options
        Passed to the guide class (``rank``, ``hidden_dims``, ``num_transforms``,
        ``iterations``).
    on_step
        ``on_step(step, loss, guide)`` after every step (for example to record the guide's
        parameters); returning True stops the fit.
    on_log
        Receives one record per ``log_every`` steps: ``step``, ``loss``, ``lr``, and
        ``elbo_window_mean`` at window ends (for ``metrics.jsonl``).
    elbo
        ``trace`` (:class:`pyro.infer.Trace_ELBO`) or ``meanfield``
        (:class:`pyro.infer.TraceMeanField_ELBO`: the analytic KL where one is registered).
    data_plate, batch_size
        The name of the model's plate over its observations, which the model indexes by the
        plate's indices (:mod:`ppl_models.vi.data_plate`): each step then takes a batch of
        ``batch_size`` observations under it, scaled to the full data (0: all of them, or each
        process's share under ``torchrun``). None: every step uses all the data.
    context
        This process's place in a ``torchrun`` job (:func:`ppl_models.distributed.session`).
        With several processes the fit needs ``data_plate``: the loss module is wrapped in
        ``DistributedDataParallel``, each rank takes its stride of one shared permutation of
        the observations and draws its own Monte Carlo noise, and the recorded losses are the
        ranks' mean. Every rank returns the same fit.
    threads
        CPU threads for torch during the fit (restored after). By default one thread when the
        data times the particles hold fewer than 2**20 numbers: a small model's steps are
        Python-bound, and a second thread only contends (five times slower on two cores).
    validate
        Keep Pyro's argument and shape validation on inside the training loop. It is on (as the
        caller has it) while the guide is built and the vectorization is checked, which is where
        a malformed model shows itself; off in the loop, the steps are about 30% faster.

    Returns
    -------
    SviFit

    Raises
    ------
    ValueError
        For bad settings, data keys that do not fit the model, NaN in the data, a plate that
        draws its own subsample, a data plate the model does not have or does not index by, or
        several processes without a data plate.
    ppl_models.svi.NonFiniteLossError
        When the loss becomes NaN or infinite.
    """
    _check_settings(steps, particles, lr, lr_final, average_window, eval_every)
    if elbo not in ELBO_KINDS:
        raise ValueError(f"elbo must be one of {', '.join(ELBO_KINDS)}, got {elbo!r}")
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64}.get(dtype)
        if dtype is None:
            raise ValueError("dtype must be float32 or float64")
    if dtype is None:
        dtype = torch.float32 if device.type == "cuda" else torch.float64
    data = convert_data(data or {}, dtype=dtype, device=device)
    check_data_keys(model, data)
    if isinstance(guide, str):
        if guide not in GUIDES:
            raise ValueError(
                f"guide must be one of {', '.join(GUIDES)} or a guide function, got {guide!r}"
            )
        guide_name = guide
    else:
        guide_name = CUSTOM
    settings = {
        "guide": guide_name,
        "steps": steps,
        "particles": particles,
        "lr": lr,
        "lr_final": lr_final,
        "average_window": average_window,
        "betas": list(betas),
        "seed": seed,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "init": init if guide_name != CUSTOM else "the custom guide's own",
        "eval_every": eval_every,
        "tolerance": tolerance,
        "stop_early": stop_early,
        "elbo": elbo,
        "validate": validate,
    }
    if threads is None:
        size = sum(v.numel() for v in data.values() if isinstance(v, torch.Tensor))
        threads = 1 if size * particles < 2**20 else torch.get_num_threads()
    settings["threads"] = threads if device.type == "cpu" else None
    context = context or Context(device=device)
    if context.parallel and not data_plate:
        raise ValueError(
            f"fitting on {context.world_size} processes needs the model's data plate "
            "(data_plate): the plate over the observations, which the model indexes by its indices"
        )
    settings.update(data_plate=data_plate or None, batch_size=batch_size, **context.describe())
    start = time.perf_counter()
    notes: list[str] = []
    with local_params(), _torch_threads(threads if device.type == "cpu" else None):
        seed_everything(seed)
        fitted = (
            make_guide(
                guide_name, model, init=init, dtype=dtype, device=device, **(guide_options or {})
            )
            if guide_name != CUSTOM
            else guide
        )
        if isinstance(fitted, WhitenedGuide):
            fitted.setup(**data)
            notes += fitted.notes
        else:
            notes.append("The custom guide was fitted as given (no initialisation by the package).")
        with poutine.block(), torch.no_grad():
            guide_trace = poutine.trace(fitted).get_trace(**data)
            prototype = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**data)
        init_seconds = time.perf_counter() - start
        nesting = max_plate_nesting(prototype)
        refuse_own_subsampling(guide_trace, prototype)
        plate = None
        if data_plate:
            plate = find_data_plate(prototype, data_plate)
            check_indexing(model, _latent_values(prototype), data, plate)
        can_vectorize = (
            vectorization_ok(model, fitted, data, nesting) if vectorize is not False else False
        )
        if vectorize is None and not can_vectorize:
            notes.append(
                "The model does not give the same log density for draws taken together under "
                "a particle plate as one by one (for example it indexes a vector as beta[0] "
                "instead of beta[..., 0]); particles and the diagnosis's draws are looped over "
                "one at a time, which is slower."
            )
        elif vectorize is False:
            notes.append("Vectorized particles were turned off; particles are looped over.")
        elbo_class = Trace_ELBO if elbo == "trace" else TraceMeanField_ELBO
        estimator = elbo_class(
            num_particles=particles,
            vectorize_particles=can_vectorize and particles > 1,
            max_plate_nesting=nesting,
        )
        loss_fn = make_objective(model, fitted, estimator)
        loss_fn(**data)  # builds every parameter (pyro.param sites too) before the optimizer
        params = list(loss_fn.parameters())
        if not params:
            raise ValueError("the guide has no parameters to fit")
        step_loss, batches = _step_losses(
            context.wrap(loss_fn), data, plate, batch_size, steps, seed=seed, context=context
        )
        if plate is not None and (batch_size or context.parallel):
            notes.append(_plate_note(plate, batch_size, context))
        if context.parallel:  # the same start on every rank (DDP broadcast it), own noise each
            seed_everything(rank_seed(seed, context.rank))
        optimizer = torch.optim.Adam(params, lr=lr, betas=tuple(betas))
        decay = (lr_final / lr) ** (1.0 / steps)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, decay)
        first = int(steps * (1 - average_window))
        sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        count = 0
        losses_seen: list[float] = []

        def record(step: int, loss: float) -> bool:
            nonlocal count
            if context.parallel:  # every rank records, and so decides, on the same mean loss
                loss = float(context.all_reduce_mean(torch.tensor(loss)))
            if step >= first:
                with torch.no_grad():
                    for s, p in zip(sums, params, strict=True):
                        s.add_(p.detach())
                count += 1
            losses_seen.append(loss)
            stop = False
            window_end = (step + 1) % eval_every == 0
            extra = {}
            if window_end:
                window = losses_seen[-eval_every:]
                extra["elbo_window_mean"] = -float(np.mean(window))
                if stop_early and step + 1 >= 2 * eval_every:
                    stop = convergence_report(np.array(losses_seen), eval_every, tolerance)["held"]
            if on_log is not None and (step % log_every == 0 or window_end or step + 1 == steps):
                on_log({"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0], **extra})
            if on_step is not None and on_step(step, loss, fitted):
                stop = True
            return stop

        validation = contextlib.nullcontext() if validate else pyro.validation_enabled(False)
        with validation, context.lost_ranks_reported():
            result = train(
                step_loss,
                optimizer,
                batches,
                total=steps,
                scheduler=scheduler,
                on_step=record,
                progress=progress and context.is_main,
                desc=f"SVI {guide_name}",
            )
        with torch.no_grad():
            if count:
                for s, p in zip(sums, params, strict=True):
                    p.copy_((s / count).to(p.dtype))
            else:
                notes.append(
                    "The fit stopped before the averaging window; the last iterate is used."
                )
    losses = np.asarray(losses_seen, dtype=np.float64)
    convergence = convergence_report(losses, eval_every, tolerance)
    window_losses = losses[first:] if len(losses) > first else losses
    if not convergence["held"]:
        notes.append(f"The convergence rule {convergence['status']}.")
    return SviFit(
        model=model,
        guide=fitted,
        data=data,
        guide_name=guide_name,
        losses=losses,
        averaged_elbo=-float(window_losses.mean()) if len(window_losses) else None,
        converged=convergence["held"],
        convergence=convergence,
        vectorized=can_vectorize,
        max_plate_nesting=nesting,
        notes=notes,
        settings=settings,
        seconds=time.perf_counter() - start,
        device=device,
        dtype=dtype,
        init_seconds=init_seconds,
        extras={"stopped_early": result.stopped_early, "averaged_steps": count},
    )


def _latent_values(trace) -> dict[str, torch.Tensor]:
    return {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


def _step_losses(
    loss_fn: Callable,
    data: dict,
    plate: DataPlate | None,
    batch_size: int,
    steps: int,
    *,
    seed: int,
    context: Context,
) -> tuple[Callable, Iterable[tuple]]:
    """The loss of one step and the steps' arguments: all the data at every step, unless a
    data plate is to be subsampled (a ``batch_size``, or several processes); then a batch of
    observation indices per step, given to the plate
    (:func:`ppl_models.batches.index_batches`)."""
    if plate is None or (batch_size == 0 and not context.parallel):  # all the data every step
        return (lambda: loss_fn(**data)), [()] * steps

    def step_loss(indices: torch.Tensor) -> torch.Tensor:
        with subsampled(plate.name, indices):
            return loss_fn(**data)

    indices = index_batches(
        plate.size,
        batch_size,
        steps,
        seed=seed,
        rank=context.rank,
        world_size=context.world_size,
        device=context.device,
    )
    return step_loss, ((batch,) for batch in indices)


def _plate_note(plate: DataPlate, batch_size: int, context: Context) -> str:
    per_rank = plate.size // context.world_size
    batch = batch_size or per_rank
    where = (
        f"on each of {context.world_size} processes (data-parallel, their gradients averaged)"
        if context.parallel
        else "at each step"
    )
    return (
        f"The data plate {plate.name!r} ({plate.size} observations) took a batch of {batch} "
        f"{where}, its log-likelihood scaled by {plate.size}/{batch}: every step's loss is an "
        "unbiased estimate of the full-data negative ELBO."
    )


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run the block with ``n`` torch CPU threads (unchanged for None), restored after."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _check_settings(steps, particles, lr, lr_final, average_window, eval_every) -> None:
    from ..config import require

    require(isinstance(steps, int) and steps >= 1, "steps", steps, "an integer >= 1")
    require(
        isinstance(particles, int) and particles >= 1, "particles", particles, "an integer >= 1"
    )
    require(lr > 0 and math.isfinite(lr), "lr", lr, "a positive number")
    require(0 < lr_final <= lr, "lr_final", lr_final, f"a positive number no larger than lr ({lr})")
    require(0 < average_window <= 1, "average_window", average_window, "a fraction in (0, 1]")
    require(
        isinstance(eval_every, int) and eval_every >= 2, "eval_every", eval_every, "an integer >= 2"
    )
