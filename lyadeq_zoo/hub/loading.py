"""Strict reading of a checkpoint folder's files: ``config.json``, then ``model.safetensors`` into a model.

Loading is strict: every tensor of the file must match, by name and shape, a tensor of the model that the
config builds, and the file's zoo major version must be ours. Only safetensors is ever read (no pickle).
Every failure raises :class:`~lyadeq_zoo.errors.CheckpointError` naming the file, the key or tensor, and
the fix. Building the model is the factory's job; these functions take the built model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError, ChecksumError
from ..fileio import sha256_file
from ..version import __version__
from .diagnosis import explain_unreadable_weights
from .layout import CHECKPOINT_FILES, CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
from .remote import cache_delete_advice

MAX_PROBLEMS_SHOWN = 8


def read_checkpoint_config(path: str | Path, *, source: str | None = None) -> dict[str, Any]:
    """Read and check a checkpoint's ``config.json``: zoo major version, format version, ``config.model``.

    ``source`` labels the file in error messages (default: its path). Returns the whole file content
    (``config`` is the resolved config the model was built from).
    """
    path = Path(path)
    label = source or str(path)
    if not path.is_file():
        raise CheckpointError(
            f"{label}: {CONFIG_NAME} not found; a checkpoint folder holds {', '.join(CHECKPOINT_FILES)} "
            "(write one with lz.save_pretrained)"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{label}: not valid JSON ({err}); re-save the checkpoint") from err
    if not isinstance(info, dict):
        raise CheckpointError(f"{label}: expected a JSON object, got {type(info).__name__}")
    version = info.get("zoo_version")
    if not isinstance(version, str):
        raise CheckpointError(f"{label}: missing key 'zoo_version' (the lyadeq-zoo version that saved it)")
    if _major(version) != _major(__version__):
        raise CheckpointError(
            f"{label}: saved by lyadeq-zoo {version}, which is incompatible with this lyadeq-zoo "
            f"{__version__} (major version {_major(version)} != {_major(__version__)}); install "
            f"lyadeq-zoo=={_major(version)}.* to load it"
        )
    fmt = info.get("format_version")
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        raise CheckpointError(
            f"{label}: key 'format_version' is {fmt!r}; this lyadeq-zoo reads formats up to {FORMAT_VERSION}"
        )
    config = info.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{label}: key 'config' must hold the resolved config with a 'model' section")
    return info


def _major(version: str) -> int:
    match = re.match(r"^\s*(\d+)", version)
    if match is None:
        raise CheckpointError(f"cannot read a major version from zoo_version {version!r}")
    return int(match.group(1))


def read_state_dict(path: str | Path, *, source: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU, by name.

    CheckpointError if it is missing or unreadable; the message says what the file is instead (another
    format such as a PyTorch pickle, which is never unpickled; a truncated or corrupt safetensors file) and
    how to get a good one (:mod:`~lyadeq_zoo.hub.diagnosis`).
    """
    path = Path(path)
    label = source or str(path)
    if not path.is_file():
        raise CheckpointError(f"{label}: weights file not found")
    refetch = cache_delete_advice(path) or "Copy or download it again, or re-save it with lz.save_pretrained."
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        explanation = explain_unreadable_weights(path, refetch=refetch, reader_error=str(err))
        raise CheckpointError(f"{label}: {explanation}") from err
    tensors = {}
    with handle:
        for key in handle.keys():  # noqa: SIM118 - not a dict
            try:
                tensors[key] = handle.get_tensor(key)
            except (SafetensorError, OSError, ValueError, RuntimeError) as err:
                raise CheckpointError(f"{label}: tensor {key!r} cannot be read ({err}). {refetch}") from err
    return tensors


def state_dict_mismatches(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """Every tensor of ``tensors`` that does not fit ``expected`` (a model's state_dict), as readable lines.

    Missing and unexpected names, different shapes, and dtypes that differ in kind (float weights may be
    stored in another float precision; integer buffers must stay integer).
    """
    problems = []
    for key in sorted(set(expected) - set(tensors)):
        problems.append(f"tensor {key!r} is missing (the config builds it with shape {_shape(expected[key])})")
    for key in sorted(set(tensors) - set(expected)):
        problems.append(
            f"tensor {key!r} (shape {_shape(tensors[key])}) is unexpected: the config builds no such tensor"
        )
    for key in sorted(set(tensors) & set(expected)):
        got, want = tensors[key], expected[key]
        if got.shape != want.shape:
            problems.append(f"tensor {key!r} has shape {_shape(got)}, the config builds {_shape(want)}")
        elif got.dtype != want.dtype and not (got.is_floating_point() and want.is_floating_point()):
            problems.append(f"tensor {key!r} has dtype {got.dtype}, the config builds {want.dtype}")
    return problems


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in tensor.shape)


def load_weights(model: torch.nn.Module, path: str | Path, *, source: str | None = None) -> torch.nn.Module:
    """Load a safetensors file into ``model`` strictly: same tensor names, same shapes, compatible dtypes.

    Raises CheckpointError naming the file and every mismatched tensor (missing, unexpected, mis-shaped).
    Returns ``model``.
    """
    label = source or str(path)
    tensors = read_state_dict(path, source=label)
    problems = state_dict_mismatches(tensors, model.state_dict())
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        if len(problems) > MAX_PROBLEMS_SHOWN:
            shown += f"; ... and {len(problems) - MAX_PROBLEMS_SHOWN} more"
        raise CheckpointError(
            f"{label}: {shown}. The weights do not fit the architecture of the config (was the config "
            "changed, or are these another model's weights?)"
        )
    model.load_state_dict(tensors, strict=True)
    return model


def verify_recorded_sha256(info: Mapping[str, Any], weights_path: str | Path, *, label: str) -> None:
    """Raise ChecksumError when the weights' sha256 is not the ``weights_sha256`` that config.json records.

    ``info`` is the config.json content; files saved before the key existed are not checked.
    """
    recorded = info.get("weights_sha256")
    if recorded is None:
        return
    actual = sha256_file(weights_path)
    if actual != recorded:
        raise ChecksumError(
            f"{label}: {WEIGHTS_NAME} has sha256 {actual}, but {CONFIG_NAME} records "
            f"{recorded} (key 'weights_sha256'): the weights were modified or corrupted after saving. Re-save "
            "with lz.save_pretrained (or download again)"
        )


def load_checkpoint_weights(
    model: torch.nn.Module, weights_path: str | Path, info: Mapping[str, Any], *, label: str
) -> torch.nn.Module:
    """Load a checkpoint's weights into ``model`` (built from ``info["config"]``) strictly, then check them
    against the sha256 config.json records. Returns ``model``.

    The sha256 is checked after the structural checks so that a wrong tensor keeps its specific message.
    """
    load_weights(model, weights_path, source=f"{label}: {WEIGHTS_NAME}")
    verify_recorded_sha256(info, weights_path, label=label)
    return model
