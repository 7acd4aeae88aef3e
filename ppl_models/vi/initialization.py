r"""Where a guide starts: a feasible point, an L-BFGS minimum of the potential, a Laplace start.

Every start lives in the guide's unconstrained space: the flat vector :math:`z` of all latent
sites, mapped to the constrained sites by the bijections :math:`T` of their supports.

**The Laplace start** (``init="laplace"``, as Pathfinder starts): L-BFGS (strong-Wolfe line
search, float64) minimises the potential

.. math:: U(z) = -\log p(x, T(z)) - \log\lvert\det J_T(z)\rvert

from a feasible point (each site's prior mean or median where it can be computed, else the
point :math:`z = 0`; flat priors such as :class:`pyro.distributions.ImproperUniform` cannot be
sampled, which is why Pyro's own initialisers fail on them). At a proper minimum :math:`\hat z`
(a positive-definite Hessian :math:`H = \nabla^2 U(\hat z)` and a small Newton decrement) the
Laplace approximation :math:`\mathcal N(\hat z, H^{-1})` is the start, and the guide is fitted
in coordinates whitened by it.

**Without a proper MAP** the Laplace approximation means nothing: in a hierarchical model the
joint density grows without bound as a group scale goes to zero with the group effects at their
mean, L-BFGS runs down that funnel, and a Gaussian built there has scales near zero that would
freeze SVI in the funnel's neck. The start is then Pyro's own (:func:`prior_start`): the
feasible point, no whitening, and a guide scale of 0.1 (Pyro's ``init_scale``), from which SVI
can move as freely as in a plain Pyro fit. The note says why: the Hessian was not positive
definite, L-BFGS stopped short of a minimum, or a bounded site ran towards its boundary.

:func:`lbfgs_minimum` is also the minimiser of the search for modes q never visits
(:mod:`ppl_models.vi.modes`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger
from torch.distributions import biject_to

LBFGS_ITERATIONS = 200  # enough for a 20-parameter MAP in float64; a funnel stops here
DENSE_CURVATURE = 200  # up to this many coordinates the Hessian is formed (d backward passes)
DIAGONAL_PROBES = 32  # Hessian-vector products estimating its diagonal above that
PYRO_INIT_SCALE = 0.1  # the guide scale Pyro's autoguides start from (their init_scale)
BOUNDARY_RUN = 5.0  # a bounded coordinate that L-BFGS moved this far outwards ran to its boundary


# ----------------------------------------------------------------------------- initial values


def feasible_init(dtype: torch.dtype, device: torch.device | str | None = None) -> Callable:
    """An ``init_loc_fn`` that never samples an improper prior.

    Each latent site starts at its prior mean when that is finite and in the support, else at
    the median of 15 prior draws, else (flat priors, which cannot be sampled) at the image of
    :math:`0` in the unconstrained space. Values are cast to ``dtype`` on ``device``.
    """

    def init(site: dict) -> torch.Tensor:
        fn = site["fn"]
        support = fn.support
        shape = fn.shape()
        for guess in (_prior_mean, _prior_median):
            try:
                value = guess(fn)
            except Exception:  # noqa: BLE001 - any failure means: try the next guess
                continue
            if value is None:
                continue
            value = value.detach().to(dtype=dtype, device=device)
            if (
                value.shape == shape
                and bool(torch.isfinite(value).all())
                and bool(support.check(value).all())
            ):
                return value
        transform = biject_to(support)
        unconstrained_shape = transform.inverse_shape(shape)
        return transform(torch.zeros(unconstrained_shape, dtype=dtype, device=device))

    return init


def prior_or_feasible(dtype: torch.dtype, device=None) -> Callable:
    """An ``init_loc_fn`` that draws each latent site from its prior, or where the prior cannot
    be sampled (a flat prior) takes :func:`feasible_init`'s point; values in ``dtype``."""
    feasible = feasible_init(dtype, device)

    def init(site: dict) -> torch.Tensor:
        try:
            value = site["fn"].sample()
        except NotImplementedError:
            return feasible(site)
        return value.detach().to(device=device, dtype=dtype if value.is_floating_point() else None)

    return init


