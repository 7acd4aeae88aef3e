r"""The command's memory allocator, set for tensor work: by the process, never by the library.

A step of a fit or a chunk of the diagnosis allocates and frees the same tensors of a few
megabytes again and again. glibc's ``malloc`` serves a block above its mmap threshold (128 KiB
in a fresh process) by a fresh ``mmap``, and hands the top of its heap back to the system once
more than its trim threshold is free, so each of those tensors is page-faulted in anew, step
after step; the thresholds only adapt upwards once a large mmapped block has been freed (in a
fit, after its diagnosis). At 1,000 groups of the hierarchical logistic regression, a fit's
step took 14 ms in that state and 10 ms with the thresholds below (``docs/benchmarks.md``).

:func:`tune` sets both thresholds for the whole process, so only the command line and the
benchmarks' own processes call it, at their start; importing the package changes nothing. A
user who has set any ``MALLOC_*`` variable keeps their own choice, and a library user can set
the same two variables (``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=67108864``).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # the largest glibc accepts on 64 bits (half its heap's maximum)
TRIM_THRESHOLD = 64 * 2**20  # freed heap kept before its top goes back (128 MiB: a higher peak)


def tune() -> bool:
    """Set glibc's mmap threshold to :data:`MMAP_THRESHOLD` and its trim threshold to
    :data:`TRIM_THRESHOLD` for this process (blocks below 32 MiB reused from the heap, up to
    64 MiB of freed heap kept). Returns whether both were set: False off glibc, or where the
    environment already sets the allocator (any ``MALLOC_*`` variable)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
