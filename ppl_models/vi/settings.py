"""The settings of a fit and of its diagnosis: every default, choice list and check, written once.

:class:`FitSettings` is what :func:`ppl_models.vi.fitting.fit_svi` does (the optimisation, the
start, where it runs), :class:`DiagnosisSettings` what :func:`ppl_models.vi.diagnose.diagnose`
draws and searches, :class:`NutsSettings` the reference chains of
:func:`ppl_models.vi.references.nuts_reference`. The ``ppl-models fit`` configuration
(:mod:`ppl_models.jobs.fit.config`) takes its defaults and its validation from them.

This module imports neither torch, Pyro nor NumPy, so a configuration is checked, and the command
line lists its choices, before anything heavy is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import require, require_svi_schedule
from ..options import DEVICES, ELBO_KINDS, OBJECTIVE_KINDS

GUIDES = ("auto-normal", "auto-mvn", "auto-lowrank", "auto-iaf")  # the package's autoguides
CUSTOM = "custom"  # the model script's own guide(**data)
GUIDE_CHOICES = (*GUIDES, CUSTOM)
# where an autoguide starts (ppl_models.vi.initialization): the MAP's Laplace approximation where
# there is a proper MAP (else Pyro's start), a feasible point with unit scale, or Pyro's start
INITS = ("laplace", "feasible", "prior")
DTYPES = ("auto", "float32", "float64")  # auto: float64 on the CPU, float32 on CUDA


def _one_of(key: str, value: Any, choices: tuple[str, ...]) -> None:
    require(value in choices, key, value, f"one of {', '.join(choices)}")


@dataclass(frozen=True)
class FitSettings:
    r"""How :func:`~ppl_models.vi.fitting.fit_svi` fits a guide.

    Attributes
    ----------
    steps, particles
        SVI steps, and draws of :math:`z \sim q` per step for the ELBO estimate.
    lr, lr_final, betas
        Adam's step size, decaying geometrically from ``lr`` to ``lr_final`` over the steps
        (with whitened guides, in posterior standard deviations), and Adam's betas.
    average_window
        The fraction of the last iterates whose mean is the fitted guide (suffix averaging).
    seed
        Seeds torch, Pyro and NumPy before the guide is built.
    device, dtype
        ``auto`` picks CUDA when present (or ``cpu``, ``cuda``, ``cuda:N``); ``auto`` dtype is
        float64 on the CPU and float32 on CUDA.
    init
        Where an autoguide starts: ``laplace`` or ``feasible``.
    vectorize
        None: decided by a check of the model; False: particles are looped over.
    eval_every, tolerance, stop_early
        The convergence rule: windows of ``eval_every`` steps, Stan ADVI's relative tolerance;
        ``stop_early`` stops once it holds.
    elbo
        ``trace`` (Monte Carlo) or ``meanfield`` (the analytic KL where one is registered).
    objective
        ``traced`` (where every step sees all the data, Pyro's handlers run once and each step
        replays the loss's tensor operations: :class:`~ppl_models.traced.TracedObjective`) or
        ``plain`` (Pyro's handlers at every step: for a model that reads state a trace cannot
        see, such as NumPy's random generator).
    guide_options
        For the guide class: ``rank``, ``hidden_dims``, ``num_transforms``, ``iterations``.
    validate
        Keep Pyro's validation on inside the training loop and the diagnosis's draws (slower).
    threads
        CPU threads during the fit (None: one for small models, else torch's setting).
    data_plate, batch_size
        The model's plate over its observations, and the observations per step (0: all).
    """

    steps: int = 1000
    particles: int = 16
    lr: float = 0.1
    lr_final: float = 0.002
    average_window: float = 0.7
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    init: str = "laplace"
    vectorize: bool | None = None
    eval_every: int = 100
    tolerance: float = 0.01  # Stan ADVI's tol_rel_obj
    stop_early: bool = False
    elbo: str = "trace"
    objective: str = "traced"
    guide_options: Mapping[str, Any] = field(default_factory=dict)
    validate: bool = False
    threads: int | None = None
    data_plate: str | None = None
    batch_size: int = 0

    def __post_init__(self):
        require_svi_schedule(self)
        require(
            isinstance(self.eval_every, int) and self.eval_every >= 2,
            "eval_every",
            self.eval_every,
            "an integer >= 2",
        )
        require(
            self.tolerance > 0 and math.isfinite(self.tolerance),
            "tolerance",
            self.tolerance,
            "a positive number",
        )
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            self.betas,
            "two numbers in [0, 1)",
        )
        _one_of("elbo", self.elbo, ELBO_KINDS)
        _one_of("objective", self.objective, OBJECTIVE_KINDS)
        _one_of("init", self.init, INITS)
        _one_of("dtype", self.dtype, DTYPES)
        require(
            self.device in DEVICES or str(self.device).startswith("cuda:"),
            "device",
            self.device,
            f"one of {', '.join(DEVICES)} (or cuda:N)",
        )
        require(
            isinstance(self.batch_size, int) and self.batch_size >= 0,
            "batch_size",
            self.batch_size,
            "an integer >= 0",
        )
        require(
            self.threads is None or (isinstance(self.threads, int) and self.threads >= 1),
            "threads",
            self.threads,
            "an integer >= 1",
        )

    def replace(self, **changes: Any) -> FitSettings:
        """A copy with ``changes`` (validated); a torch dtype or device is given by name."""
        for key in ("dtype", "device"):
            if key in changes and changes[key] is not None and not isinstance(changes[key], str):
                changes[key] = str(changes[key]).replace("torch.", "")
        if changes.get("dtype", "") is None:
            changes["dtype"] = "auto"
        if "betas" in changes:
            changes["betas"] = tuple(changes["betas"])
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown fit settings {unknown}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DiagnosisSettings:
    """How :func:`~ppl_models.vi.diagnose.diagnose` examines a fit.

    Attributes
    ----------
    draws
        The most guide draws :math:`S` for every statistic (:mod:`ppl_models.vi.precision`
        makes as many as the verdict's quantities need).
    min_draws
        The draws of the first round.
    precision
        The Monte Carlo allowance (2 MCSE, in sds) of the PSIS-corrected moments at which the
        draws are enough.
    loop_draws
        The most draws made one by one when the model cannot be vectorized.
    mode_starts
        L-BFGS starts of the search for modes q never visits (0 skips it).
    """

    draws: int = 100_000
    min_draws: int = 4_000
    precision: float = 0.025
    loop_draws: int = 4_000
    mode_starts: int = 8


@dataclass(frozen=True)
class NutsSettings:
    """The chains of a NUTS reference: warm-up steps and kept draws per chain, chains."""

    warmup: int = 500
    draws: int = 1000
    chains: int = 2


# the rungs of the escalation ladder (ppl_models.vi.ladder), in the order they are climbed
RUNGS = ("guide", "psis", "reparam", "richer", "flow", "nuts")


@dataclass(frozen=True)
class NutsLadderSettings:
    """The NUTS rung of the escalation ladder (:func:`ppl_models.vi.neutra.run_nuts`).

    Attributes
    ----------
    chains
        Chains, run together (vectorized): several chains cost little more than one.
    warmup
        Warm-up iterations (NeuTra's preconditioning leaves little to adapt).
    draws, max_draws
        Kept draws per chain of the first round, and the most the rounds may double to while
        the R-hat and ESS checks fail. The first round is Stan's and NumPyro's 1,000: where a
        scale's posterior has a heavy tail (a variance component with few groups), rounds of
        250 and 500 passed every check with sds 12 to 16% small, the tail not yet visited,
        and no check on the draws can see a tail they have not visited.
    max_tree_depth, target_accept
        NUTS's depth limit and the step-size adaptation's target acceptance.
    jit
        Compile the potential with ``torch.jit.trace`` (checked against the model first).
    """

    chains: int = 4
    warmup: int = 300
    draws: int = 1000
    max_draws: int = 4000
    max_tree_depth: int = 10
    target_accept: float = 0.8
    jit: bool = True

    def __post_init__(self):
        for key in ("chains", "draws", "max_draws", "max_tree_depth"):
            value = getattr(self, key)
            require(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")
        require(self.chains >= 2, "chains", self.chains, "at least 2 (R-hat needs two chains)")
        require(isinstance(self.warmup, int) and self.warmup >= 0, "warmup", self.warmup, ">= 0")
        require(self.max_draws >= self.draws, "max_draws", self.max_draws, f">= {self.draws}")
        require(0 < self.target_accept < 1, "target_accept", self.target_accept, "in (0, 1)")


@dataclass(frozen=True)
class LadderSettings:
    """How :func:`ppl_models.vi.ladder.fit_auto` climbs.

    Attributes
    ----------
    budget
        Seconds for the whole climb: a fit or NUTS run still going when they are spent stops,
        and the ladder ends with the best rung so far.
    rungs
        The rungs to climb, a subset of :data:`RUNGS` (always in that order).
    draws, mode_starts
        The diagnosis's most guide draws and mode-search starts at each variational rung.
    nuts
        The NUTS rung's settings.
    """

    budget: float = 900.0
    rungs: tuple[str, ...] = RUNGS
    draws: int = DiagnosisSettings.draws
    mode_starts: int = DiagnosisSettings.mode_starts
    nuts: NutsLadderSettings = field(default_factory=NutsLadderSettings)

    def __post_init__(self):
        require(
            isinstance(self.budget, int | float) and self.budget > 0 and math.isfinite(self.budget),
            "budget",
            self.budget,
            "a positive number of seconds",
        )
        unknown = [r for r in self.rungs if r not in RUNGS]
        require(
            not unknown and bool(self.rungs), "rungs", self.rungs, f"some of {', '.join(RUNGS)}"
        )
        require(self.draws >= 100, "draws", self.draws, "an integer >= 100")
