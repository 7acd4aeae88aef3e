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
from torch.func import vmap

from ..svi import Objective
from .enumeration import log_joint_at
from .traces import max_plate_nesting
from .unconstrained import evaluate, evaluate_draws, guide_layout


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


PLATE, VMAP, LOOP = "plate", "vmap", "loop"  # how a batch of draws is evaluated


def log_joint_fn(
    model: Callable, guide, data: Mapping[str, Any], mode: str = VMAP, discrete=None
) -> Callable[[torch.Tensor], tuple]:
    r"""``f(u)`` for a batch ``u`` of flat unconstrained vectors ``(n, D)``: the model's
    :math:`\log p(x, T(u))` ``(n,)``, :math:`\log\lvert\det J_T(u)\rvert` ``(n,)``, and dicts
    of the latent sites' and of the ``pyro.deterministic`` sites' values, batched over the
    draws: :func:`~ppl_models.vi.unconstrained.evaluate` at each vector, vmapped (``"vmap"``),
    one vector at a time (``"loop"``), or under a plate of the draws (``"plate"``,
    :func:`~ppl_models.vi.unconstrained.evaluate_draws`, for a model that broadcasts). With the
    model's ``discrete`` sites (:class:`~ppl_models.vi.enumeration.Discrete`), one vector at a
    time, its log joint the marginal over them (:func:`~ppl_models.vi.enumeration.log_joint_at`).
    """
    layout = guide_layout(guide)
    if discrete:
        mode = LOOP
    if mode == PLATE:
        nesting = max_plate_nesting(guide.prototype_trace)
        return lambda u: evaluate_draws(model, layout, u, data, nesting)

    def single(u):
        point = evaluate(model, layout, u, data)
        log_joint = point.log_joint
        if discrete:  # the discrete sites' prior draws in point's trace, summed out instead
            log_joint = log_joint_at(model, point.values, data, discrete)
        return log_joint, point.log_jacobian, point.values, point.deterministic

    if mode == LOOP:

        def looped(u: torch.Tensor):
            rows = [single(row) for row in u]
            return (
                torch.stack([r[0] for r in rows]),
                torch.stack([r[1] for r in rows]),
                {k: torch.stack([r[2][k] for r in rows]) for k in rows[0][2]},
                {k: torch.stack([r[3][k] for r in rows]) for k in rows[0][3]},
            )

        return looped

    batched = vmap(single, randomness="different")

    def f(u: torch.Tensor):
        with pyro.validation_enabled(False):  # validation branches on values: not vmappable
            return batched(u)

    return f


def evaluation_ok(model: Callable, guide, data: Mapping[str, Any], mode: str, draws=3) -> bool:
    """Whether :func:`log_joint_fn` in ``mode`` gives, for ``draws`` draws of ``guide``, the
    log joint that the model gives one draw at a time (relative tolerance 1e-6 in float64, 1e-4
    in float32); False when the batched evaluation raises."""
    with torch.no_grad():
        u = guide.get_posterior().sample((draws,))
        try:
            batched, jac, _, _ = log_joint_fn(model, guide, data, mode)(u)
        except Exception:  # noqa: BLE001 - any failure when batched means: do not batch
            return False
        looped, looped_jac, _, _ = log_joint_fn(model, guide, data, LOOP)(u)
    if not bool(torch.isfinite(looped).all()) or batched.shape != looped.shape:
        return False
    rtol = 1e-4 if u.dtype == torch.float32 else 1e-6
    return bool(torch.allclose(batched + jac, looped + looped_jac, rtol=rtol, atol=rtol))


def vmap_ok(model: Callable, guide, data: Mapping[str, Any], draws: int = 3) -> bool:
    """:func:`evaluation_ok` with the model vmapped."""
    return evaluation_ok(model, guide, data, VMAP, draws)


class VmappedElbo(Objective):
    r"""The negative ELBO :math:`-\frac1P\sum_p [\ell(u_p) - \log q(u_p)]` of an autoguide
    over the flat unconstrained vector, the model evaluated at the ``particles`` draws as
    ``mode`` says (:func:`log_joint_fn`: vmapped for a model that does not broadcast; under a
    plate or one at a time for a model whose supports depend on other latents, where the guide's
    own fixed transforms would not do). Its parameters are the guide's, those of ``modules`` and
    the ``pyro.param`` sites the model reads (the model's own, fitted as point estimates)."""

    def __init__(self, model: Callable, guide, particles: int, modules=(), mode: str = VMAP):
        super().__init__(model, guide, None)
        self.guide = guide
        self.model_modules = torch.nn.ModuleList([m for m in modules if m is not guide])
        self._model = (model,)  # a tuple: a PyroModule model must not be registered twice
        self.particles = particles
        self.mode = mode

    def loss(self, **data) -> torch.Tensor:
        posterior = self.guide.get_posterior()
        u = posterior.rsample((self.particles,))
        log_joint, log_jacobian, _, _ = log_joint_fn(self._model[0], self.guide, data, self.mode)(u)
        return -(log_joint + log_jacobian - posterior.log_prob(u)).mean()
