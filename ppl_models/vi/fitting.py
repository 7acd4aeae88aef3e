r"""Fit any Pyro model by SVI: :func:`fit_svi` returns an :class:`SviFit`.

The machinery is the exponential-normal fit's (:mod:`ppl_models.svi`): the negative ELBO as a
module (:func:`~ppl_models.svi.make_objective`, traced by
:class:`~ppl_models.traced.TracedObjective` where every step sees all the data and the model
allows it), Adam, a step size decaying geometrically from ``lr`` to ``lr_final``, the shared
loop :func:`~ppl_models.svi.train`, and suffix averaging of the iterates: the fitted parameters
are the mean of the iterates :math:`\theta_s,\ s \ge \lfloor (1 - w) T \rfloor` over the
last fraction :math:`w` of the :math:`T` steps, which cancels the gradient noise left in the
last iterate.

The model and guide are checked before the fit (:mod:`ppl_models.vi.checks`), the fit is
checked as it runs by the convergence rule (:mod:`ppl_models.vi.convergence`), particles are
vectorized where the model allows it (:mod:`ppl_models.vi.vectorization`), and a fit from a MAP
start that is in doubt is fitted again from Pyro's start (:mod:`ppl_models.vi.restart`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from ..batches import index_batches
from ..distributed import Context, rank_seed
from ..options import DEVICES
from ..svi import (
    default_dtype,
    local_params,
    make_objective,
    resolve_device,
    seed_everything,
    train,
)
from .checks import declared_plate, inspected_model
from .convergence import convergence_report
from .data_plate import (
    DataPlate,
    resubsampled,
    subsampled,
)
from .enumeration import Discrete, enumerated, enumeration_vectorizes, find_discrete
from .guides import WhitenedGuide, make_guide
from .local import LocalLatentGuide, LocalVmappedElbo, local_guide_refusal
from .masked import masked_imputations, stand_in_note, with_stand_ins
from .modules import adopt_local_params, model_modules, module_parameters, point_estimates
from .restart import (
    START_ELBO_DRAWS,
    better_of,
    doubt,
    elbo_estimate,
    final_elbos,
    gain_over_start,
    left_its_start,
)
from .script import model_data
from .settings import CUSTOM, GUIDES, FitSettings
from .unconstrained import check_bounds, dynamic_sites, evaluate, guide_layout
from .vectorization import vectorization_ok
from .verdict_text import names
from .vmapped import LOOP, PLATE, VMAP, VmappedElbo, evaluation_ok, vmap_ok


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
    vectorized, vectorization
        How particles (and the diagnosis's draws) are vectorized: ``"plate"`` (under a
        particle plate), ``"vmap"`` (``torch.func.vmap`` of the model) or ``"loop"``;
        ``vectorized`` is true for the first two.
    max_plate_nesting
        The model's plate depth; a particle plate goes at dim ``-(max_plate_nesting + 1)``.
    notes
        Sentences the report must show (initialisation, fallbacks).
    discrete
        The model's discrete latent sites, summed out by enumeration
        (:class:`~ppl_models.vi.enumeration.Discrete`; empty when it has none).
    dynamic
        The latent sites whose support depends on other latents.
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
    vectorization: str = "plate"
    discrete: Discrete | None = None
    dynamic: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class FitHooks:
    """What a caller sees of a running fit.

    Attributes
    ----------
    progress
        Show a progress bar (on a terminal, and on rank 0 only).
    on_step
        ``on_step(step, loss, guide)`` after every step (for example to record the guide's
        parameters); returning True stops the fit.
    on_log
        Receives one record per ``log_every`` steps: ``step``, ``loss``, ``lr``, and
        ``elbo_window_mean`` at window ends (for ``metrics.jsonl``).
    """

    progress: bool = False
    on_step: Callable[[int, float, Callable], bool | None] | None = None
    on_log: Callable[[dict], None] | None = None
    log_every: int = 1


_HOOKS = frozenset(f.name for f in dataclasses.fields(FitHooks))


def fit_svi(
    model: Callable,
    guide: str | Callable = "auto-normal",
    data: Mapping[str, Any] | None = None,
    settings: FitSettings | None = None,
    *,
    hooks: FitHooks | None = None,
    context: Context | None = None,
    **overrides: Any,
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
        A name from :data:`ppl_models.vi.settings.GUIDES` (an autoguide initialised at the
        Laplace approximation and fitted in whitened coordinates), or the user's guide callable
        (``guide_name`` "custom"; a ``pyro.param`` guide keeps its parameters in Pyro's
        parameter store).
    data
        Keyword arguments of the model; lists become tensors and floating tensors are cast to
        the fit's dtype on its device (:func:`ppl_models.vi.script.model_data`).
    settings
        :class:`~ppl_models.vi.settings.FitSettings` (its defaults when None).
    hooks
        :class:`FitHooks`: a progress bar, per-step and logging callbacks.
    context
        This process's place in a ``torchrun`` job (:func:`ppl_models.distributed.session`).
        With several processes the fit needs ``data_plate``: the loss module is wrapped in
        ``DistributedDataParallel``, each rank takes its stride of one shared permutation of
        the observations and draws its own Monte Carlo noise, and the recorded losses are the
        ranks' mean. Every rank returns the same fit.
    overrides
        Fields of :class:`~ppl_models.vi.settings.FitSettings` (``steps=500``, ``lr=0.05``,
        ``dtype=torch.float32`` ...) or of :class:`FitHooks` (``progress=True``,
        ``on_step=...``) that replace those of ``settings`` and ``hooks``.

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

    Notes
    -----
    ``threads``: by default one CPU thread when the data times the particles hold fewer than
    :math:`2^{20}` numbers (a small model's steps are Python-bound, and a second thread only
    contends: five times slower on two cores). ``validate``: Pyro's validation stays as the
    caller has it while the guide is built and the vectorization is checked, where a malformed
    model shows itself; it is off in the loop, whose steps are then about 30% faster.
    """
    hooks = dataclasses.replace(
        hooks or FitHooks(), **{k: overrides.pop(k) for k in list(overrides) if k in _HOOKS}
    )
    settings = (settings or FitSettings()).replace(**overrides)
    guide_name = _guide_name(guide)
    device, dtype = _placement(settings)
    data = model_data(model, data or {}, dtype=dtype, device=device)
    context = context or Context(device=device)
    if context.parallel and not settings.data_plate:
        raise ValueError(
            f"fitting on {context.world_size} processes needs the model's data plate "
            "(data_plate): the plate over the observations, which the model indexes by its indices"
        )
    threads = _threads(settings, data) if device.type == "cpu" else None
    start = time.perf_counter()
    with local_params(), _torch_threads(threads), default_dtype(dtype):
        modules = model_modules(model)
        adopt_local_params(modules)
        stand_ins = masked_imputations(model, data, dtype)
        if stand_ins:  # obs_mask's observed entries: a density, so that the posterior is proper
            model = with_stand_ins(model, stand_ins)
        discrete = find_discrete(model, data, dtype)
        dynamic = [] if discrete or guide_name == CUSTOM else dynamic_sites(model, data, dtype)
        plate = declared_plate(model, data, settings, dtype, device)
        problem = _Problem(
            model,
            guide,
            guide_name,
            data,
            hooks,
            context,
            device,
            dtype,
            modules,
            discrete,
            dynamic,
            plate,
        )
        initial = [copy.deepcopy(m.state_dict()) for m in modules]
        fit = _fit_once(problem, settings)
        in_doubt = doubt(fit)
        if in_doubt:  # a MAP start whose fit collapsed or did not converge: try Pyro's start
            fit = _refitted(problem, settings, fit, in_doubt, initial)
        _note_point_estimates(fit)
        if stand_ins:
            fit.notes.append(stand_in_note(stand_ins))
    fit.settings = _settings_record(fit, settings, threads, context)
    fit.seconds = time.perf_counter() - start
    return fit


