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
from .unconstrained import evaluate, guide_layout


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
    model: Callable, guide, data: Mapping[str, Any], vectorized: bool = True
) -> Callable[[torch.Tensor], tuple]:
    r"""``f(u)`` for a batch ``u`` of flat unconstrained vectors ``(n, D)``: the model's
    :math:`\log p(x, T(u))` ``(n,)``, :math:`\log\lvert\det J_T(u)\rvert` ``(n,)``, and dicts
    of the latent sites' values and of the ``pyro.deterministic`` sites' values, each
    ``(n, *shape)``: :func:`~ppl_models.vi.unconstrained.evaluate` at each vector, vmapped (or,
    with ``vectorized=False``, one vector at a time)."""
    layout = guide_layout(guide)

    def single(u):
        point = evaluate(model, layout, u, data)
        return point.log_joint, point.log_jacobian, point.values, point.deterministic

    if not vectorized:

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


def vmap_ok(model: Callable, guide, data: Mapping[str, Any], draws: int = 3) -> bool:
    """Whether :func:`log_joint_fn` gives, for ``draws`` draws of ``guide``, the log joint that
    the model gives one draw at a time (relative tolerance 1e-6 in float64, 1e-4 in float32);
    False when vmapping raises."""
    with torch.no_grad():
        u = guide.get_posterior().sample((draws,))
        try:
            batched, jac, _, _ = log_joint_fn(model, guide, data)(u)
        except Exception:  # noqa: BLE001 - any failure under vmap means: loop
            return False
        layout = guide_layout(guide)
        looped = []
        for row in u:
            point = evaluate(model, layout, row, data)
            looped.append(point.log_joint + point.log_jacobian)
    looped = torch.stack(looped)
    if not bool(torch.isfinite(looped).all()):
        return False
    rtol = 1e-4 if u.dtype == torch.float32 else 1e-6
    return bool(torch.allclose(batched + jac, looped, rtol=rtol, atol=rtol))


class VmappedElbo(Objective):
    r"""The negative ELBO :math:`-\frac1P\sum_p [\ell(u_p) - \log q(u_p)]` of an autoguide
    over the flat unconstrained vector, with the model vmapped over the ``particles`` draws
    (module docstring), or evaluated one draw at a time (``vectorized=False``: a model that
    cannot be vmapped, but whose supports depend on other latents, so that its guide's own
    fixed transforms would not do). Its parameters are the guide's, those of ``modules`` and
    the ``pyro.param`` sites the model reads (the model's own, fitted as point estimates)."""

    def __init__(self, model: Callable, guide, particles: int, modules=(), vectorized=True):
        super().__init__(model, guide, None)
        self.guide = guide
        self.model_modules = torch.nn.ModuleList([m for m in modules if m is not guide])
        self._model = (model,)  # a tuple: a PyroModule model must not be registered twice
        self.particles = particles
        self.vectorized = vectorized

    def loss(self, **data) -> torch.Tensor:
        posterior = self.guide.get_posterior()
        u = posterior.rsample((self.particles,))
        f = log_joint_fn(self._model[0], self.guide, data, self.vectorized)
        log_joint, log_jacobian, _, _ = f(u)
        return -(log_joint + log_jacobian - posterior.log_prob(u)).mean()
