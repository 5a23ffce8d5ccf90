"""Test-session settings: one CPU thread (timing-independent on 2 shared cores), fixed seeds, paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
# The real full data sets, when the checkout sits beside the project's shared/ folder.
SHARED_DATA = Path(os.environ.get("LYADEQ_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA
