"""Mini-batches of data that lives on the device, shuffled there, shared among ranks.

Two samplers for every training loop of the package, model-agnostic: :class:`DeviceBatches`
cuts a device-resident tensor into batches by an on-device permutation per pass (the VAE's
epochs), and :func:`index_batches` yields the observation indices of a fixed number of steps
over passes of such permutations (a model script's data plate, :mod:`ppl_models.vi.data_plate`).
Under ``torchrun`` every rank draws the same permutation and takes its stride of it (see
:mod:`ppl_models.distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .distributed import epoch_seed


class DeviceBatches:
    """Mini-batches of a device-resident tensor, reshuffled by an on-device permutation per pass.

    Each iteration draws ``torch.randperm`` on the data's device and yields ``(data[idx],)``
    tuples, the last one possibly smaller. The permutation comes from a generator seeded with
    ``seed`` when one is given (the job passes :func:`ppl_models.distributed.epoch_seed`, one per
    pass), else from the device's global RNG (so seeding and RNG-state checkpoints cover it).

    With ``world_size > 1`` (``torchrun``), every rank draws the same permutation (same
    ``seed``, which is then required) and takes its stride ``perm[rank::world_size]`` of the
    first ``world_size * (N // world_size)`` entries: every rank gets ``N // world_size`` items
    and so the same number of steps (DistributedDataParallel hangs otherwise). The
    ``N mod world_size`` items dropped are a different few each pass. Step ``i``'s batches of
    all ranks together are step ``i``'s batch of one process with ``world_size`` times the
    batch size.

    With ``subsample=True`` the tuples are ``(data[idx], idx, N)``: the batch, its indices into
    the data and the data's size, for a model that scales the batch to the whole data set with
    ``pyro.plate("data", N, subsample=idx)``.
    """

    def __init__(
        self,
        data: torch.Tensor,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int | None = None,
        subsample: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if world_size > 1 and seed is None:
            raise ValueError(
                "with world_size > 1 every rank must draw the same permutation: pass seed"
            )
        if len(data) < world_size:
            raise ValueError(f"{len(data)} items cannot be shared among {world_size} ranks")
        self.data = data
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.subsample = subsample

    @property
    def items(self) -> int:
        """Items this rank sees per pass (the same on every rank)."""
        return len(self.data) // self.world_size

    def __len__(self) -> int:
        return math.ceil(self.items / self.batch_size)

    def batch_sizes(self) -> list[int]:
        """The size of each step's batch on this rank (every rank's are the same)."""
        full, last = divmod(self.items, self.batch_size)
        return [self.batch_size] * full + ([last] if last else [])

    def __iter__(self):
        device = self.data.device
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=device).manual_seed(self.seed)
        perm = torch.randperm(len(self.data), device=device, generator=generator)
        perm = perm[: self.items * self.world_size][self.rank :: self.world_size]
        for idx in perm.split(self.batch_size):
            yield (self.data[idx], idx, len(self.data)) if self.subsample else (self.data[idx],)


def index_batches(
    size: int,
    batch_size: int,
    steps: int,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator[torch.Tensor]:
    """The observation indices of ``steps`` steps on rank ``rank`` of ``world_size``.

    Passes over the data follow one another; pass ``e`` shuffles by a permutation every rank
    draws alike (seeded by :func:`ppl_models.distributed.epoch_seed`) and gives each rank its
    stride of it in batches of ``batch_size`` (:class:`DeviceBatches`). ``batch_size`` 0 means one
    batch per pass: each rank's whole stride, so that with ``size`` divisible by ``world_size``
    the ranks' batches together are the full data at every step.
    """
    if world_size > size:
        raise ValueError(f"{size} observations cannot be shared among {world_size} processes")
    per_rank = size // world_size
    if not 0 <= batch_size <= per_rank:
        raise ValueError(
            f"batch_size must be between 0 (each process's whole share) and {per_rank} "
            f"({size} observations over {world_size} process(es)), got {batch_size}"
        )
    indices = torch.arange(size, device=device)
    taken, epoch = 0, 0
    while taken < steps:
        batches = DeviceBatches(
            indices,
            batch_size or per_rank,
            rank=rank,
            world_size=world_size,
            seed=epoch_seed(seed, epoch),
        )
        for (batch,) in batches:
            if taken == steps:
                return
            yield batch
            taken += 1
        epoch += 1
