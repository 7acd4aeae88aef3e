"""A small MNIST-format data set of structured synthetic digits, written in torchvision's layout.

Each digit 0-9 is drawn as seven-segment strokes on the 28 x 28 canvas, then varied per image by
a random shift (up to 3 pixels), stroke thickness, a slight blur and pixel noise. A VAE can learn
these visibly within a few epochs, so the VAE's job, report, resume and figure paths are tested
everywhere, without the real images.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# segments: a top, b upper right, c lower right, d bottom, e lower left, f upper left, g middle
SEGMENTS = {
    0: "abcdef", 1: "bc", 2: "abged", 3: "abgcd", 4: "fgbc",
    5: "afgcd", 6: "afgedc", 7: "abc", 8: "abcdefg", 9: "abfgcd",
}  # fmt: skip


def digit_image(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 28 x 28 uint8 image of ``label``: seven-segment strokes, shifted, blurred, noisy."""
    canvas = np.zeros((28, 28))
    top, left, height, width = 4, 8, 20, 12
    thick = int(rng.integers(2, 4))
    mid = top + height // 2
    strokes = {
        "a": (top, top + thick, left, left + width),
        "d": (top + height - thick, top + height, left, left + width),
        "g": (mid - thick // 2, mid - thick // 2 + thick, left, left + width),
        "f": (top, mid, left, left + thick),
        "e": (mid, top + height, left, left + thick),
        "b": (top, mid, left + width - thick, left + width),
        "c": (mid, top + height, left + width - thick, left + width),
    }
    for segment in SEGMENTS[label]:
        r0, r1, c0, c1 = strokes[segment]
        canvas[r0:r1, c0:c1] = 1.0
    dy, dx = rng.integers(-3, 4, size=2)
    canvas = np.roll(canvas, (int(dy), int(dx)), axis=(0, 1))
    kernel = np.array([0.25, 0.5, 0.25])  # a separable [1 2 1] / 4 blur
    for axis in (0, 1):
        canvas = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, canvas)
    canvas = canvas * rng.uniform(0.8, 1.0) + rng.normal(0.0, 0.05, canvas.shape)
    return (np.clip(canvas, 0.0, 1.0) * 255).round().astype(np.uint8)


def _write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def write_synthetic_mnist(
    root: Path, n_train: int | None = 1000, n_test: int = 200, seed: int = 0
) -> Path:
    """Write ``root/MNIST/raw/*-ubyte.gz`` and return ``root``.

    ``n_train=None`` writes only the test split (the layout of the offline official copy, where
    the loader holds out the last images itself); labels cycle through 0-9.
    """
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("test", n_test)):
        if count is None:
            continue
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        images = np.stack([digit_image(int(label), rng) for label in labels])
        images_file, labels_file = FILES[split]
        _write_idx(raw / images_file, IMAGES_MAGIC, images)
        _write_idx(raw / labels_file, LABELS_MAGIC, labels)
    return Path(root)
