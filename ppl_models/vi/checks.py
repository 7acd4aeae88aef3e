"""Checks of a model and its guide before a fit: one trace of each, and the refusals it allows.

:func:`declared_plate` finds and checks the declared data plate at a feasible point;
:func:`inspected_model` traces the model under the guide for its plate depth and refuses a plate
that draws its own subsample, a guide that misses sites or has extra ones
(:func:`check_guide_covers_model`), and a site whose batch shape is not its plates'
(:func:`check_site_shapes`). Every refusal is a ``ValueError`` whose message says what to change.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.util import site_is_subsample
from pyro.util import check_site_shape

from .data_plate import DataPlate, check_indexing, find_data_plate, refuse_own_subsampling
from .initialization import feasible_init
from .settings import FitSettings
from .traces import max_plate_nesting


def inspected_model(model, guide, data):
    """One trace of the model under the guide: its plate depth, and refusals of plates that
    draw their own subsample, of a guide that misses sites, and of sites of a wrong shape."""
    with poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(**data)
        prototype = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**data)
    nesting = max_plate_nesting(prototype)
    refuse_own_subsampling(guide_trace, prototype)
    check_guide_covers_model(guide_trace, prototype, autoguide=hasattr(guide, "prototype_trace"))
    check_site_shapes(prototype, nesting)
    return prototype, nesting


def declared_plate(model, data, settings: FitSettings, dtype, device) -> DataPlate | None:
    """The declared data plate, found in a trace of the model at a feasible point (each
    latent at its prior mean or median) and checked with the model's indexing of its data and
    latents (:func:`~ppl_models.vi.data_plate.check_indexing`), before any guide is built."""
    if not settings.data_plate:
        return None
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(InitMessenger(feasible_init(dtype, device))(model)).get_trace(**data)
    plate = find_data_plate(trace, settings.data_plate)
    check_indexing(model, latent_values(trace), data, plate)
    return plate


def check_guide_covers_model(guide_trace, model_trace, *, autoguide: bool = False) -> None:
    """A guide must draw every latent site of the model that is not summed out, and no site
    the model lacks: otherwise the ELBO is of another model (Pyro only warns, and the fit
    would run to the end on the wrong objective). An ``autoguide`` draws the sites of the model
    run it was built from, so a site it misses means that the model's sites change from run to
    run.

    Raises
    ------
    ValueError
        Naming the sites missing from the guide, or the guide's sites the model lacks.
    """
    latent = {
        name
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and not site["infer"].get("_deterministic")
        and site["infer"].get("enumerate") != "parallel"
    }
    drawn = {
        name
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary")
    }
    missing, extra = sorted(latent - drawn), sorted(drawn - latent - set(model_trace.nodes))
    if missing and autoguide:
        raise ValueError(
            f"the model's latent sites change from one run to the next: {missing} appeared in "
            "a run after the guide was built from another (a sample statement inside a branch "
            "on a random value); a guide covers a fixed set of sites, so draw every site in "
            "every run and let the branch choose between their values, or make the switch a "
            "discrete site summed out with infer={'enumerate': 'parallel'}"
        )
    if missing:
        raise ValueError(
            f"the guide draws no value for the model's latent sites {missing}: a guide needs a "
            "pyro.sample statement for every latent site of the model (discrete sites may "
            "instead be summed out: mark them with infer={'enumerate': 'parallel'})"
        )
    if extra:
        raise ValueError(
            f"the guide draws sites the model does not have: {extra}; rename them to the "
            "model's site names"
        )


def check_site_shapes(model_trace, nesting: int) -> None:
    """Every sample site's batch shape must be that of its plates (Pyro's own check, made here
    whatever the caller's validation setting): a batch dimension outside any plate would clash
    with the particle and draw dimensions.

    Raises
    ------
    ValueError
        Pyro's message: the site, the expected and actual shapes, and the fixes it suggests.
    """
    model_trace.compute_log_prob()
    for site in model_trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            check_site_shape(site, nesting)


def latent_values(trace) -> dict[str, torch.Tensor]:
    """The values of a trace's latent sample sites (not observed, not a plate's subsample)."""
    return {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }
