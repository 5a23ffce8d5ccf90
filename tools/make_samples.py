"""Cut the shipped real-image samples (``lyadeq_zoo/data/samples/``) from the full offline data sets.

    python tools/make_samples.py [--shared-data ../shared/data]

Deterministic: a fixed seed per (data set, split) and a class-balanced draw without replacement
(``per_class`` images of each label), stored in ascending full-set index order. CIFAR-10 train draws
from part0 only (train images 0..9999), so a check needs to decode one train part. Images are written
as xz-compressed ``.npy`` (with byte-delta filters where they help), labels likewise; the manifest
records source files and their sha256, the indices taken, shapes and the sha256 of each sample file.
Running it twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from lyadeq_zoo.data.readers import (
    cifar10_paths,
    mnist_paths,
    read_cifar10,
    read_mnist,
    save_npy_xz,
)
from lyadeq_zoo.data.samples import MANIFEST_NAME, SAMPLES_DIR, sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent  # the default --shared-data sits beside the checkout

# (dataset, split, per_class, seed, pool size or None for the whole split, xz delta distances).
# Delta filters: measured on these images, plain LZMA2 is smallest for MNIST; for CIFAR-10 (HWC uint8)
# deltas of 3 (next pixel, same channel), 96 (pixel below) and 1 save about 20%.
PLAN = [
    ("mnist", "test", 100, 1001, None, ()),
    ("mnist", "train", 200, 1002, None, ()),
    ("cifar10", "test", 100, 2001, None, (3, 96, 1)),
    ("cifar10", "train", 100, 2002, 10_000, (3, 96, 1)),
]
SOURCE_DIRS = {"mnist": "mnist", "cifar10": "cifar10"}


def balanced_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` indices of each label drawn without replacement, ascending (int64)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        if pool.size < per_class:
            raise ValueError(f"class {c} has only {pool.size} images, {per_class} requested")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared-data", type=Path, default=REPO_ROOT.parent / "shared" / "data",
                        help="folder with mnist/ and cifar10/ in the shared-data layout")
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR, help="where to write the samples")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    manifest: dict = {
        "description": "Class-balanced real-image samples of the official test/train sets; "
        "sample row i is full-set image indices[i]. Made by tools/make_samples.py.",
        "format": "images and labels: .npy inside xz (read with lzma + numpy.load(allow_pickle=False))",
        "datasets": {},
    }
    for name, split, per_class, seed, pool, deltas in PLAN:
        source_dir = args.shared_data / SOURCE_DIRS[name]
        if name == "mnist":
            images, labels = read_mnist(source_dir, split)
            sources = mnist_paths(source_dir, split)
        else:
            images, labels = read_cifar10(source_dir, split, limit=pool)
            *parts, label_file = cifar10_paths(source_dir, split)
            sources = [*parts[: -(-images.shape[0] // 10_000)], label_file]
        if pool is not None:
            images, labels = images[:pool], labels[:pool]
        idx = balanced_indices(labels, per_class, seed)
        image_file = args.out / f"{name}_{split}_images.npy.xz"
        label_file_out = args.out / f"{name}_{split}_labels.npy.xz"
        save_npy_xz(image_file, images[idx], deltas)
        save_npy_xz(label_file_out, labels[idx].astype(np.int64))
        manifest["datasets"].setdefault(name, {})[split] = {
            "num_classes": 10,
            "per_class": per_class,
            "seed": seed,
            "pool": f"first {pool} images of the split" if pool else "the whole split",
            "source_files": {p.name: sha256_file(p) for p in sources},
            "images": {"file": image_file.name, "shape": list(images[idx].shape), "dtype": "uint8",
                       "layout": "NHW" if images.ndim == 3 else "NHWC", "xz_delta": list(deltas),
                       "bytes": image_file.stat().st_size, "sha256": sha256_file(image_file)},
            "labels": {"file": label_file_out.name, "shape": [idx.size], "dtype": "int64",
                       "bytes": label_file_out.stat().st_size, "sha256": sha256_file(label_file_out)},
            "indices": idx.tolist(),
        }
        print(f"{name:8s} {split:5s} {idx.size:5d} images  {image_file.stat().st_size:>9,d} bytes  "
              f"labels {label_file_out.stat().st_size:>6,d} bytes")
    text = json.dumps(manifest, indent=1)
    # One line per list of numbers (indices, shapes) keeps the manifest short and readable.
    text = re.sub(r"\[[-\d,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text)
    (args.out / MANIFEST_NAME).write_text(text + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"total {total:,d} bytes in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
