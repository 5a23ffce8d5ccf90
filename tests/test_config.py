"""Configs: _base_ chains, deep merge, overrides, validation errors (key, file, allowed keys), round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.config import ConfigError, apply_overrides, merge_configs, parse_number, parse_yaml


@lz.register("head", "cfgtest_head", override=True)
class CfgTestHead(nn.Module):
    __lyadeq_zoo_supplied__ = ("in_features", "num_classes")

    def __init__(self, in_features: int, num_classes: int, hidden: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.Linear(hidden, num_classes, bias=bias))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@lz.register("model", "cfgtest_net", override=True)
class CfgTestNet(nn.Module):
    def __init__(self, width: int, head: dict, num_classes: int = 3, scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Linear(2, width)
        self.head = lz.build_component("head", head, in_features=width, num_classes=num_classes)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x) * self.scale)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    """base.yaml <- mid/middle.yaml <- mid/leaf.yaml (relative _base_ paths, a two-step chain)."""
    write(
        tmp_path / "base.yaml",
        "model:\n  type: cfgtest_net\n  width: 8\n  head: {type: cfgtest_head, hidden: 4}\n"
        "meta: {description: base}\n",
    )
    write(tmp_path / "mid" / "middle.yaml", "_base_: ../base.yaml\nmodel:\n  width: 16\n  scale: 1e-3\n")
    return write(tmp_path / "mid" / "leaf.yaml", "_base_: middle.yaml\nmodel:\n  head: {bias: false}\n")


def test_base_chain_deep_merges_and_reads_scientific_floats(chain: Path) -> None:
    cfg = lz.load_config(chain)
    assert cfg["model"] == {
        "type": "cfgtest_net",
        "width": 16,
        "scale": 1e-3,
        "head": {"type": "cfgtest_head", "hidden": 4, "bias": False},
    }
    assert isinstance(cfg["model"]["scale"], float)
    assert "_base_" not in cfg
    json.dumps(cfg)  # resolved configs are plain JSON-serialisable data


def test_overrides_are_parsed_as_yaml_scalars(chain: Path) -> None:
    cfg = lz.load_config(chain, overrides=["model.width=32", "model.scale=2.5e-2", "model.head.bias=true"])
    assert cfg["model"]["width"] == 32
    assert cfg["model"]["scale"] == pytest.approx(0.025)
    assert cfg["model"]["head"]["bias"] is True


def test_type_change_replaces_the_nested_spec_instead_of_merging() -> None:
    base = {"head": {"type": "linear", "bias": True}}
    merged = merge_configs(base, {"head": {"type": "orthogonal", "scale": 2}})
    assert merged == {"head": {"type": "orthogonal", "scale": 2}}
    assert base == {"head": {"type": "linear", "bias": True}}  # inputs untouched


def test_bad_key_names_key_file_allowed_keys_and_closest_match(chain: Path, tmp_path: Path) -> None:
    bad = write(tmp_path / "mid" / "bad.yaml", "_base_: leaf.yaml\nmodel:\n  head: {hiden: 3}\n")
    with pytest.raises(ConfigError) as info:
        lz.load_config(bad)
    message = str(info.value)
    assert "model.head.hiden" in message
    assert str(bad) in message
    assert "Allowed keys: type, hidden, bias." in message
    assert "Did you mean 'hidden'?" in message


def test_bad_key_from_a_base_file_names_the_base(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "model: {type: cfgtest_net, width: 4, widht: 5, head: {type: cfgtest_head}}\n")
    leaf = write(tmp_path / "leaf.yaml", "_base_: base.yaml\nmodel: {scale: 2.0}\n")
    with pytest.raises(ConfigError, match=r"model\.widht \(from .*base\.yaml\)"):
        lz.load_config(leaf)


def test_bad_override_key_names_the_override(chain: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.sclae \(from override 'model\.sclae=2'\).*Did you mean 'scale'"):
        lz.load_config(chain, overrides=["model.sclae=2"])


def test_key_supplied_by_parent_is_refused_with_explanation(chain: Path) -> None:
    with pytest.raises(ConfigError, match="set by the enclosing model"):
        lz.load_config(chain, overrides=["model.head.in_features=3"])


def test_unknown_type_lists_registered_names(chain: Path) -> None:
    with pytest.raises(ConfigError) as info:
        lz.load_config(chain, overrides=["model.head.type=cfgtest_haed"])
    assert "model.head.type" in str(info.value)
    assert "Did you mean 'cfgtest_head'?" in str(info.value)


def test_unknown_section_and_malformed_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top-level key 'modle'.*Did you mean 'model'"):
        lz.load_config(write(tmp_path / "a.yaml", "modle: {type: cfgtest_net}\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        lz.load_config(write(tmp_path / "b.yaml", "_base_: nowhere.yaml\n"))
    with pytest.raises(ConfigError, match="must be a mapping at top level"):
        lz.load_config(write(tmp_path / "c.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        lz.load_config(write(tmp_path / "d.yaml", "model: {type: [\n"))
    with pytest.raises(ConfigError, match="must look like a.b.c=value"):
        apply_overrides({}, ["model.width"])
    with pytest.raises(ConfigError, match="no 'type' key"):
        lz.load_config(write(tmp_path / "e.yaml", "model: {width: 3}\n"))


def test_base_cycle_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="inheritance loops"):
        lz.load_config(tmp_path / "a.yaml")


def test_build_model_round_trip_from_model_config(chain: Path) -> None:
    model = lz.build_model(chain)
    assert model.config == lz.load_config(chain)
    rebuilt = lz.build_model(json.loads(json.dumps(model.config)))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    assert shapes["body.weight"] == (16, 2)


def test_build_model_validates_dicts_too() -> None:
    with pytest.raises(ConfigError, match=r"model\.head\.hiden \(from <dict>\)"):
        lz.build_model({"model": {"type": "cfgtest_net", "width": 2, "head": {"type": "cfgtest_head", "hiden": 1}}})
    with pytest.raises(ConfigError, match="no 'model' section"):
        lz.build_model({"meta": {}})


def test_parse_helpers() -> None:
    assert parse_yaml("a: 1e-4\nb: 2/255\nc: .5\n") == {"a": 1e-4, "b": "2/255", "c": 0.5}
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_number(0.5) == 0.5
