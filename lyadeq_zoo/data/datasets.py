"""Registered data sets (kind ``dataset``): ``mnist``, ``cifar10``, ``svhn``, ``cifar100``.

Each is a function ``(split="test", root=None, download=False, limit=None) -> ImageDataset`` whose
items are ``(image float32 (C, H, W) in [0, 1], int label)``. The whole split is held in memory as one
``uint8 (N, C, H, W)`` tensor and converted per item; :meth:`ImageDataset.tensors` (or
:func:`load_tensors`) returns the full split at once for GPU-resident training and fast evaluation.

Where the data comes from (``root``):

``"sample"``
    The small real samples shipped in the package (MNIST and CIFAR-10 only; see
    :mod:`lyadeq_zoo.data.samples`). Never downloads.
a directory
    1. the offline layout of the project's ``shared/data`` folder, found either in ``<root>/<name>/``
       (``<root>/mnist/t10k-images-idx3-ubyte.gz``, ``<root>/cifar10/cifar10_test_images.npy.xz`` ...)
       or in ``<root>`` itself; for MNIST also torchvision's ``<root>/MNIST/raw/``. Read with numpy only.
    2. otherwise torchvision's own loader (``torchvision.datasets.MNIST(root, train=..., download=...)``
       and likewise ``CIFAR10``, ``SVHN``, ``CIFAR100``), which downloads when ``download=True``.
``None``
    The directory in the environment variable ``LYADEQ_DATA_DIR`` if it is set; else, with
    ``download=True``, torchvision's loader under ``~/.cache/lyadeq_zoo/datasets``; else the shipped
    sample (MNIST/CIFAR-10), with a :class:`SampleDataWarning` saying that it is only a sample.
    SVHN and CIFAR-100 have no sample and no offline copy: without a root or ``download=True`` they
    raise an error that says so.

``limit`` keeps the first ``limit`` images of the split (the official order, or the sample's order).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import register
from .readers import CIFAR10_FILES, MNIST_FILES, read_cifar10, read_mnist
from .samples import load_sample

DATA_DIR_ENV = "LYADEQ_DATA_DIR"
DEFAULT_DOWNLOAD_ROOT = Path.home() / ".cache" / "lyadeq_zoo" / "datasets"
SAMPLE_ROOT = "sample"

# Fine-label names in label order (alphabetical, as in the official ``meta`` file).
CIFAR100_CLASSES: tuple[str, ...] = tuple(
    " ".join(
        [
            "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly",
            "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile",
            "cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp",
            "lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree",
            "orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum",
            "rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider",
            "squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train",
            "trout tulip turtle wardrobe whale willow_tree wolf woman worm",
        ]
    ).split(" ")
)


class SampleDataWarning(UserWarning):
    """Only the small shipped sample is used because no data directory was given."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set. ``mean``/``std`` are per channel on the [0, 1] scale
    (training-set statistics), for the normalisation layer inside models."""

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    splits: dict[str, int]  # split -> number of images in the full official split
    torchvision_class: str
    has_local_copy: bool  # readable from the shared-data layout / shipped samples

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (self.in_chans, self.img_size, self.img_size)


DATASET_INFO: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", 10, 1, 28, (0.1307,), (0.3081,), tuple(str(d) for d in range(10)),
        {"train": 60_000, "test": 10_000}, "MNIST", True,
    ),
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        {"train": 50_000, "test": 10_000}, "CIFAR10", True,
    ),
    # SVHN: torchvision maps the .mat label 10 to digit 0, so class i is digit i.
    "svhn": DatasetInfo(
        "svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
        tuple(str(d) for d in range(10)),
        {"train": 73_257, "test": 26_032, "extra": 531_131}, "SVHN", False,
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), CIFAR100_CLASSES,
        {"train": 50_000, "test": 10_000}, "CIFAR100", False,
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """Metadata of a built-in data set (``mnist``, ``cifar10``, ``svhn``, ``cifar100``)."""
    try:
        return DATASET_INFO[name]
    except KeyError:
        known = ", ".join(sorted(DATASET_INFO))
        raise KeyError(f"no metadata for data set {name!r}; known: {known}") from None


class ImageDataset(Dataset):
    """A whole split in memory: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)``.

    ``dataset[i]`` is ``(images[i] as float32 in [0, 1], int label)``. ``source`` says where the data
    came from: ``"sample"``, ``"local"`` (offline files) or ``"torchvision"``.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, *, name: str, split: str, source: str, location: str
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.name, self.split, self.source, self.location = name, split, source, location

    @property
    def info(self) -> DatasetInfo:
        return dataset_info(self.name)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255.0), int(self.labels[index])

    def tensors(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split: images ``dtype (N, C, H, W)`` in [0, 1] and labels ``int64 (N,)``.

        The uint8 data is moved to ``device`` first and converted there (4x less transfer).
        """
        images = self.images.to(device).to(dtype).div_(255.0)
        return images, self.labels.to(device)

    def class_counts(self) -> torch.Tensor:
        """Images per class, ``int64 (num_classes,)``."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape={tuple(self.images.shape[1:])}, source={self.source!r}, location={self.location!r})"
        )


