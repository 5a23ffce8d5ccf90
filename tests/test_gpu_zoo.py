"""lyadeq-gpu-zoo (:mod:`lyadeq_zoo.gpu_zoo`) on CPU with tiny settings: carry batches under their limit rebuild
the exact files, two runs train at the same time and both finish, collect stays within $OUT's limits, and a
killed run restored from its collected state resumes to the weights of a run that never stopped. Also the
precision the pipeline trains with: ``train.amp`` autocasts the backbone alone, on CPU too.

The data is a fake offline folder in the real on-disk layout (MNIST IDX files, gzip), made from the shipped
real-image samples.
"""

from __future__ import annotations

import filecmp
import gzip
import json
import math
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lyadeq_zoo as lz
from lyadeq_zoo.config import ConfigError
from lyadeq_zoo.data.readers import MNIST_FILES
from lyadeq_zoo.data.samples import load_sample
from lyadeq_zoo.gpu_zoo import carry, jobs
from lyadeq_zoo.gpu_zoo.collect import SUMMARY, collect, read_summary, restore
from lyadeq_zoo.gpu_zoo.limits import OutLimits, format_size, parse_size
from lyadeq_zoo.gpu_zoo.runs import run_progress
from lyadeq_zoo.gpu_zoo.schedule import ZooOptions, cycle, launch_training
from lyadeq_zoo.gpu_zoo.staging import StageReport, stage
from lyadeq_zoo.gpu_zoo.workdir import WorkDir
from lyadeq_zoo.training import list_checkpoints, train
from lyadeq_zoo.training.checkpoint import verify_checkpoint
from lyadeq_zoo.training.model_setup import backbone_autocast

ROOT = Path(__file__).resolve().parent.parent
# Tiny runs of the MNIST zoo models: 8 steps of 32 images per epoch, a short solver.
TINY = ["train.limit_train=256", "train.batch_size=32", "train.limit_test=64", "train.log_every_steps=2",
        "model.solver.max_iter=10"]


def _idx(array: np.ndarray) -> bytes:
    """``array`` (uint8) as an IDX file: two zero bytes, type 0x08, the dimension count, big-endian dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ROOT/mnist/*-ubyte.gz``: the shipped MNIST samples (1,000 train and 1,000 test digits) as IDX files."""
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    for split in ("train", "test"):
        images, labels = load_sample("mnist", split)
        image_file, label_file = MNIST_FILES[split]
        (root / "mnist" / f"{image_file}.gz").write_bytes(gzip.compress(_idx(images), mtime=0))
        (root / "mnist" / f"{label_file}.gz").write_bytes(gzip.compress(_idx(labels.astype(np.uint8)), mtime=0))
    return root


def _stage_calls(carry_dir: Path, work: WorkDir, order: list[int], tmp: Path) -> list[StageReport]:
    """Stage the batches one call at a time in ``order``: each call's carry folder holds that batch alone."""
    reports = []
    for k in order:
        call = tmp / f"call-{k}"
        shutil.copytree(carry_dir / f"batch-{k}", call / f"batch-{k}")
        reports.append(stage(call, work))
        assert not (call / f"batch-{k}").exists(), "a staged batch is moved out of the repository copy"
    return reports


# -- carry plan and staging ------------------------------------------------------------------------------
def test_sizes_read_and_print_like_people_write_them() -> None:
    assert parse_size("60MiB") == 60 << 20 and parse_size("500k") == 500_000 and parse_size(1234) == 1234
    assert format_size(46 << 20) == "46.0 MiB" and format_size(512) == "512 B"
    with pytest.raises(ConfigError, match="not a number of bytes"):
        parse_size("sixty")


