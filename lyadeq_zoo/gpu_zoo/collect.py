"""Collect: each run's resumable state packed into ``$OUT`` within what a call brings back; restore: the same
unpacked into a work folder's runs, so ``lyadeq-train --resume`` continues them (in a later call or session).

One run's archive ``run-<name>.tgz`` holds ``<name>/``: ``config.yaml``, ``data.json``, ``metrics.jsonl``,
``curves.png``, the ``eval-<suite>.json`` results, the newest intact checkpoint (``checkpoints/step-N/``, for a
run not finished) or ``final/`` (a finished one), and the tail of each of its job logs (``logs/``). A checkpoint
is hard-linked into a snapshot first and verified there, so pruning by the live run cannot tear it;
``metrics.jsonl`` is copied after it, so it is at least as long as the checkpoint expects (``--resume`` cuts it
back). An archive larger than one ``$OUT`` file comes back as ``run-<name>.tgz.000``, ``.001`` ...; when the runs
need more files than ``$OUT`` may hold, all runs go into one ``runs.tgz`` (split the same way), and if that is
still too large the logs and curves are left out. ``summary.json`` lists every file with its size and sha256 and
every run's progress; it is written last.

Every file goes into ``$OUT`` as ``.<name>.partial`` and is renamed into place, one at a time, so a command killed
at its time limit leaves the previous complete files (one slot and the largest file's bytes are kept free for
that; where they cannot be, files are replaced in place). Files in ``$OUT`` that collect did not write count
against the limits and are left alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ConfigError
from ..fileio import write_json_atomic
from ..training.checkpoint import list_checkpoints, verify_checkpoint
from .limits import OUT_NAME, OutLimits, format_size
from .runs import EVAL_PREFIX, checkpoint_step, is_finished, run_progress
from .workdir import WorkDir

FORMAT = "lyadeq_zoo.gpu_collect/1"
SUMMARY = "summary.json"
ARCHIVE_PREFIX = "run-"
COMBINED = "runs.tgz"
LOG_TAIL_BYTES = 256 << 10
RUN_FILES = ("config.yaml", "data.json", "curves.png")
DEVICE_OUT = OutLimits()  # the device's own limits


@dataclass(frozen=True)
class OutFile:
    """One file to put in ``$OUT``: bytes ``[offset, offset + length)`` of ``source``."""

    name: str
    source: Path
    offset: int
    length: int


def _ours(name: str) -> bool:
    """Whether a file in ``$OUT`` is one collect writes (summary, archives, a partial one)."""
    partial = name.startswith(".") and name.endswith(".partial")
    return name == SUMMARY or name.startswith((ARCHIVE_PREFIX, COMBINED)) or partial


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link every file of ``source`` into ``target`` (copy where links fail, e.g. across file systems)."""
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)


def _tail(source: Path, target: Path, max_bytes: int) -> None:
    with open(source, "rb") as handle:
        handle.seek(max(0, source.stat().st_size - max_bytes))
        target.write_bytes(handle.read())


def snapshot_run(work: WorkDir, name: str, target: Path, *, extras: bool = True) -> dict[str, Any]:
    """Copy what resumes (or, finished, what describes) run ``name`` into ``target/<name>``; returns
    ``{"global_step", "finished"}`` of the snapshot. ``extras``: curves and log tails too."""
    run_dir, dest = work.run(name), target / name
    dest.mkdir(parents=True)
    finished, step = is_finished(run_dir), None
    if finished:
        shutil.copytree(run_dir / "final", dest / "final")
    else:
        for checkpoint in reversed(list_checkpoints(run_dir / "checkpoints")):
            linked = dest / "checkpoints" / checkpoint.name
            try:
                _link_tree(checkpoint, linked)
            except FileNotFoundError:  # pruned by the live run while being linked: take the next newest
                shutil.rmtree(linked, ignore_errors=True)
                continue
            if verify_checkpoint(linked) is None:
                step = checkpoint_step(checkpoint)
                break
            shutil.rmtree(linked)
    for file in (RUN_FILES if extras else RUN_FILES[:2]):
        if (run_dir / file).is_file():
            shutil.copy2(run_dir / file, dest / file)
    if (run_dir / "metrics.jsonl").is_file():  # after the checkpoint: at least as long as it expects
        shutil.copyfile(run_dir / "metrics.jsonl", dest / "metrics.jsonl")
    for result in run_dir.glob(f"{EVAL_PREFIX}*.json"):
        shutil.copy2(result, dest / result.name)
    if extras:
        for log in sorted(work.logs.glob(f"{name}.*.log")):
            (dest / "logs").mkdir(exist_ok=True)
            _tail(log, dest / "logs" / log.name, LOG_TAIL_BYTES)
    return {"global_step": step, "finished": finished}


def _archive(folder: Path, names: Sequence[str], path: Path) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=6) as tar:
        for name in names:
            tar.add(folder / name, arcname=name)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parts(name: str, path: Path, file_bytes: int) -> list[OutFile]:
    size = path.stat().st_size
    if size <= file_bytes:
        return [OutFile(name, path, 0, size)]
    count = math.ceil(size / file_bytes)
    return [OutFile(f"{name}.{k:03d}", path, k * file_bytes, min(file_bytes, size - k * file_bytes))
            for k in range(count)]


