"""Train zoo models on a lent GPU within its lease: ``lyadeq-gpu-zoo STEP [options]``.

Here (no device): ``plan`` cuts the data (``--data-dir``) and any collected state (``--state``) into carry
batches, each small enough to travel in one call beside the working tree. On the device, every call runs
``cycle`` (stage the carried batch, restore carried state, launch the unfinished runs as detached
``lyadeq-train`` jobs, evaluate finished ones, collect into ``--out`` within its limits, print the table); the
single steps exist too. docs/gpu.md gives the exact calls. In a checkout: ``python tools/gpu_zoo.py STEP ...``
(on the device: ``PYTHONPATH=. python3 tools/gpu_zoo.py ...``).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from lyadeq_zoo.cli.eval import main as eval_main
from lyadeq_zoo.cli.train import main as train_main
from lyadeq_zoo.errors import LyadeqZooError
from lyadeq_zoo.gpu_zoo import carry, collect, jobs, limits, schedule, staging
from lyadeq_zoo.gpu_zoo.runs import format_table, run_progress
from lyadeq_zoo.gpu_zoo.workdir import WorkDir, default_work

# The four cross-entropy CIFAR-10 models of the paper's Table 1 (TRADES / PGD-AT take ~11x a CE epoch).
# The four cross-entropy CIFAR-10 models and their baseline without a DEQ (same recipe).
DEFAULT_RUNS = ["deq_cifar10", "deq_orth_cifar10", "lyadeq_no_orth_cifar10", "lyadeq_cifar10", "plain_cifar10"]
DEFAULT_CARRY = Path(".gpu_zoo") / "carry"
TOOLS = {"train": train_main, "eval": eval_main}


def _work(args: argparse.Namespace) -> WorkDir:
    return WorkDir(Path(args.work) if args.work else default_work())


def _add_work(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", default=None, help="device work folder (default: $LYADEQ_GPU_ZOO_WORK or "
                        "/tmp/lyadeq-gpu-zoo)")


def _add_names(parser: argparse.ArgumentParser, default: list[str] | None) -> None:
    help_text = f"zoo model names (default: {' '.join(default)})" if default else "runs (default: every run in WORK)"
    parser.add_argument("names", nargs="*", default=None, help=help_text)


def _add_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-files", type=int, default=limits.OUT_FILES, help="files $OUT may bring back (8)")
    parser.add_argument("--out-file-size", default=str(limits.OUT_FILE_LIMIT), help="bytes per file (16MiB)")
    parser.add_argument("--out-total", default=str(limits.OUT_TOTAL_LIMIT), help="bytes together (64MiB)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    _add_work(parser)
    _add_names(parser, DEFAULT_RUNS)
    parser.add_argument("--device", default="cuda", help="train.device and lyadeq-eval --device (default: cuda)")
    parser.add_argument("--no-amp", action="store_true", help="train in fp32 (default: train.amp=true, bf16 "
                        "autocast around the backbone only)")
    parser.add_argument("--no-channels-last", action="store_true", help="default: train.channels_last=true")
    parser.add_argument("--checkpoint-every", type=int, default=200, help="train.checkpoint_every_steps (200)")
    parser.add_argument("--set", action="append", default=[], metavar="a.b=c",
                        help="extra config override for every training run; repeatable")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per job (default: cores / runs)")
    parser.add_argument("--eval-suite", default="paper", help="lyadeq-eval suite for finished runs, or 'none'")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate the first N test images")
    parser.add_argument("--eval-batch-size", type=int, default=500, help="lyadeq-eval --batch-size (500)")
    parser.add_argument("--budget", type=float, default=570.0, help="seconds this command may take: the call's "
                        "timeout_s (default 570)")
    parser.add_argument("--reserve", type=float, default=25.0, help="seconds kept for the last collect (25)")
    parser.add_argument("--collect-every", type=float, default=60.0, help="seconds between collects (60)")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between job checks (2)")
    parser.add_argument("--out", type=Path, default=None, help="where collect writes ($OUT on the device)")
    _add_limits(parser)


def _options(args: argparse.Namespace) -> schedule.ZooOptions:
    suite = None if str(args.eval_suite).lower() == "none" else args.eval_suite
    return schedule.ZooOptions(
        names=list(args.names or DEFAULT_RUNS), device=args.device, amp=not args.no_amp,
        channels_last=not args.no_channels_last, checkpoint_every_steps=args.checkpoint_every,
        overrides=list(args.set), threads=args.threads, eval_suite=suite, eval_limit=args.eval_limit,
        eval_batch_size=args.eval_batch_size, budget_s=args.budget, reserve_s=args.reserve,
        collect_every_s=args.collect_every, poll_s=args.poll, limits=_limits(args),
    )


def _limits(args: argparse.Namespace) -> limits.OutLimits:
    return limits.OutLimits(args.out_files, limits.parse_size(args.out_file_size), limits.parse_size(args.out_total))


def _need_out(args: argparse.Namespace) -> Path:
    if args.out is None:
        raise LyadeqZooError("--out is required: the folder collect writes into ($OUT on the device)")
    return args.out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    plan = steps.add_parser("plan", help="(here) cut data and state into carry batches")
    _add_names(plan, DEFAULT_RUNS)
    plan.add_argument("--data-dir", type=Path, default=None, help="the offline data (e.g. ../shared/data)")
    plan.add_argument("--datasets", default=None, help="comma-separated data sets (default: those of the names)")
    plan.add_argument("--state", type=Path, default=None, help="folder with the files an earlier call brought back")
    plan.add_argument("--carry", type=Path, default=DEFAULT_CARRY, help=f"batch folder, git-ignored ({DEFAULT_CARRY})")
    plan.add_argument("--limit", default="60MiB", help="bytes one call may carry, tree included (60MiB; the "
                      "device takes 64MiB)")
    plan.add_argument("--tree-bytes", default=None, help="bytes of the working tree (default: counted with git)")
    plan.add_argument("--repo", type=Path, default=Path("."), help="the checkout the calls send (default: .)")

    stage = steps.add_parser("stage", help="(device) move carried batches into WORK and rebuild the files")
    _add_work(stage)
    stage.add_argument("--carry", type=Path, default=DEFAULT_CARRY)

    restore = steps.add_parser("restore", help="unpack collected state (a folder with summary.json) into WORK")
    _add_work(restore)
    restore.add_argument("--from", dest="source", type=Path, required=True)

    for name, text in (("launch", "start the unfinished runs' training jobs"),
                       ("wait", "watch the jobs until they end or --budget; collect every --collect-every"),
                       ("evaluate", "evaluate the finished runs and wait for them (within --budget)"),
                       ("cycle", "(device, every call) stage, restore, launch, wait, evaluate, collect, table")):
        _add_run_options(steps.add_parser(name, help=text))
        steps.choices[name].add_argument("--carry", type=Path, default=DEFAULT_CARRY)

    coll = steps.add_parser("collect", help="pack the runs' newest checkpoints and metrics into --out")
    _add_work(coll)
    _add_names(coll, None)
    coll.add_argument("--out", type=Path, required=True)
    _add_limits(coll)

    for name, text in (("report", "print the table"), ("stop", "stop the runs' jobs (SIGTERM, then SIGKILL)")):
        sub = steps.add_parser(name, help=text)
        _add_work(sub)
        _add_names(sub, None)

    job = steps.add_parser("job", help="(internal) run one tool inside a detached job and record its exit")
    job.add_argument("--record", type=Path, required=True)
    job.add_argument("--launch-id", default=None)
    job.add_argument("tool_argv", nargs=argparse.REMAINDER)
    return parser


def _existing_runs(work: WorkDir, names: list[str] | None) -> list[str]:
    if names:
        return names
    return sorted(p.name for p in work.runs.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if work.runs.is_dir() else []


def _plan(args: argparse.Namespace) -> int:
    items: list[carry.CarryItem] = []
    if args.data_dir is not None:
        datasets = args.datasets.split(",") if args.datasets else schedule.datasets_of(args.names or DEFAULT_RUNS)
        items += carry.data_items(args.data_dir, datasets)
    if args.state is not None:
        items += carry.state_items(args.state)
    if not items:
        raise LyadeqZooError("nothing to plan: pass --data-dir (the data) and/or --state (collected runs)")
    carry.check_ignored(args.repo, args.carry)
    call_limit = limits.parse_size(args.limit)
    if call_limit > limits.TRAVEL_LIMIT:
        raise LyadeqZooError(f"--limit {args.limit} is above the {limits.format_size(limits.TRAVEL_LIMIT)} a call "
                             "may carry")
    tree = limits.parse_size(args.tree_bytes) if args.tree_bytes is not None else carry.tree_bytes(args.repo)
    plan = carry.write_carry(items, args.carry, carry.batch_budget(call_limit, tree), call_limit=call_limit,
                             tree=tree)
    print("\n".join(carry.describe_plan(plan, args.carry)))
    return 0


def _run_job(args: argparse.Namespace) -> int:
    argv = list(args.tool_argv[1:] if args.tool_argv[:1] == ["--"] else args.tool_argv)
    if not argv or argv[0] not in TOOLS:
        print(f"error: job needs a tool, one of {', '.join(TOOLS)}, then its arguments; got {argv[:1]}",
              file=sys.stderr)
        return 2
    tool, rest = argv[0], argv[1:]
    started = time.time()
    jobs.write_run_record(args.record, args.launch_id, started=started, tool=tool)
    sys.argv = [f"lyadeq-{tool}", *rest]  # what the tool records as its command line
    try:
        rc = TOOLS[tool](rest)
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        rc = 1
    jobs.write_run_record(args.record, args.launch_id, started=started, tool=tool, ended=time.time(), rc=rc)
    return rc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.step == "job":
        return _run_job(args)
    try:
        if args.step == "plan":
            return _plan(args)
        work = _work(args)
        if args.step == "stage":
            report = staging.stage(args.carry, work)
            print("\n".join(report.lines()))
            return 0 if report.complete else 3
        if args.step == "restore":
            print("\n".join(collect.restore(args.source, work)))
            return 0
        if args.step == "collect":
            summary = collect.collect(work, args.out, _existing_runs(work, args.names), limits=_limits(args))
            print(f"collect: {len(summary['runs'])} run(s) into {args.out}")
            return 0
        if args.step in ("report", "stop"):
            names = _existing_runs(work, args.names)
            if args.step == "stop":
                for name in names:
                    for record in sorted(work.jobs.glob(f"{name}.*.launch.json")):
                        job = record.name.removesuffix(".launch.json")
                        print(f"stop: {job}: {jobs.stop(work, job).state}")
            print("\n".join(format_table([run_progress(work.run(n), n) for n in names])))
            return 0
        opts = _options(args)
        deadline = time.monotonic() + opts.budget_s - opts.reserve_s
        if args.step == "cycle":
            return schedule.cycle(args.carry, work, _need_out(args), opts)
        if args.step == "launch":
            print("\n".join(schedule.launch_training(work, opts)))
        elif args.step == "wait":
            schedule.watch(work, args.out, opts, deadline)
        elif args.step == "evaluate":
            print("\n".join(schedule.launch_evaluations(work, opts, set())))
            schedule.watch(work, args.out, opts, deadline)
        print("\n".join(schedule.table(work, opts)))
        return 0
    except (LyadeqZooError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
