"""Training loop, checkpoints, config checks: tiny runs of the real lyadeq_mnist on the shipped MNIST sample."""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import lyadeq_zoo as lz
from lyadeq_zoo.config import ConfigError
from lyadeq_zoo.errors import CheckpointError
from lyadeq_zoo.training import (
    CheckpointWarning,
    EpochBatchSampler,
    TrainConfig,
    augment_batch,
    config_differences,
    list_checkpoints,
    load_latest,
    train,
)
from lyadeq_zoo.training.checkpoint import verify_checkpoint


def tiny_config(**train_options: Any) -> dict[str, Any]:
    """lyadeq_mnist on 256 sample images: 2 epochs of 4 steps of 64, checkpoints every 2 steps."""
    config = lz.zoo_config("lyadeq_mnist")
    config["model"]["solver"]["max_iter"] = 10
    config["data"] = {"type": "mnist", "root": "sample"}
    config["train"] = {
        "epochs": 2, "batch_size": 64, "limit_train": 256, "limit_test": 128, "eval_batch_size": 128,
        "final_eval": None, "log_every_steps": 2, "checkpoint_every_steps": 2, "keep_last": 3,
        **train_options,
    }
    return config


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_short_run_learns_and_writes_outputs(tmp_path: Path) -> None:
    config = tiny_config(epochs=3, limit_train=512, final_eval=[{"type": "fgsm", "eps": ["8/255"]}], limit_test=64)
    result = train(config, tmp_path, progress=False, command="python tools/train.py test")
    epochs = [r for r in result.history if r["kind"] == "epoch"]
    steps = [r for r in result.history if r["kind"] == "train"]
    assert len(epochs) == 3 and steps[0]["loss"] > epochs[-1]["train_loss"]  # the loss falls
    assert epochs[-1]["train_acc"] > 0.5 and epochs[-1]["test_acc"] > 0.3  # well above chance (0.1)
    assert all(r["nstep"] >= 1 for r in steps)  # mean solver steps from model.last_info
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in lines].count("epoch") == 3 and lines[-1]["kind"] == "final"
    assert lines[-1]["clean"]["accuracy"] == pytest.approx(epochs[-1]["test_acc"], abs=1e-9)
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert len(list_checkpoints(tmp_path / "checkpoints")) == 3  # keep_last
    # OUT/final is a save_pretrained folder that loads back into the same weights.
    reloaded = lz.create_model(f"local-dir:{tmp_path / 'final'}")
    assert _same_weights(reloaded, result.model)
    card = (tmp_path / "final" / "README.md").read_text()
    assert "python tools/train.py test" in card


def test_checkpoint_layout_is_pickle_free(tmp_path: Path) -> None:
    train(tiny_config(epochs=1), tmp_path, progress=False)
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    assert sorted(p.name for p in newest.iterdir()) == [
        "manifest.json", "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json",
    ]
    assert verify_checkpoint(newest) is None
    state = json.loads((newest / "state.json").read_text())
    assert state["position"] == {
        "epoch": 1, "step_in_epoch": 0, "global_step": 4, "steps_per_epoch": 4,
        "permutation_seed": EpochBatchSampler(256, 64, 0).permutation_seed(1),
    }
    rng = load_file(str(newest / "rng.safetensors"))
    assert rng["rank0.torch_cpu"].dtype == torch.uint8
    assert {"python", "numpy"} <= set(state["rng"]["0"])
    assert any(k.endswith(".exp_avg") for k in load_file(str(newest / "optimizer.safetensors")))


