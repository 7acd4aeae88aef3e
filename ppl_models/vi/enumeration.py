r"""Discrete latent variables, summed out by parallel enumeration.

A model with finite discrete latent sites :math:`k` (assignments of a mixture, an HMM's hidden
states) is fitted and diagnosed through its marginal over the continuous sites :math:`z`,

.. math:: \log p(x, z) = \log \sum_k p(x, z, k),

computed exactly by Pyro's parallel enumeration (each discrete site gets a tensor dimension of
its support, and the sums are contracted plate by plate, as ``TraceEnum_ELBO`` contracts
them). The guide covers the continuous sites only; the fit's objective is ``TraceEnum_ELBO``;
the diagnosis's log weights are :math:`\log p(x, z_s) - \log q(z_s)` with this marginal
(:func:`marginal_log_joint`, one value per draw under a plate over the draws), so k-hat, the
importance-weighted bounds, CUBO and the error bounds keep their meaning.

Which sites are summed out (:func:`find_discrete`): those the model marks
(``infer={"enumerate": "parallel"}``, ``config_enumerate``), and every other discrete latent
site whose support is finite and at most :data:`MAX_SUPPORT` values. A discrete site with an
infinite support (Poisson, Geometric) cannot be summed out, and the fit refuses it.

The posterior marginals of the discrete sites, :math:`p(k_i \mid x) = E_{p(z \mid x)}[p(k_i
\mid x, z)]`, are importance-weighted averages over guide draws of the exact conditional
marginals :math:`p(k_i \mid x, z_s)` (:func:`conditional_marginals`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from opt_einsum import shared_intermediates
from pyro import poutine
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from .initialization import prior_trace
from .traces import max_plate_nesting, sum_per_draw, under_plate

MAX_SUPPORT = 256  # a discrete site with at most this many values is summed out unasked
CHECK_PLATE = "_ppl_models_enumeration_check"


@dataclass(frozen=True)
class Discrete:
    """The discrete latent sites of a model that a fit sums out.

    Attributes
    ----------
    sites
        Their names, in the model's order.
    marked
        Those the model itself marked for enumeration (the others the package marks).
    supports
        Site -> the number of values it takes.
    max_plate_nesting
        The model's plate depth (enumeration dims go to its left).
    """

    sites: tuple[str, ...]
    marked: tuple[str, ...]
    supports: dict
    max_plate_nesting: int = 0

    def __bool__(self) -> bool:
        return bool(self.sites)


def find_discrete(
    model: Callable, data: Mapping[str, Any], dtype: torch.dtype | None = None
) -> Discrete:
    """The discrete latent sites of ``model`` (one run on a draw of its prior tells them; a
    flat prior's site at a feasible point, its floats in ``dtype``).

    Raises
    ------
    ValueError
        For a discrete site with an infinite support, or one with more than
        :data:`MAX_SUPPORT` values that the model did not mark: naming it, and saying what to
        change in the model.
    """
    trace = prior_trace(model, data, dtype or torch.get_default_dtype())
    sites, marked, supports = [], [], {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        fn = site["fn"]
        if not getattr(fn.support, "is_discrete", False):
            continue
        kind = type(fn).__name__
        if not fn.has_enumerate_support:
            raise ValueError(
                f"site {name!r} is a discrete latent variable ({kind}) with an infinite support: "
                "it cannot be summed out, and SVI needs the gradients of continuous latents; "
                "bound it (a Categorical over 0..K) or marginalize it in the model"
            )
        size = int(fn.enumerate_support(expand=False).shape[0])
        asked = site["infer"].get("enumerate") == "parallel"
        if not asked and size > MAX_SUPPORT:
            raise ValueError(
                f"site {name!r} is a discrete latent variable ({kind}) with {size} values, too "
                f"many to sum out unasked (at most {MAX_SUPPORT}): mark it with "
                "infer={'enumerate': 'parallel'} if that is affordable, or marginalize it in "
                "the model"
            )
        sites.append(name)
        supports[name] = size
        if asked:
            marked.append(name)
    return Discrete(tuple(sites), tuple(marked), supports, max_plate_nesting(trace))


def enumerated(model: Callable, discrete: Discrete) -> Callable:
    """``model`` with every site of ``discrete`` marked for parallel enumeration."""
    names = set(discrete.sites)

    def config(site) -> dict:
        return {"enumerate": "parallel"} if site["name"] in names else {}

    return poutine.infer_config(model, config)


def point_trace(values: Mapping[str, torch.Tensor]):
    """A trace holding ``values`` as sample sites, to replay a model at that point."""
    trace = poutine.Trace()
    for name, value in values.items():
        trace.add_node(name, name=name, type="sample", value=value, is_observed=False, infer={})
    return trace


def log_joint_at(
    model: Callable,
    values: Mapping[str, torch.Tensor],
    data: Mapping[str, Any],
    discrete: Discrete | None = None,
) -> torch.Tensor:
    r""":math:`\log p(x, z)` at the continuous values ``values`` (one point): the model's log
    joint, with the ``discrete`` sites summed out when there are any."""
    if discrete:
        return marginal_log_joint(
            enumerated(model, discrete),
            point_trace(values),
            data,
            max_plate_nesting=discrete.max_plate_nesting,
        )
    with poutine.block():
        trace = poutine.trace(poutine.condition(model, values)).get_trace(**data)
    return trace.log_prob_sum()


def enumeration_vectorizes(
    model: Callable, guide: Callable, data: Mapping[str, Any], discrete: Discrete, draws: int = 3
) -> bool:
    """Whether the enumerated ``model`` gives, for ``draws`` draws of ``guide`` taken together
    under a plate, the marginal log joints it gives them one by one (relative tolerance 1e-6 in
    float64, 1e-3 in float32); False when the plated run raises."""
    nesting = discrete.max_plate_nesting
    with torch.no_grad():
        traces = [poutine.trace(guide).get_trace(**data) for _ in range(draws)]
        singles = torch.stack(
            [marginal_log_joint(model, t, data, max_plate_nesting=nesting) for t in traces]
        )
        stacked = {}
        for name, node in traces[0].nodes.items():
            if (
                node["type"] != "sample"
                or node["infer"].get("is_auxiliary")
                or site_is_subsample(node)
            ):
                continue
            value = torch.stack([t.nodes[name]["value"] for t in traces])
            plates = value.dim() - 1 - node["fn"].event_dim  # the dims that plates index
            stacked[name] = value.reshape(draws, *[1] * (nesting - plates), *value.shape[1:])
        try:
            plated = marginal_log_joint(
                under_plate(model, CHECK_PLATE, draws, -(nesting + 1)),
                point_trace(stacked),
                data,
                max_plate_nesting=nesting,
                draw_plate=CHECK_PLATE,
                draws=draws,
            )
        except Exception:  # noqa: BLE001 - any failure under the plate means: do not vectorize
            return False
    rtol = 1e-3 if singles.dtype == torch.float32 else 1e-6
    finite = bool(torch.isfinite(singles).all())
    return finite and bool(torch.allclose(plated, singles, rtol=rtol, atol=rtol))


def continuous_part(model: Callable, discrete: Discrete) -> Callable:
    """``model`` with its discrete sites hidden: what a guide over the continuous sites sees."""
    return poutine.block(model, hide=list(discrete.sites))


def _enumerated_trace(model, values_trace, data, first_dim: int):
    """The model's trace with the continuous sites replayed from ``values_trace`` and the
    discrete ones enumerated from dim ``first_dim`` leftwards, its log densities packed."""
    enum = poutine.enum(model, first_available_dim=first_dim)
    trace = poutine.trace(poutine.replay(enum, trace=values_trace)).get_trace(**data)
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    trace.pack_tensors()
    return trace


def _ordinal(trace, site) -> frozenset:
    return frozenset(
        trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized
    )


def _factors(trace):
    """The model's log densities split as ``TraceEnum_ELBO`` splits them: terms that involve no
    enumerated dimension (summed as they are) and the log factors of the enumerated sites and
    the sites that depend on them (contracted), with the enumeration dims and common scale."""
    enum_dims = set()
    for site in trace.nodes.values():
        if site["type"] == "sample" and site["infer"].get("_enumerate_dim") is not None:
            enum_dims.update(site["packed"]["log_prob"]._pyro_dims)
    enum_dims -= set(trace.plate_to_symbol.values())
    costs, factors, scale = [], OrderedDict(), None
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        log_prob = site["packed"]["log_prob"]
        if enum_dims.isdisjoint(log_prob._pyro_dims):
            costs.append(site)
            continue
        unscaled = site["packed"]["unscaled_log_prob"]
        if site["infer"].get("_enumerate_dim") is None:
            unscaled = packed.scale_and_mask(unscaled, mask=site["packed"]["mask"])
        factors.setdefault(_ordinal(trace, site), []).append(unscaled)
        scale = site["scale"] if scale is None else scale
    return costs, factors, enum_dims, 1.0 if scale is None else scale


def marginal_log_joint(
    model: Callable,
    values_trace,
    data: Mapping[str, Any],
    *,
    max_plate_nesting: int,
    draw_plate: str | None = None,
    draws: int = 1,
) -> torch.Tensor:
    r""":math:`\log p(x, z)` of an enumerated ``model`` (:func:`enumerated`) with the discrete
    sites summed out, at the continuous values of ``values_trace`` (a guide's trace).

    With ``draw_plate``, the values are ``draws`` draws under that plate (at dim
    ``-(max_plate_nesting + 1)``, which the model must run under too) and the result has one
    value per draw, ``(draws,)``; without, it is a scalar.
    """
    depth = max_plate_nesting + (1 if draw_plate else 0)
    trace = _enumerated_trace(model, values_trace, data, -(depth + 1))
    costs, factors, enum_dims, scale = _factors(trace)
    target = frozenset()
    if draw_plate is not None:
        target = frozenset({trace.plate_to_symbol[draw_plate]})
    total = torch.zeros(draws if draw_plate else (), dtype=_dtype(trace))
    dim = -(max_plate_nesting + 1)

    def reduced(tensor):  # one value per draw (or one value)
        return sum_per_draw(tensor, draws, dim) if draw_plate else tensor.sum()

    for site in costs:  # terms free of the discrete sites
        total = total + reduced(site["log_prob"])
    if factors:
        with shared_intermediates() as cache:
            ring = LogRing(cache=cache, dim_to_size=_sizes(trace))
            log_z = contract_to_tensor(factors, enum_dims, target_ordinal=target, ring=ring)
        log_z = packed.unpack(log_z, trace.symbol_to_dim)
        total = total + scale * reduced(log_z)
    return total


def _sizes(trace) -> dict[str, int]:
    """The size of every packed dimension of the trace (plates and enumerations) by symbol."""
    sizes = {}
    for site in trace.nodes.values():
        if site["type"] == "sample":
            for term in (site["packed"]["log_prob"], site["packed"]["unscaled_log_prob"]):
                sizes.update(zip(term._pyro_dims, term.shape, strict=True))
    return sizes


def _dtype(trace) -> torch.dtype:
    for site in trace.nodes.values():
        if site["type"] == "sample" and site["log_prob"].is_floating_point():
            return site["log_prob"].dtype
    return torch.get_default_dtype()


def conditional_marginals(
    model: Callable,
    values_trace,
    data: Mapping[str, Any],
    discrete: Discrete,
    *,
    max_plate_nesting: int,
    draw_plate: str,
    draws: int,
) -> dict[str, torch.Tensor]:
    r"""For each discrete site, :math:`p(k \mid x, z_s)` for each of ``draws`` draws of the
    continuous sites under ``draw_plate``: ``(draws, *site_batch_shape, support)``."""
    depth = max_plate_nesting + 1
    trace = _enumerated_trace(model, values_trace, data, -(depth + 1))
    _, factors, enum_dims, _ = _factors(trace)
    draw_symbol = trace.plate_to_symbol[draw_plate]
    out = {}
    with shared_intermediates() as cache:
        ring = LogRing(cache=cache, dim_to_size=_sizes(trace))
        for name in discrete.sites:
            site = trace.nodes[name]
            symbol = site["infer"]["_enumerate_symbol"]
            logits = contract_to_tensor(
                factors,
                enum_dims,
                target_ordinal=_ordinal(trace, site) | {draw_symbol},
                target_dims={symbol},
                ring=ring,
            )
            logits = packed.unpack(logits, trace.symbol_to_dim)
            out[name] = _per_draw_probabilities(
                logits, site, max_plate_nesting, draws, site["infer"]["_enumerate_dim"]
            )
    return out


def _per_draw_probabilities(logits, site, max_plate_nesting: int, draws: int, enum_dim: int):
    """Unpacked logits of one discrete site (its support at ``enum_dim``, the draws at
    ``-(max_plate_nesting + 1)``, its plates to the right) as probabilities
    ``(draws, *plate_shape, support)``."""
    depth = max_plate_nesting + 2  # the support, the draws, the plates
    while logits.dim() < -enum_dim:
        logits = logits.unsqueeze(0)
    logits = logits.movedim(enum_dim, -1)  # support last; draws now at -depth
    while logits.dim() < depth:
        logits = logits.unsqueeze(0)
    logits = (
        logits.reshape(-1, *logits.shape[-depth:]).squeeze(0) if logits.dim() > depth else logits
    )
    logits = logits.expand(draws, *logits.shape[1:])
    sizes = [1] * max_plate_nesting
    for f in site["cond_indep_stack"]:
        if f.vectorized and f.dim is not None and -f.dim <= max_plate_nesting:
            sizes[max_plate_nesting + f.dim] = f.size
    logits = logits.expand(draws, *sizes, logits.shape[-1])
    while sizes and sizes[0] == 1:  # leading dims of plates the site is not in
        sizes.pop(0)
    return torch.softmax(logits, -1).reshape(draws, *sizes, logits.shape[-1])
