"""The command sets glibc's allocator for tensor work; importing the package leaves it alone.

Whether a block comes from ``mmap`` is read from glibc's own chunk header (its IS_MMAPPED bit),
in a fresh process: a 16 MiB block is mmapped under glibc's defaults (threshold 128 KiB, raised
only by freeing a larger mmapped block) and served from the heap once the threshold is 32 MiB.
"""

import os
import platform
import subprocess
import sys

import pytest

from ppl_models import allocator, cli

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's allocator",
)

PROBE = """
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
{setup}
block = libc.malloc(16 * 2**20)
print(bool(ctypes.c_size_t.from_address(block - 8).value & 2))  # IS_MMAPPED
libc.free(block)
"""


def _mmapped(setup: str, **env: str) -> bool:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(setup=setup)],
        env=clean | env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip() == "True"


def test_import_leaves_the_allocator_alone():
    assert _mmapped("import ppl_models, ppl_models.cli, ppl_models.vi.fitting, torch, pyro")


def test_tune_serves_tensor_sized_blocks_from_the_heap():
    assert not _mmapped("from ppl_models import allocator\nassert allocator.tune()")


def test_a_users_malloc_setting_is_kept():
    setup = "from ppl_models import allocator\nassert not allocator.tune()"
    assert _mmapped(setup, MALLOC_ARENA_MAX="2")


def test_the_command_tunes_before_its_work(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(allocator, "tune", lambda: calls.append(True) or True)
    assert cli.main(["runs", str(tmp_path)]) == 0
    assert calls == [True]
