"""Readers for the offline file formats (numpy + standard library only; no pickle, no torchvision).

* MNIST: the original IDX files, gzip-compressed (``t10k-images-idx3-ubyte.gz`` ...) or plain.
* CIFAR-10: ``.npy`` arrays inside ``.xz`` streams (images) and plain ``.npy`` (labels), the layout of
  the project's ``shared/data/cifar10`` folder.
* Shipped samples: ``.npy.xz`` written by :func:`save_npy_xz` (same idea, with byte-delta filters).

Every reader returns numpy arrays: images ``uint8`` and labels ``int64``. A file that is truncated, corrupt
or of another format raises :class:`~lyadeq_zoo.errors.DataFormatError` naming it and how to get a good
copy, chained to the decoder's own error.
"""

from __future__ import annotations

import gzip
import io
import lzma
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DataFormatError

# IDX type byte -> numpy dtype (big-endian where it matters). MNIST only uses 0x08.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_NPY_MAGIC = b"\x93NUMPY"


def _replace_advice(path: Path) -> str:
    """How to replace the bad data file ``path`` by an intact copy."""
    if path.parent.name == "raw" and path.parent.parent.name == "MNIST":  # torchvision's download folder
        return (
            f"delete {path.parent} (torchvision's download) and load with download=True, so that torchvision "
            "downloads MNIST again"
        )
    return (
        "replace it by an intact copy: copy it again from where it came from (the project's shared/data/ folder "
        "holds the offline copies), or download it again"
    )


def _bad_file(path: Path, problem: str) -> DataFormatError:
    return DataFormatError(f"{path}: {problem}; {_replace_advice(path)}")


