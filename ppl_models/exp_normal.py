r"""The exponential-normal model: Pyro model, guide families and closed forms.

The model is

.. math::

    z \sim \mathrm{Exponential}(\lambda), \qquad x_i \mid z \sim \mathcal{N}(z, 1),
    \quad i = 1, \dots, N.

With :math:`S = \sum_i x_i` and :math:`m = (S - \lambda) / N`, completing the square gives the exact
posterior :math:`p(z \mid x) = \mathcal{N}(m, 1/N)` truncated to :math:`z > 0`, and the evidence

.. math::

    \log p(x) = \log\lambda - \tfrac{N}{2}\log 2\pi - \tfrac12 \sum_i x_i^2
        + \frac{(S - \lambda)^2}{2N} + \tfrac12 \log\frac{2\pi}{N}
        + \log\Phi\!\left(\frac{S - \lambda}{\sqrt N}\right).

The notebook's guide is :math:`q_\theta(z) = \mathrm{Exponential}(\theta)`, whose ELBO and optimum
are closed-form too (:func:`elbo`, :func:`optimal_theta`). Other guide families (gamma, lognormal,
truncated normal) are fitted and compared through quadrature (:func:`kl_of`). Closed forms work in
float64 NumPy; the model and guides are Pyro code that runs on any device.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.nn import PyroModule, PyroParam
from scipy import integrate, optimize, special
from torch.distributions.utils import broadcast_all

from ppl_models.grid import GridPosterior

GUIDE_FAMILIES = ("exponential", "gamma", "lognormal", "truncated-normal")
SUPPORTED_SUFFIXES = (".csv", ".npy", ".txt")

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_HALF = math.sqrt(0.5)
_SQRT_HALF_PI = math.sqrt(0.5 * math.pi)

# ---------------------------------------------------------------------------------------------
# Inputs: validation, files, simulation
# ---------------------------------------------------------------------------------------------


def validate_observations(x) -> np.ndarray:
    """Check observations and return them as a float64 1-D array.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Observations, shape ``(N,)`` or ``(N, 1)``.

    Raises
    ------
    ValueError
        If ``x`` is empty, has another shape, or holds NaN/inf (the message names the first bad
        0-based row and its value).
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"observations must be numbers: {err}") from None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"observations must be 1-D (or shape (N, 1)), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("observations are empty: need at least one value")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"observation at row {bad[0]} is not finite: {arr[bad[0]]}")
    return arr


def validate_rate(rate) -> float:
    """Return the prior rate as a float; it must be finite and positive.

    Raises
    ------
    ValueError
        ``"rate must be a positive finite number, got -1.0"`` and the like.
    """
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"rate must be a positive finite number, got {rate!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"rate must be a positive finite number, got {value}")
    return value


