"""Publish a trained zoo model: push its save_pretrained folder to the Hub and/or ship it in the package,
then record its Hub id, pinned revision, file name and sha256 in ``lyadeq_zoo/pretrained.json``.

    python tools/publish.py lyadeq_mnist runs/lyadeq_mnist/final --repo-id ORG/lyadeq_mnist
    python tools/publish.py lyadeq_mnist runs/lyadeq_mnist/final --ship          # in-repo copy only
    python tools/publish.py lyadeq_mnist runs/lyadeq_mnist/final --repo-id ORG/lyadeq_mnist --ship

The folder is checked first: its weights must load strictly into the zoo model ``NAME`` as its config
builds it, so the registry never points at weights of another architecture. The registry records the
commit hash the upload created (not the branch), so a later push cannot change what users download.
Authentication is huggingface_hub's (``hf auth login`` or ``HF_TOKEN``); ``HF_ENDPOINT`` is honoured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script from a checkout: make the checkout's package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lyadeq_zoo as lz
from lyadeq_zoo import hub


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
    parser.add_argument("--registry", type=Path, default=hub.registry_path(), help="pretrained registry to update")
    parser.add_argument(
        "--ship-root", type=Path, default=None, help="where shipped copies go (default: next to the registry)"
    )
    args = parser.parse_args(argv)
    if not args.repo_id and not args.ship:
        parser.error("nothing to publish to: pass --repo-id ORG/REPO, --ship, or both")
    return args


def check_checkpoint(name: str, folder: Path) -> None:
    """Raise unless ``folder`` holds a checkpoint whose weights load strictly into zoo model ``name``."""
    if not folder.is_dir():
        raise SystemExit(f"{folder}: not a folder (expected a lz.save_pretrained folder)")
    hub.read_checkpoint_config(folder / hub.CONFIG_NAME)
    model = lz.create_model(name)
    hub.load_weights(model, folder / hub.WEIGHTS_NAME)


def ship(name: str, folder: Path, ship_root: Path) -> Path:
    """Copy the checkpoint files to ``ship_root/name`` (replacing an older copy); returns the new folder."""
    target = ship_root / name
    staging = ship_root / f".{name}.{uuid.uuid4().hex}.tmp"
    staging.mkdir(parents=True)
    try:
        for file_name in hub.CHECKPOINT_FILES:
            if (folder / file_name).is_file():
                shutil.copy2(folder / file_name, staging / file_name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def update_registry(path: Path, name: str, entry: dict[str, Any]) -> None:
    """Set ``name``'s entry in the registry JSON at ``path`` (atomic rewrite, sorted keys)."""
    registry = json.loads(path.read_text(encoding="utf-8") or "{}") if path.is_file() else {}
    registry[name] = {key: value for key, value in entry.items() if value is not None}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(registry, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    hub.read_registry(path)  # validate what was written


def main(argv: list[str] | None = None, *, api: Any = None) -> dict[str, Any]:
    """Publish; ``api`` is an optional ``huggingface_hub.HfApi`` (tests point one at a local server)."""
    args = parse_args(argv)
    folder = args.checkpoint.expanduser()
    check_checkpoint(args.name, folder)
    weights = folder / hub.WEIGHTS_NAME
    registry_path = args.registry.expanduser()
    old = hub.read_registry(registry_path).get(args.name, {})
    entry: dict[str, Any] = {
        "filename": hub.WEIGHTS_NAME,
        "sha256": hub.sha256_file(weights),
        "hf_hub_id": old.get("hf_hub_id"),
        "revision": old.get("revision"),
        "local_path": old.get("local_path"),
    }
    if args.repo_id:
        info = hub.push_to_hub(
            folder, args.repo_id, api=api, revision=args.revision, private=args.private, commit_message=args.message
        )
        entry.update(hf_hub_id=args.repo_id, revision=info.oid)
        print(f"pushed {folder} to {args.repo_id} at commit {info.oid}")
    elif entry["hf_hub_id"]:
        # New weights that are not pushed would make the old Hub entry fail its sha256 check.
        print(f"note: dropping the Hub entry {entry['hf_hub_id']} (it holds other weights); pass --repo-id to push")
        entry.update(hf_hub_id=None, revision=None)
    if args.ship:
        ship_root = (args.ship_root or registry_path.parent / "pretrained").expanduser()
        target = ship(args.name, folder, ship_root)
        try:
            entry["local_path"] = str(target.resolve().relative_to(registry_path.resolve().parent))
        except ValueError:
            entry["local_path"] = str(target.resolve())
        print(f"shipped a copy in {target}")
    elif entry["local_path"]:
        print(f"note: dropping the shipped copy {entry['local_path']} from the entry (it holds other weights)")
        entry["local_path"] = None
    update_registry(registry_path, args.name, entry)
    print(f"{registry_path}: {args.name} -> {json.dumps(entry)}")
    return entry


if __name__ == "__main__":
    main()
