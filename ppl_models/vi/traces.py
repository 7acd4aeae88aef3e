"""Pyro traces and plates: a trace's plate depth, a model run under a plate of draws."""

from __future__ import annotations

from collections.abc import Callable

import pyro


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