def test_corrupt_checkpoint_falls_back_and_resume_is_exact(tmp_path: Path) -> None:
    reference = train(tiny_config(), tmp_path / "ref", progress=False)
    run = tmp_path / "run"
    train(tiny_config(), run, progress=False)
    checkpoints = list_checkpoints(run / "checkpoints")
    newest, previous = checkpoints[-1], checkpoints[-2]
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(CheckpointWarning, match=f"{newest.name}.*truncated.*{previous.name}"):
        path, _, state = load_latest(run / "checkpoints")
    assert path == previous and (run / "checkpoints" / f"corrupt-{newest.name}").is_dir()
    # Resuming from the previous (mid-epoch) checkpoint finishes with the same weights, bit for bit.
    resumed = train(tiny_config(), run, resume=True, progress=False)
    assert resumed.resumed_from == previous
    assert _same_weights(resumed.model, reference.model)
    assert [r for r in resumed.history if r["kind"] == "epoch"][-1]["train_loss"] == pytest.approx(
        [r for r in reference.history if r["kind"] == "epoch"][-1]["train_loss"], rel=1e-12
    )


def test_resume_config_mismatch_names_the_keys(tmp_path: Path) -> None:
    train(tiny_config(epochs=1), tmp_path, progress=False)
    changed = tiny_config(epochs=1, lr=0.01)
    changed["model"]["width"] = 32
    expected = r"model\.width: checkpoint 64, now 32.*train\.lr: checkpoint 0\.001, now 0\.01"
    with pytest.raises(ConfigError, match=expected):
        train(changed, tmp_path, resume=True, progress=False)
    # Keys that only touch bookkeeping may change; a finished run resumes straight to the end.
    result = train(tiny_config(epochs=1, keep_last=5, log_every_steps=1), tmp_path, resume=True, progress=False)
    assert result.final_dir is not None


def test_fresh_run_refuses_a_used_out_dir(tmp_path: Path) -> None:
    train(tiny_config(epochs=1), tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(epochs=1), tmp_path, progress=False)


def test_resume_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(tiny_config(epochs=1), tmp_path, resume=True, progress=False)


def test_unknown_train_key() -> None:
    config = tiny_config()
    config["train"]["epoch"] = 3
    with pytest.raises(ConfigError, match=r"train\.epoch .*Did you mean 'epochs'"):
        train(config, "/nonexistent-out", progress=False)
    with pytest.raises(ConfigError, match=r"train\.objective.*accepts no key 'betta'"):
        train(tiny_config(objective={"type": "trades", "betta": 1}), "/nonexistent-out", progress=False)
    with pytest.raises(ConfigError, match="train.scheduler"):
        TrainConfig.from_dict({"scheduler": "step"})


def test_wrong_data_dir_surfaces_the_dataset_error(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="missing"):
        train(tiny_config(), tmp_path / "out", data_dir=tmp_path, progress=False)
    assert not (tmp_path / "out").exists()  # nothing written before the data is found


