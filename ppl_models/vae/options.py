"""The VAE's choice lists: network architectures and pixel likelihoods.

This module imports nothing, so a run configuration can validate its values and the command line
can list its choices without loading PyTorch. :mod:`ppl_models.vae.networks` and
:mod:`ppl_models.vae.model` import their lists from here, so each is written once.
"""

ARCHS = ("conv", "mlp")  # the seed notebook's convolutional networks, Pyro's 784-400-50 MLP
LIKELIHOODS = ("normal", "normal-learned-scale", "bernoulli")  # see ppl_models.vae.model
