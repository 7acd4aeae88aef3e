r"""Local latents: the guide of a model whose data plate holds latent sites, fitted on subsamples.

A model script's data plate (:mod:`ppl_models.vi.data_plate`) may hold latent sites besides its
observations: a *local* latent :math:`z_n` per observation :math:`n` (a random effect, the scale
of a Student-t written as a normal mixture), beside the *global* latents :math:`z_G`. When the fit
subsamples the plate (a ``batch_size``, or several processes), the guide is

.. math::

    q(z_G, z_{1:N}) = q_G(z_G) \prod_{n=1}^N
        \mathcal N\big(u_n;\ \mu_n(u_G), \operatorname{diag} \sigma_n^2\big),
    \qquad u = T^{-1}(z),

in the unconstrained space: :math:`q_G` is the package's whitened autoguide of the chosen family
over the global sites (:mod:`ppl_models.vi.guides`), and each local site has a Gaussian per
observation, mean-field, with parameters of the full data's size (as Pyro's
:class:`~pyro.infer.autoguide.AutoNormal`). For ``auto-normal`` the local means are free
parameters, :math:`\mu_n = \hat u_n + d_n \odot m_n`; for the families that hold correlations
(``auto-mvn``, ``auto-lowrank``, ``auto-iaf``) they also depend linearly on the global draw,
:math:`\mu_n(u_G) = \hat u_n + d_n \odot (m_n + \tilde B_n D_G^{-1}(u_G - \hat u_G))`, the
structure of a hierarchical posterior (its locals independent given the globals), which a
Gaussian with full-rank :math:`q_G` then holds exactly; :math:`\sigma_n = d_n \odot s_n`.

Under a subsample :math:`B` the guide draws :math:`z_n` for :math:`n \in B` only, from the
parameters indexed by the plate's indices; the model's and the guide's local terms are both
scaled by :math:`N / |B|`, so

.. math::

    \widehat{\mathcal L}_B = E_q\Big[\log p(z_G) - \log q_G(z_G) + \frac{N}{|B|} \sum_{n \in B}
        \big(\log p(x_n, z_n \mid z_G) - \log q_n(z_n \mid z_G)\big)\Big]

is an unbiased estimate of the full-data ELBO, and the gradient of the parameters of :math:`n`
is zero at every step whose batch leaves :math:`n` out. Under ``DistributedDataParallel`` each
rank's gradient of the other ranks' local parameters is zero, and the ranks' average is the
single-process gradient with the union of their batches. A model that does not broadcast over
particles is evaluated with ``torch.func.vmap`` on the subsample (:class:`LocalVmappedElbo`).
Called without a subsample (the diagnosis), the guide draws every observation's latents, as
a trace or as one flat vector (:meth:`LocalLatentGuide.get_posterior`), and :math:`\log q` is
the full product: the log-weight engine treats it like any other guide.

**Start.** The Laplace approximation of the whole model on the full data (the mean-field
``auto-normal`` start of :class:`~ppl_models.vi.guides.WhitenedGuide`, whose Hessian diagonal
is estimated above :data:`~ppl_models.vi.initialization.DENSE_CURVATURE` coordinates, and
exact for the locals of the families with dependence): each local coordinate is whitened by
:math:`d_i = H_{ii}^{-1/2}` about :math:`\hat u`, with
:math:`m` starting at 0 and :math:`s` at 1; the global part and :math:`\tilde B` start from the
Laplace approximation too (:func:`_split_start`). Without a proper MAP, everything starts where
Pyro's autoguides start (:func:`~ppl_models.vi.initialization.prior_start`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide import AutoGuide
from torch import nn
from torch.distributions import Distribution, biject_to
from torch.func import vmap

from ..svi import Objective
from .data_plate import DataPlate, active_indices, resubsampled
from .guides import GUIDE_CLASSES, AutoWhitenedNormal
from .initialization import LaplaceStart, _gaussian
from .unconstrained import evaluate, guide_layout, parts


class LocalLatentGuide(AutoGuide):
    r"""The guide of a model whose data plate holds latents (module docstring): ``family``'s
    whitened autoguide over the global sites, and a mean-field Gaussian per observation over
    the plate's latent sites (its mean linear in the global draw for the families other than
    ``auto-normal``), indexed by the plate's subsample.

    Parameters
    ----------
    family
        The global part's guide: a name of :data:`~ppl_models.vi.guides.GUIDE_CLASSES`.
    model
        The Pyro model.
    plate
        Its data plate (:func:`~ppl_models.vi.data_plate.find_data_plate`), with its latents.
    init, dtype, device
        As for :class:`~ppl_models.vi.guides.WhitenedGuide`.
    options
        The family's options (``rank``, ``hidden_dims``, ``num_transforms``); ``iterations``
        (L-BFGS) goes to the start.
    """

    def __init__(
        self,
        family: str,
        model: Callable,
        plate: DataPlate,
        *,
        init: str = "laplace",
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        **options,
    ):
        if family not in GUIDE_CLASSES:
            raise ValueError(f"guide must be one of {', '.join(GUIDE_CLASSES)}, got {family!r}")
        if not plate.latents:
            raise ValueError(f"data_plate {plate.name!r} holds no latent site")
        super().__init__(model, create_plates=self._data_plate)
        self.family = family
        self.plate = plate
        self._init = init
        self._dtype = dtype
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._options = dict(options)
        self.start: LaplaceStart | None = None
        self._coordinates: list[tuple[str, str]] = []
        self._positions: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        self._event_dims: dict[str, int] = {}
        self._index_dims: dict[str, int] = {}
        self._plate_dim = -1
        self.globals = None  # the global part, built with the start
        self.linear = False  # whether the locals depend linearly on the global draw
        self.local_locs = nn.ParameterList()
        self.local_scales = nn.ParameterList()
        self.local_dependence = nn.ParameterList()

    # ------------------------------------------------------------------ set-up

    def setup(self, *args, **kwargs) -> None:
        """Find the start on the full data and build both parts (called on first use)."""
        if self.prototype_trace is None:
            with poutine.block():
                self._setup_prototype(*args, **kwargs)

    def _setup_prototype(self, *args, **kwargs) -> None:
        iterations = {k: v for k, v in self._options.items() if k == "iterations"}
        whole = AutoWhitenedNormal(
            self.model, init=self._init, dtype=self._dtype, device=self._device, **iterations
        )
        whole.setup(*args, **kwargs)
        self.start = whole.start
        self._unconstrained_shapes = dict(whole._unconstrained_shapes)
        self.latent_dim = whole.latent_dim
        self._coordinates = whole.coordinates()
        self.prototype_trace = whole.prototype_trace
        self._prototype_frames = {
            frame.name: frame
            for _, site in self.prototype_trace.iter_stochastic_nodes()
            for frame in site["cond_indep_stack"]
            if frame.vectorized
        }
        self._plate_dim = self._prototype_frames[self.plate.name].dim
        pos = 0
        for name, shape, _ in guide_layout(whole):
            size = math.prod(shape)
            self._positions[name] = (pos, pos + size, shape)
            pos += size
        missing = [name for name in self.plate.latents if name not in self._positions]
        if missing:
            raise ValueError(
                f"the latent site(s) {', '.join(missing)} of data_plate {self.plate.name!r} "
                "are not continuous latents the guide can draw"
            )
        local = set(self.plate.latents)
        g = [torch.arange(a, b) for n, (a, b, _) in self._positions.items() if n not in local]
        g = torch.cat(g) if g else torch.zeros(0, dtype=torch.long)
        self.linear = self.family != "auto-normal" and len(g) > 0
        split = _split_start(self.start, g, whole, kwargs, marginal=self.linear)
        self._setup_locals(split)
        if len(g):
            self._setup_globals(split, *args, **kwargs)

    def _setup_locals(self, split: _Split) -> None:
        start, cast = self.start, {"dtype": self._dtype, "device": self._device}
        raw_scale = math.log(math.expm1(start.init_scale))  # softplus^-1
        for k, name in enumerate(self.plate.latents):
            a, b, shape = self._positions[name]
            site = self.prototype_trace.nodes[name]
            event_dim = len(shape) - (site["value"].dim() - site["fn"].event_dim)
            self._event_dims[name] = event_dim
            self._index_dims[name] = self._plate_dim - event_dim
            self.register_buffer(f"white_loc_{k}", start.loc[a:b].reshape(shape).to(**cast))
            self.register_buffer(
                f"white_scale_{k}", split.local_scale[a:b].reshape(shape).to(**cast)
            )
            self.local_locs.append(nn.Parameter(torch.zeros(shape, **cast)))
            self.local_scales.append(nn.Parameter(torch.full(shape, raw_scale, **cast)))
            if self.linear:
                dependence = split.dependence[a:b].reshape(*shape, -1)
                self.local_dependence.append(nn.Parameter(dependence.to(**cast)))

    def _setup_globals(self, split: _Split, *args, **kwargs) -> None:
        local = list(self.plate.latents)
        cast = {"dtype": self._dtype, "device": self._device}
        at = {name: self.prototype_trace.nodes[name]["value"] for name in local}
        # the model without its local sites (fixed, and hidden from the global part)
        global_model = poutine.block(poutine.condition(self.model, data=at), hide=local)
        self.globals = GUIDE_CLASSES[self.family](
            global_model,
            init=self._init,
            dtype=self._dtype,
            device=self._device,
            start=split.start,
            **self._options,
        )
        self.globals.setup(*args, **kwargs)
        order = [name for name, _, _ in guide_layout(self.globals)]
        if order != [name for name in self._positions if name not in local]:
            raise ValueError(f"the global sites came in another order: {order}")
        self.register_buffer("global_center", split.start.loc.to(**cast))
        self.register_buffer("global_scale", split.scale.to(**cast))

    def _check_prototype(self, part_trace) -> None:
        """The global part's sites are the whole model's (as :class:`AutoGuideList` checks)."""
        for name, site in part_trace.iter_stochastic_nodes():
            whole = self.prototype_trace.nodes[name]
            if site["value"].shape != whole["value"].shape:
                raise ValueError(f"site {name!r} changed shape between two runs of the model")

    def _data_plate(self, *args, **kwargs) -> pyro.plate:
        """The data plate without a ``subsample_size``: the fit's
        :func:`~ppl_models.vi.data_plate.subsampled` gives it its indices, else it is whole."""
        return pyro.plate(self.plate.name, self.plate.size, dim=self._plate_dim)

    # ------------------------------------------------------------------ drawing

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """One draw: the global part's, then each local site's for the plate's indices (given
        the global draw, for the families with linear dependence)."""
        if self.prototype_trace is None:
            self.setup(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result, deviation = {}, None
        if self.globals is not None:
            latent = self.globals.sample_latent(*args, **kwargs)
            for site, u in self.globals._unpack_latent(latent):
                with contextlib.ExitStack() as stack:
                    for frame in self.globals._cond_indep_stacks[site["name"]]:
                        stack.enter_context(plates[frame.name])
                    result[site["name"]] = _sample_at(site, u)
            if self.linear:  # whitened deviation of the global draw from the start
                deviation = (latent - self.global_center) / self.global_scale
        indices = plates[self.plate.name].indices
        for k, name in enumerate(self.plate.latents):
            site = self.prototype_trace.nodes[name]
            with contextlib.ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                loc, scale = self._local_loc_scale(k, name, indices, deviation)
                u = pyro.sample(
                    name + "_unconstrained",
                    dist.Normal(loc, scale).to_event(self._event_dims[name]),
                    infer={"is_auxiliary": True},
                )
                result[name] = _sample_at(site, u)
        return result

    def _local_loc_scale(self, k: int, name: str, indices, deviation=None, flat: bool = False):
        r"""The unconstrained loc and scale of local site ``name`` cut to ``indices``:
        :math:`\hat u + d \odot (m + \tilde B \delta)` and :math:`d \odot s`, with :math:`\delta`
        the global draw's whitened deviation from the start, if any: one ``(G,)``, draws under
        a plate (:func:`_shift`), or with ``flat`` draws ``(n, G)`` (the loc then ``(n, *S)``)."""
        white_loc, white_scale = getattr(self, f"white_loc_{k}"), getattr(self, f"white_scale_{k}")
        loc, raw = self.local_locs[k], self.local_scales[k]
        dependence = self.local_dependence[k] if deviation is not None else None
        dim = self._index_dims[name]
        if indices is not None and len(indices) != loc.shape[dim]:
            indices = indices.to(loc.device)
            white_loc, white_scale = (
                white_loc.index_select(dim, indices),
                white_scale.index_select(dim, indices),
            )
            loc, raw = loc.index_select(dim, indices), raw.index_select(dim, indices)
            if dependence is not None:
                dependence = dependence.index_select(dim - 1, indices)
        if dependence is not None and flat and deviation.dim() > 1:
            loc = loc + torch.einsum("...g,ng->n...", dependence, deviation)
        elif dependence is not None:
            loc = loc + _shift(dependence, deviation, self._event_dims[name])
        return white_loc + white_scale * loc, white_scale * nn.functional.softplus(raw)

    def deviation(self, u_global: torch.Tensor) -> torch.Tensor | None:
        """The whitened deviation of global draws from the start (None without dependence)."""
        return (u_global - self.global_center) / self.global_scale if self.linear else None

    def get_posterior(self, *args, **kwargs) -> Distribution:
        """The guide as a distribution over the whole model's flat unconstrained vector (the
        layout of :attr:`start`), with every observation's latents: what the diagnosis draws
        from, as from the package's other autoguides."""
        return _JointPosterior(self)

    # ------------------------------------------------------------------ what the fit reads

    @property
    def notes(self) -> list[str]:
        """What the initialisation did and how the guide is built, in sentences."""
        if self.start is None:
            return []
        names = ", ".join(self.plate.latents)
        if self.globals is None:
            part = "the model has no global latent sites"
        elif self.linear:
            part = (
                f"the global sites have the {self.family} guide, on whose draw each local "
                "mean depends linearly"
            )
        else:
            part = f"the global sites have the {self.family} guide"
        return [
            *self.start.notes,
            f"The latent site(s) {names} of the data plate {self.plate.name!r} have a "
            "Gaussian per observation (mean-field) whose parameters are indexed by each step's "
            f"subsample (as Pyro's AutoNormal), and {part}; all started from the Laplace "
            "approximation of the whole model on the full data where there is one. The "
            "diagnosis draws every observation's latents.",
        ]

    def coordinates(self) -> list[tuple[str, str]]:
        """Per coordinate of the whole model's flat unconstrained vector: its name and bound
        kind (:meth:`~ppl_models.vi.guides.WhitenedGuide.coordinates`)."""
        return list(self._coordinates)

    def unconstrained_mean(self) -> torch.Tensor:
        """The guide's mean of the whole model's flat unconstrained vector (the layout of
        :attr:`start`)."""
        with torch.no_grad():
            shares, deviation = {}, None
            if self.globals is not None:
                mean = self.globals.unconstrained_mean()
                shares = parts(guide_layout(self.globals), mean)
                if self.linear:
                    deviation = (mean - self.global_center) / self.global_scale
            for k, name in enumerate(self.plate.latents):
                shares[name] = self._local_loc_scale(k, name, None, deviation)[0]
            return torch.cat([shares[name].reshape(-1) for name in self._positions])