def load_observations(path: str | Path) -> np.ndarray:
    """Read observations from ``.csv``/``.txt`` (one number per line) or ``.npy``.

    Text files: blank lines are skipped; every other line must be one finite number (no header).
    ``.npy`` files hold a 1-D array or shape ``(N, 1)``.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(N,)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For an unsupported suffix, a line that is not a finite number (naming its 1-based line
        number and text), a bad array shape, or no observations.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"unsupported observations file {str(path)!r}: suffix {suffix!r} is not one of "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"observations file not found: {path}")
    if suffix == ".npy":
        return validate_observations(np.load(path, allow_pickle=False))
    values = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"{path}: line {number} is not a finite number: {text!r}")
        values.append(value)
    if not values:
        raise ValueError(f"{path}: no observations found")
    return validate_observations(values)


def simulate(rate: float, n_obs: int, seed: int) -> tuple[float, np.ndarray]:
    r"""Draw :math:`z \sim \mathrm{Exp}(\lambda)` and :math:`x_{1:N} \sim \mathcal{N}(z, 1)`.

    Uses torch's global RNG in float32 exactly as the notebook does, so ``simulate(1.0, 5, 0)``
    reproduces its data. Note that this reseeds torch's global generator.

    Returns
    -------
    z : float
    x : numpy.ndarray
        float64, shape ``(n_obs,)``.
    """
    rate = validate_rate(rate)
    if int(n_obs) != n_obs or n_obs < 1:
        raise ValueError(f"n_obs must be a positive integer, got {n_obs}")
    torch.manual_seed(seed)
    z = torch.distributions.Exponential(torch.tensor(rate, dtype=torch.float32)).sample()
    x = torch.distributions.Normal(z, 1.0).sample((int(n_obs),))
    return float(z), x.double().numpy()


class _Stats(NamedTuple):
    """Sufficient statistics: count, sum, mean and centred sum of squares ``sum (x - mean)^2``."""

    n: int
    total: float
    mean: float
    ss: float


def _stats(x) -> _Stats:
    arr = validate_observations(x)
    mean = float(arr.mean())
    return _Stats(arr.size, float(arr.sum()), mean, float(np.sum((arr - mean) ** 2)))


# ---------------------------------------------------------------------------------------------
# Truncated normal distribution
# ---------------------------------------------------------------------------------------------

# Above this standardised truncation point the moments use Laplace's continued fraction.
_CF_MIN_ALPHA = 3.0
_CF_TERMS = 60
# Below this delta * (1 + |alpha|) the survival ratio is integrated by Simpson's rule.
_SMALL_STEP = 1e-2
_NEWTON_STEPS = 3


def _log_phi(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * x * x - _HALF_LOG_2PI


def _inverse_mills(x: torch.Tensor) -> torch.Tensor:
    r"""Inverse Mills ratio :math:`\lambda(x) = \varphi(x) / \Phi(-x)`, finite for all *x*.

    For :math:`x > 0`, :math:`\Phi(-x)/\varphi(x) = \sqrt{\pi/2}\,\mathrm{erfcx}(x/\sqrt2)`
    avoids dividing two underflowing numbers.
    """
    x_pos = x.clamp(min=0.0)
    return torch.where(
        x > 0,
        1.0 / (_SQRT_HALF_PI * torch.special.erfcx(x_pos * _SQRT_HALF)),
        torch.exp(_log_phi(x) - torch.special.log_ndtr(-x)),
    )


def _log_survival_ratio(alpha: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    r""":math:`\rho(\alpha, \delta) = \log\Phi(-\alpha-\delta) - \log\Phi(-\alpha)
    = -\int_\alpha^{\alpha+\delta} \lambda(t)\,dt` for :math:`\delta \ge 0`.

    A truncated normal's survival function is :math:`1 - F = e^{\rho}`, so this carries the CDF
    in every regime:

    - short steps, :math:`\delta(1 + |\alpha|) < 10^{-2}`: Simpson's rule on the integral,
      accurate to :math:`O(\delta^4)` relative, where a difference of logs would cancel;
    - :math:`\alpha > 0` (survival side): :math:`-\delta(\alpha + \delta/2)
      + \log\frac{\mathrm{erfcx}((\alpha+\delta)/\sqrt2)}{\mathrm{erfcx}(\alpha/\sqrt2)}`, which
      never forms :math:`\log\Phi(-\alpha) \approx -\alpha^2/2`;
    - :math:`\alpha \le 0` (CDF side): the plain difference of ``log_ndtr``, both terms in
      :math:`[\log\frac12, 0]` or below it only where :math:`\Phi` itself is accurate.
    """
    step = delta.clamp(max=_SMALL_STEP)
    short = (
        -step
        / 6.0
        * (
            _inverse_mills(alpha)
            + 4.0 * _inverse_mills(alpha + 0.5 * step)
            + _inverse_mills(alpha + step)
        )
    )
    a_pos = alpha.clamp(min=0.0)
    upper = -delta * (a_pos + 0.5 * delta) + torch.log(
        torch.special.erfcx((a_pos + delta) * _SQRT_HALF) / torch.special.erfcx(a_pos * _SQRT_HALF)
    )
    lower = torch.special.log_ndtr(-(alpha + delta)) - torch.special.log_ndtr(-alpha)
    return torch.where(
        delta * (1.0 + alpha.abs()) < _SMALL_STEP, short, torch.where(alpha > 0, upper, lower)
    )


def _ndtri_log(log_p: torch.Tensor) -> torch.Tensor:
    r"""Standard normal quantile :math:`\Phi^{-1}(e^{\ell})` for :math:`\ell \le \log\frac12`.

    ``ndtri`` is used while :math:`e^{\ell}` is a normal float64; below that the tail asymptotic
    :math:`\log\Phi(x) \approx -x^2/2 - \log(-x\sqrt{2\pi})` gives the start
    :math:`x_0 = -\sqrt{s - \log(2\pi s)}`, :math:`s = -2\ell`. Newton steps on
    :math:`\log\Phi(x) = \ell` (concave, so they converge from either side) then polish both.
    """
    s = -2.0 * log_p
    x = torch.where(
        log_p > -700.0,
        torch.special.ndtri(torch.exp(log_p)),
        -torch.sqrt(s - torch.log(2.0 * math.pi * s)),
    )
    for _ in range(_NEWTON_STEPS):
        log_cdf = torch.special.log_ndtr(x)
        x = x - (log_cdf - log_p) * torch.exp(log_cdf - _log_phi(x))
    return torch.where(torch.isneginf(log_p), -math.inf, x)


def _standard_moments(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean excess and variance of :math:`\mathcal{N}(0, 1)` truncated to :math:`[\alpha, \infty)`.

    The mean is :math:`\lambda(\alpha)` and the variance :math:`1 + \alpha\lambda - \lambda^2`;
    the mean is returned as the excess :math:`\lambda - \alpha` over the truncation point. Both
    differences cancel catastrophically for large :math:`\alpha` (excess :math:`\approx 1/\alpha`,
    variance :math:`\approx 1/\alpha^2`), so there they come from Laplace's continued fraction
    :math:`\lambda = \alpha + t_1`, :math:`t_k = k / (\alpha + t_{k+1})`:

    .. math:: \lambda - \alpha = t_1, \qquad
        \sigma^2 = \frac{\alpha + 2 t_2 - t_3}{(\alpha + t_3)(\alpha + t_2)^2}.
    """
    lam = _inverse_mills(alpha)
    a = alpha.clamp(min=_CF_MIN_ALPHA)
    t3 = torch.zeros_like(a)
    for k in range(_CF_TERMS, 2, -1):
        t3 = k / (a + t3)
    t2 = 2.0 / (a + t3)
    deep = alpha > _CF_MIN_ALPHA
    excess = torch.where(deep, 1.0 / (a + t2), lam - alpha)
    var = torch.where(
        deep,
        (a + 2.0 * t2 - t3) / ((a + t3) * (a + t2) ** 2),
        1.0 + alpha * lam - lam * lam,
    )
    return excess, var


