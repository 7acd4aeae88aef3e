r"""The log-weight engine: many guide draws with their log densities, for any Pyro model.

For draws :math:`z_s \sim q`, :math:`s = 1, \dots, S`, the engine records

- :math:`\log p(x, z_s)` (the model's joint log density, every sample site, scaled and masked
  as Pyro scores it) and :math:`\log q(z_s)` (the guide's, auxiliary sites included), so
  :math:`\log w_s = \log p(x, z_s) - \log q(z_s)`;
- the constrained value of every latent site and of every ``pyro.deterministic`` site (the
  guide's draw replayed through the model, which recomputes the derived quantities);
- the unconstrained value :math:`u = T^{-1}(z)` of every latent site, with
  :math:`T` = ``biject_to(site.support)``, the space in which autoguides are Gaussian and in
  which the Wasserstein bounds of :mod:`ppl_models.vi.bounds` are stated.

Draws are made in chunks so that :math:`S = 100{,}000` fits in memory. A vectorized model
gets one ``pyro.plate`` over the draws of a chunk at dim ``-(max_plate_nesting + 1)`` (as
:func:`pyro.infer.importance.vectorized_importance_weights` does); a model that breaks under
such a plate (for instance one that indexes ``beta[0]``) is run once per draw instead, with
fewer draws.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from ..distributed import Context, rank_seed
from ..gathered import GatherIndexing
from ..svi import local_params
from .data_plate import subsampled
from .enumeration import (
    Discrete,
    conditional_marginals,
    enumerated,
    log_joint_at,
    marginal_log_joint,
)
from .replayed import ReplayedChunks
from .settings import DiagnosisSettings
from .traces import log_prob_per_draw, per_draw_value, sum_per_draw, under_plate
from .vmapped import log_joint_fn, split

DRAW_PLATE = "_ppl_models_draws"
_CHUNK_ELEMENTS = 2**23  # about 64 MiB of float64 per chunk for the largest per-draw tensors


@dataclass
class LogWeights:
    """Guide draws and their log densities.

    Attributes
    ----------
    log_joint, log_q
        ``(S,)`` float64: :math:`\\log p(x, z_s)` and :math:`\\log q(z_s)`.
    values
        Constrained draws per site, ``(S, *site_shape)`` float64; latent sites first (in the
        model's order), then deterministic sites.
    unconstrained
        Latent sites only: :math:`T^{-1}(z_s)`, ``(S, *unconstrained_shape)``.
    latent_sites, deterministic_sites
        Site names in the model's order.
    vectorized
        Whether the draws were made under a plate (else one by one).
    seconds
        Wall time of the drawing.
    transforms
        Latent site -> the bijection from unconstrained to constrained space, in words.
    bijections
        Latent site -> that bijection (``torch.distributions.Transform``) as of the first draw.
    notes
        Sentences for the report (a loop fallback, a reduced number of draws).
    moments
        Where only some draws are kept whole (:mod:`ppl_models.vi.precision`): the
        :class:`~ppl_models.vi.stream.MomentStream` of all of them, whose log densities
        ``log_joint`` and ``log_q`` hold; ``values`` and ``unconstrained`` hold the kept ones.
    draws_reason
        Why :math:`S` is what it is, in words (:mod:`ppl_models.vi.precision`).
    """

    log_joint: np.ndarray
    log_q: np.ndarray
    values: dict[str, np.ndarray]
    unconstrained: dict[str, np.ndarray]
    latent_sites: list[str]
    deterministic_sites: list[str]
    vectorized: bool
    seconds: float
    transforms: dict[str, str] = field(default_factory=dict)
    bijections: dict = field(default_factory=dict, repr=False)
    notes: list[str] = field(default_factory=list)
    moments: Any = field(default=None, repr=False)
    draws_reason: str = ""

    @property
    def log_weights(self) -> np.ndarray:
        r""":math:`\log w_s = \log p(x, z_s) - \log q(z_s)`."""
        return self.log_joint - self.log_q

    @property
    def values_draws(self) -> int:
        """The draws kept whole in :attr:`values` (all of them unless some were streamed)."""
        first = next(iter(self.values.values()), None)
        return len(first) if first is not None else self.draws

    @property
    def draws(self) -> int:
        return len(self.log_joint)

    @classmethod
    def concatenate(cls, parts: list[LogWeights]) -> LogWeights:
        """The draws of several parts (ranks) as one: arrays joined in order, the first part's
        sites and transforms, the longest drawing time, each distinct note once."""
        first = parts[0]

        def joined(name):
            return {
                k: np.concatenate([getattr(p, name)[k] for p in parts])
                for k in getattr(first, name)
            }

        return dataclasses.replace(
            first,
            log_joint=np.concatenate([p.log_joint for p in parts]),
            log_q=np.concatenate([p.log_q for p in parts]),
            values=joined("values"),
            unconstrained=joined("unconstrained"),
            seconds=max(p.seconds for p in parts),
            notes=list(dict.fromkeys(note for p in parts for note in p.notes)),
        )

    def unconstrained_matrix(self) -> tuple[np.ndarray, list[str]]:
        """All latent sites' unconstrained values as one ``(S, D)`` matrix and the names of
        its columns (``"log sigma"``-style names are not guessed: a column is named
        ``site`` or ``site[i]``, 1-based, for the site's unconstrained coordinates)."""
        columns, names = [], []
        for site in self.latent_sites:
            u = self.unconstrained[site]
            flat = u.reshape(len(u), int(np.prod(u.shape[1:])))  # also without draws
            columns.append(flat)
            names.extend(element_names(site, u.shape[1:]))
        if not columns:
            return np.zeros((self.draws, 0)), []
        return np.concatenate(columns, axis=1), names


def element_names(site: str, shape: tuple[int, ...]) -> list[str]:
    """Stan-style names of a site's scalar elements, row-major and 1-based:
    ``mu`` for a scalar, ``beta[1]``, ..., ``beta[2,3]``."""
    shape = tuple(int(s) for s in shape)
    if not shape:
        return [site]
    return [
        f"{site}[{','.join(str(i + 1) for i in index)}]" for index in np.ndindex(*shape) if shape
    ]


# --------------------------------------------------------------------------- site discovery


@dataclass(frozen=True)
class _Site:
    name: str
    kind: str  # "latent" or "deterministic"
    shape: tuple[int, ...]
    unconstrained_shape: tuple[int, ...] | None
    transform: str | None = None
    bijection: object = None


def _transform_words(t) -> str:
    """``biject_to(support)`` in words: ``identity``, ``exp``, ``exp, affine``, ``sigmoid``..."""
    while hasattr(t, "base_transform"):  # IndependentTransform: the same map per element
        t = t.base_transform
    parts = list(getattr(t, "parts", [t]))
    names = []
    for part in parts:
        while hasattr(part, "base_transform"):
            part = part.base_transform
        name = type(part).__name__.removesuffix("Transform")
        if name in ("Identity", "Compose") and not getattr(part, "parts", None):
            continue
        names.append(name.lower() if name else repr(part))
    return ", ".join(names) or "identity"


def _is_deterministic(site: dict) -> bool:
    return bool(site.get("infer", {}).get("_deterministic"))


def _model_sites(model_trace, skip=()) -> list[_Site]:
    """Latent and deterministic sites of one non-vectorized model trace, in model order (the
    sites named in ``skip``, summed-out discrete ones, left out)."""
    latent, deterministic = [], []
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or name in skip:
            continue
        value = site["value"]
        if _is_deterministic(site):
            deterministic.append(_Site(name, "deterministic", tuple(value.shape), None))
        elif not site["is_observed"]:
            t = biject_to(site["fn"].support)
            u = t.inv(value)
            latent.append(
                _Site(name, "latent", tuple(value.shape), tuple(u.shape), _transform_words(t), t)
            )
    return latent + deterministic


def _traces(model: Callable, guide: Callable, data: dict):
    guide_trace = poutine.trace(guide).get_trace(**data)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**data)
    return model_trace, guide_trace


# --------------------------------------------------------------------------- drawing


def _chunk_size(model_trace, guide_trace, requested: int | None) -> int:
    """Draws per chunk: at most ``requested``, else bounded so the largest tensors of one chunk
    stay near :data:`_CHUNK_ELEMENTS` elements."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"chunk must be >= 1, got {requested}")
        return int(requested)
    per_draw = 0
    for trace in (model_trace, guide_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                per_draw += site["value"].numel() + site["log_prob"].numel()
    # intermediate tensors of the model's arithmetic: allow a few times the sites' own size
    return int(max(1, min(20_000, _CHUNK_ELEMENTS // max(4 * per_draw, 1))))


SLICED_DRAWS = 16  # draws per chunk when the data plate is evaluated in slices
# the fewest draws a chunk over the whole data plate must hold, else the plate is sliced: a
# chunk of 4 draws scores a draw faster than 16 draws in slices (4.0 against 6.2 ms at
# J = 10,000, N = 200,000), one draw does not (28 against 15 ms at N = 10^6: the model's own
# indexing of the data, x[i], runs again for every draw)
VECTORIZED_DRAWS = 4


def _data_slices(model_trace, guide_trace, plate: str | None) -> tuple[int, int] | None:
    """``(N, b)`` when :data:`VECTORIZED_DRAWS` draws' tensors over the data plate ``plate``
    (of ``N`` observations) exceed the chunk's budget and the plate holds observations only:
    its log-likelihood is then evaluated ``b`` observations at a time; None otherwise."""
    if plate is None:
        return None
    size, in_plate, per_draw = None, 0, 0
    for trace in (model_trace, guide_trace):
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            elements = site["value"].numel() + site["log_prob"].numel()
            per_draw += elements
            frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
            if frame is None:
                continue
            if trace is guide_trace or not site["is_observed"] or _is_deterministic(site):
                return None  # a latent or a derived quantity in the plate: not sliced
            size, in_plate = frame.size, in_plate + elements
    if size is None or 4 * VECTORIZED_DRAWS * per_draw <= _CHUNK_ELEMENTS:
        return None
    per_observation = in_plate / size
    slice_size = int(_CHUNK_ELEMENTS // (4 * SLICED_DRAWS * per_observation))
    return size, max(1, min(size, slice_size))


def _sliced_chunk(model, guide, data, n, max_plate_nesting, sites, plate, size, slice_size):
    r"""``n`` draws, the data plate's log-likelihood summed over slices of ``slice_size`` of its
    ``size`` observations (each slice's terms, which Pyro scales by ``size / slice``, scaled
    back); the terms outside the plate, and the sites' values, come from the first slice."""
    dim = -(max_plate_nesting + 1)
    guide_trace = poutine.trace(under_plate(guide, DRAW_PLATE, n, dim)).get_trace(**data)
    guide_trace.compute_log_prob()
    plated = under_plate(model, DRAW_PLATE, n, dim)
    log_joint, first = 0.0, None
    for start in range(0, size, slice_size):
        indices = torch.arange(start, min(size, start + slice_size), device=_device(guide_trace))
        with subsampled(plate, indices):
            trace = poutine.trace(poutine.replay(plated, trace=guide_trace)).get_trace(**data)
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if any(f.name == plate for f in site["cond_indep_stack"]):
                log_joint = log_joint + sum_per_draw(site["log_prob"], n, dim) * (
                    len(indices) / size
                )
            elif first is None:
                log_joint = log_joint + sum_per_draw(site["log_prob"], n, dim)
        if first is None:
            first = trace
    values, unconstrained = _per_draw_values(first, sites, n)
    return log_joint, log_prob_per_draw(guide_trace, n, dim), values, unconstrained


def _per_draw_values(trace, sites, n: int) -> tuple[dict, dict]:
    """Each site's ``n`` draws in ``trace``, ``(n, *shape)``, and each latent's unconstrained
    value :math:`T^{-1}(z)` likewise."""
    values, unconstrained = {}, {}
    for s in sites:
        node = trace.nodes[s.name]
        values[s.name] = per_draw_value(node["value"], n, s.shape, s.name)
        if s.kind == "latent":
            u = biject_to(node["fn"].support).inv(node["value"])
            unconstrained[s.name] = per_draw_value(u, n, s.unconstrained_shape, s.name)
    return values, unconstrained


def _device(trace) -> torch.device:
    for site in trace.nodes.values():
        if site["type"] == "sample" and isinstance(site["value"], torch.Tensor):
            return site["value"].device
    return torch.device("cpu")


def _vectorized_chunk(model, guide, data, n, max_plate_nesting, sites, discrete=None):
    dim = -(max_plate_nesting + 1)
    model_trace, guide_trace = _traces(
        under_plate(model, DRAW_PLATE, n, dim), under_plate(guide, DRAW_PLATE, n, dim), data
    )
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    if discrete:  # the discrete sites summed out, not the prior draws of them in this trace
        log_joint = marginal_log_joint(
            under_plate(enumerated(model, discrete), DRAW_PLATE, n, dim),
            guide_trace,
            data,
            max_plate_nesting=max_plate_nesting,
            draw_plate=DRAW_PLATE,
            draws=n,
        )
    else:
        log_joint = log_prob_per_draw(model_trace, n, dim)
    log_q = log_prob_per_draw(guide_trace, n, dim)
    values, unconstrained = _per_draw_values(model_trace, sites, n)
    return log_joint, log_q, values, unconstrained


def _loop_chunk(model, guide, data, n, sites, discrete=None):
    log_joint, log_q = [], []
    values = {s.name: [] for s in sites}
    unconstrained = {s.name: [] for s in sites if s.kind == "latent"}
    for _ in range(n):
        model_trace, guide_trace = _traces(model, guide, data)
        if discrete:  # the discrete sites summed out at this draw
            values_at = {s.name: model_trace.nodes[s.name]["value"] for s in sites}
            log_joint.append(log_joint_at(model, values_at, data, discrete))
        else:
            log_joint.append(model_trace.log_prob_sum())
        log_q.append(guide_trace.log_prob_sum())
        for s in sites:
            node = model_trace.nodes[s.name]
            values[s.name].append(node["value"].reshape(s.shape))
            if s.kind == "latent":
                u = biject_to(node["fn"].support).inv(node["value"])
                unconstrained[s.name].append(u.reshape(s.unconstrained_shape))
    stack = torch.stack
    return (
        stack(log_joint),
        stack(log_q),
        {k: stack(v) for k, v in values.items()},
        {k: stack(v) for k, v in unconstrained.items()},
    )


def _unconstrained_chunk(model, guide, data, n, sites, mode):
    """``n`` draws of an autoguide over the flat unconstrained vector, the model evaluated at
    them as ``mode`` says (:func:`~ppl_models.vi.vmapped.log_joint_fn`)."""
    posterior = guide.get_posterior()
    u = posterior.sample((n,))
    log_joint, log_jacobian, latent, deterministic = log_joint_fn(model, guide, data, mode)(u)
    # the guide's density of the constrained draw: log q(u) - log|det J_T(u)|
    log_q = posterior.log_prob(u) - log_jacobian
    slices = {site["name"]: part for site, part in split(guide, u)}
    values, unconstrained = {}, {}
    for s in sites:
        batched = deterministic if s.kind == "deterministic" else latent
        values[s.name] = per_draw_value(batched[s.name], n, s.shape, s.name)
        if s.kind == "latent":
            unconstrained[s.name] = slices[s.name].reshape(n, *s.unconstrained_shape)
    return log_joint, log_q, values, unconstrained


def discrete_conditionals(
    model: Callable,
    guide: Callable,
    data: dict,
    discrete: Discrete,
    *,
    draws: int,
    vectorized: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    r"""For ``draws`` guide draws :math:`z_s`: the log weights :math:`\log p(x, z_s) - \log
    q(z_s)` (the discrete sites summed out) and, per discrete site, the exact conditional
    marginals :math:`p(k \mid x, z_s)`, ``(draws, *plate_shape, support)``; the importance-
    weighted average of the latter is the posterior marginal :math:`p(k \mid x)`. A model that
    does not broadcast is run one draw at a time."""
    nesting = discrete.max_plate_nesting
    dim = -(nesting + 1)
    model = enumerated(model, discrete)  # the marginal functions below enumerate it
    log_w, probs = [], []
    with local_params(), torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for n in [draws] if vectorized else [1] * draws:
            plate = DRAW_PLATE if vectorized else None  # a model that does not broadcast: none
            guide_at = under_plate(guide, DRAW_PLATE, n, dim) if vectorized else guide
            model_at = under_plate(model, DRAW_PLATE, n, dim) if vectorized else model
            guide_trace = poutine.trace(guide_at).get_trace(**data)
            guide_trace.compute_log_prob()
            log_joint = marginal_log_joint(
                model_at, guide_trace, data, max_plate_nesting=nesting, draw_plate=plate, draws=n
            )
            log_q = (
                log_prob_per_draw(guide_trace, n, dim) if vectorized else guide_trace.log_prob_sum()
            )
            log_w.append((log_joint - log_q).reshape(n))
            probs.append(
                conditional_marginals(
                    model_at,
                    guide_trace,
                    data,
                    discrete,
                    max_plate_nesting=nesting,
                    draw_plate=plate,
                    draws=n,
                )
            )
    return (
        _numpy(torch.cat(log_w)),
        {site: _numpy(torch.cat([p[site] for p in probs])) for site in discrete.sites},
    )


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


class Drawer:
    """Makes guide draws with their log densities, a chunk at a time, without touching the
    caller's random state: the context of :func:`draw_log_weights` (whose parameters it takes),
    for callers that consume the draws as they come (:mod:`ppl_models.vi.precision`).
    ``validate=False`` turns Pyro's validation off while drawing, as a fit without it ran."""

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        data: dict,
        *,
        vectorized: bool = True,
        unconstrained: str | None = None,
        max_plate_nesting: int = 1,
        discrete: Discrete | None = None,
        chunk: int | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        data_plate: str | None = None,
        validate: bool = True,
    ):
        self.model, self.guide, self.data = model, guide, data
        self.validate = validate
        self.data_plate = data_plate
        self.slices: tuple[int, int] | None = None  # (plate size, slice) when sliced
        self.vectorized, self.unconstrained = vectorized, unconstrained
        self.nesting, self.discrete = max_plate_nesting, discrete
        self._chunk, self._seed = chunk, seed
        self._devices = []
        if device is not None and torch.device(device).type == "cuda":
            self._devices = [torch.device(device)]
        self._stack = contextlib.ExitStack()
        self.sites: list[_Site] = []
        self.size = 1
        self.dropped = 0
        self._replayed: ReplayedChunks | None = None

    def __enter__(self) -> Drawer:
        stack = self._stack
        stack.enter_context(local_params())
        stack.enter_context(torch.no_grad())
        if not self.validate:  # as the fit ran: Pyro's checks of every value and argument off
            stack.enter_context(pyro.validation_enabled(False))
        stack.enter_context(torch.random.fork_rng(devices=self._devices))
        torch.manual_seed(self._seed)
        model_trace, guide_trace = _traces(self.model, self.guide, self.data)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        self.sites = _model_sites(model_trace, skip=self.discrete.sites if self.discrete else ())
        self.size = _chunk_size(model_trace, guide_trace, self._chunk) if self.vectorized else 1
        if self.vectorized and not self.unconstrained and not self.discrete:
            if self._chunk is None:
                self.slices = _data_slices(model_trace, guide_trace, self.data_plate)
                if self.slices is not None:
                    self.size = SLICED_DRAWS
            if self.slices is None:  # a long request's chunks are replayed from a graph
                self._replayed = ReplayedChunks(self._pyro_chunk, self.size, self._devices)
        return self

    def __exit__(self, *exc) -> None:
        self._replayed = None  # its graph holds the parameters and the data
        self._stack.close()

    @property
    def latent_sites(self) -> list[str]:
        return [s.name for s in self.sites if s.kind == "latent"]

    @property
    def deterministic_sites(self) -> list[str]:
        return [s.name for s in self.sites if s.kind == "deterministic"]

    def chunks(self, total: int):
        """``total`` draws as chunks of at most :attr:`size`: ``(log_joint, log_q, values,
        unconstrained)`` in float64 NumPy, draws with a non-finite log density dropped (and
        counted in :attr:`dropped`)."""
        if self._replayed is not None:
            self._replayed.prepare(total)
        done = 0
        while done < total:
            n = min(self.size, total - done)
            done += n
            if self.unconstrained:
                part = _unconstrained_chunk(
                    self.model, self.guide, self.data, n, self.sites, self.unconstrained
                )
            elif self._replayed is not None and self._replayed.serves(n):
                part = self._replayed()
            elif self.vectorized:
                with GatherIndexing():  # alpha[..., group] over the draws: the same numbers
                    part = self._pyro_chunk(n)
            else:  # one draw at a time: the mode's dispatch would cost more than it saves
                part = self._pyro_chunk(n)
            log_joint, log_q = _numpy(part[0]), _numpy(part[1])
            values = {k: _numpy(v) for k, v in part[2].items()}
            unconstrained = {k: _numpy(v) for k, v in part[3].items()}
            keep = np.isfinite(log_joint) & np.isfinite(log_q)
            if not keep.all():
                self.dropped += int((~keep).sum())
                log_joint, log_q = log_joint[keep], log_q[keep]
                values = {k: v[keep] for k, v in values.items()}
                unconstrained = {k: v[keep] for k, v in unconstrained.items()}
            yield log_joint, log_q, values, unconstrained

    def _pyro_chunk(self, n: int):
        """``n`` draws from Pyro traces of the model and guide: sliced over the data plate,
        vectorized over a plate of draws, or one at a time."""
        model, guide, data, sites = self.model, self.guide, self.data, self.sites
        if self.slices is not None:
            plate = self.data_plate
            return _sliced_chunk(model, guide, data, n, self.nesting, sites, plate, *self.slices)
        if self.vectorized:
            return _vectorized_chunk(model, guide, data, n, self.nesting, sites, self.discrete)
        return _loop_chunk(model, guide, data, n, sites, self.discrete)

    def log_weights(self, parts: list, seconds: float, notes: list[str]) -> LogWeights:
        """The draws of ``parts`` (chunks of :meth:`chunks`) as :class:`LogWeights`; the
        chunks' site arrays are taken out of them as they are joined (:func:`_joined`)."""
        if self.dropped:
            total = self.dropped + sum(len(p[0]) for p in parts)
            notes = [
                *notes,
                f"{self.dropped} of {total} draws had a non-finite log density and were dropped.",
            ]
            if total - self.dropped < 10:
                raise ValueError(
                    "the model or guide gives non-finite log densities on almost every guide draw"
                )
        return dataclasses.replace(
            self.layout(),
            log_joint=np.concatenate([p[0] for p in parts]),
            log_q=np.concatenate([p[1] for p in parts]),
            values=_joined(parts, 2, [s.name for s in self.sites]),
            unconstrained=_joined(parts, 3, self.latent_sites),
            seconds=seconds,
            notes=notes,
        )

    def layout(self) -> LogWeights:
        """No draws, only their layout: the sites, each latent site's unconstrained shape,
        transform and bijection (this drawer's own, as of its first draw). What a rank whose
        draws went to rank 0 needs to evaluate the model in q's unconstrained space."""
        latent = [s for s in self.sites if s.kind == "latent"]
        return LogWeights(
            log_joint=np.zeros(0),
            log_q=np.zeros(0),
            values={s.name: np.zeros((0, *s.shape)) for s in self.sites},
            unconstrained={s.name: np.zeros((0, *s.unconstrained_shape)) for s in latent},
            latent_sites=self.latent_sites,
            deterministic_sites=self.deterministic_sites,
            vectorized=self.vectorized,
            seconds=0.0,
            transforms={s.name: s.transform for s in latent},
            bijections={s.name: s.bijection for s in latent},
        )


def _joined(parts: list, index: int, names: list[str]) -> dict[str, np.ndarray]:
    """Each site's draws, its pieces in the chunks ``parts`` (their dicts at ``index``) joined
    in order and taken out of the chunks as they are, so that a site's pieces are released
    once joined: the pieces and the whole are held together for one site at a time."""
    joined = {}
    for name in names:
        pieces = [p[index].pop(name) for p in parts]
        joined[name] = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return joined


def draw_log_weights(
    model: Callable,
    guide: Callable,
    data: dict,
    *,
    draws: int = DiagnosisSettings.draws,
    vectorized: bool = True,
    unconstrained: str | None = None,
    max_plate_nesting: int = 1,
    discrete: Discrete | None = None,
    loop_draws: int = DiagnosisSettings.loop_draws,
    chunk: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    context: Context | None = None,
) -> LogWeights | None:
    r"""Draw from the guide and score each draw under model and guide.

    Parameters
    ----------
    model, guide
        Called as ``model(**data)`` and ``guide(**data)``; the guide's parameters are used as
        they are (nothing is trained).
    draws
        :math:`S`, the number of draws when ``vectorized``.
    vectorized
        Make the draws of a chunk under one ``pyro.plate`` at dim ``-(max_plate_nesting + 1)``;
        ``False`` runs model and guide once per draw, for ``min(draws, loop_draws)`` draws.
    unconstrained
        Evaluate the model at draws of an autoguide's flat unconstrained vector
        (:func:`~ppl_models.vi.unconstrained.evaluate`) as this mode says: ``"vmap"``,
        ``"plate"`` or ``"loop"`` (:func:`~ppl_models.vi.vmapped.log_joint_fn`), for a model
        that does not broadcast, or whose supports depend on other latents; None: from the
        traces of guide and model.
    discrete
        The model's discrete sites, summed out: :math:`\log p(x, z_s)` is the marginal over
        them (:mod:`ppl_models.vi.enumeration`), and they are not among the draws' sites.
    chunk
        Draws per chunk (default: as many as keep a chunk's tensors near 64 MiB, at most 20,000).
    seed
        Seeds torch's generator for the drawing only; the caller's generator state is restored.
    context
        A ``torchrun`` job's :class:`~ppl_models.distributed.Context`: each rank makes its share
        of the draws (at least 10) with its own seed (:func:`~ppl_models.distributed.rank_seed`),
        and rank 0 receives them all.

    Returns
    -------
    LogWeights or None
        Everything in float64 NumPy arrays on the CPU; None on ranks other than 0.

    Notes
    -----
    Runs inside :func:`ppl_models.svi.local_params` and ``torch.no_grad()``. A site whose value
    under the draws plate does not reduce to one value per draw raises ``ValueError``
    (the model is not vectorizable; use ``vectorized=False``).
    """
    if draws < 10:
        raise ValueError(f"draws must be >= 10, got {draws}")
    if context is not None and context.parallel:

        def share(n: int) -> int:
            return max(10, len(range(n)[context.share(n)]))

        mine = draw_log_weights(
            model,
            guide,
            data,
            draws=share(draws),
            vectorized=vectorized,
            unconstrained=unconstrained,
            max_plate_nesting=max_plate_nesting,
            discrete=discrete,
            loop_draws=share(loop_draws),
            chunk=chunk,
            seed=rank_seed(seed, context.rank),
            device=device,
        )
        # the bijections are rank 0's to keep: the other ranks send arrays only
        parts = context.gather(
            mine if context.is_main else dataclasses.replace(mine, bijections={})
        )
        return LogWeights.concatenate(parts) if context.is_main else None
    start = time.perf_counter()
    notes: list[str] = []
    total = draws if vectorized else min(draws, loop_draws)
    if total < draws:
        notes.append(
            f"The model is not vectorizable over draws, so {total:,} guide draws were "
            f"made one at a time (instead of {draws:,}); k-hat, the bounds and the "
            "summaries carry more Monte Carlo error."
        )
    drawer = Drawer(
        model,
        guide,
        data,
        vectorized=vectorized,
        unconstrained=unconstrained,
        max_plate_nesting=max_plate_nesting,
        discrete=discrete,
        chunk=chunk,
        seed=seed,
        device=device,
    )
    with drawer:
        parts = list(drawer.chunks(total))
    return drawer.log_weights(parts, time.perf_counter() - start, notes)
