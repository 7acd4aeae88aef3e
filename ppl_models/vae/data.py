"""MNIST on the device: IDX files read directly, all images in one tensor, on-device shuffling.

The data directory has torchvision's layout, ``<root>/MNIST/raw/*-ubyte[.gz]``. With all four
files, the official 60,000 training images train and the 10,000 test images are held out. With
only the official test split (the offline copy of these machines), its first 8,000 images train
and its last 2,000 are held out, a fixed split recorded with the run. Missing files are fetched by
torchvision's downloader only when asked (``download=True``).
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .networks import IMAGE_SHAPE

DATA_ENV = "PPL_MODELS_DATA"
DEFAULT_ROOT = Path("data") / "mnist"
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: 0x08 (unsigned byte) << 8 | number of dimensions
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TEST_ONLY_TRAIN = 8000  # first 8,000 of the official test split train when it is all there is


@dataclass(frozen=True)
class MnistData:
    """Grey levels in [0, 1] as float32 ``(N, 1, 28, 28)`` tensors, labels as int64, on a device."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    heldout_images: torch.Tensor
    heldout_labels: torch.Tensor
    split: str
    source: Path


def resolve_root(data_dir: str | Path | None) -> Path:
    """``data_dir`` if given, else ``$PPL_MODELS_DATA``, else ``data/mnist``."""
    if data_dir:
        return Path(data_dir)
    return Path(os.environ.get(DATA_ENV) or DEFAULT_ROOT)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one (optionally gzipped) IDX file of unsigned bytes, checking its header and size.

    Raises
    ------
    ValueError
        When the file cannot be decompressed, has another magic number, or its length does not
        match the dimensions in its header.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read MNIST file {path}: {err}") from None
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        raise ValueError(
            f"{path} is not an IDX file of the expected kind: magic number {found}, "
            f"expected {magic}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + math.prod(dims):
        raise ValueError(
            f"{path} is truncated or padded: header says {dims} "
            f"({header + math.prod(dims)} bytes), file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _split_files(raw_dir: Path, split: str) -> tuple[Path, Path] | None:
    """The images and labels files of ``split`` (plain or .gz), or None when either is missing."""
    found = []
    for stem in SPLITS[split]:
        candidates = [raw_dir / stem, raw_dir / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def read_split(raw_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` of one official split, validated."""
    files = _split_files(raw_dir, split)
    if files is None:
        raise FileNotFoundError(f"MNIST {split} split not found in {raw_dir}")
    images, labels = read_idx(files[0], IMAGES_MAGIC), read_idx(files[1], LABELS_MAGIC)
    if images.shape[1:] != IMAGE_SHAPE[1:]:
        raise ValueError(f"{files[0]} holds images of shape {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise ValueError(
            f"{files[0]} has {len(images)} images but {files[1]} has {len(labels)} labels"
        )
    if labels.max(initial=0) > 9:
        raise ValueError(f"{files[1]} holds label {labels.max()}, expected digits 0-9")
    return images, labels


def download(root: Path) -> None:
    """Fetch both official splits into ``root/MNIST/raw`` with torchvision's downloader."""
    from torchvision.datasets import MNIST  # imported here: only the download path needs it

    try:
        for train in (True, False):
            MNIST(str(root), train=train, download=True)
    except (RuntimeError, OSError) as err:
        raise ValueError(
            f"downloading MNIST into {root} failed ({err}); without a network, "
            "point --data-dir (or $PPL_MODELS_DATA) at a folder holding "
            "MNIST/raw/t10k-images-idx3-ubyte.gz and the other IDX files"
        ) from None


def load_mnist(
    root: Path, device: torch.device | str = "cpu", *, download_missing: bool = False
) -> MnistData:
    """Load MNIST from ``root`` (torchvision's layout) into float tensors on ``device``.

    Raises
    ------
    FileNotFoundError
        When ``root/MNIST/raw`` holds no test split and ``download_missing`` is false.
    ValueError
        For a malformed file, or a failed download.
    """
    root = Path(root)
    raw_dir = root / "MNIST" / "raw"
    if download_missing and _split_files(raw_dir, "train") is None:
        download(root)
    if _split_files(raw_dir, "test") is None:
        expected = ", ".join(f"{stem}[.gz]" for stem in SPLITS["test"])
        raise FileNotFoundError(
            f"no MNIST data in {raw_dir} (expected {expected}); pass --data-dir or set "
            f"${DATA_ENV} to a folder in torchvision's layout, or use --download"
        )
    test_images, test_labels = read_split(raw_dir, "test")
    if _split_files(raw_dir, "train") is not None:
        train_images, train_labels = read_split(raw_dir, "train")
        heldout_images, heldout_labels = test_images, test_labels
        split = (
            f"official split: {len(train_images):,} training images, the "
            f"{len(test_images):,} test images held out"
        )
    else:
        if len(test_images) <= TEST_ONLY_TRAIN:
            raise ValueError(
                f"the test split in {raw_dir} has {len(test_images)} images; "
                f"more than {TEST_ONLY_TRAIN} are needed to hold some out"
            )
        train_images, heldout_images = np.split(test_images, [TEST_ONLY_TRAIN])
        train_labels, heldout_labels = np.split(test_labels, [TEST_ONLY_TRAIN])
        split = (
            f"only the official test split is present ({len(test_images):,} images): "
            f"its first {len(train_images):,} train, its last {len(heldout_images):,} "
            "are held out"
        )
    return MnistData(
        train_images=_to_device(train_images, device),
        train_labels=torch.as_tensor(train_labels, dtype=torch.int64, device=device),
        heldout_images=_to_device(heldout_images, device),
        heldout_labels=torch.as_tensor(heldout_labels, dtype=torch.int64, device=device),
        split=split,
        source=raw_dir,
    )


def _to_device(images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    # bytes travel to the device, the float conversion happens there
    tensor = torch.from_numpy(images).to(device)
    return (tensor.float() / 255).unsqueeze(1)