def _refitted(
    problem: _Problem, settings: FitSettings, first: SviFit, in_doubt, initial: list
) -> SviFit:
    """The better of ``first`` (from a MAP start, in doubt) and a refit from Pyro's start, the
    model's point estimates (its modules' parameters, its own ``pyro.param`` sites) left as the
    kept fit's. Each fit starts them where the model's code does and is scored with its own. A
    first fit stopped early because it left its start behind is run to its end, from its start
    again, where the refit's final ELBO is not above the stopped fit's: the early stop only
    saves time where the refit wins."""
    estimates = _PointEstimates(
        problem.modules, list(point_estimates(first.model, first.guide, first.data))
    )
    first_state, start = estimates.state(), (initial, {})
    estimates.load(start)
    retry = _fit_once(_refitting(problem), settings.replace(init="prior"))
    retry_state = estimates.state()
    scored = final_elbos(first, retry, before=estimates.loaders(first_state, retry_state))
    (stopped, _), (refit, _) = scored[1]
    if in_doubt.left_at is not None and not refit > stopped:
        estimates.load(start)
        first = _fit_once(problem, settings, leave_start=False)
        first_state = estimates.state()
        in_doubt = doubt(first) or in_doubt
        scored = final_elbos(first, retry, before=estimates.loaders(first_state, retry_state))
    kept = better_of(first, retry, in_doubt, scored)
    estimates.load(retry_state if kept is retry else first_state)
    return kept