def _sample_at(site, u: torch.Tensor) -> torch.Tensor:
    """``pyro.sample`` of ``site`` at the constrained image of its unconstrained draw ``u``,
    with the log-Jacobian as the Delta's density (as Pyro's autoguides do)."""
    transform = biject_to(site["fn"].support)
    value = transform(u)
    if poutine.get_mask() is False:
        log_density = 0.0
    else:
        log_density = transform.inv.log_abs_det_jacobian(value, u)
        log_density = sum_rightmost(
            log_density, log_density.dim() - value.dim() + site["fn"].event_dim
        )
    return pyro.sample(
        site["name"], dist.Delta(value, log_density=log_density, event_dim=site["fn"].event_dim)
    )


def _shift(dependence: torch.Tensor, deviation: torch.Tensor, event_dim: int) -> torch.Tensor:
    r""":math:`\tilde B \delta` for a local site's dependence ``(*S, G)`` on the global draw's
    whitened deviation :math:`\delta`, ``(G,)`` or batched over draws ``(*L, G)`` as a sample
    site under a plate of draws has it (the draws at one dim of ``L``, the others 1): the result
    has the site's shape ``S`` with the draws at that dim of its batch shape."""
    if deviation.dim() == 1:
        return dependence @ deviation
    lead = deviation.shape[:-1]
    draws = deviation.reshape(-1, deviation.shape[-1])
    shift = torch.einsum("...g,pg->p...", dependence, draws)
    pad = len(lead) - (dependence.dim() - 1 - event_dim)  # lead's dims left of the site's batch
    at = [i for i, n in enumerate(lead) if n != 1]
    if pad < 1 or len(at) > 1 or (at and at[0] >= pad):
        raise ValueError(f"the global draws' shape {tuple(lead)} does not fit the plates")
    shape = [1] * pad
    if at:
        shape[at[0]] = len(draws)
    return shift.reshape(*shape, *shift.shape[1:])


