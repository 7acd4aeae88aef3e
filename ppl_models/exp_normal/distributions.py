r"""The normal distribution truncated below, with full precision deep in either tail.

It is the exact posterior of the exponential-normal model
(:func:`~ppl_models.exp_normal.closed_forms.exact_posterior`) and one of its guide families.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.utils import broadcast_all

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_HALF = math.sqrt(0.5)
_SQRT_HALF_PI = math.sqrt(0.5 * math.pi)

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
