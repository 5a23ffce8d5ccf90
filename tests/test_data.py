"""Data sets: readers, shipped samples (checksums, balance, identity with the full sets), local copies,
the torchvision fallback and error messages.

Tests on the full data sets need the project's ``shared/data`` beside the checkout (CI has it). Its
absence is a failure unless ``LYADEQ_ALLOW_NO_SHARED_DATA=1`` is set, in which case those tests skip
with that reason.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import lzma
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import lyadeq_zoo as lz
from lyadeq_zoo.data import (
    DataFormatError,
    ImageDataset,
    SampleDataWarning,
    dataset_info,
    load_dataset,
    load_sample,
    read_idx,
    read_mnist,
    sample_indices,
)
from lyadeq_zoo.data import samples as samples_mod
from lyadeq_zoo.data.datasets import DATA_DIR_ENV, read_torchvision
from lyadeq_zoo.data.readers import save_npy_xz

SAMPLES = [("mnist", "test", 100), ("mnist", "train", 200), ("cifar10", "test", 100), ("cifar10", "train", 100)]
# Label counts published in shared/data/README.md.
MNIST_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}
CIFAR10_PART0_COUNTS = [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
# md5 of the official CIFAR-10 binary batches (label byte + CHW planes per image).
CIFAR10_BIN_MD5 = {"test_batch": "803d5f7f4d78ea53de84dbe85f74fb6d", "data_batch_1": "5dd7e06a14cb22eb9f671a540d1b7c25"}


@pytest.fixture
def shared(shared_data: Path) -> Path:
    """The full offline data sets; missing is a failure unless explicitly allowed."""
    if (shared_data / "mnist").is_dir() and (shared_data / "cifar10").is_dir():
        return shared_data
    reason = f"shared data sets not found at {shared_data} (set LYADEQ_SHARED_DATA to their location)"
    if os.environ.get("LYADEQ_ALLOW_NO_SHARED_DATA") == "1":
        pytest.skip(reason + "; LYADEQ_ALLOW_NO_SHARED_DATA=1 allows skipping")
    pytest.fail(reason + "; set LYADEQ_ALLOW_NO_SHARED_DATA=1 to skip these tests instead")


def _cifar_bin_md5(ds: ImageDataset) -> str:
    """md5 of the dataset rebuilt in the official binary format: label byte + CHW planes per image."""
    rows = np.concatenate([ds.labels.numpy().astype(np.uint8)[:, None], ds.images.numpy().reshape(len(ds), -1)], 1)
    return hashlib.md5(rows.tobytes()).hexdigest()


# -- registry and metadata ----------------------------------------------------------------------------
def test_datasets_are_registered() -> None:
    assert set(lz.list_components("dataset")) >= {"mnist", "cifar10", "svhn", "cifar100"}
    ds = lz.build_component("dataset", {"type": "mnist", "root": "sample", "limit": 8})
    assert isinstance(ds, ImageDataset) and len(ds) == 8


def test_config_validation_knows_dataset_keys() -> None:
    from lyadeq_zoo.config import ConfigError, validate_config

    validate_config({"data": {"type": "cifar10", "split": "test", "root": "sample", "limit": 10}})
    with pytest.raises(ConfigError, match="limt"):
        validate_config({"data": {"type": "cifar10", "limt": 10}})


@pytest.mark.parametrize(
    ("name", "classes", "chans", "size"),
    [("mnist", 10, 1, 28), ("cifar10", 10, 3, 32), ("svhn", 10, 3, 32), ("cifar100", 100, 3, 32)],
)
def test_dataset_info(name: str, classes: int, chans: int, size: int) -> None:
    info = dataset_info(name)
    assert (info.num_classes, info.in_chans, info.img_size) == (classes, chans, size)
    assert info.image_shape == (chans, size, size)
    assert len(info.mean) == len(info.std) == chans
    assert all(0 < m < 1 for m in info.mean) and all(0 < s < 1 for s in info.std)
    assert len(info.class_names) == len(set(info.class_names)) == classes
    with pytest.raises(KeyError, match="known: cifar10, cifar100, mnist, svhn"):
        dataset_info("imagenet")


# -- shipped samples ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "split", "per_class"), SAMPLES)
def test_sample_dataset(name: str, split: str, per_class: int) -> None:
    ds = lz.get_component("dataset", name)(split=split, root="sample")
    info = dataset_info(name)
    assert ds.source == "sample" and len(ds) == 10 * per_class
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(ds), *info.image_shape)
    assert ds.class_counts().tolist() == [per_class] * 10
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == info.image_shape and isinstance(label, int)
    x, y = ds.tensors()
    assert x.shape == (len(ds), *info.image_shape) and y.dtype == torch.int64
    assert x.min() == 0.0 and x.max() == 1.0  # real images use the full range
    assert torch.equal(x[5], ds[5][0]) and int(y[5]) == ds[5][1]
    # Per-channel mean near the published training statistics (a 1,000-image sample: loose bound).
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.tensor(info.mean), atol=0.03)


def test_sample_loader_batches() -> None:
    ds = lz.get_component("dataset", "cifar10")(root="sample", limit=100)
    x, y = next(iter(DataLoader(ds, batch_size=32)))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, ds.images[:32].float() / 255)


def test_sample_manifest_checksums_and_sizes() -> None:
    manifest = samples_mod.load_manifest()["datasets"]
    total = 0
    for name, split, per_class in SAMPLES:
        entry = manifest[name][split]
        for role in ("images", "labels"):
            path = samples_mod.SAMPLES_DIR / entry[role]["file"]
            assert samples_mod.sha256_file(path) == entry[role]["sha256"], path
            assert path.stat().st_size == entry[role]["bytes"] < 4_000_000
            total += path.stat().st_size
        idx = sample_indices(name, split)
        assert idx.size == 10 * per_class and np.all(np.diff(idx) > 0) and idx[0] >= 0
        assert entry["source_files"], "the manifest must name the files the sample was cut from"
    assert total < 6_000_000


def test_sample_corruption_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "samples"
    shutil.copytree(samples_mod.SAMPLES_DIR, copy)
    target = copy / "mnist_test_labels.npy.xz"
    target.write_bytes(target.read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(samples_mod, "SAMPLES_DIR", copy)
    with pytest.raises(DataFormatError, match="mnist_test_labels.npy.xz is corrupted"):
        samples_mod.verify_sample_files("mnist", "test")
    samples_mod.verify_sample_files("mnist", "train")  # untouched files still pass


def test_sample_limit_keeps_first_images() -> None:
    full = load_dataset("mnist", "test", root="sample")
    part = load_dataset("mnist", "test", root="sample", limit=17)
    assert len(part) == 17 and torch.equal(part.images, full.images[:17])


def test_no_root_uses_sample_with_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.warns(SampleDataWarning, match="not the full split"):
        ds = lz.get_component("dataset", "mnist")()
    assert ds.source == "sample" and ds.split == "test"


# -- full sets ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["test", "train"])
def test_mnist_sample_is_byte_identical_to_full_set(shared: Path, split: str) -> None:
    images, labels = read_mnist(shared / "mnist", split)
    sample_images, sample_labels = load_sample("mnist", split)
    idx = sample_indices("mnist", split)
    assert np.array_equal(sample_images, images[idx]) and np.array_equal(sample_labels, labels[idx])


def test_cifar10_train_sample_and_part0(shared: Path) -> None:
    """One train part: labels, the official md5 of data_batch_1, the sample rows, the channel means."""
    ds = lz.get_component("dataset", "cifar10")(split="train", root=str(shared), limit=10_000)
    assert ds.source == "local" and len(ds) == 10_000
    assert ds.class_counts().tolist() == CIFAR10_PART0_COUNTS
    assert _cifar_bin_md5(ds) == CIFAR10_BIN_MD5["data_batch_1"]
    sample, sample_labels = load_sample("cifar10", "train")
    idx = sample_indices("cifar10", "train")
    assert np.array_equal(sample.transpose(0, 3, 1, 2), ds.images.numpy()[idx])
    assert np.array_equal(sample_labels, ds.labels.numpy()[idx])
    means = ds.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor(dataset_info("cifar10").mean), atol=0.005)


def test_cifar10_test_full(shared: Path) -> None:
    ds = lz.get_component("dataset", "cifar10")(split="test", root=str(shared / "cifar10"))
    assert ds.location == str(shared / "cifar10") and len(ds) == 10_000
    assert ds.class_counts().tolist() == [1000] * 10
    assert _cifar_bin_md5(ds) == CIFAR10_BIN_MD5["test_batch"]
    # The shipped sample is byte-identical to the recorded rows.
    sample, sample_labels = load_sample("cifar10", "test")
    idx = sample_indices("cifar10", "test")
    assert np.array_equal(sample.transpose(0, 3, 1, 2), ds.images.numpy()[idx])
    assert np.array_equal(sample_labels, ds.labels.numpy()[idx])


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_full(shared: Path, split: str) -> None:
    ds = lz.get_component("dataset", "mnist")(split=split, root=str(shared))
    assert ds.source == "local" and ds.images.shape == (sum(MNIST_COUNTS[split]), 1, 28, 28)
    assert ds.class_counts().tolist() == MNIST_COUNTS[split]
    if split == "train":  # the normalisation constants are the training-set statistics
        counts = np.bincount(ds.images.numpy().ravel(), minlength=256).astype(np.float64)
        values = np.arange(256) / 255
        mean = (counts * values).sum() / counts.sum()
        std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
        info = dataset_info("mnist")
        assert abs(mean - info.mean[0]) < 1e-4 and abs(std - info.std[0]) < 1e-4


def test_data_dir_environment_variable(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(shared))
    ds = lz.get_component("dataset", "mnist")(limit=50)
    assert ds.source == "local" and len(ds) == 50


def test_mnist_torchvision_layout_and_fallback(shared: Path, tmp_path: Path) -> None:
    """``<root>/MNIST/raw`` is read directly; torchvision's own loader gives the same arrays."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (shared / "mnist").glob("*.gz"):
        (raw / f.name).symlink_to(f)
    ds = load_dataset("mnist", "test", root=tmp_path)
    assert ds.source == "local" and ds.location == str(raw)
    # download=True finds the files with torchvision's md5 in place and unpacks them: no network.
    images, labels = read_torchvision("mnist", "test", tmp_path, download=True)
    assert np.array_equal(images, ds.images.numpy()) and np.array_equal(labels, ds.labels.numpy())


