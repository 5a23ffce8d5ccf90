"""Train a zoo model: ``lyadeq-train CONFIG --out DIR [--resume] [--data-dir PATH] [a.b=c ...]``.

CONFIG is a YAML path or a zoo model name (``lyadeq_mnist``). DIR receives metrics.jsonl, curves.png,
checkpoints/ and final/ (a save_pretrained folder). Under ``torchrun --nproc_per_node N`` the processes
train together with DistributedDataParallel. See docs/training.md. In a checkout:
``python tools/train.py CONFIG --out DIR ...`` (needs lyadeq_zoo installed, ``pip install -e .``, or on
``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from lyadeq_zoo.cli import command_line
from lyadeq_zoo.errors import LyadeqZooError
from lyadeq_zoo.training import train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("config", help="config YAML path or zoo model name (e.g. lyadeq_mnist)")
    parser.add_argument("overrides", nargs="*", metavar="a.b=c", help="config overrides, e.g. train.epochs=1")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --out")
    parser.add_argument("--data-dir", type=Path, default=None, help="data root (replaces data.root)")
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE",
        help="import this Python module first (it may register components); repeatable",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for module in args.plugin:
        importlib.import_module(module)
    try:
        result = train(
            args.config, args.out, resume=args.resume, data_dir=args.data_dir, overrides=args.overrides,
            progress=not args.no_progress, command=command_line("lyadeq-train"),
        )
    except (LyadeqZooError, FileNotFoundError, FileExistsError, ValueError, FloatingPointError) as err:
        # The library's errors (bad config, damaged checkpoint, other data on --resume, a NaN loss, a full or
        # read-only --out ...) name the problem and the fix in one line: no traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.final_dir is not None:
        print(f"done in {result.seconds:.1f} s: {result.final_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
