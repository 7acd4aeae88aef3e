"""The MNIST variational autoencoder as a Pyro model/guide pair.

``networks`` (encoders and decoders), ``model`` (model, guide, likelihoods), ``data`` (MNIST on
the device), ``evaluate`` (held-out ELBO, importance-weighted bounds, k-hat, active units),
``figures``, and for a two-dimensional latent ``posterior_grid`` (exact posteriors on grids),
``best_gaussian`` (each image's own Gaussian), ``gaps`` (the inference gap's parts) and
``gaps_report``. The command ``ppl-models vae`` lives in :mod:`ppl_models.jobs.vae`.
"""

from .data import MnistData, load_mnist, resolve_root
from .model import LIKELIHOODS, VaeGuide, VaeModel, build_vae, observations
from .networks import ARCHS, build_networks

__all__ = [
    "ARCHS",
    "LIKELIHOODS",
    "MnistData",
    "VaeGuide",
    "VaeModel",
    "build_networks",
    "build_vae",
    "load_mnist",
    "observations",
    "resolve_root",
]