# -- locating the data --------------------------------------------------------------------------------
def _local_candidates(name: str, root: Path) -> list[Path]:
    candidates = [root / name, root]
    if name == "mnist":
        candidates.append(root / "MNIST" / "raw")  # torchvision's layout holds the same IDX files
    return candidates


def _local_files(name: str, split: str) -> list[str]:
    if name == "mnist":
        return [f"{stem}.gz" for stem in MNIST_FILES[split]]
    parts, labels = CIFAR10_FILES[split]
    return [*parts, labels]


def _present(name: str, directory: Path, file: str) -> bool:
    # MNIST files may also be unpacked (torchvision's MNIST/raw holds both forms).
    if (directory / file).is_file():
        return True
    return name == "mnist" and (directory / file.removesuffix(".gz")).is_file()


def _find_local(name: str, split: str, root: Path) -> Path | None:
    """The directory holding all offline files of ``name``/``split`` under ``root``, or None if none
    of them is there. A directory holding only some of them is an error naming the missing ones."""
    files = _local_files(name, split)
    for directory in _local_candidates(name, root):
        present = [f for f in files if _present(name, directory, f)]
        if len(present) == len(files):
            return directory
        if present:
            missing = [f for f in files if f not in present]
            raise FileNotFoundError(
                f"{name} ({split} split): {directory} holds part of the offline layout but is missing "
                f"{', '.join(missing)} (found {', '.join(present)}). Copy all of {', '.join(files)} "
                f"from the project's shared/data/{name}/ folder (see its README.md), or point root to "
                "a complete copy."
            )
    return None