class _PointEstimates:
    """A model's point estimates, saved and restored between the restart guard's fits: its
    modules' states and its own ``pyro.param`` sites in Pyro's global store (``names``; absent
    from a state, a site is removed, and the model's next run creates it at its initial
    value)."""

    def __init__(self, modules: list, names: list[str]):
        self.modules, self.names = modules, names

    def state(self) -> tuple[list, dict]:
        store = pyro.get_param_store()
        params = {n: store[n].detach().clone() for n in self.names if n in store}
        return [copy.deepcopy(m.state_dict()) for m in self.modules], params

    def load(self, state: tuple[list, dict]) -> None:
        modules, params = state
        _load(self.modules, modules)
        store = pyro.get_param_store()
        for name in self.names:
            if name in params:
                store[name] = params[name]
            elif name in store:
                del store[name]

    def loaders(self, *states: tuple[list, dict]) -> tuple[Callable[[], None], ...]:
        """A loader of each state, to score each fit with its own point estimates."""
        return tuple(lambda state=state: self.load(state) for state in states)


@dataclass(frozen=True)
class _Problem:
    """What every attempt at one fit shares: the model, the guide asked for, the converted data,
    the caller's hooks, the process's place, the device and dtype, and the model's modules."""

    model: Callable
    guide: str | Callable
    guide_name: str
    data: dict
    hooks: FitHooks
    context: Context
    device: torch.device
    dtype: torch.dtype
    modules: list
    discrete: Discrete
    dynamic: list[str]
    plate: DataPlate | None = None

    @property
    def fit_model(self) -> Callable:
        """The model the ELBO sees: its discrete sites marked for enumeration."""
        return enumerated(self.model, self.discrete) if self.discrete else self.model


def _refitting(problem: _Problem) -> _Problem:
    """The problem of the refit from Pyro's start: its logged records say ``restart``."""
    on_log = problem.hooks.on_log
    if on_log is None:
        return problem
    hooks = dataclasses.replace(
        problem.hooks, on_log=lambda record: on_log(record | {"restart": True})
    )
    return dataclasses.replace(problem, hooks=hooks)


def saved_point_estimates(model: Callable, guide) -> Callable[[], None]:
    """A function that puts the point estimates of ``model`` (and of a custom ``guide``) back to
    what they are now: their modules' parameters, and Pyro's global parameter store, from which
    the sites a later fit creates are removed. A second attempt at a failed fit starts where the
    first did, not from the NaNs the first left."""
    modules = model_modules(model) + ([] if isinstance(guide, str) else model_modules(guide))
    store = pyro.get_param_store()
    with local_params():
        adopt_local_params(modules)
        saved = _PointEstimates(modules, list(store.keys())).state()

    def restore() -> None:
        with local_params():
            _PointEstimates(modules, list(store.keys())).load(saved)

    return restore


def _load(modules: list, states: list) -> None:
    for module, state in zip(modules, states, strict=True):
        module.load_state_dict(state)


def _note_point_estimates(fit: SviFit) -> None:
    """Record the model's own parameters, and say that the posterior is conditional on them."""
    estimates = point_estimates(fit.model, fit.guide, fit.data)
    if not estimates:
        return
    fit.extras["point_estimates"] = {k: v.tolist() for k, v in estimates.items()}
    fit.notes.append(
        f"The model's own parameters ({names(list(estimates))}) were fitted as point "
        "estimates alongside the guide (type-II maximum likelihood): the posterior, and every "
        "check of it, is conditional on their values."
    )