def _fits(files: Sequence[OutFile], max_files: int, max_bytes: int) -> bool:
    return len(files) <= max_files and sum(f.length for f in files) <= max_bytes


def plan_archives(
    work: WorkDir, names: Sequence[str], limits: OutLimits, free_files: int, free_bytes: int
) -> tuple[list[dict[str, Any]], list[OutFile], dict[str, dict[str, Any]]]:
    """Snapshot and archive ``names`` so that their files, plus the summary, fit in ``free_files`` files and
    ``free_bytes`` bytes (one file of each kept free for the summary); per-run archives first, then one combined
    archive, then one without extras. Returns ``(archives, out files, per-run snapshot facts)``; ConfigError
    naming the sizes when nothing fits."""
    scratch = work.collect
    shutil.rmtree(scratch, ignore_errors=True)
    attempts: list[str] = []
    for combined, extras in ((False, True), (True, True), (True, False)):
        shutil.rmtree(scratch, ignore_errors=True)
        snap_dir = scratch / "snap"
        snap_dir.mkdir(parents=True)
        facts = {name: snapshot_run(work, name, snap_dir, extras=extras) for name in names}
        groups = [(COMBINED, list(names))] if combined else [(f"{ARCHIVE_PREFIX}{n}.tgz", [n]) for n in names]
        archives, files = [], []
        for archive_name, members in groups:
            path = _archive(snap_dir, members, scratch / archive_name)
            parts = _parts(archive_name, path, limits.file_bytes)
            archives.append({"name": archive_name, "runs": members, "bytes": path.stat().st_size,
                             "sha256": _sha256(path), "parts": [p.name for p in parts]})
            files += parts
        # The summary takes one more file and at most a few KiB per run.
        if _fits(files, free_files - 1, free_bytes - 4096 * (len(names) + 1)):
            return archives, files, facts
        attempts.append(
            f"{'one combined archive' if combined else 'one archive per run'}{'' if extras else ' without logs'}: "
            f"{len(files)} file(s), {format_size(sum(f.length for f in files))}"
        )
    raise ConfigError(
        f"the state of {len(names)} run(s) does not fit in what $OUT may bring back ({free_files} more file(s), "
        f"{format_size(free_bytes)}): {'; '.join(attempts)}. Collect fewer runs per call (name them: collect NAME ...)"
    )


def _copy_slice(item: OutFile, target: Path) -> str:
    """Write ``item``'s bytes to ``target`` (fsync'ed); returns their sha256."""
    digest = hashlib.sha256()
    with open(item.source, "rb") as src, open(target, "wb") as dst:
        src.seek(item.offset)
        left = item.length
        while left:
            block = src.read(min(left, 1 << 20))
            if not block:
                raise OSError(f"{item.source} is shorter than planned")
            digest.update(block)
            dst.write(block)
            left -= len(block)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def collect(
    work: WorkDir, out_dir: str | Path, names: Iterable[str], *, limits: OutLimits = DEVICE_OUT,
    states: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Pack runs ``names`` (those with a run folder) into ``out_dir`` within ``limits`` (see the module doc);
    returns the summary, which is also ``out_dir/summary.json``. ``states`` (run -> job state) go into it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(".*.partial"):
        leftover.unlink()
    names = [n for n in dict.fromkeys(names) if work.run(n).is_dir()]
    foreign = [p for p in out.iterdir() if p.is_file() and not _ours(p.name)]
    free_files = limits.files - len(foreign)
    free_bytes = min(limits.total_bytes - sum(p.stat().st_size for p in foreign), limits.total_bytes)
    archives, files, facts = plan_archives(work, names, limits, free_files, free_bytes)
    for item in files:
        if not OUT_NAME.match(item.name):
            raise ConfigError(f"{item.name!r} is not a name $OUT brings back (letters, digits, '.', '_', '-')")
    keep = {f.name for f in files} | {SUMMARY}
    for stale in out.iterdir():
        if stale.is_file() and _ours(stale.name) and stale.name not in keep:
            stale.unlink()
    largest = max((f.length for f in files), default=0)
    # With a free slot and room for the largest file beside the rest, every file is replaced atomically.
    atomic = len(files) + 1 < free_files and sum(f.length for f in files) + largest <= free_bytes - 4096 * len(names)
    shas: dict[str, str] = {}
    for item in files:
        if atomic:
            partial = out / f".{item.name}.partial"
            shas[item.name] = _copy_slice(item, partial)
            os.replace(partial, out / item.name)
        else:
            (out / item.name).unlink(missing_ok=True)
            shas[item.name] = _copy_slice(item, out / item.name)
    for archive in archives:
        archive["parts"] = [
            {"file": name, "bytes": (out / name).stat().st_size, "sha256": shas[name]} for name in archive["parts"]
        ]
    runs = {}
    for name in names:
        progress = run_progress(work.run(name), name).to_dict()
        progress.update(facts[name])  # the snapshot's step, not the live run's
        progress["state"] = (states or {}).get(name)
        runs[name] = progress
    summary = {
        "format": FORMAT, "created": time.time(), "work": str(work.root),
        "limits": {"files": limits.files, "file_bytes": limits.file_bytes, "total_bytes": limits.total_bytes},
        "archives": archives, "runs": runs,
    }
    write_json_atomic(out / SUMMARY, summary, indent=1)
    shutil.rmtree(work.collect, ignore_errors=True)
    return summary


# -- restore -------------------------------------------------------------------------------------------
def _safe_members(tar: tarfile.TarFile, names: Iterable[str]) -> list[tarfile.TarInfo]:
    """The archive's members, refusing anything but plain files and folders under the expected run folders."""
    allowed = set(names)
    members = tar.getmembers()
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] not in allowed:
            raise ConfigError(f"archive member {member.name!r} is outside the run folders {sorted(allowed)}")
        if not (member.isfile() or member.isdir()):
            raise ConfigError(f"archive member {member.name!r} is not a plain file or folder")
    return members


