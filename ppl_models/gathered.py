r"""One dimension of a tensor indexed by an integer vector, computed as a ``gather``.

A hierarchical model reaches its group effects through its observations' group numbers,
``alpha[..., group]``: for :math:`P` draws of :math:`J` effects and :math:`N` observations,

.. math::

    y_{p, i} = \alpha_{p, g_i}, \qquad p = 1..P,\ i = 1..N.

ATen's general ``index`` kernel computes each of the :math:`P N` addresses in a loop that
serves every indexing form, and its backward is an accumulating ``index_put``: on the CPU a few
nanoseconds a number, a large share of such a model's step. ``torch.gather`` along the indexed
dimension copies the same numbers, and its backward (``scatter_add``) adds each gradient into the
same place in the same order, so values and gradients are the same to the bit, in about a third
of the time. Negative indices count from the end, as ``index`` reads them.

Two users: :mod:`ppl_models.traced` rewrites the ``index`` nodes of a traced loss into
:func:`gather_along`, and the diagnosis's vectorized draws run the model under
:class:`GatherIndexing`, which does the same for ``tensor[key]`` calls in Python (its dispatch
costs about a microsecond per torch call: a draw at a time it would cost more than it saves).
Only CPU tensors are rewritten: on a GPU ``scatter_add`` adds in no fixed order, where the
accumulating ``index_put`` is deterministic.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_FULL = slice(None)


def gather_along(source: torch.Tensor, dim: int, index: torch.Tensor, wrap: bool = True):
    """``source`` indexed on dimension ``dim`` by the 1-D int64 ``index`` (``source[..., index]``
    for the last dimension), as a gather. ``wrap=False`` where ``index`` is known to hold no
    negative number."""
    if wrap:
        index = torch.where(index < 0, index + source.shape[dim], index)
    view = [1] * source.dim()
    view[dim] = index.shape[0]
    out = list(source.shape)
    out[dim] = index.shape[0]
    return torch.gather(source, dim, index.view(view).expand(out))


def vector_key(source: torch.Tensor, key) -> tuple[int, torch.Tensor] | None:
    """``(dim, index)`` where ``source[key]`` indexes dimension ``dim`` by one 1-D int64 vector
    ``index``: ``key`` holds that vector, full slices and at most one ``...`` and nothing else,
    all on the CPU; None for any other key."""
    if not isinstance(source, torch.Tensor) or source.device.type != "cpu":
        return None
    parts = key if isinstance(key, tuple) else (key,)
    vectors = [k for k, part in enumerate(parts) if isinstance(part, torch.Tensor)]
    if len(vectors) != 1:
        return None
    (position,) = vectors
    index = parts[position]
    if index.dtype != torch.int64 or index.dim() != 1 or index.device.type != "cpu":
        return None
    others = parts[:position] + parts[position + 1 :]
    if not all(part is Ellipsis or _is_full(part) for part in others):
        return None
    ellipses = [k for k, part in enumerate(parts) if part is Ellipsis]
    if len(ellipses) > 1 or len(parts) - len(ellipses) > source.dim():
        return None
    if ellipses and ellipses[0] < position:
        return source.dim() - (len(parts) - position), index  # counted from the end
    return position, index


def _is_full(part) -> bool:
    return isinstance(part, slice) and part == _FULL


class GatherIndexing(TorchFunctionMode):
    """Within this context, ``tensor[key]`` with a key :func:`vector_key` accepts is
    computed by :func:`gather_along`; every other call runs as it would."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__ and not kwargs:
            source, key = args
            vector = vector_key(source, key)
            if vector is not None:
                return gather_along(source, *vector)
        return func(*args, **(kwargs or {}))
