"""The global random streams of a run: seeding, and their states saved into / restored from checkpoints.

Every random number a run draws outside the data order and the augmentation (model init, attack starts,
dropout ...) comes from Python's ``random``, NumPy's global generator and torch's CPU (and CUDA) generator.
A checkpoint holds each rank's states: torch's as ``uint8`` tensors (``rank<r>.torch_cpu``, ``rank<r>.cuda``
in ``rng.safetensors``), Python's and NumPy's as JSON (``state.json["rng"][str(r)]``).
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .distributed import DistContext, gather_bytes


def seed_all(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch's generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own streams (attack random starts, dropout ...), set after the model init."""
    return seed * 1000 + rank + 1


def host_rng_state() -> dict[str, Any]:
    """This process's Python and NumPy generator states as JSON values."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [py[0], list(py[1]), py[2]], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}


def set_host_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`host_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def gather_rng_states(ctx: DistContext) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every rank's RNG states (a collective: all ranks call it): ``(uint8 tensors for safetensors, JSON part)``,
    keyed ``rank<r>.torch_cpu`` / ``rank<r>.cuda`` and ``str(r)``."""
    cpu = gather_bytes(ctx, torch.get_rng_state())
    cuda_state = torch.empty(0, dtype=torch.uint8)
    if ctx.device.type == "cuda":
        cuda_state = torch.cuda.get_rng_state(ctx.device)
    cuda = gather_bytes(ctx, cuda_state)
    text = torch.frombuffer(bytearray(json.dumps(host_rng_state()).encode()), dtype=torch.uint8)
    blobs = gather_bytes(ctx, text)
    tensors: dict[str, torch.Tensor] = {}
    json_part: dict[str, Any] = {}
    for rank in range(ctx.world_size):
        tensors[f"rank{rank}.torch_cpu"] = cpu[rank]
        if cuda[rank].numel():
            tensors[f"rank{rank}.cuda"] = cuda[rank]
        json_part[str(rank)] = json.loads(bytes(blobs[rank].tolist()).decode())
    return tensors, json_part


def restore_rng_states(
    ctx: DistContext, tensors: Mapping[str, torch.Tensor], json_part: Mapping[str, Any], seed: int
) -> None:
    """Put this rank's saved states back; a rank the checkpoint has none for (it was written by fewer
    processes) is re-seeded with :func:`rank_seed` instead, with a warning that the run is no longer bit-exact."""
    key = f"rank{ctx.rank}.torch_cpu"
    if key not in tensors:
        warnings.warn(
            f"the checkpoint has no RNG state for rank {ctx.rank} (it was written by fewer processes); "
            "this rank's random streams are re-seeded, so the run is no longer bit-exact",
            stacklevel=2,
        )
        seed_all(rank_seed(seed, ctx.rank))
        return
    torch.set_rng_state(tensors[key])
    if ctx.device.type == "cuda" and f"rank{ctx.rank}.cuda" in tensors:
        torch.cuda.set_rng_state(tensors[f"rank{ctx.rank}.cuda"], ctx.device)
    set_host_rng_state(json_part[str(ctx.rank)])
