#!/usr/bin/env python
"""Plot robustness curves from ``tools/eval.py --json`` results: ``python tools/plot.py RESULT.json ... --out PNG``.

One result: accuracy vs eps per attack plus the worst case. Several results: their worst-case curves
on one axis (e.g. DEQ vs LyaDEQ), labelled by ``--labels`` or the model names in the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lyadeq_zoo.plotting import compare_worst_case, robustness_curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="JSON files written by tools/eval.py --json")
    parser.add_argument("--out", type=Path, required=True, help="image to write (.png, .pdf, .svg)")
    parser.add_argument("--labels", nargs="*", default=None, help="one label per result file")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)

    if args.labels and len(args.labels) != len(args.results):
        print(f"error: {len(args.labels)} labels for {len(args.results)} result files", file=sys.stderr)
        return 2
    results = []
    for path in args.results:
        try:
            results.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as err:
            print(f"error: cannot read {path}: {err}", file=sys.stderr)
            return 2
    if len(results) == 1:
        out = robustness_curve(results[0], args.out, title=args.title)
    else:
        out = compare_worst_case(
            results, args.out, labels=args.labels, title=args.title or "worst-case robust accuracy"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