def _fit_once(problem: _Problem, settings: FitSettings, leave_start: bool = True) -> SviFit:
    """One fit from the start ``settings.init``: build the guide, train, average; stopped
    where it leaves a Laplace start behind (unless ``leave_start`` is false)."""
    model, guide_name, data = problem.fit_model, problem.guide_name, problem.data
    hooks, context, device, dtype = problem.hooks, problem.context, problem.device, problem.dtype
    start = time.perf_counter()
    seed_everything(settings.seed)
    fitted, notes = _built_guide(problem, settings)
    prototype, nesting = inspected_model(model, fitted, data)
    plate = problem.plate
    init_seconds = time.perf_counter() - start
    vectorization = _vectorization(problem, fitted, nesting, settings, notes)
    # traced where every step sees all the data (several processes always take subsamples)
    traced = settings.objective == "traced" and not _subsamples(plate, settings.batch_size, context)
    loss_fn = _objective(problem, fitted, settings, vectorization, nesting, traced=traced)
    step_loss, batches = _step_losses(
        context.wrap(loss_fn),
        data,
        plate,
        settings.batch_size,
        settings.steps,
        seed=settings.seed,
        context=context,
    )
    if _subsamples(plate, settings.batch_size, context):
        notes.append(_plate_note(plate, settings.batch_size, context))
    minibatched = plate is not None and 0 < settings.batch_size < plate.size
    if context.parallel:  # the same start on every rank (DDP broadcast it), own noise each
        seed_everything(rank_seed(settings.seed, context.rank))
    start_elbo = _start_elbo(problem, fitted, vectorization, nesting)
    params = _unique([*loss_fn.parameters(), *module_parameters(problem.modules)])
    optimizer = torch.optim.Adam(params, lr=settings.lr, betas=settings.betas)
    decay = (settings.lr_final / settings.lr) ** (1.0 / settings.steps)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, decay)
    recorder = _Recorder(
        params,
        settings,
        hooks,
        scheduler,
        fitted,
        context,
        minibatched,
        start_elbo if leave_start else None,
    )
    validation = contextlib.nullcontext() if settings.validate else pyro.validation_enabled(False)
    with validation, context.lost_ranks_reported():
        result = train(
            step_loss,
            optimizer,
            batches,
            total=settings.steps,
            scheduler=scheduler,
            on_step=recorder,
            progress=hooks.progress and context.is_main,
            desc=f"SVI {guide_name}",
        )
    if not recorder.average_into_parameters():
        notes.append("The fit stopped before the averaging window; the last iterate is used.")
    losses = np.asarray(recorder.losses, dtype=np.float64)
    convergence = convergence_report(
        losses, settings.eval_every, settings.tolerance, subsampled=minibatched
    )
    window_losses = losses[recorder.first :] if len(losses) > recorder.first else losses
    if not convergence["held"]:
        notes.append(f"The convergence rule {convergence['status']}.")
    return SviFit(
        model=problem.model,
        guide=fitted,
        data=data,
        guide_name=guide_name,
        losses=losses,
        averaged_elbo=-float(window_losses.mean()) if len(window_losses) else None,
        converged=convergence["held"],
        convergence=convergence,
        vectorized=vectorization != LOOP,
        max_plate_nesting=nesting,
        notes=notes,
        settings={"init": settings.init if guide_name != CUSTOM else "the custom guide's own"},
        seconds=time.perf_counter() - start,
        device=device,
        dtype=dtype,
        init_seconds=init_seconds,
        extras={
            "stopped_early": result.stopped_early,
            "averaged_steps": recorder.count,
            "start_elbo": start_elbo,
            "left_start": recorder.left_start,
            "objective": _objective_record(loss_fn),
        },
        vectorization=vectorization,
        discrete=problem.discrete,
        dynamic=problem.dynamic,
    )


def _start_elbo(problem: _Problem, fitted, vectorization: str, nesting: int) -> list | None:
    """The ELBO of a Laplace start before the first step, with its standard error
    (:data:`~ppl_models.vi.restart.START_ELBO_DRAWS` draws, an eighth of them for a model run
    one draw at a time), for the restart guard's :func:`~ppl_models.vi.restart.start_gain`;
    None for other starts."""
    start = getattr(fitted, "start", None)
    if start is None or start.method != "laplace":
        return None
    draws = START_ELBO_DRAWS if vectorization != LOOP else START_ELBO_DRAWS // 8
    return list(
        elbo_estimate(
            problem.model,
            fitted,
            problem.data,
            draws=draws,
            vectorization=vectorization,
            dynamic=problem.dynamic,
            discrete=problem.discrete,
            max_plate_nesting=nesting,
            device=problem.device,
        )
    )