def _decompressed(path: Path, opener: Callable[..., BinaryIO], what: str) -> bytes:
    """The whole content of ``path`` decompressed by ``opener`` (``gzip.open`` or ``lzma.open``);
    DataFormatError when the stream is truncated or corrupt."""
    try:
        with opener(path, "rb") as f:
            return f.read()
    except EOFError as err:
        raise _bad_file(path, f"truncated: the {what} stream ends before its end marker ({err})") from err
    except (gzip.BadGzipFile, zlib.error, lzma.LZMAError) as err:
        with open(path, "rb") as f:
            head = f.read(8)
        raise _bad_file(path, f"not readable {what} data ({err}; the file starts with {head!r})") from err


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz``-compressed when the name ends in ``.gz``) into a numpy array.

    The header is two zero bytes, a type byte, the number of dimensions and one big-endian uint32 per
    dimension; the data follows. Returns the array in native byte order with the stored shape,
    e.g. ``(10000, 28, 28) uint8`` for ``t10k-images``.
    """
    path = Path(path)
    raw = _decompressed(path, gzip.open, "gzip") if path.name.endswith(".gz") else path.read_bytes()
    if not raw:
        raise _bad_file(path, "empty: no IDX data" + (" once decompressed" if path.name.endswith(".gz") else ""))
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise _bad_file(path, f"not an IDX file (header bytes {raw[:4]!r})")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = offset + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise _bad_file(path, f"IDX header promises {dims} ({expected} bytes), file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def load_npy_xz(path: str | Path) -> np.ndarray:
    """Load a ``.npy`` file compressed with xz (any xz filter chain; pickles are refused)."""
    path = Path(path)
    # np.load needs a seekable file; lzma streams seek slowly, so decode to memory first.
    return _npy_from_bytes(_decompressed(path, lzma.open, "xz"), path)


def load_npy(path: str | Path) -> np.ndarray:
    """Load a plain ``.npy`` file (pickles are refused)."""
    path = Path(path)
    return _npy_from_bytes(path.read_bytes(), path)


def _npy_from_bytes(data: bytes, path: Path) -> np.ndarray:
    """The array that the ``.npy`` bytes ``data`` (read from ``path``) hold; DataFormatError naming ``path``
    when they are not ``.npy``, hold Python objects (a pickle: never loaded) or are shorter than the header
    says."""
    if not data.startswith(_NPY_MAGIC):
        raise _bad_file(path, f"not a .npy array (it starts with {data[:8]!r}, not {_NPY_MAGIC!r})")
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(buffer)
    except ValueError as err:
        raise _bad_file(path, f"the .npy header is corrupt ({err})") from err
    if dtype.hasobject:
        raise DataFormatError(
            f"{path}: the .npy array holds Python objects ({dtype}), stored as a pickle; it was NOT loaded "
            "(data files are never unpickled). Save the data as a plain numeric array (np.save of a uint8 / "
            "int64 array)"
        )
    needed, held = int(np.prod(shape)) * dtype.itemsize, len(data) - buffer.tell()
    if held != needed:
        raise _bad_file(
            path, f"the .npy header promises {dtype} of shape {shape} ({needed} bytes of data), the file holds {held}"
        )
    buffer.seek(0)
    return np.load(buffer, allow_pickle=False)


def save_npy_xz(path: str | Path, array: np.ndarray, delta_distances: Sequence[int] = ()) -> None:
    """Write ``array`` as an xz-compressed ``.npy`` (preset 9 extreme).

    ``delta_distances`` adds byte-delta filters before LZMA2 (at most 3): for uint8 images in HWC
    layout, the channel count (next pixel), the row length in bytes (pixel below) and 1 compress well.
    The filters are recorded in the xz header, so :func:`load_npy_xz` (and ``xz -d``) undo them.
    """
    if len(delta_distances) > 3:
        raise ValueError("xz allows at most 3 filters before LZMA2; pass at most 3 delta distances")
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    filters = [{"id": lzma.FILTER_DELTA, "dist": int(d)} for d in delta_distances]
    filters.append({"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME})
    with lzma.open(path, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, filters=filters) as f:
        f.write(buffer.getvalue())


def check_images_labels(
    images: np.ndarray, labels: np.ndarray, image_shape: tuple[int, ...], num_classes: int, what: str
) -> None:
    """Raise :class:`DataFormatError` unless ``images`` is ``uint8 (N, *image_shape)`` and ``labels``
    are ``N`` integers in ``[0, num_classes)``."""
    if images.dtype != np.uint8 or images.ndim != 1 + len(image_shape) or images.shape[1:] != image_shape:
        raise DataFormatError(
            f"{what}: images should be uint8 of shape (N, {', '.join(map(str, image_shape))}), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataFormatError(f"{what}: {images.shape[0]} images but labels of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{what}: labels should be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataFormatError(
            f"{what}: labels should lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )


# -- MNIST --------------------------------------------------------------------------------------------
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def mnist_paths(directory: str | Path, split: str) -> list[Path]:
    """The files :func:`read_mnist` reads for ``split``: ``.gz`` names, or the plain name if only that
    one exists (torchvision unpacks them into ``MNIST/raw/``)."""
    directory = Path(directory)
    paths = []
    for stem in MNIST_FILES[split]:
        gz, plain = directory / f"{stem}.gz", directory / stem
        paths.append(plain if plain.is_file() and not gz.is_file() else gz)
    return paths


def read_mnist(directory: str | Path, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` ("train"/"test") from a folder of IDX files.

    Returns images ``uint8 (N, 28, 28)`` and labels ``int64 (N,)``; ``limit`` keeps the first ``limit``.
    """
    image_path, label_path = mnist_paths(directory, split)
    images, labels = read_idx(image_path), read_idx(label_path).astype(np.int64)
    check_images_labels(images, labels, (28, 28), 10, f"MNIST {split} in {directory}")
    return images[:limit], labels[:limit]


# -- CIFAR-10 -----------------------------------------------------------------------------------------
CIFAR10_PART_SIZE = 10_000
CIFAR10_FILES: dict[str, tuple[list[str], str]] = {
    "train": ([f"cifar10_train_images_part{k}.npy.xz" for k in range(5)], "cifar10_train_labels.npy"),
    "test": (["cifar10_test_images.npy.xz"], "cifar10_test_labels.npy"),
}


def cifar10_paths(directory: str | Path, split: str) -> list[Path]:
    """The files :func:`read_cifar10` reads for ``split`` (image parts first, labels last)."""
    parts, labels = CIFAR10_FILES[split]
    return [Path(directory) / name for name in (*parts, labels)]


def read_cifar10(
    directory: str | Path, split: str, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` from the ``.npy.xz`` layout of ``shared/data/cifar10``.

    Returns images ``uint8 (N, 32, 32, 3)`` (HWC, RGB) and labels ``int64 (N,)`` in the official order.
    With ``limit``, only the image parts holding the first ``limit`` images are decoded (each train
    part takes about a second to decode).
    """
    *part_paths, label_path = cifar10_paths(directory, split)
    labels = load_npy(label_path).astype(np.int64)
    n = labels.shape[0] if limit is None else min(limit, labels.shape[0])
    needed = max(1, -(-n // CIFAR10_PART_SIZE))
    images = np.concatenate([load_npy_xz(p) for p in part_paths[:needed]])
    images, labels = images[:n], labels[:n]
    check_images_labels(images, labels, (32, 32, 3), 10, f"CIFAR-10 {split} in {directory}")
    return images, labels