# -- errors -------------------------------------------------------------------------------------------
def test_partial_directory_names_missing_files(shared: Path, tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").symlink_to(shared / "mnist" / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist", "test", root=tmp_path)
    message = str(err.value)
    assert "missing t10k-labels-idx1-ubyte.gz" in message and str(tmp_path / "mnist") in message
    assert "shared/data/mnist" in message


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn", "cifar100"])
def test_empty_directory_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(name, "test", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "download=True" in message
    if name in ("mnist", "cifar10"):
        assert "shared/data" in message and "root='sample'" in message
        expected = "t10k-images-idx3-ubyte.gz" if name == "mnist" else "cifar10_test_images.npy.xz"
        assert expected in message
    else:
        assert f"no offline copy of {name}" in message


@pytest.mark.parametrize("name", ["svhn", "cifar100"])
def test_no_local_copy_datasets_say_so(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="no offline copy or shipped sample"):
        lz.get_component("dataset", name)()
    with pytest.raises(FileNotFoundError, match="no shipped sample"):
        lz.get_component("dataset", name)(root="sample")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown split 'val'; choose one of train, test"):
        load_dataset("mnist", "val", root="sample")
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        load_dataset("mnist", root="sample", limit=0)
    with pytest.raises(ValueError, match="download=True makes no sense"):
        load_dataset("cifar10", root="sample", download=True)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "x-idx1-ubyte.gz"
    with gzip.open(good, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([7, 8, 9]))
    assert read_idx(good).tolist() == [7, 8, 9]
    short = tmp_path / "short-idx1-ubyte"
    short.write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes([7, 8, 9]))
    with pytest.raises(DataFormatError, match="promises"):
        read_idx(short)
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an idx file")
    with pytest.raises(DataFormatError, match="not an IDX file"):
        read_idx(junk)


