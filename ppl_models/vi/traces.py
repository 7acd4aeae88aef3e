"""Pyro traces and plates: a trace's plate depth, a model run under a plate of draws."""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro.poutine.util import site_is_subsample


def max_plate_nesting(trace) -> int:
    """The deepest vectorized plate of a trace (0 without plates), as Pyro's ELBO guesses it."""
    dims = [
        -frame.dim
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None
    ]
    return max([0, *dims])


def under_plate(fn: Callable, name: str, size: int, dim: int) -> Callable:
    """``fn`` run inside ``pyro.plate(name, size, dim=dim)``: ``size`` independent draws at
    once, for a model that broadcasts."""

    def run(**kwargs):
        with pyro.plate(name, size, dim=dim):
            return fn(**kwargs)

    return run


def sum_per_draw(tensor: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Sum ``tensor`` over every dim but the draws dim ``dim`` (negative), ``(n,)``; a tensor
    not batched over the draws is the same term for every draw."""
    if tensor.dim() >= -dim and tensor.shape[dim] == n:
        return tensor.movedim(dim, 0).reshape(n, -1).sum(1)
    return tensor.sum().expand(n)


def per_draw_value(tensor: torch.Tensor, n: int, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """Reshape a vectorized site value to ``(n, *shape)``.

    Under the draws plate a value has the site's own shape on the right and the draws
    dimension somewhere in the dims to its left, the others being 1 (or absent: then the value
    is the same for every draw and is broadcast).
    """
    k = len(shape)
    if tensor.dim() < k:
        tensor = tensor.reshape((1,) * (k - tensor.dim()) + tuple(tensor.shape))
    lead = tuple(tensor.shape[: tensor.dim() - k])
    size = math.prod(lead)
    if size not in (1, n) or sum(d != 1 for d in lead) > 1:
        raise ValueError(
            f"site {name!r} has shape {tuple(tensor.shape)} under the draws plate, which does not "
            f"reduce to {n} draws of shape {shape}"
        )
    return tensor.expand(*lead, *shape).reshape(size, *shape).expand(n, *shape)


def log_prob_per_draw(trace, n: int, dim: int) -> torch.Tensor:
    """Sum of every sample site's log-probability, kept per draw (the plate at ``dim``)."""
    total = None
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        per = sum_per_draw(site["log_prob"], n, dim)
        total = per if total is None else total + per
    if total is None:
        raise ValueError("the model has no sample sites")
    return total
