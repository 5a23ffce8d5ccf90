"""Regenerate the README's list of registered components (between the ``components`` markers).

    python tools/update_readme.py          # rewrite README.md in place
    python tools/update_readme.py --check  # exit 1 if README.md is out of date (the tests do this)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lyadeq_zoo as lz
from lyadeq_zoo.registry import registry

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- components:start -->", "<!-- components:end -->"


def components_table() -> str:
    """A markdown table: one row per component kind with its built-in names."""
    rows = ["| kind | registered names |", "|---|---|"]
    for kind in lz.KINDS:
        reg = registry(kind)
        names = [n for n in reg.names() if reg.origin(n) == "builtin"]
        rows.append(f"| `{kind}` | {', '.join(f'`{n}`' for n in names) or '–'} |")
    return "\n".join(rows)


def render(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{components_table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when out of date")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print("README.md's component list is out of date: run python tools/update_readme.py")
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
