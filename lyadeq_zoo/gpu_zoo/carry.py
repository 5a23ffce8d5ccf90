"""The carry plan: the files a device call needs (a data set, collected runs), cut into batches that each fit in
one call beside the working tree.

A call sends the working tree plus the paths named in ``carry`` (64 MiB together), so a data set larger than
that travels over several calls. :func:`write_carry` cuts the files, in order, into pieces that fill batch
folders ``CARRY/batch-0``, ``CARRY/batch-1`` ... of at most ``batch_bytes`` each (a file that crosses a batch
boundary becomes two pieces), and writes the whole plan (every file's size and sha256, every piece's batch,
offset, size and sha256) into each batch as ``plan.json``; :mod:`.staging` puts the pieces back together on the
device. CARRY must be a folder git ignores, or the batches would travel in every call's tree.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.readers import cifar10_paths, mnist_paths
from ..errors import ConfigError
from ..fileio import write_json_atomic
from .limits import format_size

FORMAT = "lyadeq_zoo.gpu_carry/1"
PLAN_NAME = "plan.json"
BATCH_PREFIX = "batch-"
PLAN_RESERVE = 64 << 10  # room kept in each batch for its plan.json
# The data sets whose offline layout the readers know (lyadeq_zoo.data.readers), by split.
SPLITS = ("train", "test")
KNOWN_DATASETS = ("mnist", "cifar10")


@dataclass(frozen=True)
class CarryItem:
    """One file to carry: read from ``source``, placed at ``dest`` (a relative path under the device's work
    folder: ``data/<dataset>/<file>`` or ``state/<file>``); ``bytes`` is its size."""

    source: Path
    dest: str
    bytes: int


def _check_dest(dest: str) -> str:
    parts = Path(dest).parts
    if not parts or Path(dest).is_absolute() or ".." in parts:
        raise ConfigError(f"carry destination {dest!r} must be a relative path inside the work folder")
    return Path(dest).as_posix()


def dataset_folder(data_dir: Path, dataset: str) -> Path:
    """Where ``dataset``'s offline files are under ``data_dir``: ``data_dir/<dataset>`` if it exists, else
    ``data_dir`` itself (the layouts :func:`lyadeq_zoo.data.load_dataset` accepts)."""
    return data_dir / dataset if (data_dir / dataset).is_dir() else data_dir


def _dataset_files(data_dir: Path, dataset: str) -> list[Path]:
    """The offline files of ``dataset`` under ``data_dir`` (train split first), as the readers name them."""
    if dataset not in KNOWN_DATASETS:
        known = ", ".join(KNOWN_DATASETS)
        raise ConfigError(f"no offline layout is known for data set {dataset!r}; carry one of {known}")
    folder = dataset_folder(data_dir, dataset)
    paths = mnist_paths if dataset == "mnist" else cifar10_paths
    return [path for split in SPLITS for path in paths(folder, split)]


def missing_files(data_dir: str | Path, datasets: Iterable[str]) -> list[str]:
    """The offline files of ``datasets`` that ``data_dir`` lacks, as ``<dataset>/<file>``."""
    return [f"{d}/{p.name}" for d in dict.fromkeys(datasets) for p in _dataset_files(Path(data_dir), d)
            if not p.is_file()]


def data_items(data_dir: str | Path, datasets: Iterable[str]) -> list[CarryItem]:
    """The offline files of ``datasets`` (train and test splits, the names the readers read), destined for
    ``data/<dataset>/<file>``. Raises ConfigError for an unknown data set or a missing file."""
    data_dir = Path(data_dir)
    missing = missing_files(data_dir, datasets)
    if missing:
        raise ConfigError(
            f"--data-dir {data_dir} lacks {', '.join(missing)}: it must hold each data set's offline layout in "
            "<dir>/<dataset>/ or <dir>/, like the project's shared/data/<dataset>/"
        )
    return [CarryItem(p, f"data/{d}/{p.name}", p.stat().st_size)
            for d in dict.fromkeys(datasets) for p in _dataset_files(data_dir, d)]


def state_items(state_dir: str | Path) -> list[CarryItem]:
    """Every file of a collected-state folder (what an earlier call brought back from ``$OUT``), destined for
    ``state/<file>``."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        raise ConfigError(f"--state {state_dir} is not a folder (copy the files a device call brought back into it)")
    files = sorted(p for p in state_dir.iterdir() if p.is_file())
    if not files:
        raise ConfigError(f"--state {state_dir} holds no files")
    return [CarryItem(p, f"state/{p.name}", p.stat().st_size) for p in files]


