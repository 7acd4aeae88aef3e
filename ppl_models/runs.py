"""Run directories: one folder per run, written atomically, never overwritten.

Layout (the contract every model follows)::

    runs/<config name>/<YYYYmmdd-HHMMSS>/
        config.toml     fully resolved configuration
        env.json        package, torch, pyro, arviz versions; device; seed; git commit
        metrics.jsonl   one JSON object per logged step or epoch
        summary.json    the run's numbers, with "status": "complete" (or "failed" and the error)
        posterior.nc    ArviZ InferenceData
        figures/*.png
        report.html

Every file is written to a temporary name in the same folder and renamed, so a reader never
sees half a file. A run that raises leaves ``summary.json`` with ``status: failed``.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import fields
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import config_to_toml

DEFAULT_ROOT = Path("runs")
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"


def atomic_save(path: Path, save: Callable[[Path], None]) -> None:
    """Call ``save(tmp)`` on a temporary path beside ``path``, then rename it to ``path``."""
    path = Path(path)
    tmp = _new_temporary(path)
    try:
        save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_temporary(path: Path) -> Path:
    """A new empty file beside ``path``, with the permissions of an ordinary file: created with
    mode 0666 less the process's umask, which the kernel applies (``mkstemp`` would make 0600,
    and reading the umask means setting it)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    atomic_save(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NumPy and torch values become lists/numbers)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


class ArrayFile:
    """Save and load a dataclass of NumPy arrays as one ``.npz`` file, written atomically.

    ``ARRAYS`` names the arrays in the "not found" error (for example ``"evaluation"``).
    """

    ARRAYS = "saved"

    def save(self, path: Path) -> None:
        """Write every field to ``path`` (``.npz``) atomically."""
        import numpy as np

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: savez would append .npz to a name
                np.savez(fh, **{f.name: getattr(self, f.name) for f in fields(self)})

        atomic_save(path, write)

    @classmethod
    def load(cls, path: Path):
        """Read what :meth:`save` wrote; a missing file or array is a clear error."""
        import numpy as np

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{cls.ARRAYS} arrays not found: {path}")
        with np.load(path) as data:
            missing = [f.name for f in fields(cls) if f.name not in data]
            if missing:
                raise ValueError(f"{path} lacks the arrays {', '.join(missing)}")
            return cls(**{f.name: data[f.name] for f in fields(cls)})


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def read_metrics(path: Path) -> list[dict]:
    """Read ``metrics.jsonl`` (a run directory or the file itself) into a list of dicts."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Run:
    """A run directory being written (or read back, via :meth:`open`)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, config_name: str, out: Path | None = None, root: Path = DEFAULT_ROOT) -> Run:
        """Create ``out`` or ``root/<config_name>/<timestamp>``; never reuse a non-empty folder.

        Raises ``ValueError`` when ``out`` exists and is not empty, or when the folder cannot be
        created (for example an unwritable parent, or a parent that is a file).
        """
        path = cls.new_path(config_name, out, root)
        try:
            (path / "figures").mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ValueError(
                f"cannot write the run directory {path}: {err.strerror or err}"
            ) from None
        return cls(path)

    @staticmethod
    def new_path(config_name: str, out: Path | None = None, root: Path = DEFAULT_ROOT) -> Path:
        """The folder :meth:`create` would create, without creating it (a launcher picks the
        path, its workers create it)."""
        if out is not None:
            path = Path(out)
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise ValueError(f"output directory {path} already exists and is not empty")
            return path
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(root) / config_name / stamp
        path, n = base, 1
        while path.exists():
            path, n = base.with_name(f"{stamp}-{n}"), n + 1
        return path

    @classmethod
    def open(cls, path: Path) -> Run:
        """An existing run directory (it must hold ``config.toml``)."""
        path = Path(path)
        if not (path / "config.toml").is_file():
            raise FileNotFoundError(f"not a run directory (no config.toml): {path}")
        return cls(path)

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config: Any) -> None:
        atomic_write_text(self.file("config.toml"), config_to_toml(config))

    def write_env(self, *, seed: int, device: str, extra: dict | None = None) -> None:
        env = environment(seed=seed, device=device)
        env.update(extra or {})
        atomic_write_json(self.file("env.json"), env)

    def log_metrics(self, **record: Any) -> None:
        """Append one JSON line to ``metrics.jsonl`` (a line is written whole, then flushed)."""
        line = json.dumps(record, default=_jsonable) + "\n"
        with open(self.file("metrics.jsonl"), "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.file("summary.json"), {"status": STATUS_COMPLETE, **summary})

    def mark_failed(self, error: BaseException) -> None:
        """Record the failure in ``summary.json`` so the run never looks like a success."""
        message = str(error) or type(error).__name__
        atomic_write_json(
            self.file("summary.json"),
            {"status": STATUS_FAILED, "error": f"{type(error).__name__}: {message}"},
        )

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            self.mark_failed(exc)
        return False


def environment(*, seed: int, device: str) -> dict:
    """Versions, platform, device, seed and git commit, for ``env.json`` and report provenance."""
    import torch

    versions = {}
    for name in ("ppl_models", "torch", "torchvision", "pyro-ppl", "arviz", "numpy", "scipy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "device_name": (
            torch.cuda.get_device_name(0) if device.startswith("cuda") else _cpu_name()
        ),
        "seed": seed,
        "git_commit": _git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cpu_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _jsonable(obj: Any) -> Any:
    """JSON fallback for NumPy/torch scalars and arrays, and paths."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