def _unique(params: list) -> list:
    seen = set()
    return [p for p in params if not (id(p) in seen or seen.add(id(p)))]


def _guide_name(guide: str | Callable) -> str:
    if not isinstance(guide, str):
        return CUSTOM
    if guide not in GUIDES:
        raise ValueError(
            f"guide must be one of {', '.join(GUIDES)} or a guide function, got {guide!r}"
        )
    return guide


def _placement(settings: FitSettings) -> tuple[torch.device, torch.dtype]:
    """The fit's device and float dtype (``auto``: float64 on the CPU, float32 on CUDA)."""
    name = settings.device
    device = resolve_device(name) if name in DEVICES else torch.device(name)
    if settings.dtype == "auto":
        return device, torch.float32 if device.type == "cuda" else torch.float64
    return device, getattr(torch, settings.dtype)


def _threads(settings: FitSettings, data: dict) -> int:
    if settings.threads is not None:
        return settings.threads
    size = sum(v.numel() for v in data.values() if isinstance(v, torch.Tensor))
    return 1 if size * settings.particles < 2**20 else torch.get_num_threads()


def _settings_record(fit: SviFit, settings: FitSettings, threads, context) -> dict:
    """The settings as ``summary.json`` records them (``init``: the start the kept fit used)."""
    record = {
        "guide": fit.guide_name,
        "steps": settings.steps,
        "particles": settings.particles,
        "lr": settings.lr,
        "lr_final": settings.lr_final,
        "average_window": settings.average_window,
        "betas": list(settings.betas),
        "seed": settings.seed,
        "device": str(fit.device),
        "dtype": str(fit.dtype).replace("torch.", ""),
        "init": fit.settings["init"],
        "eval_every": settings.eval_every,
        "tolerance": settings.tolerance,
        "stop_early": settings.stop_early,
        "elbo": settings.elbo,
        "validate": settings.validate,
        "threads": threads,
        "data_plate": settings.data_plate or None,
        "batch_size": settings.batch_size,
    }
    record.update(context.describe())
    return record


def _built_guide(problem: _Problem, settings: FitSettings):
    """The guide to fit, set up for the data (an autoguide finds its start here), and the notes
    on how it started."""
    if problem.guide_name == CUSTOM:
        return problem.guide, [
            "The custom guide was fitted as given (no initialisation by the package)."
        ]
    plate = problem.plate
    if (
        plate is not None
        and plate.latents
        and _subsamples(plate, settings.batch_size, problem.context)
    ):
        refusal = local_guide_refusal(problem.discrete, problem.dynamic, problem.guide_name, plate)
        if refusal:
            raise ValueError(refusal)
        fitted = LocalLatentGuide(
            problem.guide_name,
            problem.model,
            plate,
            init=settings.init,
            dtype=problem.dtype,
            device=problem.device,
            **settings.guide_options,
        )
        fitted.setup(**problem.data)
        return fitted, list(fitted.notes)
    fitted = make_guide(
        problem.guide_name,
        problem.model,
        init=settings.init,
        dtype=problem.dtype,
        device=problem.device,
        discrete=problem.discrete or None,
        dynamic=problem.dynamic,
        **settings.guide_options,
    )
    fitted.setup(**problem.data)
    notes = list(fitted.notes)
    if problem.discrete:
        notes.append(_discrete_note(problem.discrete))
    if problem.dynamic:
        _check_dynamic_bounds(problem, fitted)
        notes.append(
            f"The supports of {', '.join(problem.dynamic)} depend on other latents: each draw is "
            "mapped from the unconstrained space with the bounds the model states at that draw, "
            "and its log-Jacobian (as Stan maps lower=/upper= expressions)."
        )
    return fitted, notes


def _check_dynamic_bounds(problem: _Problem, guide, draws: int = 8) -> None:
    """The dynamic sites' bounds are finite and ordered at a few draws of the guide."""
    layout = guide_layout(guide)
    with torch.no_grad():
        for u in guide.get_posterior().sample((draws,)):
            check_bounds(evaluate(problem.model, layout, u, problem.data), problem.dynamic)


