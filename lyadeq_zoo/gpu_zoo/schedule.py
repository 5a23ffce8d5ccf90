"""One device call's work: stage what was carried, restore carried state, start every unfinished run's training
(all at once, each a detached ``lyadeq-train`` job sharing the one GPU), evaluate each run that finishes, collect
into ``$OUT`` every ``collect_every_s`` and once more at the end, and print the table.

:func:`cycle` does all of it and is what every device call runs; its ``budget_s`` is the call's own time
limit (``timeout_s``) and it returns ``reserve_s`` before it, so the last collect and the table make it back.
Jobs go on between calls while the machine stays warm; the next call's cycle picks them up where they are
(``--resume`` for a training job that is not running any more).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..training import list_checkpoints, resolve_config
from . import jobs
from .carry import missing_files
from .collect import SUMMARY, collect, restore
from .limits import OutLimits
from .runs import EVAL_PREFIX, format_table, is_finished, run_progress
from .staging import stage
from .workdir import WorkDir

TRAIN = "train"


@dataclass
class ZooOptions:
    """What to run and how. ``overrides`` are extra ``a.b=c`` for every training run; ``threads`` CPU threads per
    job (None: the machine's cores shared among the runs); ``eval_suite`` None skips the evaluation. Times in
    seconds."""

    names: list[str]
    device: str = "cuda"
    amp: bool = True
    channels_last: bool = True
    checkpoint_every_steps: int = 200
    overrides: list[str] = field(default_factory=list)
    threads: int | None = None
    eval_suite: str | None = "paper"
    eval_limit: int | None = None
    eval_batch_size: int = 500
    budget_s: float = 570.0
    reserve_s: float = 25.0
    collect_every_s: float = 60.0
    poll_s: float = 2.0
    limits: OutLimits = field(default_factory=OutLimits)

    def job_threads(self) -> int:
        if self.threads is not None:
            return max(1, self.threads)
        return max(1, (os.cpu_count() or 1) // max(1, len(self.names)))

    @property
    def eval_kind(self) -> str:
        return f"eval-{Path(str(self.eval_suite)).stem}"


def datasets_of(names: Sequence[str], overrides: Sequence[str] = ()) -> list[str]:
    """The data sets (``data.type``) the zoo configs ``names`` train on."""
    return list(dict.fromkeys(str(resolve_config(name, overrides)["data"]["type"]) for name in names))


def _inside(work: WorkDir, path: Path) -> str:
    """``path`` relative to the work folder, where jobs run: the model card then records ``--out runs/NAME
    --data-dir data``, not a folder of the device."""
    return path.relative_to(work.root).as_posix()


def train_command(name: str, work: WorkDir, opts: ZooOptions) -> list[str]:
    """``lyadeq-train``'s arguments for run ``name`` (paths relative to the work folder): ``--resume`` once it
    has a checkpoint, the device, the precision, frequent checkpoints, no final attack evaluation (the pipeline
    evaluates apart), then ``opts.overrides``."""
    argv = [TRAIN, name, "--out", _inside(work, work.run(name)), "--data-dir", _inside(work, work.data),
            "--no-progress"]
    if list_checkpoints(work.run(name) / "checkpoints"):
        argv.append("--resume")
    return [
        *argv, f"train.device={opts.device}", f"train.amp={str(opts.amp).lower()}",
        f"train.channels_last={str(opts.channels_last).lower()}",
        f"train.checkpoint_every_steps={opts.checkpoint_every_steps}", "train.final_eval=null", *opts.overrides,
    ]


def eval_command(name: str, work: WorkDir, opts: ZooOptions) -> list[str]:
    """``lyadeq-eval``'s arguments for the final model of run ``name``, its result as ``eval-<suite>.json``."""
    argv = [
        "eval", f"local-dir:{_inside(work, work.run(name) / 'final')}", "--suite", str(opts.eval_suite),
        "--data-dir", _inside(work, work.data), "--device", opts.device, "--json",
        _inside(work, eval_result(work, name, opts)), "--batch-size", str(opts.eval_batch_size), "--no-progress",
    ]
    return argv + (["--limit", str(opts.eval_limit)] if opts.eval_limit else [])


def eval_result(work: WorkDir, name: str, opts: ZooOptions) -> Path:
    return work.run(name) / f"{EVAL_PREFIX}{Path(str(opts.eval_suite)).stem}.json"


def launch_training(work: WorkDir, opts: ZooOptions) -> list[str]:
    """Start the training job of every run that is neither finished nor running; one line per run."""
    lines = []
    for name in opts.names:
        job = jobs.job_id(name, TRAIN)
        state = jobs.job_state(work, job)
        if is_finished(work.run(name)):
            lines.append(f"launch: {name}: finished")
        elif state.active:
            lines.append(f"launch: {name}: already {state.state} (pid {state.pid})")
        else:
            argv = train_command(name, work, opts)
            started = jobs.launch(work, job, argv, threads=opts.job_threads(), cwd=work.root)
            how = "resumed" if "--resume" in argv else "started"
            lines.append(f"launch: {name}: {how} (pid {started.pid}, {opts.job_threads()} threads)")
    return lines


def launch_evaluations(work: WorkDir, opts: ZooOptions, tried: set[str]) -> list[str]:
    """Start the evaluation of every finished run without a result that was not tried in this cycle yet."""
    if opts.eval_suite is None:
        return []
    lines = []
    for name in opts.names:
        job = jobs.job_id(name, opts.eval_kind)
        if name in tried or not is_finished(work.run(name)) or eval_result(work, name, opts).is_file():
            continue
        if jobs.job_state(work, job).active:
            tried.add(name)
            continue
        started = jobs.launch(work, job, eval_command(name, work, opts), threads=opts.job_threads(), cwd=work.root)
        tried.add(name)
        lines.append(f"evaluate: {name}: {opts.eval_suite} started (pid {started.pid})")
    return lines


def run_states(work: WorkDir, opts: ZooOptions) -> dict[str, str]:
    """One word per run: the training job's state, or once finished ``finished`` / ``eval`` (evaluating) /
    ``evaluated``."""
    states = {}
    for name in opts.names:
        if is_finished(work.run(name)):
            evaluating = opts.eval_suite is not None and jobs.job_state(work, jobs.job_id(name, opts.eval_kind)).active
            done = opts.eval_suite is not None and eval_result(work, name, opts).is_file()
            states[name] = "evaluated" if done else ("eval" if evaluating else "finished")
        else:
            states[name] = jobs.job_state(work, jobs.job_id(name, TRAIN)).state
    return states


def active_jobs(work: WorkDir, opts: ZooOptions) -> list[str]:
    kinds = [TRAIN] + ([opts.eval_kind] if opts.eval_suite is not None else [])
    return [jobs.job_id(n, k) for n in opts.names for k in kinds if jobs.job_state(work, jobs.job_id(n, k)).active]


def report_failures(work: WorkDir, opts: ZooOptions, seen: set[str]) -> list[str]:
    """The log tail of each job that failed or died and was not reported yet."""
    lines = []
    kinds = [TRAIN] + ([opts.eval_kind] if opts.eval_suite is not None else [])
    for name in opts.names:
        for kind in kinds:
            job = jobs.job_id(name, kind)
            state = jobs.job_state(work, job)
            key = f"{job}@{state.launched}"
            if state.state not in ("failed", "died") or key in seen:
                continue
            over = is_finished(work.run(name)) if kind == TRAIN else eval_result(work, name, opts).is_file()
            if over:  # it wrote what it had to before it went
                continue
            seen.add(key)
            tail = jobs.log_tail(work, job, 1500).strip().splitlines()[-12:]
            lines += [f"job {job} {state.state} (exit {state.rc}); its log ends:", *(f"  | {t}" for t in tail)]
    return lines


def table(work: WorkDir, opts: ZooOptions) -> list[str]:
    return format_table([run_progress(work.run(n), n) for n in opts.names], run_states(work, opts))


def watch(
    work: WorkDir, out_dir: Path | None, opts: ZooOptions, deadline: float, log: Callable[[str], None] = print
) -> None:
    """Until every job is over or ``deadline`` (``time.monotonic()``) comes: start evaluations as runs finish,
    report failures, and collect into ``out_dir`` (None: no collects) every ``opts.collect_every_s``."""
    tried: set[str] = set()
    seen: set[str] = set()
    last_collect = time.monotonic()
    while True:
        for line in launch_evaluations(work, opts, tried) + report_failures(work, opts, seen):
            log(line)
        if not active_jobs(work, opts) or time.monotonic() >= deadline:
            return
        if out_dir is not None and time.monotonic() - last_collect >= opts.collect_every_s:
            summary = collect(work, out_dir, opts.names, limits=opts.limits, states=run_states(work, opts))
            done = {n: f"{r['epochs_done']}/{r['epochs_planned']}" for n, r in summary["runs"].items()}
            log(f"collect: {time.strftime('%H:%M:%S')} epochs {done}")
            last_collect = time.monotonic()
        time.sleep(min(opts.poll_s, max(0.0, deadline - time.monotonic())))


def cycle(carry_dir: str | Path, work: WorkDir, out_dir: str | Path, opts: ZooOptions,
          log: Callable[[str], None] = print) -> int:
    """Stage, restore, launch, watch, collect, table (see the module doc). Returns 0, or 3 while data is
    missing (nothing is launched then; the log names the batches to carry)."""
    started = time.monotonic()
    deadline = started + opts.budget_s - opts.reserve_s
    out_dir = Path(out_dir)
    for line in stage(carry_dir, work).lines():
        log(line)
    missing = missing_files(work.data, datasets_of(opts.names, opts.overrides))
    if (work.state / SUMMARY).is_file():
        busy = [n for n in opts.names if jobs.job_state(work, jobs.job_id(n, TRAIN)).active]
        for line in restore(work.state, work, busy=busy):
            log(line)
    code = 0
    if missing:
        log(f"data: missing {', '.join(missing)} in {work.data}: nothing launched; carry the batches named above")
        code = 3
    else:
        for line in launch_training(work, opts):
            log(line)
        watch(work, out_dir, opts, deadline, log)
    if any(work.run(n).is_dir() for n in opts.names):
        collect(work, out_dir, opts.names, limits=opts.limits, states=run_states(work, opts))
        log(f"collect: wrote {len(list(out_dir.iterdir()))} file(s) to {out_dir}")
    log(f"cycle: {time.monotonic() - started:.0f} s; still running: {', '.join(active_jobs(work, opts)) or 'none'}")
    for line in table(work, opts):
        log(line)
    return code