def _extract(archive: Path, names: Sequence[str], target: Path) -> None:
    """Unpack a run archive into ``target`` (only plain files and folders under ``names``), reading it to its end
    so that gzip's CRC is checked."""
    with tarfile.open(archive, "r:gz") as tar:
        members = _safe_members(tar, names)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, members=members, filter="data")
        else:  # Python < 3.11.4: the members were checked above
            tar.extractall(target, members=members)
        # tarfile stops at the end-of-archive blocks; reading the gzip stream to its end checks its CRC and length.
        while tar.fileobj.read(1 << 20):
            pass


def _rank(run_dir: Path) -> tuple[int, int]:
    """How far a run folder got: finished beats any checkpoint, a later checkpoint an earlier one."""
    if is_finished(run_dir):
        return (1, 0)
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    return (0, checkpoint_step(checkpoints[-1]) if checkpoints else -1)


def read_summary(source: str | Path) -> dict[str, Any]:
    path = Path(source) / SUMMARY
    if not path.is_file():
        raise ConfigError(f"{source} holds no {SUMMARY}: give the folder with every file one collect put in $OUT")
    summary = json.loads(path.read_text(encoding="utf-8"))
    if summary.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a collect summary (format {summary.get('format')!r}, expected {FORMAT!r})")
    return summary


def restore(source: str | Path, work: WorkDir, *, busy: Iterable[str] = ()) -> list[str]:
    """Unpack the collected state in ``source`` (a folder with ``summary.json`` and its archives) into
    ``work``'s runs; a run whose local folder got as far or further, or whose job is in ``busy``, is left as it
    is. Returns one line per run saying what happened."""
    source = Path(source)
    summary = read_summary(source)
    busy = set(busy)
    scratch = work.collect / "restore"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    lines: list[str] = []
    try:
        for archive in summary["archives"]:
            missing = [p["file"] for p in archive["parts"] if not (source / p["file"]).is_file()]
            if missing:
                lines.append(f"restore: {archive['name']} skipped ({', '.join(missing)} missing)")
                continue
            differ = [p["file"] for p in archive["parts"] if (source / p["file"]).stat().st_size != p["bytes"]
                      or _sha256(source / p["file"]) != p["sha256"]]
            joined = scratch / archive["name"]
            with open(joined, "wb") as out:
                for part in archive["parts"]:
                    with open(source / part["file"], "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
            unpacked = scratch / f"{archive['name']}.d"
            try:
                _extract(joined, archive["runs"], unpacked)
            except (tarfile.TarError, OSError, EOFError, ConfigError) as err:
                why = f"{', '.join(differ)} does not match its size/sha256 in {SUMMARY}" if differ else str(err)
                lines.append(f"restore: {archive['name']} skipped ({why})")
                continue
            if differ:
                # A collect killed between an archive and the summary: the archive is newer, and its gzip
                # stream (CRC-checked to its end) decoded whole, so it is taken.
                lines.append(f"restore: {archive['name']} differs from {SUMMARY} (newer) but decodes whole; taken")
            for name in archive["runs"]:
                lines.append(_place(unpacked / name, work, name, busy))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return lines


def _place(incoming: Path, work: WorkDir, name: str, busy: set[str]) -> str:
    local = work.run(name)
    if name in busy:
        return f"restore: {name}: its training job is running here; left as it is"
    if local.exists() and _rank(local) >= _rank(incoming):
        return f"restore: {name}: the local run is as far or further ({_describe(local)}); left as it is"
    work.runs.mkdir(parents=True, exist_ok=True)
    aside = work.runs / f".replaced-{name}"
    shutil.rmtree(aside, ignore_errors=True)
    if local.exists():
        os.replace(local, aside)
    shutil.move(str(incoming), str(local))
    shutil.rmtree(aside, ignore_errors=True)
    return f"restore: {name}: restored ({_describe(local)})"


def _describe(run_dir: Path) -> str:
    finished, step = _rank(run_dir)
    return "finished" if finished else ("no checkpoint" if step < 0 else f"checkpoint at step {step}")