class LocalVmappedElbo(Objective):
    r"""The negative ELBO estimate :math:`-\widehat{\mathcal L}_B` of a
    :class:`LocalLatentGuide` on the fit's subsample :math:`B` (module docstring), for a model
    that does not broadcast over particles: the global part's ``particles`` draws
    :math:`u_G`, the locals' draws for :math:`B` given them, and the model evaluated at each
    flat vector with ``torch.func.vmap``
    (:func:`~ppl_models.vi.unconstrained.evaluate`, as :class:`~ppl_models.vi.vmapped.VmappedElbo`
    does for the other autoguides). The model's plate scales its local and observed terms by
    :math:`N/|B|`; the locals' log-Jacobians and :math:`\log q` are scaled here alike."""

    def __init__(self, model: Callable, guide: LocalLatentGuide, particles: int, modules=()):
        super().__init__(model, guide, None)
        self.guide = guide
        self.model_modules = nn.ModuleList([m for m in modules if m is not guide])
        self._model = (model,)  # a tuple: a PyroModule model must not be registered twice
        self.particles = particles

    def loss(self, **data) -> torch.Tensor:
        guide, plate, n = self.guide, self.guide.plate, self.particles
        indices = active_indices(plate.name)  # the fit's subsample, or all
        if indices is None:
            indices = torch.arange(plate.size, device=self.guide.white_loc_0.device)
        scale = plate.size / len(indices)
        shares, shapes, log_q, u_global = {}, {}, 0.0, None
        if guide.globals is not None:
            posterior = guide.globals.get_posterior()
            u_global = posterior.rsample((n,))
            log_q = posterior.log_prob(u_global)
            pos = 0
            for name, shape, _ in guide_layout(guide.globals):
                size = math.prod(shape)
                shares[name], shapes[name] = u_global[:, pos : pos + size], shape
                pos += size
        deviation = guide.deviation(u_global) if u_global is not None else None
        for k, name in enumerate(plate.latents):
            loc, sd = guide._local_loc_scale(k, name, indices, deviation, flat=True)
            dim = guide._index_dims[name]
            shape = list(guide._positions[name][2])
            shape[dim] = len(indices)
            loc, sd = loc.expand(n, *shape), sd.expand(n, *shape)
            u = loc + sd * torch.randn_like(loc)
            log_q = log_q + scale * dist.Normal(loc, sd).log_prob(u).reshape(n, -1).sum(-1)
            shares[name], shapes[name] = u.reshape(n, -1), tuple(shape)
        layout = [(name, shapes[name], batch) for name, _, batch in guide_layout(guide)]
        u = torch.cat([shares[name] for name, _, _ in layout], -1)
        model, local = self._model[0], set(plate.latents)

        def single(u):  # the subsample given inside evaluate's block of sample sites
            point = evaluate(resubsampled(model, plate.name), layout, u, data)
            local_jacobian = sum(
                (v.sum() for k, v in point.log_jacobians.items() if k in local), u.new_zeros(())
            )
            return point.log_joint, point.log_jacobian - local_jacobian, local_jacobian

        with pyro.validation_enabled(False):  # validation branches on values: not vmappable
            log_joint, jac_global, jac_local = vmap(single, randomness="different")(u)
        return -(log_joint + jac_global + scale * jac_local - log_q).mean()


