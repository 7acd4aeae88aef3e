r"""Whether a model can take particles (and the diagnosis's draws) under a plate.

:func:`vectorization_ok` checks that the model gives the same
:math:`\log p(x, z) - \log q(z)` for draws taken together under a particle plate as one by
one; a model that indexes ``beta[0]`` fails it, and the fit then loops over particles
(``Trace_ELBO(vectorize_particles=False)``) and says so in its notes
(:attr:`ppl_models.vi.fitting.SviFit.notes`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..svi import local_params


def _per_particle(log_prob: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """Sum a site's log-density over every dim except the particle dim ``dim`` (negative)."""
    if log_prob.dim() < -dim or log_prob.shape[dim] == 1:
        return log_prob.sum().expand(n)
    return log_prob.movedim(dim, 0).reshape(log_prob.shape[dim], -1).sum(-1)


def _base(fn):
    while isinstance(fn, dist.Independent | dist.MaskedDistribution):
        fn = fn.base_dist
    return fn


def _log_weight_vectorized(model, guide, data, n, dim) -> torch.Tensor:
    with pyro.plate("_vectorization_check", n, dim=dim):
        guide_trace = poutine.trace(guide).get_trace(**data)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**data)
    total = torch.zeros(n, dtype=torch.float64)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                total = (
                    total + sign * _per_particle(site["log_prob"], dim, n).to(torch.float64).cpu()
                )
    return total, guide_trace


def vectorization_ok(
    model: Callable, guide: Callable, data: Mapping[str, Any], max_plate_nesting: int
) -> bool:
    r"""Whether ``model``/``guide`` give the same :math:`\log p(x, z) - \log q(z)` for 3 draws
    taken together under a plate at dim ``-(max_plate_nesting + 1)`` as one by one.

    The draws of the vectorized run are replayed one at a time (the guide conditioned on its
    non-deterministic sites' values for that draw), so the two computations see the same
    :math:`z`. False when the vectorized run raises or the two disagree (``allclose``, relative
    tolerance 1e-6 in float64, 1e-3 in float32): a model that indexes ``beta[0]`` silently
    broadcasts wrongly under a particle plate. Errors of the one-by-one run propagate (the model
    itself is broken then).
    """
    n, dim = 3, -(max_plate_nesting + 1)
    with torch.no_grad(), local_params():
        single = poutine.trace(guide).get_trace(**data)
        try:
            vectorized, guide_trace = _log_weight_vectorized(model, guide, data, n, dim)
        except Exception:  # noqa: BLE001 - any failure under the plate means: do not vectorize
            return False
        looped = []
        for i in range(n):
            values = {}
            for name, site in guide_trace.nodes.items():
                if (
                    site["type"] != "sample"
                    or site_is_subsample(site)
                    or isinstance(_base(site["fn"]), dist.Delta)
                ):
                    continue
                shape = single.nodes[name]["value"].shape
                value = site["value"]
                axis = value.dim() - site["fn"].event_dim + dim
                if axis >= 0 and value.shape[axis] == n:
                    value = value.select(axis, i)
                try:
                    values[name] = value.reshape(shape)
                except RuntimeError:
                    return False
            g = poutine.trace(poutine.condition(guide, values)).get_trace(**data)
            for name in values:  # conditioned, yet still the guide's draws for replay
                g.nodes[name]["is_observed"] = False
            m = poutine.trace(poutine.replay(model, trace=g)).get_trace(**data)
            looped.append(float(m.log_prob_sum()) - float(g.log_prob_sum()))
    looped = torch.tensor(looped, dtype=torch.float64)
    if not bool(torch.isfinite(vectorized).all()):
        return False
    rtol = 1e-3 if _floating_dtype(data) == torch.float32 else 1e-6
    return bool(torch.allclose(vectorized, looped, rtol=rtol, atol=rtol))


def _floating_dtype(data: Mapping[str, Any]) -> torch.dtype:
    for value in data.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return torch.float64
