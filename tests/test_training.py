"""Training loop, checkpoints, config checks: tiny runs of the real lyadeq_mnist on the shipped MNIST sample."""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import lyadeq_zoo as lz
from lyadeq_zoo.config import ConfigError
from lyadeq_zoo.errors import CheckpointError, NonFiniteError, OutputWriteError
from lyadeq_zoo.fileio import sha256_file
from lyadeq_zoo.objectives import unwrap
from lyadeq_zoo.training import (
    CheckpointWarning,
    DistContext,
    EpochBatchSampler,
    TrainConfig,
    augment_batch,
    config_differences,
    list_checkpoints,
    load_latest,
    save_checkpoint,
    train,
)
from lyadeq_zoo.training.checkpoint import FORMAT, MANIFEST, verify_checkpoint
from lyadeq_zoo.training.finite import clip_grads, grad_norm
from lyadeq_zoo.training.model_setup import distribute, sync_batchnorms


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
    # where and how long it trained: summed epoch times, device, threads, the speed options
    run = json.loads((tmp_path / "final" / "config.json").read_text())["training_run"]
    assert run["wall_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in epochs), abs=0.2)
    assert (run["device"], run["threads"], run["amp"], run["resumed"]) == ("cpu", torch.get_num_threads(), False, False)
    assert f"Trained on cpu, {run['threads']} thread" in card and "amp (bf16 backbone) off" in card


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


# -- nothing poisoned is kept ----------------------------------------------------------------------------
class NanAtStep:
    """Objective plugin: cross-entropy, except at its ``step``-th call (the global step of a fresh run).

    ``where="loss"``: the loss is NaN. ``where="grad"``: ``sqrt(0 * p).sum()`` is added for parameter ``param``,
    0 in value but NaN in gradient (d sqrt(u)/du is inf at u = 0, times du/dp = 0): the classic NaN gradient of
    a norm taken at zero, with a finite loss.
    """

    def __init__(self, step: int, where: Literal["loss", "grad"] = "loss", param: str = "") -> None:
        self.step, self.where, self.param, self.calls = step, where, param, 0

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if self.calls == self.step and self.where == "loss":
            loss = loss * float("nan")
        elif self.calls == self.step:
            loss = loss + torch.sqrt(dict(unwrap(model).named_parameters())[self.param] * 0).sum()
        return loss, logits


@pytest.fixture
def nan_objective(restore_registries: Callable[[], None]) -> str:
    lz.register("objective", "nan_at_step")(NanAtStep)
    return "nan_at_step"


def _tensor_bytes(checkpoint: Path) -> dict[str, bytes]:
    return {name: (checkpoint / f"{name}.safetensors").read_bytes() for name in ("model", "optimizer", "rng")}


def test_nan_loss_stops_the_run_at_its_step_and_keeps_the_good_checkpoints(tmp_path: Path, nan_objective: str) -> None:
    # 2 epochs of 4 steps, checkpoints every 2 steps, keep_last 2: a NaN loss at global step 7 (epoch 2, step 3).
    reference = tmp_path / "reference"  # the same run with a NaN that never comes
    train(tiny_config(objective={"type": nan_objective, "step": 10**6}, keep_last=10), reference, progress=False)
    run = tmp_path / "run"
    expected = (
        r"^non-finite value at epoch 2, step 3 of 4 \(global step 7\): the training loss is nan\. The optimizer step "
        r"was not taken and no checkpoint was written; the last good checkpoint is \S*step-000000006 "
        r"\(train\.init_from=\S*step-000000006/model\.safetensors starts a new run from its weights\)\. Lower "
        r"train\.lr, set train\.grad_clip, .* start a new --out \(--resume repeats the same steps exactly\)\.$"
    )
    with pytest.raises(NonFiniteError, match=expected) as caught:
        train(tiny_config(objective={"type": nan_objective, "step": 7}, keep_last=2), run, progress=False)
    assert isinstance(caught.value, FloatingPointError)  # what callers caught before
    kept = list_checkpoints(run / "checkpoints")
    # keep_last rotated nothing out for the step that was refused: the two good checkpoints are there, intact
    # and bit-identical to the run that never met a NaN; nothing was (half-)written after them.
    assert [p.name for p in kept] == ["step-000000004", "step-000000006"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000000004", "step-000000006"]
    for checkpoint in kept:
        assert verify_checkpoint(checkpoint) is None
        assert _tensor_bytes(checkpoint) == _tensor_bytes(reference / "checkpoints" / checkpoint.name)
        weights = load_file(str(checkpoint / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["global_step"] for r in records) == 6
    # The last good weights start a new run, as the message says.
    restart_config = tiny_config(epochs=1, init_from=str(kept[-1] / "model.safetensors"))
    assert train(restart_config, tmp_path / "restart", progress=False).final_dir is not None


def test_nan_gradient_names_the_parameter(tmp_path: Path, nan_objective: str) -> None:
    objective = {"type": nan_objective, "step": 3, "where": "grad", "param": "head.classifier.weight"}
    expected = (
        r"^non-finite value at epoch 1, step 3 of 4 \(global step 3\): the loss is finite \([0-9.]+\) but the "
        r"gradient of parameter 'head\.classifier\.weight' is not finite \(640 NaN, 0 inf of 640 values; 1 of \d+ "
        r"parameters have non-finite gradients: head\.classifier\.weight\)\. The optimizer step was not taken"
    )
    with pytest.raises(NonFiniteError, match=expected):
        train(tiny_config(objective=objective), tmp_path, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-000000002"]


def test_grad_norm_and_clip_are_clip_grad_norm_computed_once() -> None:
    for max_norm in (0.5, 1e6):  # clipped, and left alone
        grads = [torch.randn(5, 3) * 10, torch.randn(7), torch.randn(())]
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        expected = torch.nn.utils.clip_grad_norm_(params, max_norm)
        norm = grad_norm(grads)
        clip_grads(grads, max_norm, norm)
        assert torch.equal(norm, expected)
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, params, strict=True))


def test_save_checkpoint_refuses_non_finite_tensors(tmp_path: Path) -> None:
    state = lz.build_model(tiny_config()).state_dict()
    state["deq.cell.fc1.weight"][0, :3] = float("nan")
    state["deq.cell.norm1.running_var"][1] = float("inf")
    root = tmp_path / "checkpoints"
    expected = (
        r"^refusing to write checkpoint \S*step-000000005: its model tensor 'deq\.cell\.fc1\.weight' is not finite "
        r"\(3 NaN, 0 inf of 4096 values; 1 other model tensor\(s\) too\); the checkpoints already in \S* are kept$"
    )
    with pytest.raises(NonFiniteError, match=expected):
        save_checkpoint(root, 5, {"model": state, "optimizer": {}, "rng": {}}, {})
    optimizer = {"0.exp_avg": torch.tensor([1.0, float("inf")])}
    expected = re.escape("its optimizer tensor '0.exp_avg' is not finite (0 NaN, 1 inf of 2 values)")
    with pytest.raises(NonFiniteError, match=expected):
        save_checkpoint(root, 5, {"model": {}, "optimizer": optimizer, "rng": {}}, {})
    assert not root.exists()  # nothing written, not even a temporary folder


def _poison(checkpoint: Path, tensor: str) -> None:
    """Put a NaN into ``tensor`` of the checkpoint's model.safetensors and update its manifest, as a writer
    without the non-finite guard (an older version) would have left it."""
    weights = load_file(str(checkpoint / "model.safetensors"))
    weights[tensor].view(-1)[0] = float("nan")
    save_file(weights, str(checkpoint / "model.safetensors"), metadata={"format": FORMAT})
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    file = checkpoint / "model.safetensors"
    manifest["files"][file.name] = {"bytes": file.stat().st_size, "sha256": sha256_file(file)}
    (checkpoint / MANIFEST).write_text(json.dumps(manifest))


def test_resume_skips_a_checkpoint_with_non_finite_tensors(tmp_path: Path) -> None:
    reference = train(tiny_config(), tmp_path / "ref", progress=False)
    run = tmp_path / "run"
    train(tiny_config(), run, progress=False)
    previous, newest = list_checkpoints(run / "checkpoints")[-2:]
    _poison(newest, "deq.cell.norm2.running_var")
    assert verify_checkpoint(newest) is None  # intact as files: only the values are poisoned
    expected = re.escape(
        f"checkpoint {newest} is damaged: its model tensor 'deq.cell.norm2.running_var' is not finite (1 NaN, 0 inf "
        f"of 64 values): written by a run that had diverged. Renamed to corrupt-*; resuming from the previous "
        f"checkpoint {previous.name} instead."
    )
    with pytest.warns(CheckpointWarning, match=expected):
        resumed = train(tiny_config(), run, resume=True, progress=False)
    assert resumed.resumed_from == previous and (run / "checkpoints" / f"corrupt-{newest.name}").is_dir()
    assert _same_weights(resumed.model, reference.model)


# -- a full disk, a read-only --out ----------------------------------------------------------------------
CLI_TINY = ["--no-progress", "data.root=sample", "model.solver.max_iter=10", "train.epochs=1", "train.batch_size=64",
            "train.limit_train=128", "train.limit_test=64", "train.final_eval=null"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses Linux's /sys and /dev/full")
def test_read_only_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # sysfs refuses new entries even to root (EPERM; EACCES for other users): a real read-only --out.
    main = _cli_main()
    assert main(["lyadeq_mnist", "--out", "/sys/lyadeq_zoo_test_run", *CLI_TINY]) == 2
    err = capsys.readouterr().err
    assert err in {
        "error: cannot write the config to /sys/lyadeq_zoo_test_run: [Errno 1] Operation not permitted — the folder "
        "is not writable: choose another --out\n",
        "error: cannot write the config to /sys/lyadeq_zoo_test_run: [Errno 13] Permission denied — the folder is "
        "not writable: choose another --out\n",
    }
    # A path under a regular file.
    (tmp_path / "file").write_text("")
    assert main(["lyadeq_mnist", "--out", str(tmp_path / "file" / "run"), *CLI_TINY]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot write the config to {tmp_path / 'file' / 'run'}: [Errno 20] Not a directory — check the "
        "folder or choose another --out\n"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses Linux's /sys and /dev/full")
def test_full_disk_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # /dev/full fails every write with ENOSPC: the run's metrics.jsonl is a link to it.
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
    assert _cli_main()(["lyadeq_mnist", "--out", str(tmp_path), *CLI_TINY]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot write metrics to {tmp_path}: [Errno 28] No space left on device — free space or choose "
        "another --out\n"
    )
    with pytest.raises(OutputWriteError) as caught:
        train(tiny_config(epochs=1), tmp_path, progress=False)
    assert isinstance(caught.value, OSError) and caught.value.__cause__.errno == 28


# -- DDP and BatchNorm ------------------------------------------------------------------------------------
def test_sync_bn_keeps_the_deq_cell_batchnorm_and_refuses_cpu() -> None:
    model = lz.create_model("lyadeq_cifar10")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    assert sync_batchnorms(model) == ["deq.cell.norm1", "deq.cell.norm2"]
    synced = [name for name, m in model.named_modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert synced and all(name.startswith("backbone.") for name in synced)  # resnet20's BatchNorm2d layers
    # Same parameters (the optimizer built before still drives them) and the same state_dict.
    assert [id(p) for p in model.parameters()] == params
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    two_cpu_ranks = DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), initialised_here=False)
    with pytest.raises(ConfigError, match=r"train\.sync_bn: true needs CUDA .* set train\.sync_bn=false"):
        distribute(lz.create_model("lyadeq_mnist"), TrainConfig(sync_bn=True), two_cpu_ranks)
