"""The MNIST variational autoencoder as a Pyro model/guide pair.

``options`` (the architectures and likelihoods; no torch), ``networks`` (encoders and decoders),
``model`` (model, guide, likelihoods), ``data`` (MNIST on the device), ``evaluate`` (held-out
ELBO, importance-weighted bounds, k-hat, active units), ``figures``, and for a two-dimensional
latent ``posterior_grid`` (exact posteriors on grids), ``best_gaussian`` (each image's own
Gaussian) and ``gaps`` (the inference gap's parts). The command ``ppl-models vae``, its report
included, lives in :mod:`ppl_models.jobs.vae`.

The names below are available from the package (``vae.build_vae`` and so on). They are imported on
first use, so importing the package (or its torch-free ``options``) imports neither torch nor
Pyro.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "options": ("ARCHS", "LIKELIHOODS"),
    "data": ("MnistData", "load_mnist", "resolve_root"),
    "model": ("VaeGuide", "VaeModel", "build_vae", "observations"),
    "networks": ("build_networks",),
}
_SOURCE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_SOURCE)


def __getattr__(name: str):
    module = _SOURCE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
