"""torch.distributed plumbing: process group from torchrun's environment, rank helpers, the sharded
deterministic batch sampler, and small collectives used by the training loop.

``torchrun`` (``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; with those present, :func:`setup` initialises the default process
group (NCCL on CUDA, gloo on CPU). Without them the run is a single process and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialised_here: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistContext:
    """Initialise the process group when launched by torchrun; pick this process's device.

    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``. Under torchrun with CUDA each process
    uses ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device; use device: auto or cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    initialised_here = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        initialised_here = True
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistContext(rank, world_size, local_rank, dev, initialised_here)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if ctx.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op for one process); returns it."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_bytes(ctx: DistContext, payload: torch.Tensor) -> list[torch.Tensor]:
    """All ranks' 1-D uint8 ``payload`` tensors (lengths may differ), on CPU, in rank order."""
    payload = payload.to(torch.uint8).flatten().cpu()
    if not ctx.distributed:
        return [payload]
    comm_device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    length = torch.tensor([payload.numel()], dtype=torch.int64, device=comm_device)
    lengths = [torch.zeros_like(length) for _ in range(ctx.world_size)]
    dist.all_gather(lengths, length)
    longest = int(max(int(n) for n in lengths))
    padded = torch.zeros(longest, dtype=torch.uint8, device=comm_device)
    padded[: payload.numel()] = payload.to(comm_device)
    chunks = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(chunks, padded)
    return [chunk[: int(n)].cpu() for chunk, n in zip(chunks, lengths, strict=True)]


class EpochBatchSampler:
    """Deterministic batches: epoch ``e`` visits ``randperm(n)`` drawn from a generator seeded with
    :meth:`permutation_seed` ``(seed, e)``, cut into global batches of ``batch_size`` (the last,
    incomplete batch is dropped so every step has the same size on every rank). Rank ``r`` of ``W``
    takes rows ``r*b .. (r+1)*b`` of each global batch (``b = batch_size / W``), so the union over
    ranks of a step's batches is exactly the one-process batch.

    The position in the data is ``(epoch, step)``: any batch can be produced directly, which is what
    makes resuming mid-epoch exact. DataLoader's own shuffling is not used (its RNG is not restorable).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(
                f"train.batch_size ({batch_size}) is the global batch and must be divisible by the number "
                f"of processes ({world_size}); choose e.g. {batch_size - batch_size % world_size or world_size}"
            )
        if num_samples < batch_size:
            raise ValueError(
                f"the training set has {num_samples} images, fewer than one batch of {batch_size}; lower "
                "train.batch_size or raise train.limit_train"
            )
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.local_batch = batch_size // world_size
        self._cache: tuple[int, torch.Tensor] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def permutation_seed(self, epoch: int) -> int:
        """The seed of epoch ``epoch``'s permutation (a fixed function of ``(seed, epoch)``)."""
        return (self.seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63 - 1)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The visiting order of epoch ``epoch``: ``int64 (num_samples,)``."""
        if self._cache is None or self._cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.permutation_seed(epoch))
            self._cache = (epoch, torch.randperm(self.num_samples, generator=generator))
        return self._cache[1]

    def global_batch(self, epoch: int, step: int) -> torch.Tensor:
        """Indices of the whole global batch ``step`` of ``epoch``: ``int64 (batch_size,)``."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside epoch of {self.steps_per_epoch} steps")
        start = step * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size]

    def local_batch_indices(self, epoch: int, step: int) -> torch.Tensor:
        """This rank's share of global batch ``step``: ``int64 (batch_size / world_size,)``."""
        start = self.rank * self.local_batch
        return self.global_batch(epoch, step)[start : start + self.local_batch]
