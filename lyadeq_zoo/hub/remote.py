"""Checkpoint names and the Hugging Face Hub: ``hf-hub:`` / ``local-dir:`` names to files, downloads, uploads.

Downloads go through ``huggingface_hub.hf_hub_download``, so its cache, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``
and tokens behave as usual. Nothing here builds a model: a name resolves to its ``config.json`` and
``model.safetensors`` paths, which the factory reads and loads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError
from ..version import __version__
from .layout import CHECKPOINT_FILES, CONFIG_NAME, LIBRARY_NAME, WEIGHTS_NAME

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo, HfApi

HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
CHECKPOINT_PREFIXES = (HUB_PREFIX, LOCAL_PREFIX)

_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


def is_checkpoint_name(name: str) -> bool:
    """Whether ``name`` names a checkpoint folder (``hf-hub:...`` or ``local-dir:...``) rather than a zoo model."""
    return name.startswith(CHECKPOINT_PREFIXES)


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``hf-hub:org/repo@rev`` -> ``("org/repo", "rev")``; the revision is None when not given."""
    spec = name[len(HUB_PREFIX) :] if name.startswith(HUB_PREFIX) else name
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(f"{name!r}: expected hf-hub:<org>/<repo>[@<revision>]")
    return repo_id, revision or None


def checkpoint_files(name: str) -> tuple[Path, Path]:
    """``(config.json, model.safetensors)`` paths of checkpoint ``local-dir:PATH`` or ``hf-hub:org/repo[@rev]``.

    A Hub checkpoint is downloaded (or read from the cache); its weights are pinned to the commit its
    config came from, so a push in between cannot mix two checkpoints. The files are not checked here.
    """
    if name.startswith(LOCAL_PREFIX):
        directory = Path(name[len(LOCAL_PREFIX) :]).expanduser()
        if not directory.is_dir():
            raise CheckpointError(f"{name}: {_not_a_folder(directory)}")
        return directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if name.startswith(HUB_PREFIX):
        repo_id, revision = parse_hub_name(name)
        config_path = download_checkpoint_file(repo_id, CONFIG_NAME, revision, label=name)
        commit = config_path.parent.name  # the cache keeps files under snapshots/<commit hash>/
        weights_revision = commit if _COMMIT_HASH.match(commit) else revision
        return config_path, download_checkpoint_file(repo_id, WEIGHTS_NAME, weights_revision, label=name)
    raise ValueError(f"expected a checkpoint name starting with {HUB_PREFIX!r} or {LOCAL_PREFIX!r}, got {name!r}")


def _not_a_folder(path: Path) -> str:
    """Why ``local-dir:path`` names no checkpoint folder, and the fix."""
    expected = f"local-dir: names the folder lz.save_pretrained writes ({', '.join(CHECKPOINT_FILES)})"
    if not path.exists():
        return f"{path} does not exist; {expected}"
    if path.name in CHECKPOINT_FILES:
        return f"{path} is a file, not a folder; {expected}: use local-dir:{path.parent}"
    return f"{path} is a file, not a folder; {expected}"


def download_file(repo_id: str, filename: str, revision: str | None, *, cache_dir: str | Path | None = None) -> Path:
    """``hf_hub_download`` of one file of a Hub model repo (cached); huggingface_hub's errors pass through."""
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=cache_dir,
            library_name=LIBRARY_NAME,
            library_version=__version__,
        )
    )


def download_checkpoint_file(
    repo_id: str, filename: str, revision: str | None, *, label: str, cache_dir: str | Path | None = None
) -> Path:
    """:func:`download_file`, with CheckpointError naming ``label`` when the file is unreachable or absent."""
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return download_file(repo_id, filename, revision, cache_dir=cache_dir)
    except LocalEntryNotFoundError as err:
        raise CheckpointError(
            f"{label}: {filename} is neither reachable on the Hub nor in the local cache ({err}). Check the "
            "network / HF_ENDPOINT, or unset HF_HUB_OFFLINE to download it"
        ) from err
    except EntryNotFoundError as err:
        raise CheckpointError(
            f"{label}: the repo has no {filename}; a lyadeq-zoo checkpoint holds {', '.join(CHECKPOINT_FILES)} "
            "(upload one with lz.push_to_hub)"
        ) from err


def upload_checkpoint(
    folder: str | Path,
    repo_id: str,
    *,
    api: HfApi | None = None,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> CommitInfo:
    """Upload the checkpoint files of ``folder`` (nothing else in it) to the Hub model repo ``repo_id``.

    ``api`` defaults to ``HfApi()`` (the usual token and ``HF_ENDPOINT``). The repo is created if needed, a
    ``revision`` other than ``main`` is created as a branch, and the zoo version is appended to the commit
    message. The folder is uploaded as it is: ``lz.push_to_hub`` checks it first. Returns the commit info
    (``.oid`` is the commit hash).
    """
    from huggingface_hub import HfApi

    api = api if api is not None else HfApi()
    message = commit_message or f"Upload lyadeq-zoo checkpoint to {repo_id}"
    if __version__ not in message:
        message += f" (lyadeq-zoo {__version__})"
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        revision=revision,
        commit_message=message,
        allow_patterns=list(CHECKPOINT_FILES),
    )


def cached_repo_id(path: str | Path) -> str | None:
    """The Hub repo id when ``path`` lies in a huggingface_hub cache (``.../models--org--name/snapshots/...``)."""
    parts = Path(path).parts
    for folder, below in zip(parts[:-1], parts[1:], strict=True):
        if folder.startswith("models--") and below == "snapshots":
            return folder[len("models--") :].replace("--", "/")
    return None


def cache_delete_advice(path: str | Path) -> str | None:
    """How to drop the cached Hub file ``path`` so that it is downloaded afresh; None if not in a Hub cache.

    The cache keeps a file once, as a blob that the snapshot entry links to: deleting only the link would
    bring the same bad blob back, so the advice names the blob.
    """
    repo_id = cached_repo_id(path)
    if repo_id is None:
        return None
    path = Path(path)
    blob = path.resolve()
    by_hand = f"{blob} and the link {path}" if blob != path else str(path)
    return (
        f"It is a file of the Hugging Face cache: delete it so that it is downloaded again, with "
        f"`hf cache rm model/{repo_id}` (older huggingface_hub: `huggingface-cli delete-cache`) or by removing "
        f"{by_hand}; then try again."
    )


def hub_error_types() -> tuple[type[BaseException], ...]:
    """The errors by which ``hf_hub_download`` says the Hub cannot provide a file (offline, absent, HTTP, I/O)."""
    from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled

    return (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, OSError)