def _idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the IDX format: two zero bytes, type 0x08, ndim, big-endian dims, data."""
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return bytes([0, 0, 8, array.ndim]) + dims + array.astype(np.uint8).tobytes()


def _mnist_folder(folder: Path) -> Path:
    """The MNIST test split of the shipped sample written as the two real ``.gz`` IDX files into ``folder``."""
    images, labels = load_sample("mnist", "test")
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    return folder


def _cifar_folder(folder: Path, n: int = 40) -> Path:
    """The first ``n`` CIFAR-10 test sample images in the offline layout (``.npy.xz`` images, ``.npy`` labels)."""
    images, labels = load_sample("cifar10", "test")
    folder.mkdir(parents=True)
    save_npy_xz(folder / "cifar10_test_images.npy.xz", images[:n])
    np.save(folder / "cifar10_test_labels.npy", labels[:n])
    return folder


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_offline_files_written_here_load(tmp_path: Path) -> None:
    """The files the corruption tests below damage are loadable when intact."""
    _mnist_folder(tmp_path / "mnist")
    _cifar_folder(tmp_path / "cifar10")
    assert len(load_dataset("mnist", "test", root=tmp_path)) == 1000
    assert len(load_dataset("cifar10", "test", root=tmp_path)) == 40


REPLACE = "replace it by an intact copy: copy it again from where it came from"


def test_truncated_or_corrupt_gz_names_the_file(tmp_path: Path) -> None:
    images = _mnist_folder(tmp_path / "mnist") / "t10k-images-idx3-ubyte.gz"
    intact = images.read_bytes()
    images.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(DataFormatError) as err:
        load_dataset("mnist", "test", root=tmp_path)
    assert str(err.value).startswith(f"{images}: truncated: the gzip stream ends before its end marker")
    assert REPLACE in str(err.value) and isinstance(err.value.__cause__, EOFError)

    images.write_bytes(intact)
    _flip_byte(images, -6)  # inside the CRC32 trailer
    with pytest.raises(DataFormatError, match=rf"{re.escape(str(images))}: not readable gzip data \(CRC check failed"):
        load_dataset("mnist", "test", root=tmp_path)
    images.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataFormatError, match=r"not readable gzip data \(Not a gzipped file .*starts with b'<html>no'"):
        load_dataset("mnist", "test", root=tmp_path)
    images.write_bytes(gzip.compress(b""))
    with pytest.raises(DataFormatError, match=r"t10k-images-idx3-ubyte\.gz: empty: no IDX data once decompressed"):
        load_dataset("mnist", "test", root=tmp_path)


def test_truncated_gz_in_torchvision_folder_says_download_again(tmp_path: Path) -> None:
    raw = _mnist_folder(tmp_path / "MNIST" / "raw")
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-100])
    with pytest.raises(DataFormatError) as err:
        load_dataset("mnist", "test", root=tmp_path)
    assert str(err.value) == (
        f"{labels}: truncated: the gzip stream ends before its end marker (Compressed file ended before the "
        f"end-of-stream marker was reached); delete {raw} (torchvision's download) and load with download=True, so "
        "that torchvision downloads MNIST again"
    )


def test_truncated_or_corrupt_npy_xz_names_the_file(tmp_path: Path) -> None:
    images = _cifar_folder(tmp_path / "cifar10") / "cifar10_test_images.npy.xz"
    intact = images.read_bytes()
    images.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(DataFormatError) as err:
        load_dataset("cifar10", "test", root=tmp_path)
    assert str(err.value).startswith(f"{images}: truncated: the xz stream ends before its end marker")
    assert REPLACE in str(err.value) and isinstance(err.value.__cause__, EOFError)
    images.write_bytes(intact)
    _flip_byte(images, len(intact) // 2)
    with pytest.raises(DataFormatError, match=rf"{re.escape(str(images))}: not readable xz data \(Corrupt input data"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_bad_npy_labels_name_the_file(tmp_path: Path) -> None:
    labels = _cifar_folder(tmp_path / "cifar10") / "cifar10_test_labels.npy"
    intact = labels.read_bytes()
    labels.write_bytes(intact[:-8])
    with pytest.raises(
        DataFormatError,
        match=r"the \.npy header promises int64 of shape \(40,\) \(320 bytes of data\), "
        r"the file holds 312; replace it",
    ):
        load_dataset("cifar10", "test", root=tmp_path)
    labels.write_text("0 1 2 3\n")
    with pytest.raises(
        DataFormatError, match=rf"{re.escape(str(labels))}: not a \.npy array \(it starts with b'0 1 2 3"
    ):
        load_dataset("cifar10", "test", root=tmp_path)


class _MakesDirWhenUnpickled:
    """Unpickling this object creates the folder ``marker``: proof that a pickle was (or was not) opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_npy_xz_holding_a_pickle_is_never_unpickled(tmp_path: Path) -> None:
    images = _cifar_folder(tmp_path / "cifar10") / "cifar10_test_images.npy.xz"
    marker = tmp_path / "unpickled"
    buffer = io.BytesIO()
    np.save(buffer, np.array([_MakesDirWhenUnpickled(marker)], dtype=object), allow_pickle=True)
    images.write_bytes(lzma.compress(buffer.getvalue()))
    with pytest.raises(
        DataFormatError, match=r"holds Python objects \(object\), stored as a pickle; it was NOT loaded"
    ):
        load_dataset("cifar10", "test", root=tmp_path)
    assert not marker.exists()


def test_make_samples_selection_is_reproducible(shared: Path, repo_root: Path) -> None:
    """Re-drawing with the recorded seed gives the shipped indices (the tool's selection is deterministic)."""
    spec = importlib.util.spec_from_file_location("make_samples", repo_root / "tools" / "make_samples.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    entry = samples_mod.sample_entry("mnist", "test")
    _, labels = read_mnist(shared / "mnist", "test")
    idx = tool.balanced_indices(labels, entry["per_class"], entry["seed"])
    assert np.array_equal(idx, sample_indices("mnist", "test"))
    # And the source files are the ones recorded in the manifest.
    for file, digest in entry["source_files"].items():
        assert samples_mod.sha256_file(shared / "mnist" / file) == digest
