"""The device-side work folder, which outlives the calls of one lease (it lies outside ``$OUT`` and outside the
repository copy, so neither the emptying of ``$OUT`` nor the next call's working tree touches it)::

    WORK/plan.json          the newest carry plan staged (see .carry)
    WORK/pieces/<plan id>/  carried pieces waiting for the rest of their file
    WORK/data/<dataset>/    the assembled data sets: ``lyadeq-train --data-dir WORK/data``
    WORK/state/             collected state that travelled back in (see .collect)
    WORK/runs/<name>/       one training run each: ``lyadeq-train NAME --out WORK/runs/NAME``
    WORK/jobs/              one launch record and one run record per detached job (see .jobs)
    WORK/logs/              each job's stdout and stderr
    WORK/collect/           scratch space of a collect

It is on the machine's own disk, so a machine that goes back loses it; the files ``collect`` put in ``$OUT``
are what survives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

WORK_ENV = "LYADEQ_GPU_ZOO_WORK"
DEFAULT_WORK = Path("/tmp/lyadeq-gpu-zoo")


def default_work() -> Path:
    """``$LYADEQ_GPU_ZOO_WORK`` if set, else ``/tmp/lyadeq-gpu-zoo``."""
    return Path(os.environ.get(WORK_ENV) or DEFAULT_WORK)


@dataclass(frozen=True)
class WorkDir:
    """The folders of a work folder ``root`` (created on first use by whoever writes into them)."""

    root: Path

    def __post_init__(self) -> None:
        # Absolute: jobs run inside the work folder and take paths relative to it.
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def pieces(self) -> Path:
        return self.root / "pieces"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def collect(self) -> Path:
        return self.root / "collect"

    def run(self, name: str) -> Path:
        """``WORK/runs/<name>``: the ``--out`` folder of run ``name``."""
        return self.runs / name
