"""The pretrained index: ``lyadeq_zoo/pretrained.json``, zoo model name -> where its published weights are.

An entry holds ``sha256`` (always checked), ``filename`` (default ``model.safetensors``) and at least one
source: ``hf_hub_id`` with a pinned ``revision`` (a commit hash), and/or ``local_path``, a copy shipped in
the package (a relative path is relative to the package folder). ``$LYADEQ_ZOO_PRETRAINED`` names another
index file (e.g. a private mirror's). This module is the index's one reader and writer, and turns an entry
into a verified weights file: from the Hub (cached) when reachable, else the shipped copy.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ChecksumError
from ..fileio import sha256_file, write_json_atomic
from .layout import WEIGHTS_NAME
from .loading import load_weights
from .remote import cache_delete_advice, download_file, hub_error_types

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the installed lyadeq_zoo folder
INDEX_PATH = PACKAGE_DIR / "pretrained.json"
REINSTALL = "pip install --force-reinstall lyadeq-zoo"
INDEX_ENV = "LYADEQ_ZOO_PRETRAINED"  # an alternative pretrained index file
ENTRY_KEYS = frozenset({"hf_hub_id", "revision", "filename", "sha256", "local_path"})

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_warned_fallback: set[str] = set()  # zoo names whose fall-back to the shipped copy was already warned about


# -- reading and writing the file ---------------------------------------------------------------------------
def index_path() -> Path:
    """The pretrained index file in use: ``$LYADEQ_ZOO_PRETRAINED`` if set, else the shipped pretrained.json."""
    override = os.environ.get(INDEX_ENV)
    return Path(override).expanduser() if override else INDEX_PATH


def read_index(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Zoo name -> entry ``{hf_hub_id, revision, filename, sha256, local_path}``, validated.

    ``path`` defaults to :func:`index_path`; a missing file is an empty index. ``filename`` is filled in
    with ``model.safetensors`` where an entry leaves it out.
    """
    path = Path(path) if path is not None else index_path()
    entries = _read_raw(path)
    check_entries(entries, where=str(path))
    for entry in entries.values():
        entry.setdefault("filename", WEIGHTS_NAME)
    return entries


def _read_raw(path: Path) -> dict[str, Any]:
    """The index file's JSON object as written (no defaults filled in); ``{}`` when the file does not exist."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path}: the pretrained index is not valid JSON ({err}); restore it (shipped index: reinstall with "
            f"`{REINSTALL}`; ${INDEX_ENV}: point it at a valid index file)"
        ) from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected an object mapping zoo names to entries")
    return raw


def check_entries(entries: Mapping[str, Any], *, where: str) -> None:
    """Raise CheckpointError naming ``where`` and the entry unless every entry is a well-formed index entry."""
    for name, entry in entries.items():
        label = f"{where}: entry {name!r}"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{label} must be an object")
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            raise CheckpointError(f"{label}: unknown key(s) {sorted(unknown)}")
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha):
            raise CheckpointError(f"{label}: 'sha256' must be 64 lowercase hex digits, got {sha!r}")
        if not entry.get("hf_hub_id") and not entry.get("local_path"):
            raise CheckpointError(f"{label}: needs 'hf_hub_id' or 'local_path' (where the weights are)")


def write_index(entries: Mapping[str, Mapping[str, Any]], path: str | Path | None = None) -> Path:
    """Replace the index file by ``entries`` (validated first), atomically: indent 2, sorted keys, final newline.

    ``path`` defaults to :func:`index_path`. Returns the path written.
    """
    path = Path(path) if path is not None else index_path()
    plain = {name: dict(entry) for name, entry in entries.items()}
    check_entries(plain, where=str(path))
    return write_json_atomic(path, plain, indent=2, sort_keys=True)


def set_entry(name: str, entry: Mapping[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """Set zoo model ``name``'s entry (keys whose value is None are left out) and rewrite the index.

    The other entries are kept exactly as the file has them. Returns the entry as written.
    """
    path = Path(path) if path is not None else index_path()
    entries = _read_raw(path)
    entries[name] = {key: value for key, value in entry.items() if value is not None}
    write_index(entries, path)
    return entries[name]


def has_pretrained(name: str) -> bool:
    """Whether zoo model ``name`` has an entry in the pretrained index in use."""
    return name in read_index()


# -- from an entry to a verified file -----------------------------------------------------------------------
def shipped_folder(local_path: str | Path) -> Path:
    """The folder an entry's ``local_path`` names (a relative path is relative to the package folder)."""
    path = Path(local_path).expanduser()
    return path if path.is_absolute() else PACKAGE_DIR / path


