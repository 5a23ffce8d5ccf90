"""Test-session settings and shared fixtures.

* One CPU thread (timing-independent on 2 shared cores), a fixed seed per test, repository paths.
* ``tiny_model_config`` / ``make_tiny_model`` / ``tiny_model``: a small LyaDEQ (or plain DEQ) on MNIST geometry
  built from a config by the real registry, a few milliseconds per forward on one thread.
* ``mnist_digits``: real shipped MNIST test digits for it.
* ``restore_registries``: snapshot of all component registries, restored after the test.

Tests that take more than ~3 s on one thread, or start a fresh Python interpreter, carry ``@pytest.mark.slow``;
the default run deselects them (``addopts`` in pyproject.toml) and ``.ci/run`` runs them as a second step
(``python -m pytest -q -m slow``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.registry import REGISTRIES

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


# -- a tiny model ----------------------------------------------------------------------------------------
def tiny_config(lyapunov: bool = True) -> dict[str, Any]:
    """A complete config of a small ``deq_classifier`` on MNIST geometry (1x28x28 inputs, 10 classes).

    Width 8, the zoo's MNIST components (``fc`` backbone, ``paper_mlp`` cell with batch norm, Anderson, IFT),
    an ICNN Lyapunov module ``[8, 8]`` with ``head_input: corrected`` (``lyapunov=False``: a plain DEQ with
    ``head_input: state``) and a linear head.
    """
    model: dict[str, Any] = {
        "type": "deq_classifier",
        "num_classes": 10,
        "in_chans": 1,
        "img_size": 28,
        "width": 8,
        "mean": [0.1307],
        "std": [0.3081],
        "backbone": {"type": "fc"},
        "cell": {"type": "paper_mlp", "norm": "batch"},
        "solver": {"type": "anderson", "max_iter": 30, "tol": 1e-4},
        "backward": {"type": "ift"},
        "lyapunov": {"type": "icnn", "hidden": [8, 8]} if lyapunov else None,
        "head": {"type": "linear"},
        "head_input": "corrected" if lyapunov else "state",
    }
    return {"model": model, "data": {"type": "mnist", "root": "sample"}}


@pytest.fixture
def tiny_model_config() -> dict[str, Any]:
    """A fresh copy of :func:`tiny_config` (LyaDEQ) to edit and build."""
    return copy.deepcopy(tiny_config())


@pytest.fixture
def make_tiny_model() -> Callable[..., nn.Module]:
    """``make_tiny_model(lyapunov=True, seed=0, **model_overrides)``: a new tiny model in eval mode, built with
    ``lz.build_model``; ``model_overrides`` replace keys of the config's ``model`` section."""

    def make(lyapunov: bool = True, seed: int = 0, **model_overrides: Any) -> nn.Module:
        config = tiny_config(lyapunov)
        config["model"].update(model_overrides)
        torch.manual_seed(seed)
        return lz.build_model(config).eval()

    return make


@pytest.fixture
def tiny_model(make_tiny_model: Callable[..., nn.Module]) -> nn.Module:
    """The tiny LyaDEQ of :func:`tiny_config`, eval mode, seed 0."""
    return make_tiny_model()


@pytest.fixture(scope="session")
def mnist_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 8 shipped MNIST test digits ``(8, 1, 28, 28)`` in [0, 1] and their labels ``(8,)`` int64."""
    return lz.get_component("dataset", "mnist")(split="test", root="sample", limit=8).tensors()


# -- registries ------------------------------------------------------------------------------------------
def snapshot_registries() -> Callable[[], None]:
    """Copy the state of every component registry (entries, origins, broken plugins, whether plugins were
    discovered); the returned function puts that state back (it may be called more than once)."""
    saved = {kind: {key: copy.copy(value) for key, value in vars(reg).items()} for kind, reg in REGISTRIES.items()}

    def restore() -> None:
        for kind, reg in REGISTRIES.items():
            state = vars(reg)
            state.clear()
            state.update({key: copy.copy(value) for key, value in saved[kind].items()})

    return restore


@pytest.fixture
def restore_registries() -> Iterator[Callable[[], None]]:
    """Registrations made by the test are undone afterwards; yields the restore function for use mid-test."""
    restore = snapshot_registries()
    try:
        yield restore
    finally:
        restore()


@pytest.fixture(scope="module")
def trained_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small attack target: an MLP with ~88% test accuracy, trained here in ~0.3 s on the shipped sample.

    Returns (model in eval mode, 200 test images (N, 1, 28, 28) in [0, 1], labels (N,)).
    """
    torch.manual_seed(0)
    x_train, y_train = lz.get_component("dataset", "mnist")(split="train", root="sample").tensors()
    x_test, y_test = lz.get_component("dataset", "mnist")(split="test", root="sample").tensors()
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        idx = torch.randint(0, len(x_train), (64,))
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, x_test[:200], y_test[:200]