def test_unknown_final_eval_suite_fails_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown evaluation suite 'papr'.*Did you mean 'paper'"):
        train(tiny_config(final_eval="papr"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _cli_main() -> Any:
    path = Path(__file__).resolve().parent.parent / "tools" / "train.py"
    spec = importlib.util.spec_from_file_location("train_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _cli_main()
    assert main(["lyadeq_mnist", "--out", str(tmp_path / "a"), "train.epoch=1"]) == 2
    assert "train.epoch" in capsys.readouterr().err
    assert main(["no_such_model", "--out", str(tmp_path / "a")]) == 2
    assert "neither a config file nor a zoo model name" in capsys.readouterr().err
    assert main(["lyadeq_mnist", "--out", str(tmp_path / "a"), "--data-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mnist (train split)") and "download=True" in err


def test_config_differences_fills_defaults() -> None:
    a = tiny_config()
    b = copy.deepcopy(a)
    b["train"]["lr"] = 1e-3  # the default, written explicitly
    b["train"]["keep_last"] = 9  # may change on resume
    assert config_differences(a, b) == []
    b["train"]["seed"] = 1
    assert config_differences(a, b) == [("train.seed", 0, 1)]


def test_sampler_is_deterministic_and_sharded() -> None:
    one = EpochBatchSampler(100, 20, seed=3)
    assert one.steps_per_epoch == 5
    epoch0 = torch.cat([one.global_batch(0, s) for s in range(5)])
    assert torch.equal(epoch0.sort().values, torch.arange(100))
    assert torch.equal(epoch0, torch.cat([EpochBatchSampler(100, 20, seed=3).global_batch(0, s) for s in range(5)]))
    assert not torch.equal(one.permutation(0), one.permutation(1))
    ranks = [EpochBatchSampler(100, 20, seed=3, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([r.local_batch_indices(1, 2) for r in ranks]), one.global_batch(1, 2))
    with pytest.raises(ValueError, match="divisible"):
        EpochBatchSampler(100, 21, seed=0, world_size=2)


def test_augment_is_deterministic_and_rank_independent() -> None:
    x = torch.rand(8, 3, 32, 32)
    full = augment_batch(x, "crop_flip", seed=5, global_size=8, offset=0)
    halves = torch.cat([augment_batch(x[:4], "crop_flip", 5, 8, 0), augment_batch(x[4:], "crop_flip", 5, 8, 4)])
    assert full.shape == x.shape and torch.equal(full, halves)
    assert torch.equal(full, augment_batch(x, "crop_flip", seed=5, global_size=8, offset=0))
    assert not torch.equal(full, x)
    assert torch.equal(augment_batch(x, "none", 5, 8, 0), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flipped = augment_batch(x, "flip", 5, 8, 0)
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(2)) for f, o in zip(flipped, x, strict=True))


def _same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_init_from_starts_from_pretrained_weights(tmp_path: Path) -> None:
    # lr 0: the run must end on exactly the starting weights (BatchNorm running stats still move).
    config = tiny_config(epochs=1, limit_train=64, lr=0.0, init_from="lyadeq_mnist")
    result = train(config, tmp_path / "zoo", progress=False)
    pretrained = lz.create_model("lyadeq_mnist", pretrained=True)
    assert _same_parameters(result.model, pretrained)
    assert not _same_parameters(result.model, lz.create_model("lyadeq_mnist"))
    assert "Fine-tuned: training started from the weights of `lyadeq_mnist`" in (
        tmp_path / "zoo" / "final" / "README.md"
    ).read_text()
    # A save_pretrained folder (here the run's own OUT/final) works the same way.
    folder = str(tmp_path / "zoo" / "final")
    again = train(tiny_config(epochs=1, limit_train=64, lr=0.0, init_from=folder), tmp_path / "dir", progress=False)
    assert _same_parameters(again.model, pretrained)


def test_init_from_bad_source_fails_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"neither a file, a folder, nor a zoo name.*lyadeq_mnist"):
        train(tiny_config(init_from="lyadeq_mnsit"), tmp_path / "typo", progress=False)
    assert not (tmp_path / "typo").exists()
    # Weights of another architecture: the error names a mismatched tensor.
    mismatch = r"lyadeq_cifar10.*tensor 'backbone[.a-z0-9_]*' \(shape .*\) is unexpected"
    with pytest.raises(CheckpointError, match=mismatch):
        train(tiny_config(init_from="lyadeq_cifar10"), tmp_path / "arch", progress=False)
    assert not (tmp_path / "arch").exists()
    with pytest.raises(ConfigError, match="train.init_from must be"):
        TrainConfig.from_dict({"init_from": 3})


def test_library_imports_never_read_the_half_initialised_package_root() -> None:
    # ``from .. import __version__`` in a module that lyadeq_zoo/__init__.py imports (through _builtins) only works
    # while __init__.py happens to bind the name before that import line: the module must import the submodule
    # that defines the name (``from ..version import __version__``), whatever the order of __init__.py's lines.
    package = Path(lz.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        here = parts[:-1]  # the package the module sits in
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = here[: len(here) - node.level + 1] if node.level else ()
            target = (*base, *(node.module.split(".") if node.module else ()))
            if target != ("lyadeq_zoo",):
                continue
            for alias in node.names:
                if not ((package / f"{alias.name}.py").is_file() or (package / alias.name).is_dir()):
                    offenders.append(f"{path.relative_to(package.parent)}:{node.lineno} imports {alias.name!r}")
    assert not offenders, "import these from the submodule that defines them: " + "; ".join(offenders)
