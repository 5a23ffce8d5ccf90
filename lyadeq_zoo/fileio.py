"""Shared file plumbing: sha256 of a file, durable atomic writes (file and folder), synced appends, JSON values.

Every write that must survive a kill goes through here: the bytes go to a temporary file in the target's own
folder, are fsync'ed, then ``os.replace`` puts them in place (atomic on POSIX) and the folder is fsync'ed, so a
reader sees either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """fsync a folder so that a rename inside it is durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path: str | Path, content: bytes) -> None:
    """Write ``content`` to ``path`` and fsync it (not atomic by itself: use for files in a staging folder)."""
    with open(path, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def write_bytes_atomic(path: str | Path, content: bytes) -> Path:
    """Replace ``path`` by ``content`` atomically: temp file beside it, fsync, ``os.replace``, folder fsync."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write_synced(tmp, content)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_bytes_atomic` of ``text`` encoded as UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, value: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write ``value`` as JSON (strict: no NaN / inf) atomically, with a trailing newline."""
    text = json.dumps(value, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def append_line_synced(path: str | Path, line: str) -> None:
    """Append one line (a newline is added) and fsync: a kill loses at most the line being written."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_folder_atomic(directory: str | Path, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` (name -> bytes) into ``directory`` so that a kill never leaves a mix of old and new.

    A new or empty folder is staged beside it and renamed into place in one step; an existing folder gets
    each file staged inside it, then renamed over the old one (each file atomic; other files are kept).
    """
    directory = Path(directory)
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a folder")
    fresh = not directory.exists() or not any(directory.iterdir())
    if fresh:
        staging = parent / f".{directory.name}.{uuid.uuid4().hex}.tmp"
        staging.mkdir()  # honours the umask, unlike tempfile.mkdtemp's 0o700
        try:
            for file_name, content in files.items():
                write_synced(staging / file_name, content)
            if directory.exists():
                directory.rmdir()
            os.replace(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    else:
        staged: dict[str, Path] = {}
        try:
            for file_name, content in files.items():
                staged[file_name] = directory / f".{file_name}.{uuid.uuid4().hex}.tmp"
                write_synced(staged[file_name], content)
            for file_name, tmp in staged.items():
                os.replace(tmp, directory / file_name)
        finally:
            for tmp in staged.values():
                tmp.unlink(missing_ok=True)
    fsync_dir(parent)
    fsync_dir(directory)
    return directory


def json_safe(value: Any) -> Any:
    """For JSON that must load anywhere: NaN / inf become None, tuples become lists (mappings recursed)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def to_json_value(value: Any) -> Any:
    """Plain JSON types from configs / stats: tensors become numbers or lists, keys become strings.

    Raises TypeError naming the value for anything else (a checkpoint must never hold a pickled object).
    """
    if isinstance(value, Mapping):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (float, int, str, bool)) or value is None:
        return value
    raise TypeError(f"cannot store {type(value).__name__} as JSON: {value!r}")