def _discrete_note(discrete: Discrete) -> str:
    sizes = ", ".join(f"{name} ({discrete.supports[name]} values)" for name in discrete.sites[:6])
    more = f" and {len(discrete.sites) - 6} more" if len(discrete.sites) > 6 else ""
    return (
        f"The discrete latent sites {sizes}{more} are summed out by parallel enumeration "
        "(TraceEnum_ELBO): the guide covers the continuous sites, and every log density of the "
        "diagnosis is the marginal over the discrete ones."
    )


def _subsamples(plate: DataPlate | None, batch_size: int, context: Context) -> bool:
    """Whether the fit takes subsamples of the data plate (a batch size, or several
    processes); otherwise every step sees all the data."""
    return plate is not None and bool(batch_size or context.parallel)


def _vectorization(problem: _Problem, guide, nesting, settings: FitSettings, notes) -> str:
    """How particles (and the diagnosis's draws) are vectorized: under a plate when the model
    broadcasts (:func:`~ppl_models.vi.vectorization.vectorization_ok`, or for summed-out
    discrete sites :func:`~ppl_models.vi.enumeration.enumeration_vectorizes`), else by
    ``vmap`` of the model for the package's autoguides (:func:`~ppl_models.vi.vmapped.vmap_ok`),
    else in a loop (or as ``settings.vectorize`` says)."""
    model, data = problem.fit_model, problem.data
    if settings.vectorize is False:
        notes.append("Vectorized particles were turned off; particles are looped over.")
        return LOOP
    if problem.dynamic:  # the guide's own transforms are fixed: every draw goes through the model
        if settings.vectorize is None:
            for mode in (PLATE, VMAP):
                if evaluation_ok(model, guide, data, mode):
                    return mode
        return LOOP
    if problem.discrete:
        if enumeration_vectorizes(model, guide, data, problem.discrete):
            return PLATE
    elif vectorization_ok(model, guide, data, nesting):
        return PLATE
    flat = isinstance(guide, WhitenedGuide | LocalLatentGuide)  # a flat unconstrained vector
    if settings.vectorize is None and flat and not problem.discrete:
        if settings.elbo == "trace" and vmap_ok(model, guide, data):
            notes.append(
                "The model does not broadcast over a particle dimension (for example it indexes "
                "beta[0], or a module takes one draw of its weights), so particles and the "
                "diagnosis's draws are vectorized with torch.func.vmap of the model instead."
            )
            return VMAP
    if settings.vectorize is None:
        notes.append(
            "The model does not give the same log density for draws taken together under "
            "a particle plate as one by one (for example it indexes a vector as beta[0] "
            "instead of beta[..., 0]), nor under torch.func.vmap (its Python code branches on "
            "a value, say); particles and the diagnosis's draws are looped over one at a time, "
            "which is slower."
        )
    return LOOP


def _objective(
    problem: _Problem,
    guide,
    settings: FitSettings,
    vectorization: str,
    nesting: int,
    *,
    traced: bool = False,
):
    """The negative ELBO as a module whose parameters all exist (one warm-up call).

    With ``traced`` (every step sees all the data, in one process) a ``Trace_ELBO`` or
    ``TraceMeanField_ELBO`` objective is :class:`~ppl_models.traced.TracedObjective`: Pyro's
    handlers run once, and each step replays their tensor operations, the same loss and
    gradients to float rounding at a fraction of the Python work of a small model's step. A
    model it cannot trace (values read into Python, parameters outside the objective) runs
    Pyro's handlers at every step as before (:func:`_objective_record` says which)."""
    model, data = problem.fit_model, problem.data
    if vectorization == VMAP and isinstance(guide, LocalLatentGuide):
        loss_fn = LocalVmappedElbo(model, guide, settings.particles, problem.modules)
    elif vectorization == VMAP or problem.dynamic:
        if problem.plate is not None:  # evaluate() blocks the plate from the fit's subsample
            model = resubsampled(model, problem.plate.name)
        loss_fn = VmappedElbo(model, guide, settings.particles, problem.modules, vectorization)
    else:
        if problem.discrete:
            elbo_class = TraceEnum_ELBO  # the discrete sites summed out, exactly
        else:
            elbo_class = Trace_ELBO if settings.elbo == "trace" else TraceMeanField_ELBO
        estimator = elbo_class(
            num_particles=settings.particles,
            vectorize_particles=vectorization == PLATE and settings.particles > 1,
            max_plate_nesting=nesting,
        )
        kind = "traced" if traced and not problem.discrete else "plain"
        loss_fn = make_objective(model, guide, estimator, kind, warn=False)
    loss_fn(**data)  # builds every parameter (pyro.param sites too) before the optimizer
    if not list(loss_fn.parameters()):
        raise ValueError("the guide has no parameters to fit")
    return loss_fn


