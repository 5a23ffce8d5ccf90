"""Configs: _base_ chains, deep merge, overrides, validation errors (key, file, allowed keys, value types)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pytest
import torch
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.config import (
    ConfigError,
    apply_overrides,
    check_options,
    check_value,
    describe_type,
    merge_configs,
    parse_number,
    parse_yaml,
    validate_config,
)


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


# -- option values are checked against the annotations ---------------------------------------------
@lz.register("head", "cfgtest_typed_head", override=True)
class CfgTestTypedHead(nn.Module):
    """One option per kind of annotation (resolved from strings: this module uses postponed annotations)."""

    __lyadeq_zoo_supplied__ = ("in_features", "num_classes")

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int = 1,
        scale: float = 1.0,
        bias: bool = True,
        label: str = "head",
        widths: list[int] = (4,),  # type: ignore[assignment]
        gains: tuple[float, ...] = (1.0,),
        window: tuple[int, int] = (1, 2),
        dims: Sequence[int] = (3,),
        mode: Literal["sum", "mean"] = "sum",
        limit: int | None = None,
        eps: float | str = 0.1,
        table: dict[str, float] | None = None,
        extra: Mapping[str, Any] | None = None,
        anything: Any = None,
        untyped=None,  # noqa: ANN001 - deliberately unannotated: never checked
        mystery: NotDefinedAnywhere = None,  # type: ignore[name-defined]  # noqa: F821 - unresolvable: not checked
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)


def head_spec(**options: Any) -> dict[str, Any]:
    return {"model": {"type": "cfgtest_net", "width": 2, "head": {"type": "cfgtest_typed_head", **options}}}


GOOD_VALUES = [
    {"depth": 3},
    {"scale": 2},  # an int is a fine float
    {"scale": 0.5, "bias": False, "label": "x"},
    {"widths": [1, 2], "gains": [0.5, 1, 2.0], "window": [3, 4], "dims": (5, 6)},
    {"gains": []},
    {"mode": "mean"},
    {"limit": None},
    {"limit": 7},
    {"eps": "8/255"},  # fraction strings are accepted where the annotation says str
    {"eps": 0.03},
    {"table": {"a": 1.0, "b": 2}},
    {"extra": {"anything": [1, "x"]}},
    {"anything": object(), "untyped": "no check", "mystery": 123},
]


@pytest.mark.parametrize("options", GOOD_VALUES)
def test_values_that_fit_the_annotations_pass(options: dict[str, Any]) -> None:
    validate_config(head_spec(**options))


BAD_VALUES = [
    ({"depth": True}, "model.head.depth: expected int, got True (bool)"),
    ({"depth": 2.0}, "model.head.depth: expected int, got 2.0 (float)"),
    ({"depth": "3"}, "model.head.depth: expected int, got '3' (str)"),
    ({"scale": False}, "model.head.scale: expected float, got False (bool)"),
    ({"scale": "1e-3x"}, "model.head.scale: expected float, got '1e-3x' (str)"),
    ({"bias": 1}, "model.head.bias: expected bool, got 1 (int)"),
    ({"bias": "yes"}, "model.head.bias: expected bool, got 'yes' (str)"),
    ({"label": 5}, "model.head.label: expected str, got 5 (int)"),
    ({"widths": 4}, "model.head.widths: expected list of int, got 4 (int)"),
    ({"widths": "44"}, "model.head.widths: expected list of int, got '44' (str)"),
    ({"widths": [4, "8"]}, "model.head.widths[1]: expected int, got '8' (str)"),
    ({"gains": [1.0, True]}, "model.head.gains[1]: expected float, got True (bool)"),
    ({"window": [1, 2, 3]}, "model.head.window: expected list of 2 int, got [1, 2, 3] (list)"),
    ({"dims": [None]}, "model.head.dims[0]: expected int, got null"),
    ({"mode": "max"}, "model.head.mode: expected one of 'sum', 'mean', got 'max' (str)"),
    ({"mode": "Mean"}, "expected one of 'sum', 'mean', got 'Mean' (str) (from <dict>). Did you mean 'mean'?"),
    ({"limit": "none"}, "model.head.limit: expected int or null, got 'none' (str)"),
    ({"limit": False}, "model.head.limit: expected int or null, got False (bool)"),
    ({"eps": [0.1]}, "model.head.eps: expected float or str, got [0.1] (list)"),
    ({"table": [1.0]}, "model.head.table: expected mapping of str to float or null, got [1.0] (list)"),
    ({"table": {"a": "b"}}, "model.head.table.a: expected float, got 'b' (str)"),
    ({"extra": "x"}, "model.head.extra: expected mapping or null, got 'x' (str)"),
]


@pytest.mark.parametrize(("options", "message"), BAD_VALUES)
def test_values_that_do_not_fit_name_key_expected_type_and_value(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(head_spec(**options))
    assert message in str(info.value)
    assert "(from <dict>)" in str(info.value)


def test_bool_is_refused_for_a_real_solver_int_with_the_override_named() -> None:
    path = lz.factory.zoo_config_path("lyadeq_mnist")
    with pytest.raises(ConfigError) as info:
        lz.load_config(path, overrides=["model.solver.max_iter=true"])
    assert str(info.value) == (
        "model.solver.max_iter: expected int, got True (bool) (from override 'model.solver.max_iter=true')"
    )
    with pytest.raises(ConfigError, match=r"model\.solver\.max_iter: expected int, got 'thirty' \(str\)"):
        lz.load_config(path, overrides=["model.solver.max_iter=thirty"])


def test_literal_choices_of_a_real_component_with_closest_match() -> None:
    path = lz.factory.zoo_config_path("lyadeq_mnist")
    with pytest.raises(ConfigError) as info:
        lz.load_config(path, overrides=["model.cell.norm=btach"])
    assert str(info.value) == (
        "model.cell.norm: expected one of 'batch', 'layer', 'none', got 'btach' (str) "
        "(from override 'model.cell.norm=btach'). Did you mean 'batch'?"
    )


def test_optional_nested_spec_and_sequence_of_a_real_model() -> None:
    path = lz.factory.zoo_config_path("lyadeq_mnist")
    plain = lz.load_config(path, overrides=["model.lyapunov=null", "model.head_input=state"])
    assert plain["model"]["lyapunov"] is None
    with pytest.raises(ConfigError, match=r"model\.lyapunov\.hidden\[1\]: expected int, got 6\.5 \(float\)"):
        lz.load_config(path, overrides=["model.lyapunov.hidden=[64, 6.5]"])
    with pytest.raises(ConfigError, match=r"model\.mean: expected float or list of float or null, got 'x' \(str\)"):
        lz.load_config(path, overrides=["model.mean=x"])


def test_wrong_value_in_a_yaml_file_names_the_file(chain: Path, tmp_path: Path) -> None:
    bad = write(tmp_path / "mid" / "typed.yaml", "_base_: leaf.yaml\nmodel:\n  width: sixteen\n")
    with pytest.raises(ConfigError) as info:
        lz.load_config(bad)
    assert str(info.value) == f"model.width: expected int, got 'sixteen' (str) (from {bad})"


def test_wrong_value_set_in_a_base_file_names_the_base(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", "model: {type: cfgtest_net, width: 4, scale: on, head: {type: cfgtest_head}}")
    leaf = write(tmp_path / "leaf.yaml", "_base_: base.yaml\nmodel: {width: 8}\n")
    with pytest.raises(ConfigError) as info:
        lz.load_config(leaf)
    assert str(info.value) == f"model.scale: expected float, got True (bool) (from {base})"


def test_train_section_values_are_checked_with_provenance(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", "train:\n  epochs: ten\n")
    with pytest.raises(ConfigError) as info:
        lz.load_config(path)
    assert str(info.value) == f"train.epochs: expected int, got 'ten' (str) (from {path})"
    ok = write(tmp_path / "ok.yaml", "train: {epochs: 2, lr: 1, betas: [0.9, 0.99], final_eval: null}\n")
    cases = [
        ("train.amp=1", "train.amp: expected bool, got 1 (int)"),
        ("train.betas=[0.9]", "train.betas: expected list of 2 float, got [0.9] (list)"),
        ("train.scheduler=step", "train.scheduler: expected one of 'cosine', 'constant', got 'step' (str)"),
        ("train.grad_clip=off", "train.grad_clip: expected float or null, got False (bool)"),  # YAML 1.1: off
        ("train.final_eval=3", "train.final_eval: expected str or mapping or list of mapping or null, got 3 (int)"),
        ("train.objective={type: trades, steps: 2.5}", "train.objective.steps: expected int, got 2.5 (float)"),
    ]
    for override, message in cases:
        with pytest.raises(ConfigError) as info:
            lz.load_config(ok, overrides=[override])
        assert str(info.value) == f"{message} (from override {override!r})"
    from lyadeq_zoo.training.config import TrainConfig

    with pytest.raises(ConfigError, match=r"^train\.seed: expected int, got True \(bool\)$"):
        TrainConfig.from_dict({"seed": True})
    assert TrainConfig.from_dict({"lr": 1, "betas": [0.5, 0]}).betas == (0.5, 0.0)


def test_check_options_for_attack_specs_recurses_into_nested_specs() -> None:
    pgd = lz.get_component("attack", "pgd")
    check_options(pgd, {"eps": "8/255", "steps": 10, "alpha": "1/255", "grad_mode": "unroll"}, "suite: attacks[0]")
    with pytest.raises(ConfigError, match=r"^suite: attacks\[0\]\.steps: expected int or null, got 'ten' \(str\)$"):
        check_options(pgd, {"steps": "ten"}, "suite: attacks[0]")
    transfer = lz.get_component("attack", "transfer")
    with pytest.raises(ConfigError, match=r"^s\.attack\.restarts: expected int, got 1\.5 \(float\)$"):
        check_options(transfer, {"source": "deq_mnist", "attack": {"type": "pgd", "restarts": 1.5}}, "s")


def test_check_value_and_describe_type_directly() -> None:
    check_value(3, float, "x")
    check_value(None, Optional[int], "x")  # noqa: UP045 - the typing spelling must work too
    check_value([1, 2], Union[list[int], None], "x")  # noqa: UP007
    with pytest.raises(ConfigError, match=r"^a\.b: expected int, got True \(bool\) \(from somewhere\)$"):
        check_value(True, int, "a.b", "somewhere")
    assert describe_type(Literal["ce", "cw", "dlr"]) == "one of 'ce', 'cw', 'dlr'"
    assert describe_type(list[float]) == "list of float"
    assert describe_type(tuple[float, ...]) == "list of float"
    assert describe_type(Sequence[int | None]) == "list of (int or null)"
    assert describe_type(Literal["a"] | None) == "'a' or null"


def test_every_shipped_config_validates() -> None:
    paths = [p for p in lz.configs_dir().glob("*/*.yaml") if p.parent.name != "eval"]
    assert len(paths) > 10
    for path in paths:
        lz.load_config(path)


def test_data_section_values_are_checked() -> None:
    path = lz.factory.zoo_config_path("lyadeq_mnist")
    with pytest.raises(ConfigError, match=r"^data\.limit: expected int or null, got '100' \(str\) \(from override"):
        lz.load_config(path, overrides=["data.limit='100'"])
    with pytest.raises(ConfigError, match=r"^data\.split: expected one of 'train', 'test', 'extra', got 'val'"):
        lz.load_config(path, overrides=["data.split=val"])


def test_wrong_value_in_an_eval_suite_file_names_the_file(tmp_path: Path) -> None:
    from lyadeq_zoo.evaluation.suites import load_suite

    suite = write(tmp_path / "suite.yaml", "attacks:\n  - {type: pgd, eps: [8/255], alpha: 1/255, steps: ten}\n")
    with pytest.raises(ConfigError) as info:
        load_suite(suite, "mnist")
    assert str(info.value) == f"{suite}: attacks[0].steps: expected int or null, got 'ten' (str)"
    inner = "{type: transfer, eps: [0.1], source: x, attack: {type: pgd, restarts: 1.5}}"
    nested = write(tmp_path / "t.yaml", f"attacks:\n  - {inner}\n")
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.attack\.restarts: expected int, got 1\.5 \(float\)$"):
        load_suite(nested, "mnist")
