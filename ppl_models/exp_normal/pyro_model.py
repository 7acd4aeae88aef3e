r"""The Pyro model :math:`z \sim \mathrm{Exponential}(\lambda)`, :math:`x_i \mid z \sim
\mathcal{N}(z, 1)`, and its guide families.

Each guide is a ``PyroModule`` with float64 :class:`~pyro.nn.PyroParam` s
(:class:`FamilyGuide` and its subclasses), built with a data-informed start by
:func:`make_guide`; :func:`guide_distribution` rebuilds a q(z) from saved parameters.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam

from .data import _Stats, _stats
from .distributions import TruncatedNormal
from .options import _check_family, validate_rate


def model(x: torch.Tensor, rate) -> torch.Tensor:
    r"""Pyro model :math:`z \sim \mathrm{Exponential}(\lambda)`, :math:`x_i \sim \mathcal{N}(z, 1)`.

    Works with vectorised ELBO particles: ``z`` then carries the particle plate's batch shape,
    e.g. ``(P, 1)``, whose trailing singleton broadcasts against the ``obs`` plate at dim -1. (An
    extra ``unsqueeze`` would push the observations one dim too far left.)

    Parameters
    ----------
    x : torch.Tensor
        Observations, shape ``(N,)``; the rate is put on their device and dtype.
    rate : float or torch.Tensor
        Prior rate :math:`\lambda`.

    Returns
    -------
    torch.Tensor
        The latent ``z``.
    """
    x = torch.as_tensor(x)
    rate = torch.as_tensor(rate, dtype=x.dtype, device=x.device)
    z = pyro.sample("z", dist.Exponential(rate))
    with pyro.plate("obs", x.shape[-1], dim=-1, device=x.device):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    return z


_PARAM_CONSTRAINTS = {
    "exponential": {"theta": constraints.positive},
    "gamma": {"concentration": constraints.positive, "rate": constraints.positive},
    "lognormal": {"loc": constraints.real, "scale": constraints.positive},
    "truncated-normal": {"loc": constraints.real, "scale": constraints.positive},
}


def _build(
    family: str, p: dict, validate_args: bool | None = None
) -> torch.distributions.Distribution:
    if family == "exponential":
        return dist.Exponential(p["theta"], validate_args=validate_args)
    if family == "gamma":
        return dist.Gamma(p["concentration"], p["rate"], validate_args=validate_args)
    if family == "lognormal":
        return dist.LogNormal(p["loc"], p["scale"], validate_args=validate_args)
    return TruncatedNormal(p["loc"], p["scale"], low=0.0, validate_args=validate_args)


def guide_distribution(
    family: str, params: dict, validate_args: bool | None = None
) -> torch.distributions.Distribution:
    """Rebuild a guide's q(z) in float64 from saved parameters (as from ``Guide.params()``).

    ``validate_args=False`` lets ``log_prob`` be evaluated at the support's edge (z = 0), as
    quadrature and grids do.

    Raises
    ------
    ValueError
        For an unknown family, or missing/extra parameter names.
    """
    _check_family(family)
    expected = set(_PARAM_CONSTRAINTS[family])
    if set(params) != expected:
        raise ValueError(
            f"{family} guide takes parameters {sorted(expected)}, got {sorted(params)}"
        )
    return _build(
        family,
        {k: torch.as_tensor(float(v), dtype=torch.float64) for k, v in params.items()},
        validate_args,
    )


class FamilyGuide(PyroModule):
    """Base class: q(z) from one family, with module-local float64 :class:`PyroParam` s.

    Subclasses set ``family`` (one of :data:`GUIDE_FAMILIES`) and pass each parameter's initial
    value by name; constraints come from the family.
    """

    family: str

    def __init__(self, **init: float) -> None:
        super().__init__()
        for name, constraint in _PARAM_CONSTRAINTS[self.family].items():
            value = float(init[name])
            if not constraint.check(torch.tensor(value)) or not math.isfinite(value):
                raise ValueError(f"{self.family} guide: {name} must be {constraint}, got {value}")
            setattr(self, name, PyroParam(torch.tensor(value, dtype=torch.float64), constraint))

    def distribution(self) -> torch.distributions.Distribution:
        """The current q(z), differentiable in the parameters."""
        return _build(self.family, {name: getattr(self, name) for name in self._names})

    def params(self) -> dict[str, float]:
        """Current constrained parameters as floats, e.g. ``{"theta": 1.23}``."""
        return {name: float(getattr(self, name).detach()) for name in self._names}

    @property
    def _names(self) -> tuple[str, ...]:
        return tuple(_PARAM_CONSTRAINTS[self.family])

    def forward(self, x: torch.Tensor, rate) -> torch.Tensor:
        """Guide with the model's signature: samples site ``"z"`` from :meth:`distribution`."""
        return pyro.sample("z", self.distribution())


