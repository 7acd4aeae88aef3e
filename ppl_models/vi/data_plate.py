r"""A model's data plate: minibatches of its observations, and data-parallel fitting over them.

A model script *declares its data plate* by naming the ``pyro.plate`` over its independent
observations (``DATA_PLATE = "obs"`` in the script, or ``--set data_plate=obs``) and by indexing
its data with the plate's indices, the standard Pyro idiom:

.. code-block:: python

    with pyro.plate("obs", len(x)) as i:
        pyro.sample("x", dist.Normal(mu, sigma), obs=x[i])

The fit then chooses the indices. Under :func:`subsampled` the plate's indices are a batch
:math:`B` of the :math:`N` observations, and Pyro scales every log-density in the plate by
:math:`N / |B|`, so

.. math::

    \widehat{\mathcal L}_B = E_q\Big[\log p(z) + \frac{N}{|B|} \sum_{n \in B} \log p(x_n \mid z)
        - \log q(z)\Big]

is an unbiased estimate of the full-data ELBO when :math:`B` is a uniformly random subset. With
``W`` ranks under ``torchrun`` each rank takes its stride of one permutation shared by all
(:func:`ppl_models.batches.index_batches`), and the average that
``DistributedDataParallel`` takes over ranks is the estimate from the union of their batches
(see :mod:`ppl_models.distributed`).

A latent site inside the data plate (a *local* latent, one value per observation) is drawn, under
the subsample :math:`B`, for the observations of :math:`B` only: its log-density is scaled by
:math:`N / |B|` like theirs, and the guide gives it per-observation parameters indexed by the same
indices (:mod:`ppl_models.vi.local`). The model must therefore draw it with one value per index of
the plate (``pyro.sample("theta", dist.Normal(mu, 1))`` inside ``with pyro.plate("obs", N) as
i:``) and use it as drawn; :func:`check_indexing` refuses a model whose latents do not match the
subsample.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.util import site_is_subsample

from ..errors import one_line

SCRIPT_ATTRIBUTE = "DATA_PLATE"


@dataclass(frozen=True)
class DataPlate:
    """The plate ``name`` over ``size`` observations, and the sites it holds.

    Attributes
    ----------
    sites
        Its observed sites.
    latents
        Its latent sites (local latents: one value per observation).
    latent_dims
        For each latent site, the dim of its value (negative, counted from the right, event
        dims included) that the plate indexes.
    """

    name: str
    size: int
    sites: tuple[str, ...]
    latents: tuple[str, ...] = ()
    latent_dims: tuple[int, ...] = ()

    def local_values(
        self, values: Mapping[str, torch.Tensor], indices: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """``values`` with each latent site of the plate cut to the observations ``indices``
        (unchanged for None): the values a subsampled run of the model draws for them."""
        out = dict(values)
        if indices is None:
            return out
        for name, dim in zip(self.latents, self.latent_dims, strict=True):
            if name in out:
                out[name] = out[name].index_select(dim, indices.to(out[name].device))
        return out


class _Subsampled(Messenger):
    """Give the plate ``name`` the indices ``indices`` instead of letting it draw its own."""

    def __init__(self, name: str, indices: torch.Tensor):
        super().__init__()
        self.name = name
        self.indices = indices

    def _pyro_sample(self, msg) -> None:
        if msg["name"] == self.name and site_is_subsample(msg) and msg["value"] is None:
            msg["value"] = self.indices


def subsampled(name: str, indices: torch.Tensor) -> Messenger:
    """A handler under which ``pyro.plate(name, N)`` (in model and guide alike) runs over the
    observations ``indices`` and scales its log-densities by ``N / len(indices)``.

    A plate given ``subsample_size`` must be given as many indices; one without takes any number.
    """
    return _Subsampled(name, indices)


def active_indices(name: str) -> torch.Tensor | None:
    """The indices that the innermost active :func:`subsampled` handler gives the plate
    ``name``, or None outside one."""
    for messenger in reversed(_PYRO_STACK):
        if isinstance(messenger, _Subsampled) and messenger.name == name:
            return messenger.indices
    return None


def resubsampled(model: Callable, name: str) -> Callable:
    """``model`` run under the subsample of the plate ``name`` that is active where it is
    called (:func:`active_indices`), given again right around it: a handler that blocks sample
    sites between the fit's :func:`subsampled` and the model (as
    :func:`~ppl_models.vi.unconstrained.evaluate` does) would hide the plate from it, and the
    model would run on all the data."""

    def run(*args, **kwargs):
        indices = active_indices(name)
        if indices is None:
            return model(*args, **kwargs)
        with subsampled(name, indices):
            return model(*args, **kwargs)

    return run


def find_data_plate(trace, name: str) -> DataPlate:
    """The plate ``name`` of a model's trace (of the full data), its observed sites and its
    latent sites, each latent with the dim of its value that the plate indexes.

    Raises
    ------
    ValueError
        When the trace has no plate ``name``, or when the plate holds no observed site.
    """
    size = None
    observed, latent, dims = [], [], []
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        if site_is_subsample(site):
            if site["name"] == name:
                size = int(site["fn"].size)
            continue
        frame = next((f for f in site["cond_indep_stack"] if f.name == name), None)
        if frame is None:
            continue
        if site["is_observed"]:
            observed.append(site["name"])
        elif not frame.vectorized or frame.dim is None:
            raise ValueError(
                f"data_plate {name!r} is iterated (for i in pyro.plate(...)) around the latent "
                f"site {site['name']!r}: a data plate with latents must be vectorized, "
                f"`with pyro.plate({name!r}, N) as i:`"
            )
        else:
            latent.append(site["name"])
            dims.append(frame.dim - site["fn"].event_dim)
    if size is None:
        plates = {
            frame.name
            for site in trace.nodes.values()
            if site["type"] == "sample"
            for frame in site["cond_indep_stack"]
            if not frame.name.startswith("_")
        }
        known = ", ".join(repr(p) for p in sorted(plates)) or "none"
        raise ValueError(f"data_plate {name!r} is not a plate of the model (its plates: {known})")
    if not observed:
        raise ValueError(f"data_plate {name!r} holds no observed site")
    return DataPlate(name, size, tuple(observed), tuple(latent), tuple(dims))


def refuse_own_subsampling(*traces) -> None:
    r"""Raise ``ValueError`` when a plate of the traces draws its own subsample
    (``pyro.plate(name, N, subsample_size=b)`` with ``b < N``).

    Such a model's :math:`\log p(x, z)` is a random estimate, so the diagnosis (importance
    weights, k-hat, bounds) would measure its noise; the data plate gives the fit minibatches
    while the diagnosis sees all the data.
    """
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] != "sample" or not site_is_subsample(site):
                continue
            fn = site["fn"]
            if fn.subsample_size is not None and fn.subsample_size < fn.size:
                name = site["name"]
                raise ValueError(
                    f"pyro.plate({name!r}, {fn.size}, subsample_size={fn.subsample_size}) draws "
                    "its own subsample, so log p(x, z) is a random estimate and cannot be "
                    f"diagnosed: drop subsample_size, index the data by the plate's indices, and "
                    f"declare DATA_PLATE = {name!r} with --set batch_size={fn.subsample_size} "
                    "for minibatches"
                )


def check_indexing(
    model: Callable, latents: Mapping[str, torch.Tensor], data: Mapping[str, Any], plate: DataPlate
) -> None:
    r"""Check that ``model`` indexes its data by the plate's indices, and that the plate's
    latent sites follow the subsample.

    With the latents fixed at ``latents`` (the plate's latents cut to each subsample's
    observations), the unscaled log-densities of the plate's sites over two halves of the
    observations must add up to the full data's:
    :math:`\sum_{n \in A} \ell_n + \sum_{n \in A^c} \ell_n = \sum_n \ell_n` (relative tolerance
    1e-6 in float64, 1e-4 in float32). A model that passes ``obs=x`` instead of ``obs=x[i]``
    fails it, by a shape error or by a different sum; so does one that draws a latent of the
    plate with the full data's size (``.expand([N])``), or indexes it again (``theta[i]``).

    Raises
    ------
    ValueError
        Naming the plate (and its latents) and the idiom the model must follow.
    """
    advice = (
        f"the model must index its data by the indices of pyro.plate({plate.name!r}, N), as in "
        f"`with pyro.plate({plate.name!r}, len(x)) as i: pyro.sample(..., obs=x[i])`"
    )
    if plate.latents:
        names = ", ".join(plate.latents)
        first = plate.latents[0]
        advice = (
            f"data_plate {plate.name!r} holds the latent site(s) {names}, whose values do not "
            "match the subsample: inside `with pyro.plate("
            f"{plate.name!r}, len(x)) as i:` draw each latent with one value per index "
            f"(pyro.sample({first!r}, dist.Normal(mu, 1.0)), not .expand([N]) or a full-size "
            f"tensor), use it as drawn ({first}, not {first}[i]), and index only the data by "
            "i (obs=x[i])"
        )
    if plate.size < 2:
        raise ValueError(f"data_plate {plate.name!r} has {plate.size} observation; it needs two")
    like = next(iter(latents.values()), torch.zeros((), dtype=torch.float64))
    half = plate.size // 2
    parts = (
        None,
        torch.arange(half, device=like.device),
        torch.arange(half, plate.size, device=like.device),
    )
    totals = []
    for indices in parts:
        conditioned = poutine.condition(model, data=plate.local_values(latents, indices))
        part = contextlib.nullcontext() if indices is None else subsampled(plate.name, indices)
        try:
            with torch.no_grad(), part:
                trace = poutine.trace(conditioned).get_trace(**data)
                trace.compute_log_prob()
        except Exception as err:  # noqa: BLE001 - any failure here means the indexing is wrong
            first = one_line(str(err)) or type(err).__name__
            raise ValueError(f"{advice} (on half of the data it raised: {first})") from err
        totals.append(
            sum(
                float(trace.nodes[name]["unscaled_log_prob"].sum())
                for name in (*plate.sites, *plate.latents)
                if name in trace
            )
        )
    full, halves = totals[0], totals[1] + totals[2]
    rtol = 1e-6 if like.dtype == torch.float64 else 1e-4
    if not math.isclose(full, halves, rel_tol=rtol, abs_tol=rtol):
        raise ValueError(
            f"{advice}: the log-density of the two halves of the data adds up to "
            f"{halves:.8g}, not the full data's {full:.8g}"
        )