def verify_sha256(path: str | Path, expected: str, *, source: str, fix: str | None = None) -> None:
    """Raise ChecksumError (naming ``source`` and ``fix``) when the file's sha256 is not ``expected``.

    ``fix`` defaults to advice that fits any file: replace it by the published one, or update the index.
    """
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{source}: sha256 is {actual}, but the pretrained index records {expected} ({index_path()}); "
            "refusing to load it. "
            + (fix or "Replace the file by the published one, or update the pretrained index with tools/publish.py.")
        )


def _hub_mismatch_fix(path: Path) -> str:
    """What to do when a file downloaded from the Hub (it lies in the cache) does not match the index."""
    drop = cache_delete_advice(path) or f"Delete {path} and try again, so that it is downloaded again."
    return (
        f"The downloaded copy is corrupt, or the index records other weights. {drop} If a fresh download "
        "mismatches too, the index entry is stale: update it with tools/publish.py."
    )


def _shipped_mismatch_fix(path: Path) -> str:
    """What to do when an entry's ``local_path`` copy does not match the index: never delete it.

    A copy inside the installed package is restored by reinstalling it; any other copy is restored from
    where it was copied from.
    """
    try:
        in_checkout = path.resolve().relative_to(PACKAGE_DIR.resolve().parent).as_posix()
    except ValueError:
        return (
            "This local copy (the entry's 'local_path') differs from the index: restore it from where it was "
            "copied from (do not delete it: it is the copy the index falls back to), or, if it holds the intended "
            "weights, record its sha256 in the index with tools/publish.py."
        )
    other_index = (
        f" (or the index in use, {index_path()} from ${INDEX_ENV}, records other weights than the package ships)"
        if index_path() != INDEX_PATH
        else ""
    )
    return (
        "The copy shipped inside the installed lyadeq-zoo package differs from the index, so the installation is "
        f"damaged or was modified{other_index}. Do not delete it; reinstall the package: `{REINSTALL}` (in a git "
        f"checkout of the repository: `git checkout -- {in_checkout}`)."
    )


def resolve_pretrained_file(name: str, *, cache_dir: str | Path | None = None) -> Path:
    """The verified weights file of zoo model ``name``: from the Hub (cached), else the shipped copy.

    The Hub download goes through ``hf_hub_download`` (cache, offline mode, endpoint, token as usual).
    When the Hub cannot provide the file (or the entry has no Hub id), the copy under ``local_path`` is
    used, with a warning once per name. The sha256 of whichever file is used is checked.
    """
    entries = read_index()
    if name not in entries:
        listed = ", ".join(sorted(entries)) or "none yet"
        raise CheckpointError(
            f"no pretrained weights for {name!r} (pretrained index {index_path()}); with weights: {listed}"
        )
    entry = entries[name]
    filename = entry["filename"]
    hub_error: BaseException | None = None
    if entry.get("hf_hub_id"):
        source = f"hf-hub:{entry['hf_hub_id']}@{entry.get('revision') or 'main'}/{filename}"
        try:
            path = download_file(entry["hf_hub_id"], filename, entry.get("revision"), cache_dir=cache_dir)
        except hub_error_types() as err:
            hub_error = err
        else:
            verify_sha256(path, entry["sha256"], source=source, fix=_hub_mismatch_fix(path))
            return path
    if not entry.get("local_path"):
        raise CheckpointError(
            f"pretrained {name!r}: the Hub could not provide {filename} from {entry['hf_hub_id']} "
            f"({type(hub_error).__name__}: {hub_error}) and the pretrained index lists no shipped copy"
        ) from hub_error
    local = shipped_folder(entry["local_path"]) / filename
    if not local.is_file():
        why = f"the Hub failed ({type(hub_error).__name__}: {hub_error}) and " if hub_error else ""
        raise CheckpointError(f"pretrained {name!r}: {why}the shipped copy {local} does not exist") from hub_error
    if hub_error is not None and name not in _warned_fallback:
        _warned_fallback.add(name)
        first_line = str(hub_error).splitlines()[0] if str(hub_error) else ""
        warnings.warn(
            f"pretrained {name!r}: could not get {filename} from the Hub ({type(hub_error).__name__}: "
            f"{first_line}); using the copy shipped at {local}",
            stacklevel=3,
        )
    verify_sha256(local, entry["sha256"], source=str(local), fix=_shipped_mismatch_fix(local))
    return local


def load_pretrained_weights(
    model: torch.nn.Module, name: str, *, cache_dir: str | Path | None = None
) -> torch.nn.Module:
    """Load the index's verified weights of zoo model ``name`` into ``model`` (strict). Returns ``model``."""
    path = resolve_pretrained_file(name, cache_dir=cache_dir)
    return load_weights(model, path, source=f"pretrained {name!r} ({path})")
