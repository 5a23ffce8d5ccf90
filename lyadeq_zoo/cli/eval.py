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
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

from ..config import parse_yaml
from ..errors import ConfigError, MissingDependencyError, UnknownComponentError
from ..evaluation import (
    attach_provenance,
    dataset_name,
    evaluate,
    evaluation_data,
    format_table,
    list_suites,
    suites_dir,
    write_result,
)
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
    args = build_parser().parse_args(argv)
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
    except (ConfigError, UnknownComponentError, MissingDependencyError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    attach_provenance(result, model={"name": args.model, **source}, data=data_record)
    print(format_table(result, model_name=args.model))
    print(f"\n{result['n']} images, {result['timing']['total_seconds']:.1f} s on {result['device']}")
    if args.json is not None:
        print(f"wrote {write_result(result, args.json)}")
    if args.plot is not None:
        print(f"wrote {robustness_curve(result, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
