"""The ``ppl-models fit`` configuration: the script, its data, the guide, the fit and diagnosis.

Its defaults and checks are those of :class:`~ppl_models.vi.settings.FitSettings`,
:class:`~ppl_models.vi.settings.DiagnosisSettings` and
:class:`~ppl_models.vi.settings.NutsSettings`; this module only lays them out as flat,
TOML-friendly keys. It imports neither torch nor Pyro.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import require
from ...vi.settings import (
    GUIDE_CHOICES,
    RUNGS,
    DiagnosisSettings,
    FitSettings,
    LadderSettings,
    NutsLadderSettings,
    NutsSettings,
)

MODEL = "fit"
DEFAULT_SCRIPT = "runs/normal_mean.py"
_FIT, _DIAGNOSIS, _NUTS = FitSettings(), DiagnosisSettings(), NutsSettings()
_LADDER, _LADDER_NUTS = LadderSettings(), NutsLadderSettings()


@dataclass(frozen=True)
class FitConfig:
    """One ``ppl-models fit`` run: the script, its data, the guide, the fit and the diagnosis.

    ``reference`` is ``none``, ``nuts`` or a file of reference draws; ``dtype`` ``auto`` is
    float64 on the CPU and float32 on CUDA; ``data_plate`` empty means the script's
    ``DATA_PLATE`` (if any), and ``batch_size`` 0 all the observations (each process's share
    with several); ``rank`` is ``auto-lowrank``'s (empty: the square root of the dimension).

    ``auto`` climbs the escalation ladder (:func:`ppl_models.vi.ladder.fit_auto`) within
    ``budget`` seconds, over the rungs ``auto_rungs`` (comma-separated, empty: all of them);
    ``auto_nuts_*`` set its NUTS rung (the ``nuts_*`` keys are those of ``--reference nuts``).
    """

    script: str = DEFAULT_SCRIPT
    data: str | None = None
    guide: str = "auto-normal"
    reference: str = "none"
    steps: int = _FIT.steps
    particles: int = _FIT.particles
    lr: float = _FIT.lr
    lr_final: float = _FIT.lr_final
    average_window: float = _FIT.average_window
    init: str = _FIT.init
    rank: int | None = None
    seed: int = _FIT.seed
    device: str = _FIT.device
    dtype: str = _FIT.dtype
    draws: int = _DIAGNOSIS.draws
    eval_every: int = _FIT.eval_every
    objective: str = _FIT.objective
    nuts_warmup: int = _NUTS.warmup
    nuts_draws: int = _NUTS.draws
    nuts_chains: int = _NUTS.chains
    data_plate: str = ""
    batch_size: int = _FIT.batch_size
    auto: bool = False
    budget: float = _LADDER.budget
    auto_rungs: str = ""
    auto_nuts_chains: int = _LADDER_NUTS.chains
    auto_nuts_warmup: int = _LADDER_NUTS.warmup
    auto_nuts_draws: int = _LADDER_NUTS.draws

    def __post_init__(self):
        require(bool(str(self.script).strip()), "script", self.script, "a model script path")
        require(
            self.guide in GUIDE_CHOICES, "guide", self.guide, f"one of {', '.join(GUIDE_CHOICES)}"
        )
        require(
            bool(str(self.reference).strip()), "reference", self.reference, "none, nuts or a file"
        )
        self.fit_settings()  # the fit's own checks
        require(self.rank is None or self.rank >= 1, "rank", self.rank, "an integer >= 1")
        require(self.draws >= 100, "draws", self.draws, "an integer >= 100")
        require(self.nuts_warmup >= 0, "nuts_warmup", self.nuts_warmup, "an integer >= 0")
        require(self.nuts_draws >= 1, "nuts_draws", self.nuts_draws, "an integer >= 1")
        require(self.nuts_chains >= 1, "nuts_chains", self.nuts_chains, "an integer >= 1")
        if self.auto:
            self.ladder_settings()  # the ladder's own checks

    @property
    def rungs(self) -> tuple[str, ...]:
        """The ladder's rungs: ``auto_rungs`` split on commas (all of them when empty)."""
        names = tuple(r.strip() for r in str(self.auto_rungs).split(",") if r.strip())
        return names or RUNGS

    def ladder_settings(self) -> LadderSettings:
        """The escalation ladder's :class:`~ppl_models.vi.settings.LadderSettings`."""
        nuts = NutsLadderSettings(
            chains=self.auto_nuts_chains,
            warmup=self.auto_nuts_warmup,
            draws=self.auto_nuts_draws,
            max_draws=max(_LADDER_NUTS.max_draws, self.auto_nuts_draws),
        )
        return LadderSettings(budget=self.budget, rungs=self.rungs, draws=self.draws, nuts=nuts)

    @property
    def reference_kind(self) -> str:
        """``none``, ``nuts`` or ``file``."""
        ref = str(self.reference).strip().lower()
        return ref if ref in ("none", "nuts") else "file"

    def fit_settings(self, data_plate: str | None = None) -> FitSettings:
        """The fit's :class:`~ppl_models.vi.settings.FitSettings` (``data_plate``: the plate the
        fit uses, which may come from the script)."""
        lowrank = self.guide == "auto-lowrank" and self.rank
        return FitSettings(
            steps=self.steps,
            particles=self.particles,
            lr=self.lr,
            lr_final=self.lr_final,
            average_window=self.average_window,
            seed=self.seed,
            device=self.device,
            dtype=self.dtype,
            init=self.init,
            eval_every=self.eval_every,
            objective=self.objective,
            guide_options={"rank": self.rank} if lowrank else {},
            data_plate=data_plate,
            batch_size=self.batch_size,
        )

    def nuts_settings(self) -> NutsSettings:
        """The NUTS reference's chains."""
        return NutsSettings(warmup=self.nuts_warmup, draws=self.nuts_draws, chains=self.nuts_chains)
