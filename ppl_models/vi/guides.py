r"""Autoguides by name, initialised at a Laplace approximation and fitted in whitened coordinates.

Every guide here is a distribution over the flat vector :math:`z` of all latent sites in
the unconstrained space (Pyro's :class:`~pyro.infer.autoguide.AutoContinuous`), mapped to the
constrained sites by the bijections of their supports.

**Initialisation** (:mod:`ppl_models.vi.initialization`): ``init="laplace"`` starts each guide
at a Laplace approximation :math:`\mathcal N(\hat z, H^{-1})` of the posterior at the MAP (or, where
there is none, at the best point of the L-BFGS path); ``init="feasible"`` at a feasible point with
unit scale.

**Whitening.** Adam's step is about ``lr`` in absolute units whatever the posterior's scale, so
a posterior with sds of 1e-3 is fitted no better than to a few hundredths of its means. Each
Gaussian guide is therefore parametrised over :math:`u` with :math:`z = \hat z + W u`,

- ``auto-normal`` (mean-field) and ``auto-lowrank``: :math:`W = \mathrm{diag}(d)`,
  :math:`d_i = H_{ii}^{-1/2}`, the mean-field optimum's sds for a Gaussian posterior;
- ``auto-mvn`` (full rank) and ``auto-iaf``: :math:`W = L`, the Cholesky factor of
  :math:`H^{-1}`,

and its own parameters over :math:`u` start at loc 0 and scale 1. The family is unchanged
(a diagonal :math:`W` keeps a diagonal or low-rank-plus-diagonal covariance diagonal or
low-rank-plus-diagonal), and one learning rate suits every model: a step of ``lr`` moves the
guide by ``lr`` posterior standard deviations.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.transforms import AffineAutoregressive, affine_autoregressive
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from pyro.infer.autoguide import AutoContinuous
from pyro.nn import PyroParam
from torch import nn
from torch.distributions import biject_to

from .enumeration import Discrete, continuous_part, log_joint_at
from .initialization import (
    LBFGS_ITERATIONS,
    LaplaceStart,
    bound_kind,
    feasible_init,
    feasible_start,
    laplace_start,
    prior_start,
)
from .settings import CUSTOM, GUIDE_CHOICES, INITS
from .unconstrained import evaluate, guide_layout

FULL_RANK_MAX = 2000  # the largest dimension of a full-rank guide (d x d matrices, d HVPs)

# ----------------------------------------------------------------------------- guides


NO_LATENTS = (
    "the model has no latent variables (every pyro.sample site has obs=): there is nothing to "
    "fit; give the unknown quantities pyro.sample sites without obs="
)


class WhitenedGuide(AutoContinuous):
    r"""Base class: an :class:`~pyro.infer.autoguide.AutoContinuous` guide whose parameters live
    in coordinates :math:`u` with :math:`z = \hat z + W u` (see the module docstring).

    Parameters
    ----------
    model
        The Pyro model.
    init
        ``"laplace"`` (MAP by L-BFGS, then the Laplace approximation) or ``"feasible"``
        (a feasible point, unit scale: :math:`\hat z` from :func:`feasible_init`, :math:`W = I`).
    dtype, device
        Of the guide's parameters (the Laplace step itself runs in float64).
    iterations
        L-BFGS iterations.
    discrete
        The model's discrete sites that the fit sums out
        (:class:`~ppl_models.vi.enumeration.Discrete`): the guide covers the other sites, and
        its potential is the marginal over them.
    dynamic
        The sites whose support depends on other latents
        (:func:`~ppl_models.vi.unconstrained.dynamic_sites`).
    start
        A start found elsewhere (a :class:`~ppl_models.vi.initialization.LaplaceStart` of this
        guide's flat vector), used instead of searching one: a previous fit's mean and
        covariance (:func:`start_from_fit`; the escalation ladder starts each rung from the best
        fit before it), or the Laplace approximation of the whole model for the global part of a
        guide for local latents (:mod:`ppl_models.vi.local`).
    """

    name = "whitened"
    full_whitening = False

    def __init__(
        self,
        model: Callable,
        *,
        init: str = "laplace",
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        iterations: int = LBFGS_ITERATIONS,
        discrete: Discrete | None = None,
        dynamic: list[str] | None = None,
        start: LaplaceStart | None = None,
    ):
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self._raw_model = (model,)  # a tuple: a PyroModule model must not become a submodule
        self._init = init
        self._dtype = dtype
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._iterations = iterations
        self.start: LaplaceStart | None = None
        self._given_start = start
        self._discrete = discrete
        self._dynamic = list(dynamic or [])
        guided = continuous_part(model, discrete) if discrete else model
        super().__init__(guided, init_loc_fn=feasible_init(dtype, self._device))

    @property
    def notes(self) -> list[str]:
        """What the initialisation did, in sentences (empty before :meth:`setup`)."""
        return list(self.start.notes) if self.start is not None else []

    def setup(self, *args, **kwargs) -> None:
        """Build the guide for the model's arguments: trace the model, find the start, create the
        parameters. Called on first use; call it yourself to time or inspect it."""
        if self.prototype_trace is None:
            with poutine.block():
                self._setup_prototype(*args, **kwargs)

    def potential(self, z: torch.Tensor, **data) -> torch.Tensor:
        r"""The potential :math:`U(z) = -\log p(x, T(z)) - \log|\det J_T(z)|` of a flat
        unconstrained vector ``z`` (no batch dimension), with each site's bijection as the
        model states its support at ``z`` (:func:`~ppl_models.vi.unconstrained.evaluate`),
        and the discrete sites summed out."""
        model = self._raw_model[0]
        if not self._discrete:
            point = evaluate(model, guide_layout(self), z, data)
            return -(point.log_joint + point.log_jacobian)
        values, log_jacobian = {}, z.new_zeros(())
        for site, part in self._unpack_latent(z):
            transform = biject_to(site["fn"].support)
            values[site["name"]] = value = transform(part)
            log_jacobian = log_jacobian + transform.log_abs_det_jacobian(part, value).sum()
        return -(log_joint_at(model, values, data, self._discrete) + log_jacobian)

    def forward(self, *args, **kwargs):
        """One draw of the guide. Where a site's support depends on other latents
        (``dynamic``), its value is mapped with the bounds the model states at this draw: the
        model is run once to find them (one draw at a time)."""
        if not self._dynamic:
            return super().forward(*args, **kwargs)
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        latent = self.sample_latent(*args, **kwargs)
        if latent.dim() > 1:
            raise ValueError("a guide of a model with dynamic supports draws one point at a time")
        with poutine.block():
            point = evaluate(self._raw_model[0], guide_layout(self), latent, kwargs)
        plates = self._create_plates(*args, **kwargs)
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            with contextlib.ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                pyro.sample(
                    name,
                    dist.Delta(
                        point.values[name],
                        log_density=-point.log_jacobians[name],
                        event_dim=site["fn"].event_dim,
                    ),
                )
        return point.values

    def _setup_prototype(self, *args, **kwargs):
        try:
            super()._setup_prototype(*args, **kwargs)
        except RuntimeError:
            if getattr(self, "latent_dim", None) == 0:  # Pyro's refusal names this class
                raise ValueError(NO_LATENTS) from None
            raise
        if self.full_whitening and self.latent_dim > FULL_RANK_MAX:
            gigabytes = 5 * self.latent_dim**2 * 8 / 2**30
            raise ValueError(
                f"{self.name} at dimension {self.latent_dim:,} needs about {gigabytes:.1f} GB for "
                f"its {self.latent_dim:,} x {self.latent_dim:,} matrices and as many "
                "Hessian-vector products for its start (the most it takes is "
                f"{FULL_RANK_MAX:,}); use --guide auto-lowrank (--set rank=R) or auto-normal"
            )
        if self._given_start is not None:
            if self._given_start.loc.numel() != self.latent_dim:
                raise ValueError(
                    f"the given start has {self._given_start.loc.numel()} coordinates, the guide "
                    f"{self.latent_dim}"
                )
            self.start = self._given_start
        elif self._init == "feasible":
            self.start = feasible_start(self._init_loc().to(torch.float64))
        elif self._init == "prior":
            self.start = prior_start(self._init_loc().to(torch.float64), "init is 'prior'")
        else:
            start = self._init_loc().to(torch.float64)
            kwargs64 = {k: _to_float64(v) for k, v in kwargs.items()}
            self.start = laplace_start(
                lambda z: self.potential(z, **kwargs64),
                start,
                iterations=self._iterations,
                coordinates=self.coordinates(),
                curvature="dense" if self.full_whitening else "auto",
            )
        cast = {"dtype": self._dtype, "device": self._device}
        self.register_buffer("white_loc", self.start.loc.to(**cast))
        if self.full_whitening:
            tril = self.start.scale_tril
            if tril is None:  # a start with only a scale per coordinate
                tril = torch.diag(self.start.diag_scale)
            self.register_buffer("white_tril", tril.to(**cast))
        else:
            self.register_buffer("white_scale", self.start.diag_scale.to(**cast))
        self._setup_params()

    def _setup_params(self) -> None:
        raise NotImplementedError

    def coordinates(self) -> list[tuple[str, str]]:
        """Per coordinate of the flat unconstrained vector: a name (``site`` or ``site[i]``)
        and the kind of its support's bound (:func:`~ppl_models.vi.initialization.bound_kind`)."""
        out = []
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            if name not in self._unconstrained_shapes:
                continue
            n = math.prod(self._unconstrained_shapes[name])
            kind = bound_kind(site["fn"].support)
            out += [(name if n == 1 else f"{name}[{i + 1}]", kind) for i in range(n)]
        return out

    def unconstrained_mean(self) -> torch.Tensor:
        """The guide's mean of the flat unconstrained vector (for a flow, the mean of 256 of its
        draws, made without disturbing the caller's random state)."""
        with torch.no_grad():
            try:
                return self._loc_scale()[0]
            except NotImplementedError:
                with torch.random.fork_rng(
                    devices=[self._device] if self._device.type == "cuda" else []
                ):
                    torch.manual_seed(0)
                    return self.get_posterior().sample((256,)).mean(0)

    def _initial_scale(self) -> torch.Tensor:
        """The guide's scale parameters at the start (whitened units)."""
        return self._zeros() + self.start.init_scale

    def _zeros(self) -> torch.Tensor:
        return torch.zeros(self.latent_dim, dtype=self._dtype, device=self._device)


def _to_float64(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(torch.float64)
    return value


class AutoWhitenedNormal(WhitenedGuide):
    r"""``auto-normal``: mean-field Gaussian :math:`\mathcal N(\hat z + d \odot m,\
    \mathrm{diag}(d \odot s)^2)` over the unconstrained latents; :math:`m` starts at 0 and
    :math:`s` at 1 (the mean-field Laplace approximation)."""

    name = "auto-normal"
    scale_constraint = constraints.softplus_positive

    def _setup_params(self):
        self.loc = nn.Parameter(self._zeros())
        self.scale = PyroParam(self._initial_scale(), self.scale_constraint)

    def _loc_scale(self, *args, **kwargs):
        return self.white_loc + self.white_scale * self.loc, self.white_scale * self.scale

    def get_posterior(self, *args, **kwargs):
        """The diagonal Normal over the flat unconstrained latent vector."""
        loc, scale = self._loc_scale()
        return dist.Normal(loc, scale).to_event(1)


class AutoWhitenedMultivariateNormal(WhitenedGuide):
    r"""``auto-mvn``: full-rank Gaussian :math:`\mathcal N(\hat z + L m,\ (L S)(L S)^\top)` with
    :math:`L` the Laplace covariance's Cholesky factor and :math:`S` lower triangular
    (diag(scale) times a unit lower-triangular matrix), starting at :math:`m = 0, S = I`."""

    name = "auto-mvn"
    full_whitening = True
    scale_constraint = constraints.softplus_positive
    scale_tril_constraint = constraints.unit_lower_cholesky

    def _setup_params(self):
        self.loc = nn.Parameter(self._zeros())
        self.scale = PyroParam(self._initial_scale(), self.scale_constraint)
        eye = torch.eye(self.latent_dim, dtype=self._dtype, device=self._device)
        self.scale_tril = PyroParam(eye, self.scale_tril_constraint)

    def _tril(self) -> torch.Tensor:
        return self.white_tril @ (self.scale[..., None] * self.scale_tril)

    def _loc_scale(self, *args, **kwargs):
        tril = self._tril()
        return self.white_loc + self.white_tril @ self.loc, tril.pow(2).sum(-1).sqrt()

    def get_posterior(self, *args, **kwargs):
        """The multivariate Normal over the flat unconstrained latent vector."""
        return dist.MultivariateNormal(
            self.white_loc + self.white_tril @ self.loc, scale_tril=self._tril()
        )


class AutoWhitenedLowRankNormal(WhitenedGuide):
    r"""``auto-lowrank``: :math:`\mathcal N(\hat z + d \odot m,\ D_s (F F^\top + I) D_s)` with
    :math:`D_s = \mathrm{diag}(d \odot s)` and :math:`F` of rank ``rank`` (default
    :math:`\mathrm{round}(\sqrt{\dim z})`). :math:`F` starts at the leading eigenvectors of the
    Laplace correlation in :math:`u` coordinates, so the start is close to the Laplace fit."""

    name = "auto-lowrank"
    scale_constraint = constraints.softplus_positive

    def __init__(self, model: Callable, *, rank: int | None = None, **kwargs):
        if rank is not None and (not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        self.rank = rank
        super().__init__(model, **kwargs)

    def _setup_params(self):
        d = self.latent_dim
        rank = self.rank or max(1, round(math.sqrt(d)))
        self.rank = rank
        factor = torch.zeros(d, rank, dtype=torch.float64)
        if self.start.precision is not None:  # the Laplace correlations' leading directions
            cov = torch.cholesky_inverse(torch.linalg.cholesky(self.start.precision))
            white = self.start.diag_scale
            corr = cov / white[:, None] / white[None, :]
            lam, vec = torch.linalg.eigh(0.5 * (corr + corr.T))
            lam, vec = lam.flip(0)[:rank], vec.flip(1)[:, :rank]
            factor = vec * (lam - 1.0).clamp(min=0.0).sqrt()
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(d, rank, dtype=torch.float64, generator=generator)
        factor = factor + 1e-2 * noise.to(factor.device)  # off the saddle at F = 0
        self.loc = nn.Parameter(self._zeros())
        self.scale = PyroParam(self._initial_scale(), self.scale_constraint)
        self.cov_factor = nn.Parameter(factor.to(dtype=self._dtype, device=self._device))

    def get_posterior(self, *args, **kwargs):
        """The low-rank-plus-diagonal Normal over the flat unconstrained latent vector."""
        scale = self.white_scale * self.scale
        return dist.LowRankMultivariateNormal(
            self.white_loc + self.white_scale * self.loc,
            self.cov_factor * scale[..., None],
            scale * scale,
        )

    def _loc_scale(self, *args, **kwargs):
        scale = self.white_scale * self.scale * (self.cov_factor.pow(2).sum(-1) + 1).sqrt()
        return self.white_loc + self.white_scale * self.loc, scale


class AutoWhitenedIAF(WhitenedGuide):
    r"""``auto-iaf``: a standard Normal pushed through an affine autoregressive flow
    (:func:`pyro.distributions.transforms.affine_autoregressive`, Pyro's ``AutoIAFNormal``) and
    then through :math:`z = \hat z + L v`. The flow's last layer starts at zero, so the flow
    starts as the identity and the guide as the Laplace approximation."""

    name = "auto-iaf"
    full_whitening = True

    def __init__(
        self,
        model: Callable,
        *,
        hidden_dims: list[int] | None = None,
        num_transforms: int = 1,
        **kwargs,
    ):
        self._hidden_dims = hidden_dims
        self._num_transforms = num_transforms
        super().__init__(model, **kwargs)

    def _setup_params(self):
        d = self.latent_dim
        hidden = self._hidden_dims or [max(3 * d + 1, 8)]
        flows = []
        for _ in range(self._num_transforms):
            if d == 1:  # a one-dimensional autoregressive flow is an affine map
                flows.append(_LearnedAffine(d, self._dtype, self._device))
                continue
            flow = _AffineAutoregressive(affine_autoregressive(d, hidden_dims=hidden).arn)
            last = flow.arn.layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            flows.append(flow.to(dtype=self._dtype, device=self._device))
        self.flows = nn.ModuleList(flows)

    def get_posterior(self, *args, **kwargs):
        """The flow over the flat unconstrained latent vector."""
        base = dist.Normal(self._zeros(), self._zeros() + 1.0).to_event(1)
        # cached, so that log q of a draw finds the flow's cached inverse instead of inverting it
        whiten = dist.transforms.LowerCholeskyAffine(self.white_loc, self.white_tril, cache_size=1)
        return dist.TransformedDistribution(base, [*self.flows, whiten])


class _AffineAutoregressive(AffineAutoregressive):
    """Pyro's affine autoregressive transform whose inverse works in any dtype (Pyro's starts
    its inversion from zeros of the default dtype, which fails for float64 flows)."""

    def _inverse(self, y):
        x = [torch.zeros(y.shape[:-1], dtype=y.dtype, device=y.device)] * y.size(-1)
        log_scale = None
        for idx in self.arn.permutation:
            mean, log_scale = self.arn(torch.stack(x, dim=-1))
            inverse_scale = torch.exp(
                -clamp_preserve_gradients(
                    log_scale[..., idx], min=self.log_scale_min_clip, max=self.log_scale_max_clip
                )
            )
            x[idx] = (y[..., idx] - mean[..., idx]) * inverse_scale
        self._cached_log_scale = clamp_preserve_gradients(
            log_scale, min=self.log_scale_min_clip, max=self.log_scale_max_clip
        )
        return torch.stack(x, dim=-1)


class _LearnedAffine(dist.TransformModule):
    """A learnable elementwise affine map (the flow of a one-dimensional latent)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, d, dtype, device):
        super().__init__(cache_size=1)
        self.shift = nn.Parameter(torch.zeros(d, dtype=dtype, device=device))
        self.log_scale = nn.Parameter(torch.zeros(d, dtype=dtype, device=device))

    def _call(self, x):
        return self.shift + self.log_scale.exp() * x

    def _inverse(self, y):
        return (y - self.shift) * torch.exp(-self.log_scale)

    def log_abs_det_jacobian(self, x, y):
        return self.log_scale.expand(x.shape).sum(-1)


START_DRAWS = 4096  # draws that estimate a flow's mean and covariance for the next start


def start_from_fit(guide: WhitenedGuide, draws: int = START_DRAWS) -> LaplaceStart:
    r"""A start at a fitted guide: its mean :math:`m` and covariance :math:`\Sigma` of the flat
    unconstrained vector (exact for a Gaussian guide, from ``draws`` draws for a flow, made
    without disturbing the caller's random state), as :class:`LaplaceStart` with
    :math:`H = \Sigma^{-1}`: a guide given it starts as the fitted Gaussian (a flow starts as
    that Gaussian and learns what it lacks). ``method`` is ``"previous-fit"``."""
    with torch.no_grad():
        posterior = guide.get_posterior()
        if isinstance(posterior, dist.Independent) and isinstance(posterior.base_dist, dist.Normal):
            loc = posterior.base_dist.loc
            cov = torch.diag(posterior.base_dist.scale.pow(2))
        elif isinstance(posterior, (dist.MultivariateNormal, dist.LowRankMultivariateNormal)):
            loc, cov = posterior.loc, posterior.covariance_matrix
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                x = posterior.sample((draws,)).to(torch.float64)
            loc = x.mean(0)
            cov = torch.atleast_2d(torch.cov(x.T))
    loc, cov = loc.to(torch.float64).cpu(), cov.to(torch.float64).cpu()
    cov = 0.5 * (cov + cov.T)
    jitter = 1e-12 * cov.diagonal().abs().max().clamp(min=1e-300)
    tril = torch.linalg.cholesky(cov + jitter * torch.eye(len(loc), dtype=torch.float64))
    return LaplaceStart(
        loc,
        torch.cholesky_inverse(tril),
        tril,
        cov.diagonal().sqrt(),
        "previous-fit",
        converged=True,
        notes=[
            f"Started from the previous fit ({guide.name}): its mean and covariance of the "
            "unconstrained latents, instead of a new MAP search."
        ],
    )


GUIDE_CLASSES = {
    "auto-normal": AutoWhitenedNormal,
    "auto-mvn": AutoWhitenedMultivariateNormal,
    "auto-lowrank": AutoWhitenedLowRankNormal,
    "auto-iaf": AutoWhitenedIAF,
}


def make_guide(
    name: str,
    model: Callable,
    *,
    custom: Callable | None = None,
    init: str = "laplace",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    **options,
) -> Callable:
    """The guide called ``name`` for ``model``.

    Parameters
    ----------
    name
        One of :data:`GUIDES`, or ``"custom"`` for the user's own ``custom`` guide.
    custom
        The script's ``guide`` (required for ``"custom"``).
    init, dtype, device
        See :class:`WhitenedGuide`.
    options
        ``rank`` for ``auto-lowrank``; ``hidden_dims``, ``num_transforms`` for ``auto-iaf``;
        ``iterations`` (L-BFGS) for all.

    Raises
    ------
    ValueError
        For an unknown name, or ``custom`` without a guide.
    """
    if name == CUSTOM:
        if custom is None:
            raise ValueError("guide 'custom' needs a guide(**data) function in the model script")
        return custom
    if name not in GUIDE_CLASSES:
        raise ValueError(f"guide must be one of {', '.join(GUIDE_CHOICES)}, got {name!r}")
    return GUIDE_CLASSES[name](model, init=init, dtype=dtype, device=device, **options)
