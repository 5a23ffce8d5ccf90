"""hubconf.py: every zoo model is a torch.hub entrypoint (local checkout and GitHub-style cache, offline)."""

from __future__ import annotations

import ast
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import lyadeq_zoo as lz
from lyadeq_zoo import hub
from lyadeq_zoo.fileio import sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent
ZOO = lz.list_models()  # at collection time: the zoo configs under configs/
GITHUB = "lyadeq/lyadeq-zoo:main"


def test_zoo_has_models() -> None:
    """Guards the parametrised test below against passing vacuously."""
    assert ZOO, f"no zoo models: expected configs/<dataset>/<variant>.yaml under {REPO_ROOT / 'configs'}"
    assert {"lyadeq_mnist", "deq_mnist", "lyadeq_cifar10"} <= set(ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_loads_through_torch_hub(name: str) -> None:
    model = torch.hub.load(str(REPO_ROOT), name, source="local", solver={"max_iter": 3})
    spec = model.config["model"]
    assert model.config == lz.create_model(name, solver={"max_iter": 3}).config
    size = spec["img_size"]
    x = torch.rand(2, spec["in_chans"], *((size, size) if isinstance(size, int) else size))
    with torch.no_grad():
        assert model.eval()(x).shape == (2, spec["num_classes"])


@pytest.fixture
def github_cache(tmp_path: Path) -> Iterator[str]:
    """A torch.hub cache where GITHUB is already 'downloaded' (a link to this checkout): no network needed."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    (tmp_path / "lyadeq_lyadeq-zoo_main").symlink_to(REPO_ROOT, target_is_directory=True)
    try:
        yield GITHUB
    finally:
        torch.hub.set_dir(old)


def test_hub_list_help_and_load(github_cache: str) -> None:
    entrypoints = torch.hub.list(github_cache, trust_repo=True, skip_validation=True, verbose=False)
    assert set(ZOO) <= set(entrypoints)
    assert set(entrypoints) == set(lz.list_models())  # nothing but zoo models is exported
    doc = torch.hub.help(github_cache, "lyadeq_mnist", trust_repo=True, skip_validation=True)
    assert "configs/mnist/lyadeq.yaml" in doc and "pretrained=True" in doc and "[0, 1]" in doc
    model = torch.hub.load(github_cache, "deq_mnist", trust_repo=True, skip_validation=True, verbose=False)
    assert type(model) is type(lz.create_model("deq_mnist"))


def test_hub_dependencies_are_importable() -> None:
    """torch.hub checks ``dependencies`` with find_spec before importing hubconf; read it as torch does."""
    tree = ast.parse((REPO_ROOT / "hubconf.py").read_text())
    assigned = [
        node
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "dependencies"
    ]
    assert len(assigned) == 1, "hubconf.py must define dependencies = [...] once"
    dependencies = ast.literal_eval(assigned[0].value)
    assert {"torch", "timm", "safetensors", "huggingface_hub", "yaml"} <= set(dependencies)
    assert [dep for dep in dependencies if importlib.util.find_spec(dep) is None] == []


def test_hub_pretrained_flag_reaches_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained = lz.create_model("deq_mnist").eval()
    shipped = hub.save_pretrained(trained, tmp_path / "deq_mnist")
    sha = sha256_file(shipped / "model.safetensors")
    index_file = tmp_path / "pretrained.json"
    index_file.write_text(json.dumps({"deq_mnist": {"sha256": sha, "local_path": str(shipped)}}))
    monkeypatch.setenv(hub.INDEX_ENV, str(index_file))
    model = torch.hub.load(str(REPO_ROOT), "deq_mnist", source="local", pretrained=True).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
    with pytest.raises(hub.CheckpointError, match="no pretrained weights for 'lyadeq_mnist'"):
        torch.hub.load(str(REPO_ROOT), "lyadeq_mnist", source="local", pretrained=True)