def test_batches_stay_under_their_limit_and_stage_rebuilds_identical_files(fake_data: Path, tmp_path: Path) -> None:
    items = carry.data_items(fake_data, ["mnist"])
    total = sum(item.bytes for item in items)
    budget = 70_000  # forces files to be cut across batches
    plan = carry.write_carry(items, tmp_path / "carry", budget)
    assert len(plan["batches"]) == math.ceil(total / budget)
    assert any(len(f["pieces"]) > 1 for f in plan["files"]), "some file crosses a batch boundary"
    for entry in plan["batches"]:
        folder = tmp_path / "carry" / entry["name"]
        pieces = [p for p in folder.iterdir() if p.name != carry.PLAN_NAME]
        assert sum(p.stat().st_size for p in pieces) == entry["bytes"] <= budget
        assert (folder / carry.PLAN_NAME).stat().st_size <= carry.PLAN_RESERVE

    work = WorkDir(tmp_path / "work")
    order = list(range(len(plan["batches"])))[::-1]  # the last batch first: pieces wait for their file
    reports = _stage_calls(tmp_path / "carry", work, order, tmp_path)
    for report, done in zip(reports[:-1], range(1, len(order)), strict=True):
        assert not report.complete and report.batches_needed == [f"batch-{k}" for k in sorted(order[done:])]
    assert reports[-1].complete and not reports[-1].damaged
    for item in items:
        assert filecmp.cmp(item.source, work.root / item.dest, shallow=False), item.dest
    left = [p.name for p in work.pieces.rglob("*") if p.is_file()]
    assert left == [carry.PLAN_NAME], "pieces are deleted once their file is rebuilt"
    # The readers read the staged folder as they read the original.
    staged = lz.get_component("dataset", "mnist")(split="train", root=str(work.data))
    original = lz.get_component("dataset", "mnist")(split="train", root=str(fake_data))
    assert torch.equal(staged.images, original.images) and torch.equal(staged.labels, original.labels)
    assert carry.missing_files(work.data, ["mnist"]) == []


