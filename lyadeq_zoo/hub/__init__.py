"""Checkpoints and distribution: checkpoint folders, their strict loading, the pretrained index, the Hub.

=============== ==============================================================================================
module          job
=============== ==============================================================================================
``layout``      the folder's file names, format version and the input spec config.json records
``saving``      ``save_pretrained``: a model -> a checkpoint folder (atomic)
``card``        the model card (README.md) built from config.json's content
``loading``     strict reading: config.json checks, safetensors -> a given model, recorded sha256
``diagnosis``   why a weights file does not open: another format (never unpickled), truncated, corrupt
``remote``      ``hf-hub:`` / ``local-dir:`` names -> files; Hub downloads and uploads
``index``       the pretrained index (``lyadeq_zoo/pretrained.json``): read, write, resolve to verified files
=============== ==============================================================================================

Dependencies run one way: ``lyadeq_zoo.factory`` builds models and asks this package for configs and
verified files; nothing here imports the factory. ``lz.push_to_hub`` (which checks a folder by building
its model) lives in :mod:`lyadeq_zoo.publishing`, above both.
"""

from ..errors import CheckpointError, ChecksumError
from . import card, diagnosis, index, layout, loading, remote, saving
from .card import DATASET_TITLES, LICENSE, fine_tuned_from, flatten_metrics, metric_rows, model_card
from .index import (
    INDEX_ENV,
    INDEX_PATH,
    has_pretrained,
    index_path,
    load_pretrained_weights,
    read_index,
    resolve_pretrained_file,
    set_entry,
    shipped_folder,
    verify_sha256,
    write_index,
)
from .layout import CARD_NAME, CHECKPOINT_FILES, CONFIG_NAME, FORMAT_VERSION, LIBRARY_NAME, WEIGHTS_NAME, input_spec
from .loading import (
    load_checkpoint_weights,
    load_weights,
    read_checkpoint_config,
    read_state_dict,
    verify_recorded_sha256,
)
from .remote import HUB_PREFIX, LOCAL_PREFIX, checkpoint_files, is_checkpoint_name, parse_hub_name, upload_checkpoint
from .saving import metadata_files, save_pretrained

__all__ = [
    "CARD_NAME",
    "CHECKPOINT_FILES",
    "CONFIG_NAME",
    "DATASET_TITLES",
    "FORMAT_VERSION",
    "HUB_PREFIX",
    "INDEX_ENV",
    "INDEX_PATH",
    "LIBRARY_NAME",
    "LICENSE",
    "LOCAL_PREFIX",
    "WEIGHTS_NAME",
    "CheckpointError",
    "ChecksumError",
    "card",
    "checkpoint_files",
    "diagnosis",
    "fine_tuned_from",
    "flatten_metrics",
    "has_pretrained",
    "index",
    "index_path",
    "input_spec",
    "is_checkpoint_name",
    "layout",
    "load_checkpoint_weights",
    "load_pretrained_weights",
    "load_weights",
    "loading",
    "metadata_files",
    "metric_rows",
    "model_card",
    "parse_hub_name",
    "read_checkpoint_config",
    "read_index",
    "read_state_dict",
    "remote",
    "resolve_pretrained_file",
    "save_pretrained",
    "saving",
    "set_entry",
    "shipped_folder",
    "upload_checkpoint",
    "verify_recorded_sha256",
    "verify_sha256",
    "write_index",
]
