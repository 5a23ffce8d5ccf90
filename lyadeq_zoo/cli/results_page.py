"""Build the zoo's results page from evaluation JSONs: ``lyadeq-results-page [options]``.

    lyadeq-results-page                                  # runs/eval -> docs/results.md + docs/figures/
    lyadeq-results-page --runs runs/eval --out docs/results.md --figures docs/figures
    lyadeq-results-page --update-cards                   # also put the numbers into the shipped cards

In a checkout: ``python tools/results_page.py [options]``.

Reads ``RUNS/<zoo_name>_<suite>.json`` as written by ``lyadeq-eval --json`` for the suites ``paper``
(the paper's protocol, meant for the full test set), ``strong`` (``strong`` / ``strong_cpu`` on a subset)
and ``curve`` (``configs/eval/curve.yaml``, eps 2..20 /255). Missing files are fine: such a model's row
says "not evaluated". What the page holds: :mod:`lyadeq_zoo.evaluation.results_page`.

``--update-cards`` rewrites ``config.json`` (metrics) and ``README.md`` (model card) of every shipped model
that has eval JSONs, through ``lz.save_pretrained``; the weights file is never rewritten (the tool checks
that ``save_pretrained`` would give the same bytes, and its sha256 before and after), and the pretrained
index's sha256 is touched only if the weights file changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..evaluation.results_page import update_cards, write_results_page


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/eval", help="folder of the eval JSONs (default: runs/eval)")
    parser.add_argument("--out", default="docs/results.md", help="page to write (default: docs/results.md)")
    parser.add_argument("--figures", default="docs/figures", help="folder for the figures (default: docs/figures)")
    parser.add_argument(
        "--update-cards",
        action="store_true",
        help="also write the eval numbers into each shipped model's config.json and README.md",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    if not runs.is_dir():
        print(f"note: {runs} does not exist; every model will be 'not evaluated'", file=sys.stderr)
    models, problems = write_results_page(args.runs, args.out, args.figures)
    found = sum(len(m.results) for m in models)
    print(f"wrote {out} ({found} result file(s) for {sum(bool(m.results) for m in models)} model(s))")
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.update_cards:
        for line in update_cards(models):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