class ExponentialGuide(FamilyGuide):
    r"""The notebook's guide :math:`q_\theta(z) = \mathrm{Exponential}(\theta)`."""

    family = "exponential"

    def __init__(self, theta_init: float = 1.0) -> None:
        super().__init__(theta=theta_init)


class GammaGuide(FamilyGuide):
    r""":math:`q(z) = \mathrm{Gamma}(\alpha, \beta)` (concentration, rate)."""

    family = "gamma"

    def __init__(self, concentration_init: float = 1.0, rate_init: float = 1.0) -> None:
        super().__init__(concentration=concentration_init, rate=rate_init)


class LogNormalGuide(FamilyGuide):
    r""":math:`\log z \sim \mathcal{N}(\mu, \sigma^2)`."""

    family = "lognormal"

    def __init__(self, loc_init: float = 0.0, scale_init: float = 1.0) -> None:
        super().__init__(loc=loc_init, scale=scale_init)


class TruncatedNormalGuide(FamilyGuide):
    r"""Normal(loc, scale) truncated to :math:`z > 0`: the exact posterior family."""

    family = "truncated-normal"

    def __init__(self, loc_init: float = 0.0, scale_init: float = 1.0) -> None:
        super().__init__(loc=loc_init, scale=scale_init)


def _initial_params(family: str, s: _Stats) -> dict[str, float]:
    """Starting parameters of :func:`make_guide` (described there)."""
    if family == "exponential":
        return {"theta": 1.0}
    var = 1.0 / s.n
    if family == "truncated-normal":
        return {"loc": s.mean, "scale": math.sqrt(var)}
    centre = max(s.mean, math.sqrt(var))
    if family == "gamma":
        return {"concentration": centre**2 / var, "rate": centre / var}
    sigma2 = math.log1p(var / centre**2)
    return {"loc": math.log(centre) - 0.5 * sigma2, "scale": math.sqrt(sigma2)}


_GUIDE_CLASSES = {
    "exponential": ExponentialGuide,
    "gamma": GammaGuide,
    "lognormal": LogNormalGuide,
    "truncated-normal": TruncatedNormalGuide,
}


def make_guide(family: str, x, rate) -> FamilyGuide:
    r"""Build a guide of ``family`` with a rough, data-informed start.

    The start uses the likelihood alone, :math:`\mathcal{N}(\bar x, 1/N)` in *z*, ignoring the
    prior's pull (so there is still something to fit): gamma and lognormal are moment-matched to
    mean :math:`\max(\bar x, 1/\sqrt N)` and variance :math:`1/N`, the truncated normal starts at
    loc :math:`\bar x`, scale :math:`1/\sqrt N`, and the exponential at :math:`\theta = 1` as in
    the notebook.

    Raises
    ------
    ValueError
        For an unknown family (listing the valid ones) or invalid data/rate.
    """
    _check_family(family)
    validate_rate(rate)
    init = _initial_params(family, _stats(x))
    return _GUIDE_CLASSES[family](**{f"{k}_init": v for k, v in init.items()})
