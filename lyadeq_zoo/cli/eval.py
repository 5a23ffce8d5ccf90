"""Evaluate a model's clean and adversarial accuracy: ``lyadeq-eval MODEL [options]``.

MODEL is a zoo name (``lyadeq_mnist``), ``hf-hub:org/repo[@rev]``, ``local-dir:PATH`` or a config YAML.
Zoo names load their pretrained weights when the zoo has them; otherwise (and for config files) the
model is randomly initialised and a loud warning says the numbers mean nothing.

Data: the data set named in the model's config (``data.type``), test split, from ``--data-dir`` (a
folder holding the full set) or, by default, the shipped 1,000-image sample.

Suites: a shipped one (``--help`` lists them: ``paper`` is the LyaDEQ paper's I-FGSM and PGD at 2/4/6/8
/255, ``strong`` adds stronger, gradient-free, transfer and unrolled-gradient attacks and a large-eps sanity
check) or a suite YAML file.

Prints a Table-1-style row, a per-attack table and the gradient-masking checks; ``--json`` writes the
full result, ``--plot`` the robustness curve. In a checkout: ``python tools/eval.py MODEL [options]``.

``--out DIR`` runs the evaluation as a job (:mod:`lyadeq_zoo.evaluation.job`): per-image records are appended
to DIR chunk by chunk, ``DIR/result.json`` is written at the end, ``--resume`` continues a killed run with the
same final numbers, and ``torchrun --nproc_per_node N tools/eval.py ... --out DIR`` shards the chunks over
processes (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

from ..config import parse_yaml
from ..errors import ConfigError, DataFormatError, MissingDependencyError, UnknownComponentError
from ..evaluation import (
    attach_provenance,
    dataset_name,
    evaluate,
    evaluation_data,
    format_table,
    list_suites,
    load_suite,
    suites_dir,
    write_result,
)
from ..evaluation.job import job_identity, process_group, run_job, weights_sha256, write_job_result
from ..model_source import RandomWeightsWarning, resolve_model
from ..plotting import robustness_curve


def suites_help() -> str:
    """The shipped suites, one line each: name and the description in ``configs/eval/<name>.yaml``."""
    lines = ["shipped suites (--suite NAME):"]
    for name in list_suites():
        raw = parse_yaml((suites_dir() / f"{name}.yaml").read_text(encoding="utf-8")) or {}
        lines.append(f"  {name:<12} {raw.get('description', '')}".rstrip())
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=suites_help(),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("model", help="zoo name, hf-hub:ID, local-dir:PATH or config YAML")
    parser.add_argument(
        "--suite",
        default="paper",
        help=f"{' | '.join(list_suites())} | path to a suite YAML (default: paper; listed below)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the full data set (default: sample)")
    parser.add_argument("--dataset", default=None, help="data set name when the model config has none")
    parser.add_argument("--split", default="test", help="data split (default: test)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images")
    parser.add_argument("--batch-size", type=int, default=100, help="images per attack batch (default: 100)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attacks' randomness (default: 0)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--pretrained",
        dest="pretrained",
        action="store_true",
        default=None,
        help="require the zoo's pretrained weights",
    )
    weights.add_argument(
        "--no-pretrained", dest="pretrained", action="store_false", help="random initialisation (for smoke tests)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the result JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write the robustness curve here (.png/.pdf)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--out", type=Path, default=None, help="run as a resumable job: per-image records and result.json in DIR"
    )
    parser.add_argument("--resume", action="store_true", help="continue the job in --out (same settings only)")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="images per job chunk, a multiple of --batch-size (default: the batch size)",
    )
    return parser


def resolve_loudly(spec: str, pretrained: bool | None) -> tuple[torch.nn.Module, dict]:
    """:func:`resolve_model`, with its random-weights warning turned into a banner on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, source = resolve_model(spec, pretrained=pretrained)
    for w in caught:
        if issubclass(w.category, RandomWeightsWarning):
            print("\n" + "!" * 100 + f"\nWARNING: {w.message}\n" + "!" * 100 + "\n", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model, source


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None and (args.resume or args.chunk_size is not None):
        parser.error("--resume and --chunk-size need --out DIR")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, source = resolve_loudly(args.model, args.pretrained)
        dataset = args.dataset or dataset_name(model)
        if dataset is None:
            raise ValueError(f"{args.model}: its config names no data set; pass --dataset mnist|cifar10|...")
        root = str(args.data_dir) if args.data_dir is not None else "sample"
        data, data_record = evaluation_data(model, dataset, split=args.split, root=root, limit=args.limit)
        if args.out is not None:
            result = run_as_job(args, model, source, data, data_record, dataset)
            if result is None:
                return 0  # a rank other than 0: its chunks are recorded, rank 0 merges and reports
        else:
            result = evaluate(
                model,
                data,
                args.suite,
                device=device,
                seed=args.seed,
                progress=not args.no_progress,
                limit=args.limit,
                dataset=dataset,
                batch_size=args.batch_size,
            )
    except (
        ConfigError, DataFormatError, UnknownComponentError, MissingDependencyError, FileNotFoundError, ValueError
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    attach_provenance(result, model={"name": args.model, **source}, data=data_record)
    if args.out is not None:
        print(f"wrote {write_job_result(result, args.out)}")
    print(format_table(result, model_name=args.model))
    print(f"\n{result['n']} images, {result['timing']['total_seconds']:.1f} s on {result['device']}")
    if args.json is not None:
        print(f"wrote {write_result(result, args.json)}")
    if args.plot is not None:
        print(f"wrote {robustness_curve(result, args.plot)}")
    return 0


def run_as_job(
    args: argparse.Namespace,
    model: torch.nn.Module,
    source: dict,
    data: torch.utils.data.Dataset,
    data_record: dict,
    dataset: str,
) -> dict | None:
    """The ``--out`` path: this process's place under torchrun (one process without it), the job's identity from
    the arguments, then :func:`run_job` (None on ranks > 0)."""
    suite = load_suite(args.suite, dataset)
    n = len(data) if args.limit is None else min(len(data), args.limit)
    identity = job_identity(
        model={"name": args.model, **source},
        weights=weights_sha256(model),
        suite=suite,
        data=data_record,
        n=n,
        seed=args.seed,
        chunk_size=args.chunk_size or args.batch_size,
        batch_size=args.batch_size,
    )
    rank, world_size, device, created = process_group(args.device)
    try:
        return run_job(
            model,
            data,
            suite,
            args.out,
            identity,
            device=device,
            rank=rank,
            world_size=world_size,
            resume=args.resume,
            progress=not args.no_progress,
        )
    finally:
        if created:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
