"""A few hundred SVI steps on the offline MNIST subset beat bounds that need no trained model.

- Bernoulli: independent pixels with p = 1/2 score 784 log 2 = 543.4 nats; the best model that
  ignores the latent (independent pixels at the training grey-level means) scores its own
  log-likelihood. The ELBO is a lower bound on log p(x), so an ELBO above that baseline means
  the latent is used.
- Normal(scale 1): a decoder that ignores z and outputs the training mean image, with q = prior
  (KL = 0), attains the mean-image baseline exactly; training must reach it from a random start.
"""

import math

import pytest
import torch

from ppl_models.batches import DeviceBatches
from ppl_models.svi import make_elbo, make_objective, seed_everything, train
from ppl_models.vae import evaluate
from ppl_models.vae.data import load_mnist
from ppl_models.vae.model import build_vae, observations
from ppl_models.vae.networks import build_networks


def fit_subset(
    mnist_dir, arch, likelihood, latent_dim, steps, batch_size, device="cpu", bf16=False
):
    """Train on the first 2,000 training images; held-out ELBO on 500 images before and after."""
    seed_everything(0)
    data = load_mnist(mnist_dir, device)
    pixels = data.train_images[:2000]
    heldout = observations(
        data.heldout_images[:500], likelihood, torch.Generator(device=device).manual_seed(0)
    )
    model, guide = build_vae(
        *build_networks(arch, latent_dim), latent_dim, likelihood, autocast=bf16
    )
    model, guide = model.to(device), guide.to(device)
    before = evaluate.elbo_per_image(model, guide, heldout).mean()
    loss_fn = make_objective(model, guide, make_elbo("trace"))
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)
    done = 0
    while done < steps:  # epochs, each with a fresh binarisation and permutation
        batches = list(DeviceBatches(observations(pixels, likelihood), batch_size))
        train(loss_fn, optimizer, batches[: steps - done], progress=False)
        done += min(len(batches), steps - done)
    after = evaluate.elbo_per_image(model, guide, heldout).mean()
    return before, after, pixels.mean(0).flatten(), heldout.flatten(1)


def independent_pixel_loglik(mean, heldout):
    p = mean.clamp(1e-3, 1 - 1e-3)
    return float((heldout * p.log() + (1 - heldout) * (1 - p).log()).sum(1).mean())


def mean_image_loglik(mean, heldout):
    centre = 2 * mean - 1  # the grey-level mean in the likelihood's [-1, 1] units
    return float((-((heldout - centre) ** 2) / 2 - math.log(2 * math.pi) / 2).sum(1).mean())


# each learning test runs on the synthetic digits everywhere, and on the real images where present
DATASETS = pytest.mark.parametrize(
    "dataset",
    ["synthetic_mnist", pytest.param("mnist_dir", marks=[pytest.mark.mnist, pytest.mark.slow])],
    ids=["synthetic", "mnist"],
)


@DATASETS
def test_mlp_bernoulli_beats_the_pixel_baselines(dataset, request):
    root = request.getfixturevalue(dataset)
    before, after, mean, heldout = fit_subset(root, "mlp", "bernoulli", 50, 300, 100)
    baseline = independent_pixel_loglik(mean, heldout)
    assert -after < 784 * math.log(2)
    assert after > before + 300
    assert after > baseline + 20  # well above: about 50 nats in practice


@DATASETS
def test_conv_normal_reaches_the_mean_image_baseline(dataset, request):
    root = request.getfixturevalue(dataset)
    before, after, mean, heldout = fit_subset(root, "conv", "normal", 32, 200, 64)
    baseline = mean_image_loglik(mean, heldout)
    assert after > before + 100
    assert after > baseline - 10


@pytest.mark.cuda
@pytest.mark.parametrize("bf16", [False, True])
def test_conv_bernoulli_learns_on_cuda(synthetic_mnist, bf16):
    before, after, mean, heldout = fit_subset(
        synthetic_mnist, "conv", "bernoulli", 32, 1500, 64, device="cuda", bf16=bf16
    )
    assert -after < 784 * math.log(2)
    assert after > independent_pixel_loglik(mean, heldout)
