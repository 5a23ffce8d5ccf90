"""timm interop: zoo models live in timm's own registry; ``pretrained=True`` goes through our checked loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import lyadeq_zoo as lz
import lyadeq_zoo.timm_interop as timm_interop
from lyadeq_zoo import hub
from lyadeq_zoo.fileio import sha256_file

timm = pytest.importorskip("timm", reason="timm is a dependency of lyadeq-zoo; install it")
REPO_ROOT = Path(__file__).resolve().parent.parent
NAME = "deq_mnist"


@pytest.fixture(autouse=True)
def _registered() -> None:
    assert NAME in lz.list_models(), "zoo config configs/mnist/deq.yaml is missing"
    timm_interop.register_timm_models()  # idempotent; picks up zoo names registered by other tests


def test_zoo_models_are_timm_models() -> None:
    assert set(lz.list_models()) <= set(timm.list_models())
    assert NAME in timm.list_models("*mnist*") and timm.is_model("lyadeq_cifar10")
    model = timm.create_model(NAME, solver={"max_iter": 4})
    assert type(model) is type(lz.create_model(NAME))
    assert model.config["model"]["solver"]["max_iter"] == 4
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_timm_data_config_feeds_unit_range_images() -> None:
    """Normalisation is inside the model, so timm's data pipeline must not normalise again."""
    model = timm.create_model("lyadeq_cifar10")
    data_config = timm.data.resolve_model_data_config(model)
    assert data_config["input_size"] == (3, 32, 32)
    assert tuple(data_config["mean"]) == (0.0, 0.0, 0.0) and tuple(data_config["std"]) == (1.0, 1.0, 1.0)
    assert timm.models.get_pretrained_cfg(NAME).num_classes == 10


def test_registry_cfg_is_the_models_cfg() -> None:
    """timm.get_pretrained_cfg(name) holds what a built model carries (built once, without moving the RNG)."""
    model = lz.create_model("lyadeq_cifar10")
    registered = timm.models.get_pretrained_cfg("lyadeq_cifar10").to_dict(remove_null=False)
    assert {key: registered[key] for key in model.pretrained_cfg} == model.pretrained_cfg
    assert registered["first_conv"] == "backbone.stem.0" and registered["classifier"] == "head.classifier"
    state = torch.get_rng_state()
    fields = set(timm.models.PretrainedCfg.__dataclass_fields__)
    assert timm_interop._pretrained_cfg(NAME, fields)["num_classes"] == 10
    assert torch.equal(torch.get_rng_state(), state)


def test_timm_data_config_follows_an_in_chans_change() -> None:
    model = timm.create_model("lyadeq_cifar10", pretrained=True, in_chans=1, num_classes=4)
    data_config = timm.data.resolve_model_data_config(model)
    assert data_config["input_size"] == (1, 32, 32) and tuple(data_config["mean"]) == (0.0,)
    assert model.num_classes == 4 and model.pretrained_cfg["num_classes"] == 4


def test_timm_placement_and_refused_options() -> None:
    model = timm.create_model(NAME, dtype=torch.float64).eval()
    assert next(model.parameters()).dtype == torch.float64
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(lz.ConfigError, match="take no pretrained_cfg"):
        timm.create_model(NAME, pretrained_cfg_overlay={"file": "elsewhere.safetensors"})
    with pytest.raises(lz.ConfigError, match="drop_rate=0.1 does not apply to 'deq_mnist': these models have no drop"):
        timm.create_model(NAME, drop_rate=0.1)
    assert timm.create_model(NAME, drop_rate=0.0).num_classes == 10  # a zero rate asks for nothing


def test_registration_is_idempotent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert timm_interop.register_timm_models() == []
        import lyadeq_zoo.timm_interop as again

        again.install()
    assert timm.models._registry._model_entrypoints[NAME] is timm_interop._registered[NAME]


def test_timm_name_clash_is_left_to_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lz.factory, "list_models", lambda *a, **k: ["resnet18"])
    original = timm.models.model_entrypoint("resnet18")
    with pytest.warns(UserWarning, match="timm already has a model named 'resnet18'"):
        assert timm_interop.register_timm_models() == []
    assert timm.models.model_entrypoint("resnet18") is original


def test_timm_pretrained_uses_checked_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained = lz.create_model(NAME).eval()
    with torch.no_grad():
        trained.head.fc.weight.normal_() if hasattr(trained.head, "fc") else next(trained.head.parameters()).normal_()
    shipped = hub.save_pretrained(trained, tmp_path / NAME)
    index_file = tmp_path / "pretrained.json"
    entry = {"filename": "model.safetensors", "local_path": str(shipped)}
    index_file.write_text(json.dumps({NAME: {**entry, "sha256": sha256_file(shipped / "model.safetensors")}}))
    monkeypatch.setenv(hub.INDEX_ENV, str(index_file))

    model = timm.create_model(NAME, pretrained=True).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))

    index_file.write_text(json.dumps({NAME: {**entry, "sha256": "f" * 64}}))
    with pytest.raises(hub.ChecksumError, match="sha256"):
        timm.create_model(NAME, pretrained=True)


@pytest.mark.slow  # one fresh interpreter (importing torch and timm takes a few seconds on 2 busy cores)
def test_import_lyadeq_zoo_then_timm_registers_lazily() -> None:
    script = (
        "import sys, lyadeq_zoo\n"
        "if 'lyadeq_zoo.timm_interop' not in sys.modules:\n"
        "    sys.exit('lyadeq_zoo/__init__.py must import timm_interop (after register_zoo_configs())')\n"
        "assert 'timm' not in sys.modules, 'import lyadeq_zoo must not import timm'\n"
        "import timm\n"
        "m = timm.create_model('lyadeq_mnist')\n"
        "print(type(m).__name__, sorted(timm.list_models('*_mnist')))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    kind, _, names = proc.stdout.strip().partition(" ")
    assert kind == type(lz.create_model("lyadeq_mnist")).__name__
    assert eval(names) == lz.list_models("*_mnist")  # noqa: S307 - our own printed list literal