def _objective_record(loss_fn) -> str:
    """How the fit's steps evaluated the loss: ``traced``, or ``plain`` (and why not traced)."""
    if getattr(loss_fn, "fallback_reason", None):
        return f"plain ({loss_fn.fallback_reason})"
    return "traced" if hasattr(loss_fn, "fallback_reason") else "plain"


class _Recorder:
    """The loop's ``on_step``: records every loss (the ranks' mean under ``torchrun``), sums
    the iterates of the averaging window, logs, applies the convergence rule when asked to stop
    early, stops a fit from a Laplace start as soon as a window's ELBO has left the start's
    behind (:func:`~ppl_models.vi.restart.left_its_start`: the restart guard will refit it
    from Pyro's start, so its remaining steps would be wasted), and calls the caller's hooks."""

    def __init__(
        self,
        params,
        settings: FitSettings,
        hooks: FitHooks,
        scheduler,
        guide,
        context,
        subsampled,
        start_elbo=None,
    ):
        self.params, self.settings, self.hooks = params, settings, hooks
        self.subsampled, self.start_elbo = subsampled, start_elbo
        self.left_start: dict | None = None  # the step and gain where the fit left its start
        self.scheduler, self.guide, self.context = scheduler, guide, context
        self.first = int(settings.steps * (1 - settings.average_window))
        self.sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        self.count = 0
        self.losses: list[float] = []

    def __call__(self, step: int, loss: float) -> bool:
        s, context = self.settings, self.context
        if context.parallel:  # every rank records, and so decides, on the same mean loss
            loss = float(context.all_reduce_mean(torch.tensor(loss)))
        if step >= self.first:
            with torch.no_grad():
                for total, p in zip(self.sums, self.params, strict=True):
                    total.add_(p.detach())
            self.count += 1
        self.losses.append(loss)
        stop = False
        window_end = (step + 1) % s.eval_every == 0
        extra = {}
        if window_end:
            extra["elbo_window_mean"] = -float(np.mean(self.losses[-s.eval_every :]))
            if s.stop_early and step + 1 >= 2 * s.eval_every:
                report = convergence_report(
                    np.array(self.losses), s.eval_every, s.tolerance, subsampled=self.subsampled
                )
                stop = report["held"]
            gain = gain_over_start(self.losses, self.start_elbo, s.eval_every)
            if step + 1 < s.steps and left_its_start(gain):
                self.left_start, stop = {"step": step + 1, "gain": list(gain)}, True
        on_log = self.hooks.on_log
        if on_log is not None and (
            step % self.hooks.log_every == 0 or window_end or step + 1 == s.steps
        ):
            on_log({"step": step, "loss": loss, "lr": self.scheduler.get_last_lr()[0], **extra})
        if self.hooks.on_step is not None and self.hooks.on_step(step, loss, self.guide):
            stop = True
        return stop

    def average_into_parameters(self) -> bool:
        """Set the parameters to the window's mean iterate; False when the window is empty."""
        if not self.count:
            return False
        with torch.no_grad():
            for total, p in zip(self.sums, self.params, strict=True):
                p.copy_((total / self.count).to(p.dtype))
        return True


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
    if not _subsamples(plate, batch_size, context):  # all the data every step
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
    terms = (
        "its log-likelihood and its latents' log-densities (the model's and the guide's)"
        if plate.latents
        else "its log-likelihood"
    )
    return (
        f"The data plate {plate.name!r} ({plate.size} observations) took a batch of {batch} "
        f"{where}, {terms} scaled by {plate.size}/{batch}: every step's loss is an unbiased "
        "estimate of the full-data negative ELBO."
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