def tree_bytes(repo: str | Path) -> int:
    """Bytes of what every call sends anyway: the files git tracks or would track (untracked, not ignored)."""
    try:
        listing = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise ConfigError(
            f"cannot list the working tree of {repo} with git ({err}); pass --tree-bytes N (the bytes the tree sends)"
        ) from err
    total = 0
    for name in listing.decode("utf-8", "surrogateescape").split("\0"):
        path = Path(repo) / name
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def check_ignored(repo: str | Path, folder: str | Path) -> None:
    """ConfigError unless git ignores ``folder`` (else the batches would travel with every call's tree)."""
    probe = Path(folder).resolve() / "probe"
    result = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", str(probe)], capture_output=True)
    if result.returncode == 1:
        raise ConfigError(
            f"{folder} is not ignored by git, so its batches would travel in every call's working tree; "
            "add it to .gitignore (the checkout's .gitignore lists /.gpu_zoo/) or choose an ignored folder"
        )


def batch_budget(call_limit: int, tree: int) -> int:
    """Bytes one batch may hold: the call limit less the tree and the plan's reserve; ConfigError when none is left."""
    budget = call_limit - tree - PLAN_RESERVE
    if budget <= 0:
        raise ConfigError(
            f"the working tree alone takes {format_size(tree)} of the {format_size(call_limit)} a call may carry: "
            "nothing is left for data; ignore large untracked files or raise --limit (at most 64 MiB)"
        )
    return budget


def layout(items: Sequence[CarryItem], batch_bytes: int) -> list[list[dict[str, Any]]]:
    """Per file of ``items``, its pieces ``{"batch", "offset", "bytes"}``: the files laid end to end and cut every
    ``batch_bytes`` bytes, so the plan needs the fewest batches, ``ceil(total / batch_bytes)``."""
    if batch_bytes < 1:
        raise ConfigError(f"batch size must be positive, got {batch_bytes}")
    pieces: list[list[dict[str, Any]]] = []
    batch, room = 0, batch_bytes
    for item in items:
        own: list[dict[str, Any]] = []
        offset = 0
        while True:
            if room == 0:
                batch, room = batch + 1, batch_bytes
            n = min(room, item.bytes - offset)
            own.append({"batch": batch, "offset": offset, "bytes": n})
            offset, room = offset + n, room - n
            if offset >= item.bytes:
                break
        pieces.append(own)
    return pieces


def _clear_carry(carry_dir: Path) -> None:
    """Remove an earlier plan's batches; refuse a folder that holds anything else."""
    if not carry_dir.exists():
        return
    foreign = [p.name for p in carry_dir.iterdir() if not (p.is_dir() and p.name.startswith(BATCH_PREFIX))]
    if foreign:
        raise ConfigError(
            f"{carry_dir} holds {', '.join(sorted(foreign)[:5])}, which no plan wrote; the plan replaces the whole "
            "folder, so choose an empty or a plan's own --carry folder"
        )
    shutil.rmtree(carry_dir)


