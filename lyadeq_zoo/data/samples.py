"""Small real samples of MNIST and CIFAR-10 shipped inside the package (``lyadeq_zoo/data/samples/``).

They are class-balanced subsets of the official images, cut from the project's ``shared/data`` copy by
``tools/make_samples.py``, and let tests, examples and quick evaluations run with no download:

============  =======  ======  =============================================
data set      split    images  taken from
============  =======  ======  =============================================
``mnist``     test     1,000   100 per class of the 10,000 test images
``mnist``     train    2,000   200 per class of the 60,000 train images
``cifar10``   test     1,000   100 per class of the 10,000 test images
``cifar10``   train    1,000   100 per class of train images 0..9999 (part0)
============  =======  ======  =============================================

``manifest.json`` records, per split, the source files, the indices taken (sorted, so sample row ``i``
is full-set image ``indices[i]``), the array shapes and the sha256 of every sample file; the loader
checks the shapes and checksums.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFormatError
from ..fileio import sha256_file
from .readers import check_images_labels, load_npy_xz

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
MANIFEST_NAME = "manifest.json"
_CHECKOUT_ROOT = Path(__file__).resolve().parents[2]  # the repository root, when installed from a checkout


def reinstall_advice(path: Path) -> str:
    """How to restore the shipped file ``path``: reinstall the package, or restore it in a git checkout."""
    try:
        tracked = path.resolve().relative_to(_CHECKOUT_ROOT).as_posix()
    except ValueError:
        tracked = path.name
    return (
        "reinstall the package (`pip install --force-reinstall lyadeq-zoo`; in a git checkout of the repository: "
        f"`git checkout -- {tracked}`)"
    )


@functools.lru_cache(maxsize=1)
def load_manifest() -> dict[str, Any]:
    """The parsed ``samples/manifest.json`` (``{dataset: {split: entry}}`` under the key ``"datasets"``)."""
    path = SAMPLES_DIR / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped sample manifest {path} is missing; the package install is incomplete: "
            f"{reinstall_advice(path)}, or regenerate it from shared/data with `python tools/make_samples.py`"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataFormatError(
            f"the shipped sample manifest {path} is not valid JSON ({err}); the package install is damaged: "
            f"{reinstall_advice(path)}"
        ) from err


def sample_entry(name: str, split: str) -> dict[str, Any]:
    """The manifest entry of one shipped sample; an unknown pair lists the available ones."""
    datasets = load_manifest()["datasets"]
    try:
        return datasets[name][split]
    except KeyError:
        available = ", ".join(f"{d}/{s}" for d in sorted(datasets) for s in sorted(datasets[d]))
        raise FileNotFoundError(
            f"no shipped sample for {name!r} split {split!r}; samples exist for: {available}"
        ) from None


def available_samples() -> dict[str, list[str]]:
    """``{dataset: [splits]}`` of the shipped samples."""
    return {d: sorted(s) for d, s in load_manifest()["datasets"].items()}


def verify_sample_files(name: str, split: str) -> None:
    """Raise :class:`DataFormatError` if a sample file's sha256 differs from the manifest's."""
    entry = sample_entry(name, split)
    for role in ("images", "labels"):
        file = entry[role]
        path = SAMPLES_DIR / file["file"]
        if not path.is_file():
            raise FileNotFoundError(
                f"shipped sample file {path} is missing (package install incomplete): {reinstall_advice(path)}"
            )
        actual = sha256_file(path)
        if actual != file["sha256"]:
            raise DataFormatError(
                f"shipped sample file {path} is corrupted: sha256 {actual}, manifest says {file['sha256']}. "
                f"Do not delete it; {reinstall_advice(path)}, or rerun tools/make_samples.py."
            )


@functools.lru_cache(maxsize=8)
def _load_sample_cached(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    entry = sample_entry(name, split)
    verify_sample_files(name, split)
    images = load_npy_xz(SAMPLES_DIR / entry["images"]["file"])
    labels = load_npy_xz(SAMPLES_DIR / entry["labels"]["file"])
    shape = tuple(entry["images"]["shape"])
    if images.shape != shape:
        raise DataFormatError(
            f"sample {name}/{split}: images have shape {images.shape}, the manifest says {shape}"
        )
    if len(entry["indices"]) != shape[0]:
        raise DataFormatError(f"sample {name}/{split}: {len(entry['indices'])} indices for {shape[0]} images")
    check_images_labels(images, labels, shape[1:], int(entry["num_classes"]), f"sample {name}/{split}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_sample(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The shipped sample of ``name`` ("mnist"/"cifar10"), ``split`` ("train"/"test").

    Returns images ``uint8`` in the source layout (MNIST ``(N, 28, 28)``, CIFAR-10 ``(N, 32, 32, 3)``)
    and labels ``int64 (N,)``, both read-only (decoded once per process). Checksums and shapes are
    verified against the manifest.
    """
    return _load_sample_cached(name, split)


def sample_indices(name: str, split: str) -> np.ndarray:
    """Full-set indices of the sample's rows (``int64 (N,)``, ascending)."""
    return np.asarray(sample_entry(name, split)["indices"], dtype=np.int64)
