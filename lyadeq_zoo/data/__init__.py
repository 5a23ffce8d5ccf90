"""Data sets (registry kind ``dataset``): real torchvision loaders, local copies and shipped samples."""

from .datasets import (
    DATASET_INFO,
    DatasetInfo,
    ImageDataset,
    SampleDataWarning,
    dataset_info,
    load_dataset,
    load_tensors,
)
from .readers import DataFormatError, load_npy_xz, read_cifar10, read_idx, read_mnist
from .samples import available_samples, load_sample, sample_indices

__all__ = [
    "DATASET_INFO",
    "DataFormatError",
    "DatasetInfo",
    "ImageDataset",
    "SampleDataWarning",
    "available_samples",
    "dataset_info",
    "load_dataset",
    "load_npy_xz",
    "load_sample",
    "load_tensors",
    "read_cifar10",
    "read_idx",
    "read_mnist",
    "sample_indices",
]
