r"""Non-centring a model's funnels: the ladder's ``reparam`` rung.

A latent location-scale site whose scale is another latent site, :math:`\theta \sim
N(\mu, \tau)`, makes a funnel (:func:`funnel_sites`). :func:`noncentred` rewrites it with
Pyro's ``LocScaleReparam`` as :math:`\tilde\theta \sim N(0, 1)`, :math:`\theta = \mu +
\tau\tilde\theta` (Gorinova et al. 2020), keeping :math:`\theta` as a deterministic site, so
that the posterior and every summary still speak of the user's own sites.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.reparam import LocScaleReparam
from pyro.poutine.messenger import Messenger
from torch.distributions import constraints

from ..svi import local_params


def loc_scale(fn) -> bool:
    """A location-scale family on the real line (what ``LocScaleReparam`` can non-centre)."""
    while isinstance(getattr(fn, "base_dist", None), torch.distributions.Distribution):
        if isinstance(fn, torch.distributions.TransformedDistribution):
            return False
        fn = fn.base_dist
    support = fn.support
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    return (
        {"loc", "scale"} <= set(getattr(fn, "arg_constraints", {}))
        and support == constraints.real
        and not isinstance(fn, dist.Delta)
    )


def funnel_sites(model: Callable, data: dict, guide=None) -> dict[str, list[str]]:
    """The latent location-scale sites whose scale is another latent site, each with its scale
    parents (from :func:`ppl_models.vi.advice.model_structure`): where a funnel can form. A site
    the model masks in part (``obs_mask``'s imputation site) is left as written: its masked
    entries have no density to non-centre (:mod:`ppl_models.vi.masked`)."""
    from .advice import model_structure

    scales = model_structure(model, data, guide).get("scale_parents") or {}
    if not scales:
        return {}
    trace = model_trace(model, data, guide)
    return {
        site: parents
        for site, parents in scales.items()
        if site in trace.nodes
        and loc_scale(trace.nodes[site]["fn"])
        and not isinstance(trace.nodes[site]["mask"], torch.Tensor)
    }


def model_trace(model: Callable, data: dict, guide=None):
    """One run of the model, at a draw of ``guide`` (else of the prior), nothing recorded."""
    with torch.random.fork_rng(), torch.no_grad(), poutine.block(), local_params():
        if guide is None:
            return poutine.trace(model).get_trace(**data)
        guide_trace = poutine.trace(guide).get_trace(**data)
        return poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**data)


def noncentred(model: Callable, sites: list[str] | tuple[str, ...]) -> Callable:
    r"""``model`` with each of ``sites`` non-centred: ``x ~ D(loc, scale)`` becomes
    ``x_decentered ~ D(0, 1)`` and ``x = loc + scale * x_decentered``, a ``pyro.deterministic``
    site of the same name (Pyro's ``LocScaleReparam(centered=0)``; a funnel's cure). The
    posterior of the original sites is unchanged; the draws of ``x`` are computed from those of
    ``x_decentered``, so every summary and reference speaks of the user's own sites."""
    chosen = frozenset(sites)

    def config(msg):
        if msg["name"] not in chosen or msg["is_observed"]:
            return None
        fn = msg["fn"]
        while hasattr(fn, "base_dist"):
            fn = fn.base_dist
        shape = sorted(set(fn.arg_constraints) - {"loc", "scale"})
        return LocScaleReparam(centered=0.0, shape_params=shape)

    def reparametrised(**data):
        with _MarkDeterministic(chosen):
            return poutine.reparam(model, config=config)(**data)

    reparametrised.__name__ = f"noncentred_{getattr(model, '__name__', 'model')}"
    reparametrised.__wrapped__ = model
    return reparametrised


class _MarkDeterministic(Messenger):
    """Marks the non-centred sites (which ``ReparamMessenger``, applied first, turned into
    masked ``Delta`` sites) as ``pyro.deterministic`` sites, so that the diagnosis records their
    values as it records any derived quantity."""

    def __init__(self, sites: frozenset[str]):
        super().__init__()
        self.sites = sites

    def _pyro_sample(self, msg):
        if msg["name"] in self.sites and msg["is_observed"]:
            msg["infer"] = {**(msg.get("infer") or {}), "_deterministic": True}
