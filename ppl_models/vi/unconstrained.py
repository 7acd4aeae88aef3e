r"""A model evaluated at a point :math:`u` of its unconstrained space, one site after another.

The package's autoguides are distributions over one flat vector :math:`u` of all latent sites
in the unconstrained space. A site's value is its slice of :math:`u` mapped by the bijection
:math:`T` of the site's support, ``biject_to(support)``. :func:`evaluate` runs the model once and
maps each latent site when the model reaches it, with the support the model states *there*: a
support that depends on other latents (``beta ~ Uniform(0, 1 - alpha)``, Stan's
``real<lower=0, upper=1-alpha>``) gets the bounds of this point, as Stan transforms each draw
with that draw's bounds (plain Pyro autoguides fix the transform once, at set-up). The result is

.. math:: \ell(u) = \log p(x, T(u)) + \log\lvert\det J_T(u)\rvert,

the log density of the posterior in the unconstrained space, up to :math:`\log p(x)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from .initialization import prior_trace
from .traces import log_prob_per_draw, sum_per_draw, under_plate

# each latent site, its unconstrained shape, and how many of its leftmost dims its plates index
Layout = list[tuple[str, tuple[int, ...], int]]
DRAWS_PLATE = "_ppl_models_unconstrained_draws"


def guide_layout(guide) -> Layout:
    """The layout of an ``AutoContinuous`` guide's flat vector: its sites in the model's order,
    each with its unconstrained shape and its number of batch (plate) dims."""
    return [
        (name, tuple(guide._unconstrained_shapes[name]), len(site["fn"].batch_shape))
        for name, site in guide.prototype_trace.iter_stochastic_nodes()
    ]


def parts(layout: Layout, u: torch.Tensor, nesting: int | None = None) -> dict[str, torch.Tensor]:
    """The slice of the flat vector ``u`` of each site, shaped: ``u`` is one vector, or (with
    ``nesting``, the model's plate depth) a batch ``(n, D)`` whose draws go to dim
    ``-(nesting + 1)`` of each site's batch shape, as under a plate there."""
    out, pos = {}, 0
    for name, shape, batch_dims in layout:
        size = math.prod(shape)
        if nesting is None:
            out[name] = u[pos : pos + size].reshape(shape)
        else:
            pad = [1] * (nesting - batch_dims)
            out[name] = u[:, pos : pos + size].reshape(len(u), *pad, *shape)
        pos += size
    return out


class _AtUnconstrained(Messenger):
    """Sets each latent site named in ``parts`` to ``T(part)`` with ``T`` the bijection of the
    support the site has when the model reaches it, and records its log-Jacobian."""

    def __init__(self, parts: Mapping[str, torch.Tensor]):
        super().__init__()
        self.parts = parts
        self.values: dict[str, torch.Tensor] = {}
        self.log_jacobians: dict[str, torch.Tensor] = {}
        self.supports: dict = {}

    def _pyro_sample(self, msg) -> None:
        part = self.parts.get(msg["name"])
        if part is None or msg["is_observed"]:
            return
        support = msg["fn"].support
        transform = biject_to(support)
        value = transform(part)
        log_jacobian = transform.log_abs_det_jacobian(part, value)
        # per element of the site's batch shape, summed over its event dims
        self.log_jacobians[msg["name"]] = sum_rightmost(
            log_jacobian, log_jacobian.dim() - value.dim() + msg["fn"].event_dim
        )
        self.values[msg["name"]] = value
        self.supports[msg["name"]] = support
        msg["value"] = value
        msg["is_observed"] = True


@dataclass
class Point:
    """The model at one point :math:`u`: its log joint, the log-Jacobian of :math:`T`, each
    latent site's value, log-Jacobian and support there, its ``pyro.deterministic`` values."""

    log_joint: torch.Tensor
    log_jacobian: torch.Tensor
    values: dict[str, torch.Tensor]
    log_jacobians: dict[str, torch.Tensor] = field(default_factory=dict)
    supports: dict = field(default_factory=dict)
    deterministic: dict[str, torch.Tensor] = field(default_factory=dict)


def evaluate(model: Callable, layout: Layout, u: torch.Tensor, data: Mapping[str, Any]) -> Point:
    r"""Run ``model(**data)`` at the flat unconstrained vector ``u`` (module docstring).

    The model's sample sites stay inside; its ``pyro.param`` sites reach the caller's handlers
    (so that a fit finds the model's own parameters)."""
    handler = _AtUnconstrained(parts(layout, u))
    with poutine.block(hide_types=["sample"]), handler:
        trace = poutine.trace(model).get_trace(**data)
    log_jacobian = u.new_zeros(())
    for value in handler.log_jacobians.values():
        log_jacobian = log_jacobian + value.sum()
    deterministic = {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["infer"].get("_deterministic")
    }
    return Point(
        trace.log_prob_sum(),
        log_jacobian,
        handler.values,
        handler.log_jacobians,
        handler.supports,
        deterministic,
    )


def evaluate_draws(
    model: Callable, layout: Layout, u: torch.Tensor, data: Mapping[str, Any], nesting: int
) -> tuple:
    r""":func:`evaluate` at a batch ``u`` of ``n`` flat vectors at once, the model run under a
    plate of the draws at dim ``-(nesting + 1)`` (for a model that broadcasts): per draw
    :math:`\log p(x, T(u))` and :math:`\log\lvert\det J_T(u)\rvert`, ``(n,)``, and the latent
    and deterministic sites' values as the plated run has them (the draws at dim
    ``-(nesting + 1)`` of their batch shapes; :func:`~ppl_models.vi.traces.per_draw_value`
    reshapes them)."""
    n, dim = len(u), -(nesting + 1)
    handler = _AtUnconstrained(parts(layout, u, nesting))
    with poutine.block(hide_types=["sample"]), handler:
        trace = poutine.trace(under_plate(model, DRAWS_PLATE, n, dim)).get_trace(**data)
    trace.compute_log_prob()
    log_jacobian = u.new_zeros(n)
    for value in handler.log_jacobians.values():
        log_jacobian = log_jacobian + sum_per_draw(value, n, dim)
    deterministic = {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["infer"].get("_deterministic")
    }
    return log_prob_per_draw(trace, n, dim), log_jacobian, handler.values, deterministic


def _bounds(support) -> list[torch.Tensor]:
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    return [
        torch.as_tensor(getattr(support, key))
        for key in ("lower_bound", "upper_bound")
        if hasattr(support, key)
    ]


def dynamic_sites(
    model: Callable, data: Mapping[str, Any], dtype: torch.dtype | None = None, draws: int = 2
) -> list[str]:
    """The latent sites whose support's bounds change with the values of other latents (runs
    on two draws of the prior disagree about them)."""
    bounds = []
    for _ in range(draws):
        trace = prior_trace(model, data, dtype or torch.get_default_dtype())
        bounds.append(
            {
                name: _bounds(site["fn"].support)
                for name, site in trace.nodes.items()
                if site["type"] == "sample"
                and not site["is_observed"]
                and not site_is_subsample(site)
            }
        )
    out = []
    for name, first in bounds[0].items():
        for other in bounds[1:]:
            second = other.get(name, [])
            if len(first) != len(second) or any(
                a.shape != b.shape or not torch.equal(a, b)
                for a, b in zip(first, second, strict=True)
            ):
                out.append(name)
                break
    return out


def check_bounds(point: Point, sites: list[str]) -> None:
    """Every dynamic site's bounds at ``point`` are finite and ordered.

    Raises
    ------
    ValueError
        Naming the site and its bounds there, and what to change in the model.
    """
    for name in sites:
        bounds = _bounds(point.supports[name])
        finite = all(bool(torch.isfinite(b).all()) for b in bounds)
        ordered = len(bounds) < 2 or bool((bounds[0] < bounds[1]).all())
        if not (finite and ordered):
            shown = ", ".join(f"{float(b.flatten()[0]):.4g}" for b in bounds)
            raise ValueError(
                f"site {name!r} has a support whose bounds depend on other latents and are "
                f"{'not finite' if not finite else 'empty'} at a draw of them ({shown}): write "
                "the model so that every value of those latents gives finite bounds, lower "
                "below upper (as Stan requires of lower=/upper= expressions)"
            )