def test_a_damaged_piece_is_named_and_its_batch_asked_for_again(fake_data: Path, tmp_path: Path) -> None:
    items = carry.data_items(fake_data, ["mnist"])
    carry.write_carry(items, tmp_path / "carry", 200_000)
    shutil.copytree(tmp_path / "carry", tmp_path / "call-1")
    piece = next(p for p in (tmp_path / "call-1" / "batch-0").iterdir() if p.name != carry.PLAN_NAME)
    data = bytearray(piece.read_bytes())
    data[len(data) // 2] ^= 0xFF
    piece.write_bytes(bytes(data))
    work = WorkDir(tmp_path / "work")
    report = stage(tmp_path / "call-1", work)
    assert not report.complete and any(piece.name in problem for problem in report.damaged)
    assert report.batches_needed == ["batch-0"]
    # Carried again intact, the batch completes the plan.
    shutil.copytree(tmp_path / "carry" / "batch-0", tmp_path / "call-2" / "batch-0")
    assert stage(tmp_path / "call-2", work).complete


def test_the_plan_counts_the_tree_and_needs_an_ignored_folder(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("/.gpu_zoo/\n")
    (repo / "tracked.bin").write_bytes(b"x" * 1000)
    (repo / ".gpu_zoo").mkdir()
    (repo / ".gpu_zoo" / "big.bin").write_bytes(b"y" * 50_000)  # ignored: does not travel
    assert carry.tree_bytes(repo) == 1000 + len("/.gpu_zoo/\n")
    carry.check_ignored(repo, repo / ".gpu_zoo" / "carry")
    with pytest.raises(ConfigError, match="not ignored by git"):
        carry.check_ignored(repo, repo / "carry")
    assert carry.batch_budget(60 << 20, 14 << 20) == (46 << 20) - carry.PLAN_RESERVE
    with pytest.raises(ConfigError, match="nothing is left for data"):
        carry.batch_budget(10 << 20, 10 << 20)


# -- collect and restore ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_and_cut_runs(fake_data: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkDir:
    """A work folder with a finished run ``deq_mnist`` (2 epochs of 4 steps, a checkpoint every 2 steps) and a
    copy of it, ``deq_mnist_cut``, cut at its first epoch's end (final folder and later checkpoints removed, as
    a kill would leave it)."""
    work = WorkDir(tmp_path_factory.mktemp("work"))
    overrides = [*TINY, "train.limit_train=128", "train.epochs=2", "train.final_eval=null",
                 "train.checkpoint_every_steps=2", "train.keep_last=10"]
    train("deq_mnist", work.run("deq_mnist"), data_dir=fake_data, overrides=overrides, progress=False)
    cut = work.run("deq_mnist_cut")
    shutil.copytree(work.run("deq_mnist"), cut)
    shutil.rmtree(cut / "final")
    for checkpoint in list_checkpoints(cut / "checkpoints")[2:]:
        shutil.rmtree(checkpoint)
    return work


def test_collect_fits_out_limits_and_restore_gives_back_resumable_runs(
    finished_and_cut_runs: WorkDir, tmp_path: Path
) -> None:
    work, names = finished_and_cut_runs, ["deq_mnist", "deq_mnist_cut"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "log.txt").write_text("a file the command wrote itself\n")  # counts against the limits
    limits = OutLimits(files=6, file_bytes=400_000, total_bytes=2_000_000)
    summary = collect(work, tmp_path / "out", names, limits=limits)
    files = [p for p in (tmp_path / "out").iterdir()]
    assert len(files) <= limits.files and sum(p.stat().st_size for p in files) <= limits.total_bytes
    assert all(p.stat().st_size <= limits.file_bytes for p in files)
    assert (tmp_path / "out" / "log.txt").is_file() and (tmp_path / "out" / SUMMARY).is_file()
    assert any(len(a["parts"]) > 1 for a in summary["archives"]), "an archive larger than one file is split"
    assert summary["runs"]["deq_mnist"]["finished"] and summary["runs"]["deq_mnist"]["epochs_done"] == 2
    assert not summary["runs"]["deq_mnist_cut"]["finished"] and summary["runs"]["deq_mnist_cut"]["global_step"] == 4

    fresh = WorkDir(tmp_path / "fresh")
    lines = restore(tmp_path / "out", fresh)
    assert len(lines) == 2 and all("restored" in line for line in lines), lines
    checkpoint = list_checkpoints(fresh.run("deq_mnist_cut") / "checkpoints")
    assert [c.name for c in checkpoint] == ["step-000000004"] and verify_checkpoint(checkpoint[0]) is None
    assert filecmp.cmp(work.run("deq_mnist") / "final" / "model.safetensors",
                       fresh.run("deq_mnist") / "final" / "model.safetensors", shallow=False)
    assert run_progress(fresh.run("deq_mnist")).finished
    # Restoring again changes nothing: the local runs got as far.
    assert all("left as it is" in line for line in restore(tmp_path / "out", fresh))


def test_collect_combines_runs_when_files_run_short_and_refuses_what_cannot_fit(
    finished_and_cut_runs: WorkDir, tmp_path: Path
) -> None:
    work, names = finished_and_cut_runs, ["deq_mnist", "deq_mnist_cut"]
    summary = collect(work, tmp_path / "out", names, limits=OutLimits(files=2, file_bytes=4 << 20,
                                                                        total_bytes=8 << 20))
    assert [a["name"] for a in summary["archives"]] == ["runs.tgz"] and len(list((tmp_path / "out").iterdir())) == 2
    assert len(restore(tmp_path / "out", WorkDir(tmp_path / "fresh"))) == 2
    with pytest.raises(ConfigError, match="does not fit"):
        collect(work, tmp_path / "small", names, limits=OutLimits(files=2, file_bytes=1000, total_bytes=2000))


def test_restore_refuses_a_damaged_archive_and_takes_one_newer_than_the_summary(
    finished_and_cut_runs: WorkDir, tmp_path: Path
) -> None:
    collect(finished_and_cut_runs, tmp_path / "out", ["deq_mnist"])
    archive = tmp_path / "out" / read_summary(tmp_path / "out")["archives"][0]["parts"][0]["file"]
    archive.write_bytes(archive.read_bytes()[:-10])  # truncated: gzip's end is gone
    lines = restore(tmp_path / "out", WorkDir(tmp_path / "fresh"))
    assert lines == [f"restore: run-deq_mnist.tgz skipped ({archive.name} does not match its size/sha256 in "
                     f"{SUMMARY})"]
    assert not (tmp_path / "fresh" / "runs" / "deq_mnist").exists()
    # A collect killed after replacing the archive but before its summary: the summary describes the archive
    # before; the intact newer archive is taken.
    collect(finished_and_cut_runs, tmp_path / "newer", ["deq_mnist_cut"])
    summary = read_summary(tmp_path / "newer")
    summary["archives"][0]["parts"][0]["sha256"] = "0" * 64
    (tmp_path / "newer" / SUMMARY).write_text(json.dumps(summary))
    lines = restore(tmp_path / "newer", WorkDir(tmp_path / "fresh2"))
    assert lines[0].endswith("differs from summary.json (newer) but decodes whole; taken"), lines
    assert "restored (checkpoint at step 4)" in lines[1]


# -- precision ---------------------------------------------------------------------------------------------
def _conv_config() -> dict:
    """A small conv model on CIFAR geometry: a one-stage resnet20 backbone (BatchNorm, 4 channels), width 8."""
    return {
        "model": {
            "type": "deq_classifier", "num_classes": 10, "in_chans": 3, "img_size": 32, "width": 8,
            "backbone": {"type": "resnet20", "widths": [4], "blocks": 1},
            "cell": {"type": "paper_mlp", "norm": "batch"}, "solver": {"type": "anderson", "max_iter": 20, "tol": 1e-4},
            "backward": {"type": "ift"}, "lyapunov": {"type": "icnn", "hidden": [8, 8]}, "head": {"type": "linear"},
            "head_input": "corrected",
        },
        "data": {"type": "cifar10", "root": "sample"},
    }


def test_amp_autocasts_the_backbone_alone_and_channels_last_reaches_it() -> None:
    model = lz.build_model(_conv_config()).to(memory_format=torch.channels_last).train()
    seen: dict[str, object] = {}
    model.backbone.stem[0].register_forward_pre_hook(
        lambda m, args: seen.update(stem_in=args[0].is_contiguous(memory_format=torch.channels_last)))
    model.backbone.stem[0].register_forward_hook(lambda m, args, out: seen.update(conv=out.dtype))
    model.backbone.register_forward_hook(lambda m, args, out: seen.update(backbone=out.dtype))
    model.deq.register_forward_pre_hook(lambda m, args: seen.update(deq_in=args[0].dtype))
    model.lyapunov.register_forward_pre_hook(lambda m, args: seen.update(lyapunov=torch.is_autocast_enabled("cpu")))
    x = torch.rand(6, 3, 32, 32)
    with backbone_autocast(model, amp=True, channels_last=True):
        logits = model(x)
        torch.nn.functional.cross_entropy(logits, torch.arange(6)).backward()
    assert seen["stem_in"] is True and seen["conv"] == torch.bfloat16
    # The hooks ran before backbone_autocast's own, which casts back: the DEQ gets float32.
    assert seen["backbone"] == torch.bfloat16 and seen["deq_in"] == torch.float32
    assert logits.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.backbone.parameters())
    hooks = len(model.backbone._forward_pre_hooks) + len(model.backbone._forward_hooks)
    assert hooks == 1, "backbone_autocast removes its hooks on exit (the test's own one stays)"
    with backbone_autocast(model, amp=False, channels_last=False):
        assert model(x).dtype == torch.float32 and seen["conv"] == torch.float32


def test_cpu_training_with_amp_and_channels_last_is_recorded_and_learns_like_fp32(
    fake_data: Path, tmp_path: Path
) -> None:
    overrides = [*TINY, "train.epochs=1", "train.final_eval=null", "train.checkpoint_every_steps=0"]
    fp32 = train("lyadeq_mnist", tmp_path / "fp32", data_dir=fake_data, overrides=overrides, progress=False)
    fast = train("lyadeq_mnist", tmp_path / "amp", data_dir=fake_data, progress=False,
                 overrides=[*overrides, "train.amp=true", "train.channels_last=true"])
    losses = [[r["loss"] for r in result.history if r["kind"] == "train"] for result in (fp32, fast)]
    assert abs(losses[0][0] - losses[1][0]) < 0.02 and abs(losses[0][-1] - losses[1][-1]) < 0.1, losses
    card = (tmp_path / "amp" / "final" / "README.md").read_text()
    assert '"amp": true' in card and '"channels_last": true' in card  # the card's resolved config


def test_amp_needs_a_backbone(restore_registries: Callable[[], None], tmp_path: Path) -> None:
    class NoBackbone(torch.nn.Module):
        def __init__(self, **_: object) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    lz.register("model", "no_backbone_net")(NoBackbone)
    config = {"model": {"type": "no_backbone_net"}, "data": {"type": "mnist", "root": "sample"},
              "train": {"amp": True, "epochs": 1, "limit_train": 32, "batch_size": 32, "final_eval": None}}
    with pytest.raises(ConfigError, match="has no `backbone` attribute"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists(), "refused before anything was written"


# -- jobs, scheduling, end to end ------------------------------------------------------------------------
@pytest.mark.slow  # a fresh Python process importing torch
def test_a_failing_job_reports_its_exit_and_log(tmp_path: Path) -> None:
    work = WorkDir(tmp_path / "work")
    jobs.launch(work, "nothing.train", ["train", "no_such_model", "--out", str(tmp_path / "x")])
    deadline = time.monotonic() + 120
    while jobs.job_state(work, "nothing.train").active and time.monotonic() < deadline:
        time.sleep(0.1)
    state = jobs.job_state(work, "nothing.train")
    assert state.state == "failed" and state.rc == 2 and state.started <= state.ended
    assert "neither a config file nor a zoo model name" in jobs.log_tail(work, "nothing.train")


def _options(names: list[str], **kwargs: object) -> ZooOptions:
    return ZooOptions(
        names=names, device="cpu", threads=1, checkpoint_every_steps=1, poll_s=0.1, collect_every_s=1.0,
        overrides=[*TINY, "train.epochs=3"], eval_suite="paper", eval_limit=20, eval_batch_size=20,
        budget_s=400, reserve_s=5, limits=OutLimits(), **kwargs,
    )


@pytest.mark.slow  # four training processes, two evaluations (~1 min on one thread each)
def test_two_runs_train_at_once_and_a_killed_run_resumes_from_collected_state(
    fake_data: Path, tmp_path: Path
) -> None:
    names = ["deq_mnist", "lyadeq_mnist"]
    items = carry.data_items(fake_data, ["mnist"])
    carry.write_carry(items, tmp_path / "carry", 150_000)
    work = WorkDir(tmp_path / "work")
    assert cycle(tmp_path / "carry", work, tmp_path / "out", _options(names)) == 0

    runs = {name: json.loads(jobs.run_record(work, f"{name}.train").read_text()) for name in names}
    assert all(r["rc"] == 0 for r in runs.values()), runs
    latest_start, first_end = max(r["started"] for r in runs.values()), min(r["ended"] for r in runs.values())
    assert latest_start < first_end, f"the runs did not overlap in time: {runs}"
    summary = read_summary(tmp_path / "out")
    for name in names:
        row = summary["runs"][name]
        assert row["finished"] and row["epochs_done"] == row["epochs_planned"] == 3 and row["state"] == "evaluated"
        assert row["evals"]["paper"]["n"] == 20
    out_files = list((tmp_path / "out").iterdir())
    assert len(out_files) <= 8 and all(p.stat().st_size <= 16 << 20 for p in out_files)

    # The same run, killed once it has checkpoints, collected, restored elsewhere and resumed there.
    killed = WorkDir(tmp_path / "killed")
    shutil.copytree(work.data, killed.data)
    opts = _options(["lyadeq_mnist"])
    launch_training(killed, opts)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list_checkpoints(killed.run("lyadeq_mnist") / "checkpoints")) < 3:
        assert jobs.job_state(killed, "lyadeq_mnist.train").active, jobs.log_tail(killed, "lyadeq_mnist.train")
        time.sleep(0.02)
    assert jobs.stop(killed, "lyadeq_mnist.train", grace_s=0).state == "died"
    assert not (killed.run("lyadeq_mnist") / "final").exists(), "killed before it finished"
    collect(killed, tmp_path / "out-killed", ["lyadeq_mnist"])

    resumed = WorkDir(tmp_path / "resumed")
    shutil.copytree(tmp_path / "out-killed", resumed.state)  # as a carried state folder, staged
    shutil.copytree(work.data, resumed.data)
    assert cycle(tmp_path / "no-carry", resumed, tmp_path / "out-resumed", opts) == 0
    assert "--resume" in json.loads(jobs.launch_record(resumed, "lyadeq_mnist.train").read_text())["argv"]
    weights = load_file(str(resumed.run("lyadeq_mnist") / "final" / "model.safetensors"))
    expected = load_file(str(work.run("lyadeq_mnist") / "final" / "model.safetensors"))
    assert weights.keys() == expected.keys()
    assert [k for k in expected if not torch.equal(weights[k], expected[k])] == []
