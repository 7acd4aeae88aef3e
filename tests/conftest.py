"""Every test runs seeded, on the CPU unless marked ``cuda``, with a non-interactive matplotlib.

Tests marked ``cuda`` skip without a GPU; tests marked ``mnist`` (the real images, fixture
``mnist_dir``) skip unless ``$PPL_MODELS_DATA`` or ``../shared/data/mnist`` holds them. Every
other VAE test runs on the synthetic MNIST-format set of the ``synthetic_mnist`` fixture.
"""

import os
from pathlib import Path

import matplotlib
import pyro
import pytest
import torch
from exp_normal_reference import DATASETS

matplotlib.use("Agg")
# The suite's tensors are small: one thread avoids oversubscribing a 2-core machine.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _seeded():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield


@pytest.fixture(params=list(DATASETS), ids=list(DATASETS))
def dataset(request):
    """Each exponential-normal data set of ``exp_normal_reference.DATASETS``: ``(x, rate)``."""
    return DATASETS[request.param]


@pytest.fixture(scope="session")
def synthetic_mnist(tmp_path_factory) -> Path:
    """A small MNIST-format data set (1,000 training, 200 test images of structured synthetic
    digits) in torchvision's layout; see :mod:`synthetic_mnist`."""
    from synthetic_mnist import write_synthetic_mnist

    return write_synthetic_mnist(tmp_path_factory.mktemp("synthetic-mnist"))


def real_mnist() -> Path:
    """Where the real MNIST images are looked for: ``$PPL_MODELS_DATA``, else
    ``../shared/data/mnist`` beside the repository."""
    return Path(os.environ.get("PPL_MODELS_DATA", SHARED_MNIST))


@pytest.fixture
def mnist_dir(request) -> Path:
    """The real MNIST images (for tests marked ``mnist``)."""
    assert request.node.get_closest_marker("mnist"), "a test using mnist_dir must be marked mnist"
    return real_mnist()


def pytest_collection_modifyitems(config, items):
    skips = {}
    if not torch.cuda.is_available():
        skips["cuda"] = pytest.mark.skip(reason="needs a CUDA GPU")
    if not (real_mnist() / "MNIST" / "raw").is_dir():
        skips["mnist"] = pytest.mark.skip(
            reason=f"needs the real MNIST images: none under {real_mnist()} "
            "(set PPL_MODELS_DATA, or download them with ppl-models vae --download)"
        )
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)
