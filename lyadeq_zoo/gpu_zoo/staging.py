"""Staging on the device: carried batches into the work folder, pieces back into whole files, what is missing.

:func:`stage` moves every piece of every ``CARRY/batch-K`` folder present (this call's carry) into
``WORK/pieces/<plan id>/``, checking each piece's size and sha256 against the plan, removes the emptied batch
folder, then rebuilds each file whose pieces are all there into ``WORK/<dest>`` (written beside, checked against
the file's sha256, renamed into place) and deletes its pieces. The report names the files still missing and the
batches that hold their pieces, so the next call knows what to carry. A file already in place with the planned
sha256 counts as ready without its pieces (a data set staged by an earlier plan).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import fsync_dir, sha256_file, write_json_atomic
from .carry import BATCH_PREFIX, PLAN_NAME, read_plan
from .workdir import WorkDir


@dataclass
class StageReport:
    """What :func:`stage` did and what is still missing.

    ``plan_id``: the plan reported on (None: none staged yet). ``moved``: pieces moved in this call. ``ready``:
    files in place with their planned sha256. ``missing``: file -> the batches holding its absent pieces.
    ``damaged``: one sentence per piece or file that failed its check (it was deleted: carry its batch again).
    """

    plan_id: str | None = None
    moved: list[str] = field(default_factory=list)
    ready: list[str] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    damaged: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether a plan was staged and every file of it is in place and intact."""
        return self.plan_id is not None and not self.missing and not self.damaged

    @property
    def batches_needed(self) -> list[str]:
        """The batches still to carry (sorted by number)."""
        names = {b for batches in self.missing.values() for b in batches}
        return sorted(names, key=lambda n: int(n.removeprefix(BATCH_PREFIX)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_id": self.plan_id, "complete": self.complete, "moved": self.moved, "ready": self.ready,
            "missing": self.missing, "damaged": self.damaged, "batches_needed": self.batches_needed,
        }

    def lines(self) -> list[str]:
        if self.plan_id is None:
            return ["stage: no carry plan staged yet: carry a plan's batch (lyadeq-gpu-zoo plan writes them)"]
        lines = [
            f"stage: plan {self.plan_id}: {len(self.ready)} file(s) ready, {len(self.missing)} missing; "
            f"{len(self.moved)} piece(s) staged in this call"
        ]
        lines += [f"stage: DAMAGED {problem}" for problem in self.damaged]
        if self.missing:
            lines.append(f"stage: still to carry: {', '.join(self.batches_needed)}")
        return lines


def _move(source: Path, target: Path) -> None:
    """Move a file, across file systems too (copy beside the target, fsync, rename, then delete the source)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
        return
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
    partial = target.with_name(target.name + ".partial")
    with open(source, "rb") as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(partial, target)
    source.unlink()


def _intact(path: Path, size: int, sha256: str) -> bool:
    return path.is_file() and path.stat().st_size == size and sha256_file(path) == sha256


def _take_batch(batch: Path, work: WorkDir, report: StageReport) -> dict[str, Any]:
    """Move ``batch``'s pieces into the work folder (checked), remove the batch folder; returns its plan."""
    plan = read_plan(batch / PLAN_NAME)
    pieces = {p["name"]: p for f in plan["files"] for p in f["pieces"]}
    target_dir = work.pieces / plan["plan_id"]
    for path in sorted(batch.iterdir()):
        if path.name == PLAN_NAME:
            continue
        piece = pieces.get(path.name)
        if piece is None:
            report.damaged.append(f"{batch.name}/{path.name} is not in plan {plan['plan_id']} (left where it is)")
            continue
        target = target_dir / path.name
        _move(path, target)
        if not _intact(target, piece["bytes"], piece["sha256"]):
            target.unlink()
            report.damaged.append(f"piece {path.name} of {batch.name} failed its size/sha256 check: carry {batch.name} "
                                  "again")
            continue
        report.moved.append(path.name)
    write_json_atomic(target_dir / PLAN_NAME, plan, indent=1)
    if not any(p for p in batch.iterdir() if p.name != PLAN_NAME):
        shutil.rmtree(batch)
    return plan


def _assemble(plan: dict[str, Any], work: WorkDir, report: StageReport) -> None:
    """Rebuild each file of ``plan`` whose pieces are all staged; record the rest as missing."""
    piece_dir = work.pieces / plan["plan_id"]
    batch_names = {index: entry["name"] for index, entry in enumerate(plan["batches"])}
    for entry in plan["files"]:
        target = work.root / entry["dest"]
        if _intact(target, entry["bytes"], entry["sha256"]):
            report.ready.append(entry["dest"])
            continue
        absent = [p for p in entry["pieces"] if not (piece_dir / p["name"]).is_file()]
        if absent:
            report.missing[entry["dest"]] = sorted({batch_names[p["batch"]] for p in absent})
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        digest = hashlib.sha256()
        with open(partial, "wb") as out:
            for piece in entry["pieces"]:
                with open(piece_dir / piece["name"], "rb") as src:
                    for block in iter(lambda src=src: src.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != entry["sha256"]:
            partial.unlink()
            report.damaged.append(f"{entry['dest']} rebuilt from its pieces does not match its sha256")
            continue
        os.replace(partial, target)
        fsync_dir(target.parent)
        for piece in entry["pieces"]:
            (piece_dir / piece["name"]).unlink()
        report.ready.append(entry["dest"])


def stage(carry_dir: str | Path, work: WorkDir) -> StageReport:
    """Stage every batch present under ``carry_dir`` into ``work`` and report on the newest plan (see module doc).

    Batches of an older plan than the newest one carried are staged too (their files may be shared); the report
    covers the plan of the batches carried in this call, else the one staged last (``WORK/plan.json``).
    """
    carry_dir = Path(carry_dir)
    report = StageReport()
    plan: dict[str, Any] | None = None
    batches = sorted(carry_dir.glob(f"{BATCH_PREFIX}*")) if carry_dir.is_dir() else []
    for batch in batches:
        if (batch / PLAN_NAME).is_file():
            plan = _take_batch(batch, work, report)
    if plan is not None:
        work.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(work.plan, plan, indent=1)
    elif work.plan.is_file():
        plan = read_plan(work.plan)
    if plan is None:
        return report
    report.plan_id = plan["plan_id"]
    _assemble(plan, work, report)
    return report