def prior_trace(model: Callable, data: dict, dtype: torch.dtype, device=None):
    """One trace of ``model(**data)`` at a draw of its prior (:func:`prior_or_feasible`), every
    site's value as the model holds it, nothing recorded outside; a site drawn from a plain
    ``torch.distributions`` object is refused in words (Pyro fails on it with an
    ``AttributeError``)."""
    at_prior = InitMessenger(prior_or_feasible(dtype, device))(_PyroDistributionsOnly()(model))
    with poutine.block(), torch.no_grad():
        return poutine.trace(at_prior).get_trace(**data)


class _PyroDistributionsOnly(poutine.messenger.Messenger):
    def _process_message(self, msg):
        fn = msg["fn"] if msg["type"] == "sample" else None
        if isinstance(fn, torch.distributions.Distribution) and not isinstance(
            fn, dist.torch_distribution.TorchDistributionMixin
        ):
            name = type(fn).__name__
            raise ValueError(
                f"site {msg['name']!r} draws from torch.distributions.{name}: Pyro's sample "
                f"statements need Pyro's distributions (pyro.distributions.{name}), which carry "
                "the batch and event shapes Pyro's plates and guides use"
            )


def _prior_mean(fn) -> torch.Tensor | None:
    if isinstance(fn, dist.ImproperUniform):
        return None
    return fn.mean


def _prior_median(fn) -> torch.Tensor | None:
    if isinstance(fn, dist.ImproperUniform) or fn.event_shape:
        return None
    return fn.sample((15,)).median(0)[0]


# ----------------------------------------------------------------------------- Laplace


@dataclass
class LaplaceStart:
    r"""Where a guide starts: the point :math:`\hat z` and the curvature there.

    Attributes
    ----------
    loc
        :math:`\hat z`, the flat unconstrained start (float64).
    precision
        The (regularised) Hessian :math:`H` of the potential at ``loc`` (None where only its
        diagonal was found, or there is none: unit scale).
    scale_tril
        Cholesky factor of :math:`H^{-1}` (None likewise).
    diag_scale
        :math:`H_{ii}^{-1/2}`, the mean-field Gaussian's sds.
    method
        ``"laplace"`` (a MAP with positive-definite curvature), ``"prior"`` (Pyro's start:
        the feasible point, no whitening, scale :data:`PYRO_INIT_SCALE`), or ``"feasible"``
        (no optimisation, unit scale).
    init_scale
        The guide's scale at the start in whitened coordinates (1: the Laplace sds).
    origin
        The feasible point the search for the start began from (None: ``loc`` itself).
    notes
        Sentences for the report.
    """

    loc: torch.Tensor
    precision: torch.Tensor | None
    scale_tril: torch.Tensor | None
    diag_scale: torch.Tensor
    method: str
    iterations: int = 0
    converged: bool = False
    notes: list[str] = field(default_factory=list)
    init_scale: float = 1.0
    origin: torch.Tensor | None = None


def feasible_start(loc: torch.Tensor) -> LaplaceStart:
    """The start at the feasible point ``loc`` (flat, unconstrained) with unit scale."""
    return LaplaceStart(
        loc,
        None,
        None,
        torch.ones(loc.numel(), dtype=torch.float64, device=loc.device),
        "feasible",
        notes=[
            "Initialised at a feasible point (prior means or medians, zero in the "
            "unconstrained space for flat priors) with unit scale; no MAP search."
        ],
    )


