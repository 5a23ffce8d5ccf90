"""Detached jobs: a training or evaluation process that keeps running after the command that started it returns.

A device call's processes are killed when its command returns, except those in a process session of their own.
:func:`launch` starts ``python -m lyadeq_zoo.cli.gpu_zoo job --record R -- TOOL ARGS...`` in a new session
(``setsid``: ``start_new_session=True``), stdin closed, stdout and stderr appended to ``WORK/logs/<job>.log``,
and writes ``WORK/jobs/<job>.launch.json`` (argv, pid, time). The runner (the ``job`` subcommand) writes
``WORK/jobs/<job>.run.json`` when the tool starts (pid, start time) and again when it ends (end time, exit
status). :func:`job_state` reads both: ``none`` (never launched), ``starting``, ``running``, ``done`` (exit 0),
``failed`` (another exit status) or ``died`` (the process is gone without an exit record: killed, or the machine
went back).

A job id is ``<run>.<kind>``: ``lyadeq_cifar10.train``, ``lyadeq_cifar10.eval-paper``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fileio import write_json_atomic
from .workdir import WorkDir

# The module whose ``job`` subcommand runs a tool inside a detached process.
RUNNER_MODULE = "lyadeq_zoo.cli.gpu_zoo"
# The checkout (or site-packages) holding the lyadeq_zoo package: put on the jobs' PYTHONPATH, so they import the
# same code as the launcher, installed or not.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
STATES = ("none", "starting", "running", "done", "failed", "died")


@dataclass(frozen=True)
class JobState:
    """One job's state (see the module doc); times are Unix seconds, ``rc`` the exit status when it ended."""

    job: str
    state: str
    pid: int | None = None
    launched: float | None = None
    started: float | None = None
    ended: float | None = None
    rc: int | None = None

    @property
    def active(self) -> bool:
        """Starting or running: its process may still write into its run folder."""
        return self.state in ("starting", "running")


def job_id(run: str, kind: str) -> str:
    return f"{run}.{kind}"


def launch_record(work: WorkDir, job: str) -> Path:
    return work.jobs / f"{job}.launch.json"


def run_record(work: WorkDir, job: str) -> Path:
    return work.jobs / f"{job}.run.json"


def log_path(work: WorkDir, job: str) -> Path:
    return work.logs / f"{job}.log"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def process_alive(pid: int, marker: str | None = None) -> bool:
    """Whether process ``pid`` runs (a zombie does not; a child of this process is reaped here). With ``marker``,
    its command line must contain it too, so a recycled pid is not taken for the job."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask the system
    except OSError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    try:
        if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if marker is not None:
            return marker in proc.joinpath("cmdline").read_bytes().decode("utf-8", "replace")
    except (OSError, IndexError):
        pass  # no /proc (not Linux): trust os.kill
    return True


def job_state(work: WorkDir, job: str) -> JobState:
    """The state of ``job`` from its two records and its process (see the module doc)."""
    launched = _read(launch_record(work, job))
    if launched is None:
        return JobState(job, "none")
    ran = _read(run_record(work, job)) or {}
    pid = ran.get("pid", launched.get("pid"))
    common = {"pid": pid, "launched": launched.get("launched"), "started": ran.get("started")}
    if ran.get("rc") is not None and ran.get("launch_id") == launched.get("launch_id"):
        state = "done" if ran["rc"] == 0 else "failed"
        return JobState(job, state, ended=ran.get("ended"), rc=ran["rc"], **common)
    alive = pid is not None and process_alive(int(pid), marker=str(run_record(work, job)))
    if not alive:
        return JobState(job, "died", **common)
    fresh = ran.get("launch_id") == launched.get("launch_id")
    return JobState(job, "running" if fresh and ran.get("started") else "starting", **common)


def launch(
    work: WorkDir, job: str, tool_argv: Sequence[str], *, threads: int = 1, env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> JobState:
    """Start ``tool_argv`` (``["train", NAME, ...]`` or ``["eval", MODEL, ...]``, the arguments of
    ``lyadeq-train`` / ``lyadeq-eval`` after the tool's name) as detached job ``job`` with ``threads`` CPU threads
    (OMP/MKL); refuses (RuntimeError) while the job is still active. Returns its state right after launch."""
    current = job_state(work, job)
    if current.active:
        raise RuntimeError(f"job {job} is still {current.state} (pid {current.pid}); stop it first")
    for folder in (work.jobs, work.logs):
        folder.mkdir(parents=True, exist_ok=True)
    launch_id = f"{time.time():.6f}-{os.getpid()}"
    argv = [sys.executable, "-m", RUNNER_MODULE, "job", "--record", str(run_record(work, job)), "--launch-id",
            launch_id, "--", *tool_argv]
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), child_env.get("PYTHONPATH")) if p)
    child_env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"})
    with open(log_path(work, job), "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} launch {' '.join(tool_argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env,
            cwd=None if cwd is None else str(cwd), start_new_session=True,
        )
    write_json_atomic(
        launch_record(work, job),
        {"job": job, "argv": list(tool_argv), "pid": proc.pid, "launched": time.time(), "launch_id": launch_id,
         "threads": threads, "log": str(log_path(work, job))},
    )
    return job_state(work, job)


def write_run_record(path: str | Path, launch_id: str | None, **fields: Any) -> None:
    """The runner's record (``pid``, ``started`` and, at the end, ``ended`` and ``rc``), merged into what it
    wrote before for the same launch."""
    path = Path(path)
    record = _read(path) or {}
    if record.get("launch_id") != launch_id:
        record = {}
    record.update({"launch_id": launch_id, "pid": os.getpid(), **fields})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


def stop(work: WorkDir, job: str, *, grace_s: float = 10.0) -> JobState:
    """SIGTERM the job's process group, then SIGKILL it after ``grace_s`` if it is still there."""
    state = job_state(work, job)
    if not state.active or state.pid is None:
        return state
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(state.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and process_alive(state.pid):
            time.sleep(0.05)
        if not process_alive(state.pid):
            break
    return job_state(work, job)


def log_tail(work: WorkDir, job: str, max_bytes: int = 4000) -> str:
    """The last ``max_bytes`` bytes of the job's log (decoded leniently), or "" if it has none."""
    path = log_path(work, job)
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - max_bytes))
        return handle.read().decode("utf-8", "replace")
