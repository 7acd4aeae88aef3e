r"""Data-parallel SVI under ``torchrun``: process group, rank-aware seeding, collectives, launch.

``torchrun --nproc-per-node N -m ppl_models vae ...`` starts N copies of the command; each reads
its rank from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and
calls :func:`session`, which joins the process group (gloo on the CPU, NCCL on CUDA with
``torch.cuda.set_device(local_rank)``) and returns a :class:`Context`. ``ppl-models vae --nproc N``
runs the same through :func:`launch` (``torch.distributed.run`` in-process, ``--standalone``).
Outside ``torchrun`` the context is the single process (rank 0 of 1) and every collective is the
identity, so one code path serves both.

Why the objective stays right. Rank :math:`r` takes the minibatch :math:`B_r` (its stride of
one permutation shared by all ranks) under ``pyro.plate("data", N, subsample=idx)``, whose
log-densities are scaled by :math:`N/|B_r|`; its loss is then an unbiased estimate of the
full-data negative ELBO, and the average that ``DistributedDataParallel`` takes over ranks,

.. math::

    \frac1W \sum_r \frac{N}{b} \sum_{n \in B_r} -\mathrm{ELBO}_n
    = \frac{N}{Wb} \sum_{n \in \cup_r B_r} -\mathrm{ELBO}_n ,

is the single-process estimate with the global batch :math:`Wb`: no further scaling is needed.

Rules the jobs follow (see :mod:`ppl_models.jobs.vae.train`):

- parameters exist before wrapping (networks at construction; Pyro parameters after one
  warm-up call, see :meth:`Context.wrap`), and ``DistributedDataParallel`` broadcasts rank 0's;
- every rank takes the same number of steps (an early-stopping rule must be the same on all);
- each rank has its own Monte Carlo noise (:func:`rank_seed`), while the permutation of a pass
  comes from a generator every rank seeds alike (:func:`epoch_seed`);
- only rank 0 writes files; the other ranks compute and send.

A rank that dies ends the job: ``torchrun`` stops the remaining workers (SIGTERM, which
:func:`session` turns into :class:`RankFailure` so a run can record it), a peer's lost connection
fails the next collective, and a rank that hangs is cut off by the process group's timeout
(``$PPL_MODELS_DIST_TIMEOUT`` seconds, default 300).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .errors import one_line
from .runs import Run

TIMEOUT_ENV = "PPL_MODELS_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300.0  # seconds a collective waits for a missing rank
_RANK_STREAM, _EPOCH_STREAM = 1, 2  # SeedSequence spawn keys: rank noise and pass permutations


class RankFailure(ConnectionError):
    """A rank died, hung or was stopped, so the job cannot go on; the message says which."""


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting its
    ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` environment)."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s generators: ``seed`` itself on rank 0 (a one-process run is
    rank 0 of 1), otherwise a 32-bit seed derived from ``(seed, rank)`` by NumPy's
    ``SeedSequence``, so rank 1 of a run never repeats rank 0 of the run with ``seed + 1``."""
    if rank == 0:
        return seed
    sequence = np.random.SeedSequence(seed, spawn_key=(_RANK_STREAM, rank))
    return int(sequence.generate_state(1)[0])


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of pass ``epoch``'s permutation, the same on every rank: one generator per
    ``(seed, epoch)``, independent of the ranks' Monte Carlo noise and of how far they drew."""
    return int(np.random.SeedSequence(seed, spawn_key=(_EPOCH_STREAM, epoch)).generate_state(1)[0])


