r"""Models that do not broadcast over a particle dimension, evaluated with ``torch.func.vmap``.

A model written for one draw (``beta[0]``, ``mu.unsqueeze(-1)``, ``nn.Linear`` on a weight
drawn by ``PyroSample``) breaks under the particle plate that vectorizes Pyro's ELBO. For the
package's autoguides, which are distributions over one flat unconstrained vector :math:`u`,
every quantity a fit and its diagnosis need comes from

.. math:: \ell(u) = \log p(x, T(u)) + \log\lvert\det J_T(u)\rvert,

the model's log joint at the draw :math:`T(u)` of one vector, which :func:`log_joint_fn`
evaluates for a batch of vectors with ``torch.func.vmap`` (as NumPyro vmaps its log
densities): the model runs once, on batched tensors it sees as single draws. The ELBO is then
:math:`\frac1P \sum_p [\ell(u_p) - \log q(u_p)]` with :math:`u_p \sim q`
(:class:`VmappedElbo`), which is what ``Trace_ELBO`` estimates for the same guide.

A model whose Python code branches on a tensor's value cannot be vmapped
(:func:`vmap_ok` says so, and the fit loops over particles instead).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import torch
from pyro import poutine
from torch.distributions import biject_to
from torch.func import vmap

from ..svi import Objective


def unpacked(guide, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The constrained value of every latent site for one flat unconstrained vector ``u``, and
    :math:`\\log\\lvert\\det J_T(u)\rvert`."""
    values, log_jacobian = {}, u.new_zeros(())
    for site, part in guide._unpack_latent(u):
        transform = biject_to(site["fn"].support)
        value = transform(part)
        values[site["name"]] = value
        log_jacobian = log_jacobian + transform.log_abs_det_jacobian(part, value).sum()
    return values, log_jacobian


def split(guide, u: torch.Tensor) -> list[tuple[dict, torch.Tensor]]:
    """Each latent site of ``guide``'s prototype with its slice of a batch ``u`` of flat
    unconstrained vectors, shaped ``(n, *unconstrained_shape)``."""
    out, pos = [], 0
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        shape = tuple(guide._unconstrained_shapes[name])
        size = math.prod(shape)
        out.append((site, u[:, pos : pos + size].reshape(len(u), *shape)))
        pos += size
    return out


def log_joint_fn(
    model: Callable, guide, data: Mapping[str, Any], deterministic: bool = False
) -> Callable[[torch.Tensor], tuple]:
    r"""``f(u)`` for a batch ``u`` of flat unconstrained vectors ``(n, D)``: the model's
    :math:`\log p(x, T(u))` ``(n,)``, :math:`\log\lvert\det J_T(u)\rvert` ``(n,)`` and (with
    ``deterministic``) the values of its ``pyro.deterministic`` sites, each ``(n, *shape)``."""

    def single(u):
        values, log_jacobian = unpacked(guide, u)
        # the model's sample sites stay inside; its pyro.param sites reach the caller's tape
        with poutine.block(hide_types=["sample"]):
            trace = poutine.trace(poutine.condition(model, values)).get_trace(**data)
        extra = {}
        if deterministic:
            extra = {
                name: site["value"]
                for name, site in trace.nodes.items()
                if site["type"] == "sample" and site["infer"].get("_deterministic")
            }
        return trace.log_prob_sum(), log_jacobian, extra

    batched = vmap(single, randomness="different")

    def f(u: torch.Tensor):
        with pyro.validation_enabled(False):  # validation branches on values: not vmappable
            return batched(u)

    return f


def vmap_ok(model: Callable, guide, data: Mapping[str, Any], draws: int = 3) -> bool:
    """Whether :func:`log_joint_fn` gives, for ``draws`` draws of ``guide``, the log joint that
    the model gives one draw at a time (relative tolerance 1e-6 in float64, 1e-4 in float32);
    False when vmapping raises."""
    with torch.no_grad():
        u = guide.get_posterior().sample((draws,))
        try:
            batched, jac, _ = log_joint_fn(model, guide, data, deterministic=True)(u)
        except Exception:  # noqa: BLE001 - any failure under vmap means: loop
            return False
        looped = []
        for row in u:
            values, log_jacobian = unpacked(guide, row)
            with poutine.block():
                trace = poutine.trace(poutine.condition(model, values)).get_trace(**data)
            looped.append(trace.log_prob_sum() + log_jacobian)
    looped = torch.stack(looped)
    if not bool(torch.isfinite(looped).all()):
        return False
    rtol = 1e-4 if u.dtype == torch.float32 else 1e-6
    return bool(torch.allclose(batched + jac, looped, rtol=rtol, atol=rtol))


class VmappedElbo(Objective):
    r"""The negative ELBO :math:`-\frac1P\sum_p [\ell(u_p) - \log q(u_p)]` of an autoguide
    over the flat unconstrained vector, with the model vmapped over the ``particles`` draws
    (module docstring). Its parameters are the guide's, those of ``modules`` and the
    ``pyro.param`` sites the model reads (the model's own, fitted as point estimates)."""

    def __init__(self, model: Callable, guide, particles: int, modules=()):
        super().__init__(model, guide, None)
        self.guide = guide
        self.model_modules = torch.nn.ModuleList([m for m in modules if m is not guide])
        self._model = (model,)  # a tuple: a PyroModule model must not be registered twice
        self.particles = particles

    def loss(self, **data) -> torch.Tensor:
        posterior = self.guide.get_posterior()
        u = posterior.rsample((self.particles,))
        log_joint, log_jacobian, _ = log_joint_fn(self._model[0], self.guide, data)(u)
        return -(log_joint + log_jacobian - posterior.log_prob(u)).mean()
