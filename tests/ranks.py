"""Ranks of a 2-process gloo group spawned from the test process, as torchrun would start them.

``spawn``, not ``fork``: autograd refuses to run in a child forked after the parent used it, as
earlier tests in the suite do. Used by the data-parallel tests of the VAE and of ``fit``.
"""

from __future__ import annotations

import os
import socket

import torch

from ppl_models import cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_rank(rank: int, port: int, fn, *args) -> None:
    """Run ``fn(*args)`` as rank ``rank`` of 2, in the environment torchrun would set."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    fn(*args)


def spawned_ranks(fn, *args) -> None:
    """``fn(*args)`` in two processes spawned from this one, as ranks 0 and 1 of a gloo group:
    no interpreter start-up, the modules are already imported."""
    torch.multiprocessing.start_processes(
        as_rank, args=(free_port(), fn, *args), nprocs=2, start_method="spawn"
    )


def cli_ok(argv: list[str]) -> None:
    assert cli.main(argv) == 0
