"""Every test runs seeded, on the CPU unless marked ``cuda``, with a non-interactive matplotlib."""

import os
from pathlib import Path

import matplotlib
import pyro
import pytest
import torch

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


@pytest.fixture(scope="session")
def synthetic_mnist(tmp_path_factory) -> Path:
    """A small MNIST-format data set (1,000 training, 200 test images of structured synthetic
    digits) in torchvision's layout; see :mod:`synthetic_mnist`."""
    from synthetic_mnist import write_synthetic_mnist

    return write_synthetic_mnist(tmp_path_factory.mktemp("synthetic-mnist"))


@pytest.fixture
def mnist_dir() -> Path:
    """The offline MNIST test split (``PPL_MODELS_DATA`` or ``../shared/data/mnist``)."""
    path = Path(os.environ.get("PPL_MODELS_DATA", SHARED_MNIST))
    if not (path / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found under {path}")
    return path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
