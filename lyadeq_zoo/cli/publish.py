"""Publish a trained zoo model: push its save_pretrained folder to the Hub and/or ship it in the package,
then record its Hub id, pinned revision, file name and sha256 in the pretrained index (pretrained.json).

    lyadeq-publish lyadeq_mnist runs/lyadeq_mnist/final --repo-id ORG/lyadeq_mnist
    lyadeq-publish lyadeq_mnist runs/lyadeq_mnist/final --ship          # in-repo copy only
    lyadeq-publish lyadeq_mnist runs/lyadeq_mnist/final --repo-id ORG/lyadeq_mnist --ship

The folder is checked first: its weights must load strictly into the zoo model ``NAME`` as its config
builds it, so the index never points at weights of another architecture. The index records the commit
hash the upload created (not the branch), so a later push cannot change what users download.
Authentication is huggingface_hub's (``hf auth login`` or ``HF_TOKEN``); ``HF_ENDPOINT`` is honoured.
The work is ``lyadeq_zoo.publishing.publish_pretrained``; this module only parses the command line.
In a checkout: ``python tools/publish.py NAME FOLDER [options]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import LyadeqZooError
from ..hub import index_path
from ..publishing import publish_pretrained


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="zoo model name, e.g. lyadeq_mnist (see lz.list_models())")
    parser.add_argument("checkpoint", type=Path, help="a lz.save_pretrained folder (e.g. OUT/final from train.py)")
    parser.add_argument("--repo-id", help="Hub model repo to push to, e.g. ORG/lyadeq_mnist")
    parser.add_argument("--revision", help="branch to push to (default: main)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--message", help="commit message (the zoo version is appended)")
    parser.add_argument(
        "--ship", action="store_true", help="copy the folder to lyadeq_zoo/pretrained/NAME/ (weights in the repo)"
    )
    parser.add_argument(
        "--index",
        "--registry",  # the flag's old name
        dest="index",
        type=Path,
        default=None,
        help=f"pretrained index file to update (default: {index_path()})",
    )
    parser.add_argument(
        "--ship-root", type=Path, default=None, help="where shipped copies go (default: next to the index)"
    )
    args = parser.parse_args(argv)
    if not args.repo_id and not args.ship:
        parser.error("nothing to publish to: pass --repo-id ORG/REPO, --ship, or both")
    return args


def run(argv: list[str] | None = None, *, api: Any = None) -> dict[str, Any]:
    """Publish as the command line says and return the index entry written; errors are raised
    (:class:`~lyadeq_zoo.errors.LyadeqZooError`). ``api`` is an optional ``huggingface_hub.HfApi`` (tests
    point one at a local server)."""
    args = parse_args(argv)
    index = args.index.expanduser() if args.index is not None else index_path()
    entry = publish_pretrained(
        args.name,
        args.checkpoint,
        repo_id=args.repo_id,
        revision=args.revision,
        private=args.private,
        commit_message=args.message,
        ship=args.ship,
        index=index,
        ship_root=args.ship_root,
        api=api,
        report=print,
    )
    print(f"{index}: {args.name} -> {json.dumps(entry)}")
    return entry


def main(argv: list[str] | None = None) -> int:
    """:func:`run`; 0 when published, 2 (with the reason on stderr) when refused."""
    try:
        run(argv)
    except LyadeqZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
