r"""The diagnosis's chunks of draws replayed from a traced graph.

A chunk of :math:`n` draws runs the guide and the model under Pyro's effect handlers: the
traces, the plates' bookkeeping and the sites' log densities cost milliseconds of Python on top
of the tensor work, and the diagnosis repeats it for every chunk, thousands of times where
:mod:`~ppl_models.vi.precision` asks for many draws. With the guide's parameters and the data
fixed for the whole diagnosis, a chunk is a function of the random generator alone,

.. math::

    \big(\log p(x, z_s),\ \log q(z_s),\ z_s,\ T^{-1}(z_s)\big)_{s=1..n}, \qquad z_s \sim q,

so it is recorded once as the list of ATen operations it performs
(:func:`~ppl_models.traced.trace_graph`), everything that depends on the parameters and the
data alone computed at tracing time (:func:`~ppl_models.traced.simplify`), and replayed: the
same operations on the same random numbers, taken from the generator in the same order. A
replayed chunk is used only after a check: its numbers are the plain chunk's, exactly, on the
same random state. Where tracing fails or the check does not hold (a model that reads its
draws' values into Python), the plain chunks go on.

Tracing costs what some tens of plain chunks cost (0.5 s, about 35 chunks of 46 draws of the
:math:`J = 1{,}000` hierarchical logistic regression) and a replay saves a quarter of a chunk,
so a graph is traced only for a request of at least :data:`REPLAY_AFTER` full chunks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..traced import Untraceable, simplify, trace_graph

# full chunks in one request before a graph is traced: tracing costs some 35 plain chunks and
# a replay saves about a quarter of one, so a graph pays for itself after some 140 chunks
# (the requests of draws by precision double, so a graph traced for one serves the next too)
REPLAY_AFTER = 128

Chunk = tuple[torch.Tensor, torch.Tensor, dict, dict]


class ReplayedChunks:
    """Chunks of ``size`` draws of ``chunk(size)`` (the plain path) replayed from a graph, once
    :meth:`prepare` has traced and checked one.

    ``devices`` are the CUDA devices whose random state tracing and the check must restore.
    The graph holds the guide's parameters and the data as constants: it serves one diagnosis.
    """

    def __init__(self, chunk: Callable[[int], Chunk], size: int, devices: list[int]):
        self.chunk, self.size, self.devices = chunk, size, devices
        self.graph: torch.fx.GraphModule | None = None
        self.fallback_reason: str | None = None
        self._names: tuple[list[str], list[str]] = ([], [])

    def serves(self, n: int) -> bool:
        """Whether a chunk of ``n`` draws is replayed."""
        return n == self.size and self.graph is not None

    def __call__(self) -> Chunk:
        """A chunk of :attr:`size` draws, replayed."""
        return self._unflat(self.graph())

    def prepare(self, requested: int) -> None:
        """Trace and check a graph where ``requested`` draws hold :data:`REPLAY_AFTER` full
        chunks and none was tried yet."""
        if self.graph is not None or self.fallback_reason is not None:
            return
        if requested // self.size < REPLAY_AFTER:
            return
        try:
            self.graph = self._traced()
        except Untraceable as why:
            self.fallback_reason = str(why)

    def _flat(self) -> tuple[torch.Tensor, ...]:
        log_joint, log_q, values, unconstrained = self.chunk(self.size)
        self._names = (list(values), list(unconstrained))
        return (log_joint, log_q, *values.values(), *unconstrained.values())

    def _unflat(self, flat: tuple) -> Chunk:
        names, unconstrained_names = self._names
        values = dict(zip(names, flat[2 : 2 + len(names)], strict=True))
        unconstrained = dict(zip(unconstrained_names, flat[2 + len(names) :], strict=True))
        return flat[0], flat[1], values, unconstrained

    def _traced(self) -> torch.fx.GraphModule:
        with torch.no_grad():
            gm = trace_graph(self._flat, (), self.devices, what="the chunk of draws")
            try:
                simplify(gm)
                same = self._same(gm)
            except Exception as err:  # noqa: BLE001 - the graph, not the model, failed
                raise Untraceable(f"the replayed chunk failed: {type(err).__name__}") from None
        if not same:
            raise Untraceable("the replayed chunk's numbers differ from the plain chunk's")
        return gm

    def _same(self, gm: torch.fx.GraphModule) -> bool:
        """Whether the graph gives the plain chunk's numbers exactly on the same random state
        (each run from it, and the state then restored: the check draws nothing)."""
        results = []
        for run in (self._flat, gm):
            with torch.random.fork_rng(devices=self.devices):
                results.append(run())
        plain, replayed = results
        return len(plain) == len(replayed) and all(
            a.shape == b.shape
            and a.dtype == b.dtype
            and bool(torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))
            for a, b in zip(plain, replayed, strict=True)
        )