class _JointPosterior(Distribution):
    r"""A :class:`LocalLatentGuide` over the whole model's flat unconstrained vector :math:`u`
    (every observation's latents): :math:`u_G \sim q_G`, then each local coordinate
    :math:`\mathcal N(\hat u_l + d_l (m_l + \tilde B_l \delta(u_G)),\ (d_l s_l)^2)`; the log
    density is the sum of the two parts'."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, guide: LocalLatentGuide):
        self.guide = guide
        self.global_posterior = guide.globals.get_posterior() if guide.globals is not None else None
        super().__init__(torch.Size(), torch.Size([guide.latent_dim]), validate_args=False)

    def _locals(self, u_global: torch.Tensor | None, n: int):
        guide = self.guide
        deviation = guide.deviation(u_global) if u_global is not None else None
        for k, name in enumerate(guide.plate.latents):
            loc, scale = guide._local_loc_scale(k, name, None, deviation, flat=True)
            shape = (n, *guide._positions[name][2])
            yield name, loc.expand(shape).reshape(n, -1), scale.expand(shape).reshape(n, -1)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        n = sample_shape.numel()
        guide, shares = self.guide, {}
        u_global = None
        if self.global_posterior is not None:
            u_global = self.global_posterior.rsample((n,))
            pos = 0
            for name, shape, _ in guide_layout(guide.globals):
                size = math.prod(shape)
                shares[name] = u_global[:, pos : pos + size]
                pos += size
        for name, loc, scale in self._locals(u_global, n):
            shares[name] = loc + scale * torch.randn_like(loc)
        u = torch.cat([shares[name].reshape(n, -1) for name in guide._positions], -1)
        return u.reshape(*sample_shape, -1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        batch = value.shape[:-1]
        u = value.reshape(-1, value.shape[-1])
        n, guide = len(u), self.guide
        pieces = {name: u[:, a:b] for name, (a, b, _) in guide._positions.items()}
        total = u.new_zeros(n)
        u_global = None
        if self.global_posterior is not None:
            local = set(guide.plate.latents)
            u_global = torch.cat([v for name, v in pieces.items() if name not in local], -1)
            total = total + self.global_posterior.log_prob(u_global)
        for name, loc, scale in self._locals(u_global, n):
            total = total + dist.Normal(loc, scale).log_prob(pieces[name]).sum(-1)
        return total.reshape(batch)


@dataclass
class _Split:
    """The whole model's start split between the global part and the locals: the global part's
    start, the whitening scale of its deviations, each coordinate's whitened linear dependence
    on them ``(D, G)`` (zero for the globals), and each coordinate's whitening scale ``(D,)``
    (the locals' :math:`D_l`)."""

    start: LaplaceStart
    scale: torch.Tensor
    dependence: torch.Tensor
    local_scale: torch.Tensor


def _split_start(
    start: LaplaceStart, g: torch.Tensor, whole, data: dict, *, marginal: bool
) -> _Split:
    r"""The start of the global coordinates ``g`` of the whole model's flat vector, and the
    locals' dependence on them, from the Laplace approximation :math:`\mathcal N(\hat u,
    H^{-1})`.

    With ``marginal`` (the families that hold correlations), the global part starts at the
    Laplace marginal :math:`\Sigma_{GG}` of its coordinates and each local coordinate
    :math:`l` depends on the global draw by the regression :math:`B_{lG} = \Sigma_{lG}
    \Sigma_{GG}^{-1}`. Where the Hessian was formed these come from :math:`\Sigma = H^{-1}`;
    above :data:`~ppl_models.vi.initialization.DENSE_CURVATURE` coordinates from the Hessian's
    global columns :math:`H_{\cdot G}` (one Hessian-vector product each) with the locals'
    block of :math:`H` taken as diagonal (locals independent given the globals), its diagonal
    :math:`H_{ll} = (H \mathbb 1_l)_l` from one more product (the start's own diagonal is only
    estimated there): :math:`\Sigma_{GG}^{-1} = H_{GG} - H_{Gl} H_{ll}^{-1} H_{lG}` and
    :math:`B_{lG} = -H_{ll}^{-1} H_{lG}`. Both are exact for a Gaussian posterior whose local
    coordinates are independent given the globals, as in a hierarchical model. Otherwise (the
    mean-field family, or no MAP) the global part takes its share of the point and of the
    mean-field scales :math:`H_{ii}^{-1/2}`, and the dependence starts at 0. The locals are
    whitened by :math:`D_l = H_{ll}^{-1/2}`, and so is the dependence: :math:`\tilde B =
    D_l^{-1} B D_G` with the globals' marginal sds :math:`D_G`.
    """
    device = start.loc.device
    g = g.to(device)
    d = start.loc.numel()
    is_local = torch.ones(d, dtype=torch.bool, device=device)
    is_local[g] = False
    ell = is_local.nonzero().flatten()
    dependence = torch.zeros(d, len(g), dtype=torch.float64, device=device)
    precision = tril = None
    diag = start.diag_scale[g]
    scale = torch.ones(len(g), dtype=torch.float64, device=device)
    local_scale = start.diag_scale
    if marginal and start.method == "laplace" and len(g):
        if start.scale_tril is not None:
            cov = start.scale_tril @ start.scale_tril.T
            cov_gg = 0.5 * (cov[g][:, g] + cov[g][:, g].T)
            regression = torch.linalg.solve(cov_gg, cov[g][:, ell]).T  # (locals, G)
            precision, tril, _, _ = _gaussian(torch.linalg.inv(cov_gg))
        else:
            columns, h_ll = _hessian_columns(whole, start.loc, g, ell, data)
            h_ll = torch.where(h_ll > 0, h_ll, start.diag_scale[ell].pow(-2))
            local_scale = start.diag_scale.clone()
            local_scale[ell] = h_ll.rsqrt()
            h_lg = columns[ell]
            schur = columns[g] - h_lg.T @ (h_lg / h_ll[:, None])
            precision, tril, _, _ = _gaussian(0.5 * (schur + schur.T))
            regression = -h_lg / h_ll[:, None]
        scale = tril.pow(2).sum(-1).sqrt()  # the marginal sds
        dependence[ell] = regression * scale / local_scale[ell][:, None]
    global_start = LaplaceStart(
        start.loc[g],
        precision,
        tril,
        diag,
        start.method,
        start.iterations,
        start.converged,
        [],
        start.init_scale,
        origin=start.origin[g] if start.origin is not None else None,
    )
    return _Split(global_start, scale, dependence, local_scale)


def _hessian_columns(
    whole, z: torch.Tensor, columns: torch.Tensor, local: torch.Tensor, data: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The columns ``columns`` of the Hessian :math:`H` of the whole model's potential at
    ``z`` (float64), one Hessian-vector product each, and :math:`(H \mathbb 1_l)_l` for the
    coordinates ``local``: the diagonal of their block when that block is diagonal."""
    data64 = {
        k: v.to(torch.float64) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in data.items()
    }
    out = []
    with torch.enable_grad():
        zz = z.detach().to(torch.float64).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(whole.potential(zz, **data64), zz, create_graph=True)
        for c in columns.tolist():
            (row,) = torch.autograd.grad(grad[c], zz, retain_graph=True)
            out.append(row.detach())
        ones = torch.zeros_like(zz)
        ones[local] = 1.0
        (h_local,) = torch.autograd.grad(grad, zz, grad_outputs=ones)
    return torch.stack(out, 1), h_local[local].detach()


def local_guide_refusal(discrete, dynamic, family: str, plate: DataPlate) -> str | None:
    """Why a model cannot have the guide for local latents, or None."""
    names = ", ".join(plate.latents)
    if discrete:
        return (
            f"data_plate {plate.name!r} holds the latent site(s) {names}, and the model has "
            "discrete sites to sum out: minibatch and data-parallel fits of local latents do "
            "not enumerate yet; fit it without batch_size and --nproc"
        )
    if dynamic:
        return (
            f"data_plate {plate.name!r} holds the latent site(s) {names}, and the supports of "
            f"{', '.join(dynamic)} depend on other latents: minibatch and data-parallel fits of "
            "local latents do not map dynamic supports yet; fit it without batch_size and --nproc"
        )
    if family not in GUIDE_CLASSES:
        return f"guide {family!r} has no form for local latents"
    return None
