"""Benchmarks (not tests): ``ppl-models bench NAME`` prints a table and writes ``bench.json``."""

from __future__ import annotations

from pathlib import Path


def make_out_dir(out: Path) -> Path:
    """The folder for ``bench.json``, created (with its parents) when missing.

    Raises
    ------
    NotADirectoryError
        When ``out`` exists and is not a folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out must be a folder (it is created when missing), got {out}")
    out.mkdir(parents=True, exist_ok=True)
    return out
