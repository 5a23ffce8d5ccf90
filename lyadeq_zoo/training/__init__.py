"""Training: the ``train:`` config section, the loop behind ``tools/train.py``, atomic checkpoints with
exact resume, and torch.distributed (torchrun) support. See docs/training.md.

>>> from lyadeq_zoo.training import train
>>> result = train("lyadeq_mnist", "runs/lyadeq_mnist", overrides=["train.epochs=1"])  # doctest: +SKIP
"""

from .checkpoint import CheckpointError, CheckpointWarning, list_checkpoints, load_latest, save_checkpoint
from .config import RESUME_MUTABLE_KEYS, TrainConfig, config_differences
from .distributed import DistContext, EpochBatchSampler
from .loop import TrainResult, augment_batch, evaluate_clean, load_split, plot_curves, resolve_config, train

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
