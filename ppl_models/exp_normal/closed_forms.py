r"""Closed forms of the exponential-normal model, and quadrature for any guide (float64 NumPy).

With :math:`S = \sum_i x_i` and :math:`m = (S - \lambda) / N`, completing the square gives the exact
posterior :math:`p(z \mid x) = \mathcal{N}(m, 1/N)` truncated to :math:`z > 0`, and the evidence

.. math::

    \log p(x) = \log\lambda - \tfrac{N}{2}\log 2\pi - \tfrac12 \sum_i x_i^2
        + \frac{(S - \lambda)^2}{2N} + \tfrac12 \log\frac{2\pi}{N}
        + \log\Phi\!\left(\frac{S - \lambda}{\sqrt N}\right).

The notebook's guide :math:`q_\theta(z) = \mathrm{Exponential}(\theta)` has a closed-form ELBO and
optimum (:func:`elbo`, :func:`optimal_theta`); any other guide is measured by quadrature
(:func:`kl_of`, :func:`elbo_of`) and optimised over its family (:func:`optimal_guide_params`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pyro.distributions import constraints
from scipy import integrate, optimize, special

from ..grid import GridPosterior
from .data import _Stats, _stats
from .distributions import _HALF_LOG_2PI, TruncatedNormal
from .options import _check_family, validate_rate
from .pyro_model import _PARAM_CONSTRAINTS, _initial_params, guide_distribution


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