def parameter_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's named parameters (names, dtypes, shapes and bytes), in name order.

    Equal digests on every rank mean bit-identical parameters."""
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
        value = param.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        if value.dtype == torch.bfloat16:  # NumPy has no bfloat16: hash its bits
            value = value.view(torch.int16)
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Context:
    """This process's place in the job: ``rank`` of ``world_size``, its ``device``.

    Every method is a collective when ``world_size > 1`` (all ranks must call it, in the same
    order) and the identity otherwise.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """More than one rank."""
        return self.world_size > 1

    def describe(self) -> dict:
        """World size and backend, for ``env.json`` and ``summary.json``."""
        return {"world_size": self.world_size, "backend": self.backend}

    # ------------------------------------------------------------------ sharding

    def share(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items; the shares in rank order cover
        ``0..n-1`` once and differ in size by at most one (for sharded evaluation)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    # ------------------------------------------------------------------ collectives

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise mean of ``tensor`` over ranks (a new tensor; float64 on the CPU
        under gloo, on ``self.device`` otherwise)."""
        if not self.parallel:
            return tensor
        on = torch.device("cpu") if self.backend == "gloo" else self.device
        total = tensor.detach().to(on, torch.float64, copy=True)
        with _translated(self):
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world_size

    def gather(self, obj: Any) -> list | None:
        """Every rank's ``obj`` (picklable) as a list in rank order on rank 0; None elsewhere."""
        if not self.parallel:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        with _translated(self):
            dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.parallel:
            return obj
        box = [obj if self.is_main else None]
        with _translated(self):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` on rank 0 only; every rank returns its result, or raises its error.

        For work only rank 0 may do (creating the run directory) whose failure must stop every
        rank: an exception on rank 0 is re-raised on the others as the same type and message
        when it is one of the errors the command line reports in one line, else as
        :class:`RankFailure`.
        """
        if not self.parallel:
            return fn()
        reported = (ValueError, FileNotFoundError, NotADirectoryError)
        outcome: tuple = ("ok", None)
        error = None
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except Exception as err:  # its name and message go to the other ranks
                error = err
                kind = type(err).__name__ if isinstance(err, reported) else None
                outcome = ("error", (kind, f"{type(err).__name__}: {err}", str(err)))
        status, value = self.broadcast(outcome)
        if status == "ok":
            return value
        if error is not None:
            raise error
        kind, described, message = value
        by_name = {cls.__name__: cls for cls in reported}
        if kind in by_name:
            raise by_name[kind](message)
        raise RankFailure(f"rank 0 failed: {described}")

    def lost_ranks_reported(self) -> contextlib.AbstractContextManager:
        """A block in which a failed collective (a peer died, or the timeout passed), including
        DistributedDataParallel's own gradient all-reduce, raises a one-line
        :class:`RankFailure` instead of the backend's message."""
        return _translated(self) if self.parallel else contextlib.nullcontext()

    def barrier(self) -> None:
        """Wait until every rank has arrived."""
        if self.parallel:
            with _translated(self):
                dist.barrier()

    def wrap(self, module: torch.nn.Module, warmup: Sequence | None = None) -> torch.nn.Module:
        """``DistributedDataParallel(module)`` when ``world_size > 1``, else ``module``.

        ``warmup``: arguments of one call made first (with the random state put back after it),
        so parameters that Pyro creates on first use exist before wrapping. Wrapping broadcasts
        rank 0's parameters and buffers, so every rank starts from rank 0's initialisation.

        Raises
        ------
        ValueError
            When the module has parameters that are not registered in it (Pyro's global
            parameter store, a plain-function guide's ``pyro.param``): DDP would not average
            their gradients. Build the fit inside :func:`ppl_models.svi.local_params`.
        """
        if warmup is not None:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                module(*warmup)
        if not self.parallel:
            return module
        registered = {id(p) for p in torch.nn.Module.parameters(module)}
        stray = [p for p in module.parameters() if id(p) not in registered]
        if stray:
            raise ValueError(
                f"{len(stray)} parameters live outside the loss module (Pyro's parameter "
                "store); DistributedDataParallel would not average their gradients: build "
                "the model and guide inside ppl_models.svi.local_params()"
            )
        device_ids = [self.device] if self.device.type == "cuda" else None
        with _translated(self):
            return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


_LOST = re.compile(r"gloo|nccl|connection|timed out|timeout|peer|socket", re.IGNORECASE)


@contextlib.contextmanager
def _translated(ctx: Context) -> Iterator[None]:
    """Turn a collective's failure (a peer died or timed out) into a one-line RankFailure."""
    try:
        yield
    except (dist.DistError, RuntimeError) as err:
        if not isinstance(err, dist.DistError) and not _LOST.search(str(err)):
            raise
        first = one_line(str(err)) or type(err).__name__
        # gloo's messages open with its source location and close with advice: keep the news
        first = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", first).split(". ")[0]
        raise RankFailure(
            f"rank {ctx.rank} of {ctx.world_size} lost the other ranks ({first}); "
            "torchrun's report names the rank that failed first"
        ) from err


def timeout_seconds() -> float:
    """``$PPL_MODELS_DIST_TIMEOUT`` (seconds), else :data:`DEFAULT_TIMEOUT`."""
    text = os.environ.get(TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"${TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[Context]:
    """Join the job's process group for the block and return this rank's :class:`Context`.

    Outside ``torchrun`` (or with one process) there is no group: rank 0 of 1 on ``device``.
    Under it: gloo when ``device`` is the CPU; NCCL on CUDA, on GPU ``LOCAL_RANK`` (set as the
    current device). A group that already exists (the caller's own) is used as it is and left
    open. While the block runs, SIGTERM (how ``torchrun`` stops the workers when one fails)
    raises :class:`RankFailure` in the main thread, so the run can say why it ended.
    """
    if dist.is_available() and dist.is_initialized():
        yield _context_of_group(device)
        return
    if not launched():
        yield Context(device=device)
        return
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"local rank {local_rank} needs a GPU of its own, but this machine has "
                f"{count}; start at most {count} processes per node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"distributed training runs on cpu or cuda, got device {device}")
    if world_size == 1:
        yield Context(device=device, local_rank=local_rank)
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        timeout=timedelta(seconds=timeout_seconds()),
        device_id=device if device.type == "cuda" else None,
    )
    previous = _on_sigterm(rank, world_size)
    try:
        yield Context(rank, world_size, local_rank, device, backend)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        dist.destroy_process_group()


def _context_of_group(device: torch.device) -> Context:
    world_size = dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return Context(dist.get_rank(), world_size, local_rank, device, dist.get_backend())


def _on_sigterm(rank: int, world_size: int):
    """Make SIGTERM raise RankFailure in the main thread; returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise RankFailure(
            f"rank {rank} of {world_size} was stopped by SIGTERM: torchrun ends every rank "
            "when one fails (its report names that rank), or the job was cancelled"
        )

    return signal.signal(signal.SIGTERM, stop)


def rank_run(run: Run, ctx: Context) -> Run:
    """``run`` on rank 0; on the other ranks a :class:`Run` of the same path whose writing
    methods do nothing (the job guards its other writes with ``ctx.is_main``)."""
    return run if ctx.is_main else _SilentRun(run.path)


class _SilentRun(Run):
    def write_config(self, config: Any) -> None:
        pass

    def write_env(self, *, seed: int, device: str, extra: dict | None = None) -> None:
        pass

    def log_metrics(self, **record: Any) -> None:
        pass

    def write_summary(self, summary: dict) -> None:
        pass

    def mark_failed(self, error: BaseException) -> None:
        pass


# ---------------------------------------------------------------------------- launching


def launch(nproc: int, argv: Sequence[str], run_dir: Path | None = None) -> None:
    """Run ``python -m ppl_models *argv`` as ``nproc`` processes on this machine through
    ``torch.distributed.run`` (torchrun's ``--standalone``: a rendezvous on a free local port).

    ``run_dir``: the run directory the workers write, when known. If the job fails and rank 0
    did not record why (it was killed, or another rank failed first), ``summary.json`` there
    gets ``"status": "failed"`` with torchrun's account.

    The workers leave their one-line errors to this process (``cli.RANK_ERRORS_ENV``) rather
    than print them, and torchrun's agent logs nothing, so a failed job says why in one line
    and a successful one adds nothing to the command's output.

    Raises
    ------
    RankFailure
        When a worker fails: the error of the rank that caused it (ranks stopped because of
        it are passed over), or, when no rank said why, which rank died and how.
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from .cli import RANK_ERRORS_ENV

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    summary = Path(run_dir) / "summary.json" if run_dir is not None else None
    before = _read_bytes(summary)
    args = torchrun.parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", "ppl_models"])
    # set after parsing: torchrun's parser would read the command's own options as its own
    args.training_script_args = list(argv)
    with tempfile.TemporaryDirectory(prefix="ppl-models-ranks-") as errors:
        try:
            with _restored_process_state(), _quiet_agent():
                os.environ[RANK_ERRORS_ENV] = errors  # each rank leaves its error line there
                # torchrun's own default, set here so that it prints no banner about it
                os.environ.setdefault("OMP_NUM_THREADS", "1")
                torchrun.run(args)
        except ChildFailedError as err:
            rank, reason = describe_failure(err, nproc)
            said = _ranks_said(Path(errors), nproc)
            reason = said or reason
            if summary is not None and summary.parent.is_dir():
                current = _read_bytes(summary)
                if current == before or rank != 0:
                    Run(summary.parent).mark_failed(RankFailure(reason))
            raise RankFailure(reason) from None


@contextlib.contextmanager
def _quiet_agent() -> Iterator[None]:
    """torchrun's agent logs (its thread banner, "Sending process ... SIGTERM", "failed
    (exitcode: 2)") silenced: :func:`launch` says what failed in one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def _ranks_said(folder: Path, world_size: int) -> str | None:
    """The one-line error of the rank that caused the failure, from what the ranks left in
    ``folder`` (a rank stopped because another failed says so, and is passed over); None when
    no rank said why (it was killed, say)."""
    said = {}
    for path in folder.glob("rank-*.json"):
        try:
            record = json.loads(path.read_text())
            said[int(path.stem.removeprefix("rank-"))] = record
        except (OSError, ValueError):
            continue
    causes = {rank: r["message"] for rank, r in said.items() if not r.get("consequence")}
    if not causes:
        return None
    rank = min(causes)
    if len(set(causes.values())) == 1 and len(causes) == world_size:
        return causes[rank]  # every rank said the same
    return f"rank {rank} of {world_size}: {causes[rank]}"


def launch_command(nproc: int, argv: Sequence[str], run_dir: Path, pin_out: bool) -> None:
    """A job's ``--nproc N``: run its command line ``argv`` as N workers (:func:`launch`) that
    all write ``run_dir``, given them as ``--out`` when ``pin_out`` (a new run whose folder
    each worker would otherwise name from its own clock)."""
    argv = list(argv or [])
    if not argv:
        raise ValueError("--nproc needs the command line (run it through ppl_models.cli.main)")
    if pin_out:
        argv += ["--out", str(run_dir)]
    launch(nproc, argv, run_dir)


@contextlib.contextmanager
def _restored_process_state() -> Iterator[None]:
    """Put back what torchrun's in-process launch changes: signal handlers (its agent installs
    its own) and environment variables (``OMP_NUM_THREADS`` and its own settings)."""
    environ = dict(os.environ)
    names = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
    signals = [getattr(signal, name) for name in names if hasattr(signal, name)]
    in_main = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.getsignal(sig) for sig in signals} if in_main else {}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
        os.environ.clear()
        os.environ.update(environ)


def describe_failure(err: Exception, world_size: int) -> tuple[int, str]:
    """The rank that failed first and a one-line reason, from torchrun's ``ChildFailedError``.

    A rank killed by a signal other than SIGTERM (SIGTERM is how torchrun stops the others)
    counts as first among failures reported in the same instant; then the lowest rank.
    """
    failures = err.failures

    def order(rank):
        failure = failures[rank]
        by_signal = failure.exitcode < 0 and failure.signal_name() != "SIGTERM"
        return (failure.timestamp, not by_signal, rank)

    rank = min(failures, key=order)
    failure = failures[rank]
    if failure.exitcode < 0:
        how = f"died of signal {failure.signal_name()}"
    else:
        how = f"exited with code {failure.exitcode}"
    if failure.exitcode == 2:
        how += ", having printed its error"
    others = "; torchrun stopped the other ranks" if world_size > 1 else ""
    return rank, f"rank {rank} of {world_size} {how} (pid {failure.pid}){others}"


def _read_bytes(path: Path | None) -> bytes | None:
    try:
        return path.read_bytes() if path is not None else None
    except OSError:
        return None
