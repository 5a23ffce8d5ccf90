"""Training: the ``train:`` config section, the loop behind ``tools/train.py``, atomic checkpoints with
exact resume, and torch.distributed (torchrun) support. See docs/training.md.

=============== ===========================================================================================
module          job
=============== ===========================================================================================
``config``      the ``train:`` section (:class:`TrainConfig`) and which keys may change on resume
``loop``        :func:`train`: the run as a sequence of steps (start, resume, epochs, finish)
``data``        whole splits as tensors and their fingerprints, batches by index, the seeded augmentation
``model_setup`` the seeded model (``init_from``), Adam and its schedule, DDP and SyncBatchNorm, bf16 autocast
``meters``      running metric sums, their summaries, ``metrics.jsonl``
``run_eval``    clean test accuracy after epochs, the final ``lz.evaluate``
``run_state``   the run's state, what a checkpoint stores of it, how ``--resume`` restores it
``checkpoint``  the checkpoint folder format: atomic writes, manifest, verification, pruning
``finite``      the per-step NaN / inf check of loss and gradient, the gradient norm, non-finite tensors
``rng``         seeding, and every rank's RNG states saved and restored
``distributed`` torchrun process group, the deterministic sharded sampler, collectives
``outputs``     ``config.yaml``, ``data.json``, ``curves.png``, ``final/``; write errors naming OUT
=============== ===========================================================================================

>>> from lyadeq_zoo.training import train
>>> result = train("lyadeq_mnist", "runs/lyadeq_mnist", overrides=["train.epochs=1"])  # doctest: +SKIP
"""

from ..errors import CheckpointError
from .checkpoint import CheckpointWarning, list_checkpoints, load_latest, save_checkpoint
from .config import RESUME_MUTABLE_KEYS, TrainConfig, config_differences
from .data import augment_batch, load_split
from .distributed import DistContext, EpochBatchSampler
from .loop import TrainResult, resolve_config, train
from .outputs import plot_curves
from .run_eval import evaluate_clean

__all__ = [
    "RESUME_MUTABLE_KEYS",
    "CheckpointError",
    "CheckpointWarning",
    "DistContext",
    "EpochBatchSampler",
    "TrainConfig",
    "TrainResult",
    "augment_batch",
    "config_differences",
    "evaluate_clean",
    "list_checkpoints",
    "load_latest",
    "load_split",
    "plot_curves",
    "resolve_config",
    "save_checkpoint",
    "train",
]