def _hessian(potential: Callable, z: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        h = torch.autograd.functional.hessian(potential, z.detach().clone())
    return 0.5 * (h + h.T)


def _gaussian(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    r"""(precision, Cholesky of covariance, mean-field sds, whether ``h`` was already PD).

    Eigenvalues at or below :math:`10^{-10}\,\lambda_{\max}` (or non-finite curvature) are
    replaced by one, i.e. unit scale along those directions of the unconstrained space.
    """
    d = h.shape[0]
    if not bool(torch.isfinite(h).all()):
        eye = torch.eye(d, dtype=h.dtype, device=h.device)
        return eye, eye.clone(), torch.ones(d, dtype=h.dtype, device=h.device), False
    lam, vec = torch.linalg.eigh(h)
    floor = 1e-10 * max(float(lam.abs().max()), 1e-300)
    ok = lam > floor
    pd = bool(ok.all())
    lam = torch.where(ok, lam, torch.ones_like(lam).clamp(min=floor))
    precision = (vec * lam) @ vec.T
    covariance = (vec / lam) @ vec.T
    covariance = 0.5 * (covariance + covariance.T)
    try:
        tril = torch.linalg.cholesky(covariance)
    except RuntimeError:
        tril = vec * lam.rsqrt()  # a square root; not triangular, so make it so by QR
        tril = torch.linalg.qr(tril.T, mode="complete")[1].T
        tril = tril * torch.sign(torch.diagonal(tril))
    diag = torch.diagonal(precision).clamp(min=1e-300).rsqrt()
    return precision, tril, diag, pd


@dataclass
class Minimum:
    r"""Where L-BFGS stopped on a potential :math:`U`, and the curvature there.

    Attributes
    ----------
    path
        Every finite point L-BFGS evaluated, in order; the last is where it stopped.
    iterations
        L-BFGS iterations taken.
    failure
        Why it stopped abnormally (an exception's message), else None.
    converged
        A minimum: positive-definite Hessian and a Newton decrement
        :math:`\lVert L^\top \nabla U \rVert < 10^{-2}` (the distance to the minimum in
        posterior sds of the Laplace metric, :math:`L L^\top = H^{-1}`).
    decrement
        That Newton decrement (infinite without a positive-definite Hessian).
    precision, scale_tril, diag_scale
        :func:`_gaussian` of the Hessian at the last point (None after a failure; only
        ``diag_scale`` with a diagonal curvature).
    stopped
        Whether the caller's ``stop`` ended the search.
    """

    path: list[torch.Tensor]
    iterations: int
    failure: str | None
    converged: bool
    decrement: float
    precision: torch.Tensor | None = None
    scale_tril: torch.Tensor | None = None
    diag_scale: torch.Tensor | None = None
    stopped: bool = False

    @property
    def point(self) -> torch.Tensor:
        return self.path[-1]


def lbfgs_minimum(
    potential: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    iterations: int = LBFGS_ITERATIONS,
    *,
    curvature: str = "auto",
    stop: Callable[[torch.Tensor], bool] | None = None,
) -> Minimum:
    r"""Minimise :math:`U` by L-BFGS (strong-Wolfe line search, float64) from ``start``.

    A minimum is accepted when the largest gradient component falls below
    :math:`10^{-6}\max(1, |U|)` or :math:`U` stops changing (relative :math:`10^{-12}`), and
    the Hessian there is positive definite with a Newton decrement below :math:`10^{-2}`.

    ``curvature`` says how the Hessian is found: ``"dense"`` (``d`` Hessian-vector products),
    ``"diagonal"`` (its diagonal, estimated from :data:`DIAGONAL_PROBES` of them: enough for a
    mean-field start, and cheap at any ``d``), ``"none"``, or ``"auto"`` (dense up to
    :data:`DENSE_CURVATURE` coordinates). ``stop(z)``, asked at every point that lowers
    :math:`U` below all before it (each accepted iterate, and the line search's downhill
    trials), may end the search there (for example once it is inside a basin already known);
    the result then says ``stopped``.
    """
    z = start.detach().clone().to(torch.float64).requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [z],
        lr=1.0,
        max_iter=iterations,
        max_eval=iterations * 5 // 4,
        tolerance_grad=1e-9,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    path = [z.detach().clone()]  # every finite point L-BFGS evaluated, in order
    lowest = math.inf

    def closure():
        nonlocal lowest
        optimizer.zero_grad()
        value = potential(z)
        if not bool(torch.isfinite(value)):
            raise FloatingPointError("the potential became non-finite")
        value.backward()
        path.append(z.detach().clone())
        level = float(value.detach())
        if stop is not None and level < lowest:
            lowest = level
            if stop(path[-1]):
                raise _Stopped
        return value

    failure, stopped = None, False
    try:
        with torch.enable_grad():
            optimizer.step(closure)
    except _Stopped:
        stopped = True
    except Exception as err:  # noqa: BLE001 - the model failed at an extreme point
        failure = f"{type(err).__name__}: {err}".splitlines()[0]
    k = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
    if stopped:
        return Minimum(path, k, None, False, math.inf, stopped=True)  # ends where it stopped
    if failure is None and bool(torch.isfinite(z).all()):
        path.append(z.detach().clone())  # the accepted point (trial points were recorded too)
    if failure is not None:
        return Minimum(path, k, failure, False, math.inf)
    return with_curvature(Minimum(path, k, None, False, math.inf), potential, curvature)


class _Stopped(Exception):
    """Raised inside L-BFGS's closure when the caller's stop rule ends the search."""


def with_curvature(found: Minimum, potential: Callable, curvature: str = "auto") -> Minimum:
    """``found`` with the curvature at its point (:func:`lbfgs_minimum`'s ``curvature``), and
    whether it is a proper minimum."""
    point = found.point
    if curvature == "auto":
        curvature = "dense" if point.numel() <= DENSE_CURVATURE else "diagonal"
    if curvature == "none" or found.failure is not None:
        return found
    try:
        with torch.enable_grad():
            zz = point.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(potential(zz), zz)
        if curvature == "dense":
            precision, tril, diag, pd = _gaussian(_hessian(potential, point))
            # Newton decrement: the distance to the minimum in posterior sds (Laplace metric)
            decrement = float((grad @ tril).norm()) if pd else math.inf
        else:
            h = _hessian_diagonal(potential, point)
            pd = bool(torch.isfinite(h).all() and (h > 0).all())
            diag = torch.where(h > 0, h, torch.ones_like(h)).rsqrt()
            precision, tril = None, None
            decrement = float((grad * diag).norm()) if pd else math.inf
    except Exception as err:  # noqa: BLE001
        failure = f"{type(err).__name__}: {err}".splitlines()[0]
        return dataclasses.replace(found, failure=failure)
    return dataclasses.replace(
        found,
        converged=pd and decrement < 1e-2,
        decrement=decrement,
        precision=precision,
        scale_tril=tril,
        diag_scale=diag,
    )


def _hessian_diagonal(potential: Callable, z: torch.Tensor) -> torch.Tensor:
    r"""The diagonal of the Hessian of :math:`U` at ``z``, estimated as
    :math:`\frac1K\sum_k v_k \odot H v_k` over :data:`DIAGONAL_PROBES` Rademacher vectors
    :math:`v_k` (Bekas et al. 2007; unbiased, each entry's error shrinking as its off-diagonal
    row does), from Hessian-vector products: no :math:`d \times d` matrix is formed."""
    generator = torch.Generator(device=z.device).manual_seed(0)
    estimate = torch.zeros_like(z)
    with torch.enable_grad():
        zz = z.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(potential(zz), zz, create_graph=True)
        for k in range(DIAGONAL_PROBES):
            v = torch.randint(0, 2, z.shape, generator=generator, device=z.device).to(z) * 2 - 1
            (hv,) = torch.autograd.grad(
                grad, zz, grad_outputs=v, retain_graph=k + 1 < DIAGONAL_PROBES
            )
            estimate += v * hv
    return estimate.detach() / DIAGONAL_PROBES


def prior_start(loc: torch.Tensor, reason: str) -> LaplaceStart:
    """Pyro's start at the feasible point ``loc``: no whitening and guide scale 0.1, with a note
    saying why there was no MAP initialisation (``reason``)."""
    start = feasible_start(loc)
    start.method, start.init_scale = "prior", PYRO_INIT_SCALE
    start.notes = [
        f"No MAP initialisation: {reason}. The guide started where Pyro's autoguides start: at "
        "the prior's mean or median (zero in the unconstrained space for flat priors), with "
        f"scale {PYRO_INIT_SCALE:g} and no whitening, so that SVI can move freely."
    ]
    return start


def laplace_start(
    potential: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    *,
    iterations: int = LBFGS_ITERATIONS,
    coordinates: list[tuple[str, str]] | None = None,
    curvature: str = "auto",
) -> LaplaceStart:
    r"""Find the MAP by L-BFGS from ``start`` (:func:`lbfgs_minimum`) and build the Laplace
    approximation there; without a proper MAP, Pyro's start (:func:`prior_start`).

    Parameters
    ----------
    potential
        :math:`U(z)` for a flat float64 vector ``z`` (a scalar tensor, differentiable).
    start
        A feasible starting point.
    iterations
        L-BFGS iterations allowed.
    coordinates
        Per coordinate of ``z``: its name and the kind of its support's bound (``"lower"``,
        ``"upper"``, ``"both"`` or ``""`` for none), so that the note can name a site that ran
        towards its boundary.
    curvature
        ``"dense"``, ``"diagonal"`` or ``"auto"`` (:func:`lbfgs_minimum`): what of the Hessian
        the guide needs.

    Returns
    -------
    LaplaceStart
    """
    coordinates = coordinates or []
    found = lbfgs_minimum(
        potential,
        start,
        iterations,
        curvature="none",
        stop=(lambda z: bool(ran_to_boundary(start, z, coordinates))) if coordinates else None,
    )
    k = found.iterations
    ran = ran_to_boundary(start, found.point, coordinates)
    if not ran:  # a funnel needs no Hessian to be told apart
        found = with_curvature(found, potential, curvature)
    if found.converged:
        notes = [
            f"Initialised at the MAP (L-BFGS in the unconstrained space, float64, {k} "
            "iterations) with the Laplace approximation there"
            + ("" if found.scale_tril is not None else " (the Hessian's diagonal)")
            + "; the guide was fitted in coordinates whitened by it."
        ]
        return LaplaceStart(
            found.point,
            found.precision,
            found.scale_tril,
            found.diag_scale,
            "laplace",
            k,
            True,
            notes,
            origin=start.detach().clone(),
        )
    reasons = []
    if ran:
        reasons.append(
            "the log density keeps rising as "
            + ", ".join(f"{name} runs towards {bound}" for name, bound in ran[:4])
            + (f" and {len(ran) - 4} more" if len(ran) > 4 else "")
            + " (L-BFGS moved it more than e^5 times towards that bound: a funnel, as when a "
            "group scale goes to zero)"
        )
    if found.failure:
        reasons.append(f"L-BFGS stopped after {k} iterations because {found.failure}")
    elif not ran and found.decrement == math.inf:
        reasons.append(
            f"the Hessian where L-BFGS stopped ({k} iterations) is not positive definite"
        )
    elif not ran:
        reasons.append(
            f"L-BFGS found no minimum in {k} iterations (it stopped {found.decrement:.2g} "
            "posterior sds from one)"
        )
    return prior_start(start.detach().clone(), "; ".join(reasons))


def bound_kind(support) -> str:
    """``"lower"``, ``"upper"``, ``"both"`` or ``""``: which finite bounds a support has (a
    positive scale has a lower one, an interval both; reals and simplexes none)."""
    while hasattr(support, "base_constraint"):  # independent(...): the same bound per element
        support = support.base_constraint
    lower, upper = hasattr(support, "lower_bound"), hasattr(support, "upper_bound")
    return "both" if lower and upper else "lower" if lower else "upper" if upper else ""


def ran_to_boundary(
    start: torch.Tensor, stop: torch.Tensor, coordinates: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The coordinates of bounded sites that moved more than :data:`BOUNDARY_RUN` (in the
    unconstrained space, where a bound lies at infinity) outwards, with the bound they ran to.
    The distances are compared as tensors, and only the coordinates that moved that far are
    looked at one by one: the MAP search asks this at every downhill point."""
    n = min(len(coordinates), len(stop))
    a, b = start[:n].detach(), stop[:n].detach()
    outward = torch.isfinite(b) & (b.abs() > a.abs() + BOUNDARY_RUN)
    ran = []
    for j in torch.nonzero(outward).flatten().tolist():
        name, bound = coordinates[j]
        down = bool(b[j] < a[j])
        if bound == "lower" and down:
            ran.append((name, "its lower bound"))
        elif bound == "upper" and down:
            ran.append((name, "its upper bound"))
        elif bound == "both":
            ran.append((name, "its lower bound" if down else "its upper bound"))
    return ran
