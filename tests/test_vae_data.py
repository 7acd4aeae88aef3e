"""MNIST loading: IDX parsing against the raw bytes, the offline split, errors, batching."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_models.batches import DeviceBatches
from ppl_models.vae import data as vae_data
from ppl_models.vae.data import load_mnist, read_idx, resolve_root


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """An IDX file of unsigned bytes, written from the format's definition (big-endian header)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else 0x0800 | array.ndim
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


def fake_split(raw: Path, prefix: str, n: int, shape=(28, 28), seed=0) -> None:
    rng = np.random.default_rng(seed)
    write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, *shape)))
    write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))


@pytest.mark.mnist
def test_offline_test_split_is_read_and_split_8000_2000(mnist_dir):
    data = load_mnist(mnist_dir)
    raw = mnist_dir / "MNIST" / "raw"
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read()[8:], dtype=np.uint8)  # 8-byte header: magic, count
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read()[16:], dtype=np.uint8).reshape(-1, 28, 28)
    assert data.train_images.shape == (8000, 1, 28, 28)
    assert data.heldout_images.shape == (2000, 1, 28, 28)
    assert data.train_images.dtype == torch.float32
    # the README's first labels of the official file
    assert data.train_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    np.testing.assert_array_equal(data.heldout_labels.numpy(), labels[8000:])
    np.testing.assert_allclose(data.train_images[3, 0].numpy(), images[3] / 255, atol=1e-7)
    np.testing.assert_allclose(data.heldout_images[-1, 0].numpy(), images[-1] / 255, atol=1e-7)
    assert float(data.train_images.min()) == 0.0 and float(data.train_images.max()) == 1.0
    assert "first 8,000" in data.split and "last 2,000" in data.split


def test_full_layout_uses_official_train_and_test(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    fake_split(raw, "train", 30, seed=1)
    fake_split(raw, "t10k", 12, seed=2)
    data = load_mnist(tmp_path)
    assert len(data.train_images) == 30 and len(data.heldout_images) == 12
    assert "official split" in data.split


def test_uncompressed_files_are_read(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (5, 28, 28))
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    np.testing.assert_array_equal(read_idx(path, 2051), images)


def test_missing_data_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "MNIST" / "raw")):
        load_mnist(tmp_path)


@pytest.mark.parametrize(
    "problem, message",
    [
        ("magic", "magic number 2049, expected 2051"),
        ("shape", r"shape \(32, 32\), expected \(28, 28\)"),
        ("truncated", "truncated"),
        ("not-gzip", "cannot read"),
        ("count", "10 images but .* 9 labels"),
    ],
)
def test_malformed_files_are_value_errors(tmp_path, problem, message):
    raw = tmp_path / "MNIST" / "raw"
    images = raw / "t10k-images-idx3-ubyte.gz"
    fake_split(raw, "t10k", 10)
    if problem == "magic":
        write_idx(images, np.zeros((10, 28, 28)), magic=2049)
    elif problem == "shape":
        write_idx(images, np.zeros((10, 32, 32)))
    elif problem == "truncated":
        with gzip.open(images, "wb") as fh:
            fh.write(struct.pack(">IIII", 2051, 10, 28, 28) + bytes(100))
    elif problem == "not-gzip":
        images.write_bytes(b"this is not gzip data")
    else:
        write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.zeros(9))
    with pytest.raises(ValueError, match=message):
        load_mnist(tmp_path)


def test_too_small_test_split_cannot_be_held_out(tmp_path):
    fake_split(tmp_path / "MNIST" / "raw", "t10k", 50)
    with pytest.raises(ValueError, match="more than 8000"):
        load_mnist(tmp_path)


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def offline(root, train, download):
        calls.append((root, train, download))
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(ValueError, match="downloading MNIST into .* failed"):
        load_mnist(tmp_path, download_missing=True)
    assert calls == [(str(tmp_path), True, True)]


def test_download_is_skipped_when_the_files_are_there(tmp_path, monkeypatch):
    import torchvision.datasets

    fake_split(tmp_path / "MNIST" / "raw", "train", 20)
    fake_split(tmp_path / "MNIST" / "raw", "t10k", 10)
    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda *a, **k: pytest.fail("network"))
    assert len(load_mnist(tmp_path, download_missing=True).train_images) == 20


def test_resolve_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv(vae_data.DATA_ENV, str(tmp_path))
    assert resolve_root("explicit") == Path("explicit")
    assert resolve_root(None) == tmp_path
    monkeypatch.delenv(vae_data.DATA_ENV)
    assert resolve_root("") == Path("data") / "mnist"


def test_device_batches_cover_every_item_once_per_pass():
    data = torch.arange(103).float()[:, None]
    batches = DeviceBatches(data, 10)
    assert len(batches) == 11
    torch.manual_seed(0)
    first = [b[0][:, 0] for b in batches]
    second = torch.cat([b[0][:, 0] for b in batches])
    assert [len(b) for b in first] == [10] * 10 + [3]
    assert sorted(torch.cat(first).tolist()) == list(range(103))
    assert sorted(second.tolist()) == list(range(103))
    assert not torch.equal(torch.cat(first), second)  # reshuffled every pass
    torch.manual_seed(0)
    assert torch.equal(torch.cat([b[0][:, 0] for b in batches]), torch.cat(first))


def test_device_batches_shard_one_permutation_across_ranks():
    data = torch.arange(50)
    shards = []
    for rank in range(3):
        torch.manual_seed(rank)  # the global RNGs differ; the permutation's seed does not
        batches = DeviceBatches(data, 4, rank=rank, world_size=3, seed=11)
        shards.append(torch.cat([b[0] for b in batches]))
    covered = torch.cat(shards).tolist()
    # 16 items each (50 mod 3 = 2 dropped): every rank takes the same number of steps
    assert [len(s) for s in shards] == [16, 16, 16] and len(set(covered)) == 48
    with pytest.raises(ValueError, match="rank"):
        DeviceBatches(data, 4, rank=3, world_size=3, seed=11)
    with pytest.raises(ValueError, match="seed"):
        DeviceBatches(data, 4, rank=0, world_size=3)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatches(data, 0)


@pytest.mark.cuda
def test_data_and_batches_live_on_cuda(synthetic_mnist):
    data = load_mnist(synthetic_mnist, "cuda")
    assert data.train_images.is_cuda and data.heldout_labels.is_cuda
    (batch,) = next(iter(DeviceBatches(data.train_images, 256)))
    assert batch.is_cuda and batch.shape == (256, 1, 28, 28)