class TruncatedNormal(TorchDistribution):
    r"""Normal(loc, scale) truncated below at a finite ``low``, reparameterised.

    With :math:`\alpha = (\mathrm{low} - \mu)/\sigma`, :math:`\xi = (z - \mu)/\sigma` and
    :math:`\delta = \xi - \alpha \ge 0`,

    .. math::

        p(z) = \frac{\varphi(\xi)}{\sigma\,\Phi(-\alpha)}, \qquad
        1 - F(z) = \frac{\Phi(-\xi)}{\Phi(-\alpha)} = e^{\rho(\alpha, \delta)},

    with :math:`\rho` from :func:`_log_survival_ratio`. Nothing is computed from :math:`\Phi`
    itself: :math:`\log\Phi` (``log_ndtr``) on the CDF side (:math:`\alpha \le 0`) and Mills
    ratios (``erfcx``) on the survival side (:math:`\alpha > 0`), so truncation deep in either tail
    (e.g. ``loc = -40 * scale``, where :math:`\Phi(-\alpha)` underflows) keeps full precision.
    ``rsample`` inverts the CDF at uniforms and attaches the implicit-reparameterisation gradient,
    so gradients reach ``loc`` and ``scale``.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = True

    def __init__(self, loc, scale, low=0.0, validate_args=None):
        self.loc, self.scale, self.low = broadcast_all(loc, scale, low)
        if not torch.isfinite(self.low).all():
            raise ValueError(f"low must be finite, got {self.low}")
        super().__init__(self.loc.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.greater_than_eq(self.low)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TruncatedNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.low = self.low.expand(batch_shape)
        super(TruncatedNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def _alpha(self) -> torch.Tensor:
        return (self.low - self.loc) / self.scale

    @property
    def mean(self) -> torch.Tensor:
        return self.low + self.scale * _standard_moments(self._alpha)[0]

    @property
    def variance(self) -> torch.Tensor:
        return self.scale**2 * _standard_moments(self._alpha)[1]

    def log_prob(self, value):
        r""":math:`\log\varphi(\xi) - \log\sigma - \log\Phi(-\alpha)`, or -inf below ``low``.

        For :math:`\alpha > 0` this is evaluated as
        :math:`-\delta(\alpha + \delta/2) + \log\lambda(\alpha) - \log\sigma`, which avoids
        subtracting two terms of size :math:`\alpha^2/2`.
        """
        if self._validate_args:
            self._validate_sample(value)
        alpha = self._alpha
        delta = (value - self.low) / self.scale
        log_p = torch.where(
            alpha > 0,
            -delta * (alpha + 0.5 * delta) + torch.log(_inverse_mills(alpha)),
            _log_phi(alpha + delta) - torch.special.log_ndtr(-alpha),
        ) - torch.log(self.scale)
        return torch.where(value >= self.low, log_p, -math.inf)

    def cdf(self, value):
        r""":math:`F(z) = -\mathrm{expm1}(\rho(\alpha, \delta))`, 0 below ``low``."""
        value = torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device)
        delta = ((value - self.low) / self.scale).clamp(min=0.0)
        return -torch.expm1(_log_survival_ratio(self._alpha, delta))

    def icdf(self, value):
        r"""Quantile :math:`F^{-1}(u)`, differentiable in ``loc``, ``scale`` and ``u``.

        A start comes from the standard normal quantile on whichever side has the smaller
        probability: :math:`\Phi(\xi) = \Phi(\alpha) + u\,\Phi(-\alpha)` or
        :math:`\Phi(-\xi) = (1 - u)\,\Phi(-\alpha)`. Newton steps on
        :math:`\rho(\alpha, \delta) = \log(1 - u)` (:math:`\partial\rho/\partial\delta =
        -\lambda(\alpha + \delta)`) then polish the offset :math:`\delta` itself, which keeps its
        relative accuracy when :math:`\delta \ll |\alpha|`. The gradient comes from the implicit
        function theorem,

        .. math::

            \frac{\partial\xi}{\partial\alpha}
                = \frac{\varphi(\alpha)\,\Phi(-\xi)}{\varphi(\xi)\,\Phi(-\alpha)}
                = (1 - u)\, e^{\delta(\alpha + \delta/2)}, \qquad
            \frac{\partial\xi}{\partial u} = \frac{\Phi(-\alpha)}{\varphi(\xi)},

        instead of differentiating through the root finder.
        """
        value = torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device)
        alpha = self._alpha
        log_ndtr = torch.special.log_ndtr
        with torch.no_grad():
            a, u = alpha.detach(), value.detach()
            log_mass = log_ndtr(-a)
            log_below = torch.logaddexp(log_ndtr(a), torch.log(u) + log_mass)
            log_above = torch.log1p(-u) + log_mass
            xi = torch.where(log_below < log_above, _ndtri_log(log_below), -_ndtri_log(log_above))
            delta = (xi - a).clamp(min=0.0)
            target = torch.log1p(-u)
            for _ in range(_NEWTON_STEPS):
                lam = _inverse_mills(a + delta)
                step = (_log_survival_ratio(a, delta) - target) / lam
                # Where lambda underflows (far left of a deep lower truncation) the start stands.
                usable = torch.isfinite(delta) & (lam > 0)
                delta = torch.where(usable, (delta + step).clamp(min=0.0), delta)
            finite = torch.isfinite(delta)
            grad_alpha = torch.where(finite, torch.exp(target + delta * (a + 0.5 * delta)), 0.0)
            grad_u = torch.where(finite, torch.exp(log_mass - _log_phi(a + delta)), 0.0)
        # Value delta; gradient d(delta) = (d xi/d alpha - 1) d(alpha) + (d xi/du) du.
        delta = delta + (grad_alpha - 1.0) * (alpha - a) + grad_u * (value - u)
        # Offsetting from low keeps z >= low exactly under rounding.
        return self.low + self.scale * delta

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.icdf(u)


# ---------------------------------------------------------------------------------------------
# Pyro model and guides
# ---------------------------------------------------------------------------------------------


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


def _check_family(family: str) -> None:
    if family not in GUIDE_FAMILIES:
        raise ValueError(f"unknown guide family {family!r}; expected one of {GUIDE_FAMILIES}")


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


# ---------------------------------------------------------------------------------------------
# Closed forms (float64 NumPy)
# ---------------------------------------------------------------------------------------------


def _positive_array(name: str, value) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    bad = ~(np.isfinite(arr) & (arr > 0))
    if np.any(bad):
        raise ValueError(f"{name} must be positive and finite, got {arr[bad].ravel()[0]}")
    return arr


def _scalar_or_array(arr: np.ndarray):
    return float(arr) if arr.ndim == 0 else arr


def _common_term(s: _Stats, rate: float) -> float:
    r"""ELBO and evidence share :math:`\log\lambda - \frac N2\log 2\pi - \frac12\sum x_i^2`."""
    return math.log(rate) - s.n * _HALF_LOG_2PI - 0.5 * (s.ss + s.n * s.mean**2)


def _evidence_excess(s: _Stats, rate: float) -> float:
    r""":math:`\log p(x)` minus :func:`_common_term`."""
    b = s.total - rate
    return (
        b * b / (2.0 * s.n)
        + 0.5 * math.log(2.0 * math.pi / s.n)
        + float(special.log_ndtr(b / math.sqrt(s.n)))
    )


def _elbo_excess(theta: np.ndarray, s: _Stats, rate: float) -> np.ndarray:
    r""":math:`\mathcal{L}(\theta)` minus :func:`_common_term`:
    :math:`(S - \lambda)/\theta - N/\theta^2 + 1 - \log\theta`."""
    return (s.total - rate) / theta - s.n / theta**2 + 1.0 - np.log(theta)


def optimal_theta(x, rate) -> float:
    r"""The ELBO-maximising exponential guide rate.

    Setting :math:`d\mathcal{L}/d\theta = 0` gives :math:`\theta^2 + B\theta - 2N = 0` with
    :math:`B = S - \lambda`, whose positive root is

    .. math::

        \theta^* = \frac{-B + \sqrt{B^2 + 8N}}{2} = \frac{4N}{B + \sqrt{B^2 + 8N}};

    the second form avoids cancellation when :math:`B > 0`.
    """
    s = _stats(x)
    b = s.total - validate_rate(rate)
    root = math.hypot(b, math.sqrt(8.0 * s.n))
    return 4.0 * s.n / (b + root) if b > 0 else 0.5 * (root - b)


def elbo(theta, x, rate):
    r"""ELBO of :math:`q_\theta = \mathrm{Exponential}(\theta)`, vectorised over ``theta``.

    .. math::

        \mathcal{L}(\theta) = \log\lambda - \frac{\lambda}{\theta} - \frac N2\log 2\pi
            - \frac12\sum_i x_i^2 + \frac{S}{\theta} - \frac{N}{\theta^2} + 1 - \log\theta.

    Returns a float for scalar ``theta``, else an array of its shape.
    """
    theta = _positive_array("theta", theta)
    rate = validate_rate(rate)
    s = _stats(x)
    return _scalar_or_array(_common_term(s, rate) + _elbo_excess(theta, s, rate))


def log_evidence(x, rate) -> float:
    r"""Exact :math:`\log p(x)` (formula in the module docstring), via ``log_ndtr``."""
    rate = validate_rate(rate)
    s = _stats(x)
    return _common_term(s, rate) + _evidence_excess(s, rate)


def kl_to_posterior(theta, x, rate):
    r""":math:`\mathrm{KL}(q_\theta \,\|\, p(z \mid x)) = \log p(x) - \mathcal{L}(\theta)`.

    The shared :func:`_common_term` is dropped from both sides before subtracting. Vectorised over
    ``theta`` like :func:`elbo`.
    """
    theta = _positive_array("theta", theta)
    rate = validate_rate(rate)
    s = _stats(x)
    return _scalar_or_array(_evidence_excess(s, rate) - _elbo_excess(theta, s, rate))


def exact_posterior(x, rate) -> TruncatedNormal:
    r"""The exact posterior :math:`\mathcal{N}((S - \lambda)/N, 1/N)` truncated to :math:`z > 0`."""
    rate = validate_rate(rate)
    s = _stats(x)
    loc = torch.tensor((s.total - rate) / s.n, dtype=torch.float64)
    scale = torch.tensor(1.0 / math.sqrt(s.n), dtype=torch.float64)
    return TruncatedNormal(loc, scale, low=0.0)


def _log_joint(z: np.ndarray, s: _Stats, rate: float) -> np.ndarray:
    # sum_i (x_i - z)^2 = ss + N (z - mean)^2 avoids the cancellation in sum x^2 - 2zS + Nz^2.
    with np.errstate(invalid="ignore"):
        value = (
            math.log(rate)
            - rate * z
            - s.n * _HALF_LOG_2PI
            - 0.5 * s.ss
            - 0.5 * s.n * (z - s.mean) ** 2
        )
    return np.where(z >= 0, value, -np.inf)


def log_joint(z, x, rate):
    r"""Log joint density, vectorised over ``z``:

    .. math::

        \log p(x, z) = \log\lambda - \lambda z - \frac N2 \log 2\pi
            - \frac12 \sum_i (x_i - \bar x)^2 - \frac N2 (z - \bar x)^2

    for :math:`z \ge 0`, and :math:`-\infty` for :math:`z < 0`. Returns a float for scalar ``z``.
    """
    rate = validate_rate(rate)
    z = np.asarray(z, dtype=np.float64)
    return _scalar_or_array(_log_joint(z, _stats(x), rate))


def _log_posterior(z: np.ndarray, s: _Stats, rate: float) -> np.ndarray:
    r"""Exact :math:`\log p(z \mid x) = \log p(x, z) - \log p(x)`, written without either term:

    :math:`-\frac N2 (z - m)^2 - \frac12\log\frac{2\pi}{N} - \log\Phi(m\sqrt N)`, :math:`z \ge 0`.
    """
    m = s.mean - rate / s.n
    value = (
        -0.5 * s.n * (z - m) ** 2
        - 0.5 * math.log(2.0 * math.pi / s.n)
        - float(special.log_ndtr(m * math.sqrt(s.n)))
    )
    return np.where(z >= 0, value, -np.inf)


def grid_posterior(x, rate, n_points: int = 4001) -> GridPosterior:
    """A :class:`~ppl_models.grid.GridPosterior` of :math:`\\log p(x, z)` on :math:`z \\ge 0`.

    Its ``log_normalizer`` is the log evidence. The mode search starts from the data
    (:math:`\\max(\\bar x, 0)`, step :math:`1/\\sqrt N`), not from the closed forms.
    """
    rate = validate_rate(rate)
    s = _stats(x)
    return GridPosterior(
        lambda z: _log_joint(z, s, rate),
        low=0.0,
        guess=max(s.mean, 0.0),
        scale=1.0 / math.sqrt(s.n),
        n_points=n_points,
    )


# ---------------------------------------------------------------------------------------------
# Any guide: ELBO and KL by quadrature, KL-optimal parameters
# ---------------------------------------------------------------------------------------------

# Quantile levels of q that split [0, inf) into pieces, so quadrature sees q's narrow bulk.
_SPLIT_LEVELS = (1e-15, 1e-9, 1e-4, 0.1, 0.5, 0.9, 1 - 1e-4, 1 - 1e-9, 1 - 1e-15)


def _split_points(q: torch.distributions.Distribution) -> np.ndarray:
    levels = torch.tensor(_SPLIT_LEVELS, dtype=torch.float64)
    if isinstance(q, torch.distributions.Gamma):
        # torch has no Gamma icdf; the regularised incomplete gamma inverse is exact.
        conc, rate = float(q.concentration), float(q.rate)
        points = special.gammaincinv(conc, levels.numpy()) / rate
    else:
        try:
            points = q.icdf(levels.to(q.mean.device)).detach().cpu().double().numpy()
        except NotImplementedError:
            mean, sd = float(q.mean), float(q.stddev)
            points = mean + sd * np.array([-8.0, -4.0, -1.0, 0.0, 1.0, 4.0, 8.0, 16.0])
    points = points[np.isfinite(points) & (points > 0)]
    return np.unique(np.concatenate([[0.0], points, [np.inf]]))


def kl_of(q: torch.distributions.Distribution, x, rate) -> float:
    r""":math:`\mathrm{KL}(q \,\|\, p(z \mid x))` for any q on :math:`z \ge 0`, by quadrature.

    .. math::

        \mathrm{KL} = \int_0^\infty q(z)\,[\log q(z) - \log p(z \mid x)]\,dz,

    with the exact log posterior (so the large :math:`\log p(x)` never cancels against an ELBO).
    :math:`[0, \infty)` is split at quantiles of q from :math:`10^{-15}` to :math:`1 - 10^{-15}`
    and each piece is integrated by tanh-sinh quadrature (``scipy.integrate.tanhsinh``, which
    also handles the infinite last piece). A sum that rounds below zero (q equal to the
    posterior, up to about 1e-17) is returned as 0: a KL divergence is never negative.

    Parameters
    ----------
    q : torch.distributions.Distribution
        Scalar (batch shape ``()``) distribution supported on :math:`z \ge 0`.

    Raises
    ------
    ValueError
        If q is not scalar, or the quadrature does not converge.
    """
    if q.batch_shape != torch.Size() or q.event_shape != torch.Size():
        raise ValueError(f"q must be a scalar distribution, got batch shape {tuple(q.batch_shape)}")
    rate = validate_rate(rate)
    s = _stats(x)
    device = q.mean.device

    def integrand(z: np.ndarray) -> np.ndarray:
        inside = z > 0
        safe = np.where(inside, z, 1.0)
        with torch.no_grad():
            log_q = q.log_prob(torch.as_tensor(safe, dtype=torch.float64, device=device))
        log_q = log_q.double().cpu().numpy()
        density = np.exp(log_q)
        with np.errstate(invalid="ignore"):
            value = density * (log_q - _log_posterior(safe, s, rate))
        # Where q underflows to 0 the term is 0, even if log p(z|x) is -inf there.
        return np.where(inside & (density > 0), value, 0.0)

    edges = _split_points(q)
    result = integrate.tanhsinh(integrand, edges[:-1], edges[1:], atol=1e-14, rtol=1e-12)
    if not np.all(result.success):
        raise ValueError(f"KL quadrature did not converge (status {result.status})")
    # A KL is never negative; where q is the posterior, the pieces' rounding errors can sum to
    # -1e-17 or so, which is 0 to the quadrature's accuracy.
    return max(float(np.sum(result.integral)), 0.0)


def elbo_of(q: torch.distributions.Distribution, x, rate) -> float:
    r"""ELBO of any q: :math:`\mathbb{E}_q[\log p(x, z) - \log q(z)] = \log p(x) - \mathrm{KL}`."""
    return log_evidence(x, rate) - kl_of(q, x, rate)


def optimal_guide_params(family: str, x, rate) -> dict[str, float]:
    """KL-minimising parameters of a guide family.

    ``exponential`` uses the closed form :func:`optimal_theta`. The others minimise :func:`kl_of`
    with Nelder-Mead over unconstrained coordinates (log of positive parameters, locations in
    units of the starting scale), starting from :func:`make_guide`'s data-informed guess. For
    ``truncated-normal`` the optimum is the exact posterior, with KL 0.

    Returns
    -------
    dict
        Parameter name -> value, as :meth:`FamilyGuide.params` and :func:`guide_distribution` use.
    """
    _check_family(family)
    rate = validate_rate(rate)
    s = _stats(x)
    if family == "exponential":
        return {"theta": optimal_theta(x, rate)}
    start = _initial_params(family, s)
    names = list(start)
    positive = np.array([_PARAM_CONSTRAINTS[family][n] is constraints.positive for n in names])
    # Unconstrained, roughly unit-scaled coordinates: log of positive parameters, and a location
    # in units of the starting scale, so one simplex step size (0.1) suits every family and N.
    unit = np.where(positive, 1.0, start.get("scale", 1.0))

    def decode(u: np.ndarray) -> dict[str, float]:
        return dict(zip(names, np.where(positive, np.exp(u), u * unit).tolist(), strict=True))

    def objective(u: np.ndarray) -> float:
        try:
            return kl_of(guide_distribution(family, decode(u)), x, rate)
        except ValueError:
            return math.inf

    values = np.array(list(start.values()))
    u0 = np.where(positive, np.log(np.where(positive, values, 1.0)), values / unit)
    result = optimize.minimize(
        objective,
        u0,
        method="Nelder-Mead",
        options={
            "initial_simplex": np.vstack([u0, u0 + 0.1 * np.eye(u0.size)]),
            "xatol": 1e-9,
            "fatol": 1e-15,
            "maxiter": 4000,
        },
    )
    return decode(result.x)