def read_torchvision(name: str, split: str, root: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 (N, C, H, W)`` and labels ``int64 (N,)`` through torchvision's loader."""
    import torchvision  # lazy: only this fallback needs it

    info = dataset_info(name)
    cls = getattr(torchvision.datasets, info.torchvision_class)
    try:
        if name == "svhn":
            ds = cls(str(root), split=split, download=download)
        else:
            ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError as err:
        looked = f"intact torchvision {info.torchvision_class} files under {root} (missing or corrupt)"
        if info.has_local_copy:
            looked = (
                f"neither the offline layout ({', '.join(_local_files(name, split))} in {root / name} or "
                f"{root}, as in the project's shared/data/{name}/ folder) nor {looked}"
            )
        else:
            looked = f"no {looked} (and no offline copy of {name} exists)"
        raise FileNotFoundError(
            f"{name} ({split} split): found {looked}; torchvision said: {err}. Pass download=True "
            f"to let torchvision download {name} into {root} (needs internet; files that fail torchvision's "
            "checksum are downloaded again)"
            + (", or root='sample' for the small shipped sample." if info.has_local_copy else ".")
        ) from err
    if name == "svhn":
        images, labels = np.asarray(ds.data), np.asarray(ds.labels)  # already (N, 3, 32, 32)
    else:
        images, labels = np.asarray(ds.data), np.asarray(ds.targets)
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return images, labels.astype(np.int64)


def _to_nchw(images: np.ndarray) -> np.ndarray:
    """Source layout (N, H, W) or (N, H, W, C) -> contiguous (N, C, H, W)."""
    if images.ndim == 3:
        return np.ascontiguousarray(images[:, None])
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def _check_args(name: str, split: str, limit: int | None) -> DatasetInfo:
    info = dataset_info(name)
    if split not in info.splits:
        raise ValueError(f"{name}: unknown split {split!r}; choose one of {', '.join(info.splits)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    return info


def load_dataset(
    name: str, split: str = "test", root: str | Path | None = None, download: bool = False,
    limit: int | None = None,
) -> ImageDataset:
    """Load ``name``/``split`` from the shipped sample, an offline copy or torchvision (see module doc)."""
    info = _check_args(name, split, limit)
    if root is None:
        root = _default_root(info, split, download)
    if root == SAMPLE_ROOT:
        images, labels = _read_sample(info, split, download, limit)
        source, location = "sample", SAMPLE_ROOT
    else:
        images, labels, source, location = _read_directory(info, split, Path(root).expanduser(), download, limit)
    if images.shape[1:] != info.image_shape:
        raise ValueError(f"{name}: expected images of shape {info.image_shape}, got {images.shape[1:]}")
    return ImageDataset(
        torch.from_numpy(images), torch.from_numpy(labels),
        name=name, split=split, source=source, location=location,
    )


def _default_root(info: DatasetInfo, split: str, download: bool) -> str | Path:
    """Where to read from when no root is given: ``$LYADEQ_DATA_DIR``, the download cache or the sample."""
    name = info.name
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return env
    if download:
        return DEFAULT_DOWNLOAD_ROOT
    if not info.has_local_copy:
        raise FileNotFoundError(
            f"{name}: no offline copy or shipped sample exists; pass root=<dir> holding torchvision's "
            f"{info.torchvision_class} files, or download=True (needs internet), or set {DATA_DIR_ENV}."
        )
    warnings.warn(
        f"{name}: no root given, using the shipped {split} sample (a class-balanced subset, not the "
        f"full split). Pass root=<data dir> (or set {DATA_DIR_ENV}) for the full set, "
        "download=True to fetch it, or root='sample' to silence this warning.",
        SampleDataWarning,
        stacklevel=4,  # the caller of load_dataset's caller (a registered data set function)
    )
    return SAMPLE_ROOT


def _read_sample(info: DatasetInfo, split: str, download: bool, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The shipped sample: images ``uint8 (N, C, H, W)`` and labels ``int64 (N,)``, own writable copies."""
    if download:
        raise ValueError("root='sample' reads the shipped sample; download=True makes no sense with it")
    if not info.has_local_copy:
        raise FileNotFoundError(
            f"{info.name}: no shipped sample exists (only for mnist and cifar10); pass root=<dir> with "
            f"download=True to get it through torchvision (needs internet)."
        )
    images, labels = load_sample(info.name, split)
    # The cached sample arrays are read-only; the dataset gets its own writable copy.
    return _to_nchw(np.array(images[:limit])), np.array(labels[:limit])


def _read_directory(
    info: DatasetInfo, split: str, root: Path, download: bool, limit: int | None
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """``(images (N, C, H, W), labels (N,), source, location)`` from the offline layout under ``root`` if it
    is there, else through torchvision."""
    name = info.name
    local = _find_local(name, split, root) if info.has_local_copy else None
    if local is not None:
        reader = read_mnist if name == "mnist" else read_cifar10
        images, labels = reader(local, split, limit=limit)
        return _to_nchw(images), labels, "local", str(local)
    images, labels = read_torchvision(name, split, root, download)
    return np.ascontiguousarray(images[:limit]), labels[:limit], "torchvision", str(root)


def load_tensors(
    name: str, split: str = "test", root: str | Path | None = None, download: bool = False,
    limit: int | None = None, device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as tensors: images ``float32 (N, C, H, W)`` in [0, 1], labels ``int64 (N,)``,
    on ``device`` (converted there from uint8)."""
    return load_dataset(name, split, root, download, limit).tensors(device)


# -- registered data sets -----------------------------------------------------------------------------
def _make(name: str, doc: str) -> Callable[..., ImageDataset]:
    def dataset(
        split: Literal["train", "test", "extra"] = "test",
        root: str | None = None,
        download: bool = False,
        limit: int | None = None,
    ) -> ImageDataset:
        return load_dataset(name, split=split, root=root, download=download, limit=limit)

    dataset.__name__ = dataset.__qualname__ = name
    dataset.__doc__ = (
        f"{doc}\n\n    ``split`` in {', '.join(DATASET_INFO[name].splits)}; ``root`` is ``'sample'``, a "
        "directory or None (see :mod:`lyadeq_zoo.data.datasets`); ``download`` lets torchvision fetch it; "
        "``limit`` keeps the first images.\n    Items: ``(float32 (C, H, W) in [0, 1], int label)``."
    )
    return register("dataset", name)(dataset)


mnist = _make("mnist", "MNIST handwritten digits, 1x28x28, 10 classes (offline copy, sample or torchvision).")
cifar10 = _make("cifar10", "CIFAR-10, 3x32x32, 10 classes (offline copy, sample or torchvision).")
svhn = _make("svhn", "SVHN cropped digits, 3x32x32, 10 classes (torchvision only; no offline copy).")
cifar100 = _make("cifar100", "CIFAR-100 (fine labels), 3x32x32, 100 classes (torchvision only).")