def write_carry(
    items: Sequence[CarryItem], carry_dir: str | Path, batch_bytes: int, *, call_limit: int | None = None,
    tree: int | None = None,
) -> dict[str, Any]:
    """Cut ``items`` into ``carry_dir/batch-K/`` folders of at most ``batch_bytes`` bytes of pieces each (plus its
    ``plan.json``), replacing an earlier plan there; returns the plan (also in every batch's ``plan.json``).

    The plan: ``format``, ``plan_id`` (12 hex digits of the sha256 of what it carries), ``batch_bytes``,
    ``call_limit`` and ``tree_bytes`` (as given, for the record), ``files`` (``dest``, ``bytes``, ``sha256``,
    ``pieces``: ``name``, ``batch``, ``offset``, ``bytes``, ``sha256``) and ``batches`` (``name``, ``bytes``,
    ``pieces``). Each file is read once.
    """
    carry_dir = Path(carry_dir)
    dests = [_check_dest(item.dest) for item in items]
    if len(set(dests)) != len(dests):
        raise ConfigError(f"two carried files share a destination: {sorted(d for d in dests if dests.count(d) > 1)}")
    cuts = layout(items, batch_bytes)
    _clear_carry(carry_dir)
    files: list[dict[str, Any]] = []
    batches: dict[int, dict[str, Any]] = {}
    for index, (item, dest, own) in enumerate(zip(items, dests, cuts, strict=True)):
        whole = hashlib.sha256()
        pieces = []
        with open(item.source, "rb") as source:
            for k, cut in enumerate(own):
                name = f"{index:02d}-{Path(dest).name}.{k}"
                data = source.read(cut["bytes"])
                if len(data) != cut["bytes"]:
                    raise ConfigError(f"{item.source} changed while the plan was written (shorter than planned)")
                whole.update(data)
                folder = carry_dir / f"{BATCH_PREFIX}{cut['batch']}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
                pieces.append({**cut, "name": name, "sha256": hashlib.sha256(data).hexdigest()})
                entry = batches.setdefault(cut["batch"], {"name": folder.name, "bytes": 0, "pieces": []})
                entry["bytes"] += cut["bytes"]
                entry["pieces"].append(name)
            if source.read(1):
                raise ConfigError(f"{item.source} changed while the plan was written (longer than planned)")
        files.append({"dest": dest, "bytes": item.bytes, "sha256": whole.hexdigest(), "pieces": pieces})
    identity = json.dumps([[f["dest"], f["bytes"], f["sha256"]] for f in files] + [batch_bytes]).encode()
    plan = {
        "format": FORMAT,
        "plan_id": hashlib.sha256(identity).hexdigest()[:12],
        "batch_bytes": batch_bytes,
        "call_limit": call_limit,
        "tree_bytes": tree,
        "files": files,
        "batches": [batches[k] for k in sorted(batches)],
    }
    for entry in plan["batches"]:
        path = write_json_atomic(carry_dir / entry["name"] / PLAN_NAME, plan, indent=1)
        if path.stat().st_size > PLAN_RESERVE:
            raise ConfigError(f"{path} is larger than the {PLAN_RESERVE} bytes kept for it; carry fewer files")
    return plan


def read_plan(path: str | Path) -> dict[str, Any]:
    """A ``plan.json`` written by :func:`write_carry`; ConfigError for another format."""
    path = Path(path)
    plan = json.loads(path.read_text(encoding="utf-8"))
    if plan.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a carry plan (format {plan.get('format')!r}, expected {FORMAT!r})")
    return plan


def describe_plan(plan: dict[str, Any], carry_dir: str | Path) -> list[str]:
    """Lines saying what each call carries: one per batch, with its bytes and the tree's."""
    tree = plan.get("tree_bytes") or 0
    total = sum(f["bytes"] for f in plan["files"])
    lines = [
        f"plan {plan['plan_id']}: {len(plan['files'])} files, {format_size(total)}, in {len(plan['batches'])} "
        f"batch(es) of at most {format_size(plan['batch_bytes'])} (tree {format_size(tree)}, call limit "
        f"{format_size(plan['call_limit'] or 0)})",
    ]
    for entry in plan["batches"]:
        carried = Path(carry_dir) / entry["name"]
        lines.append(
            f"  call carry [\"{carried.as_posix()}\"]: {format_size(entry['bytes'])} + tree = "
            f"{format_size(entry['bytes'] + tree)}"
        )
    return lines

