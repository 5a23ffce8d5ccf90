"""Resume: kill -9 in the middle of a run and --resume ends with an uninterrupted run's weights; --resume on other
training data is refused (the same data under another path is fine); a full disk keeps the good checkpoints."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lyadeq_zoo.config import ConfigError
from lyadeq_zoo.training import CheckpointWarning, list_checkpoints, train
from lyadeq_zoo.training.checkpoint import load_checkpoint, save_checkpoint
from lyadeq_zoo.training.data import fingerprint, fingerprint_differences, load_split

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = [
    "data.root=sample", "model.solver.max_iter=10", "train.epochs=3", "train.batch_size=64",
    "train.limit_train=384", "train.limit_test=64", "train.final_eval=null", "train.checkpoint_every_steps=2",
    "train.log_every_steps=2", "train.keep_last=2",
]


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "tools" / "train.py"), "lyadeq_mnist", "--out", str(out), "--no-progress",
            *extra, *OVERRIDES]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _records(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "epoch_seconds")} for r in lines]


@pytest.mark.slow  # two fresh Python processes importing torch
def test_sigkill_then_resume_is_bit_identical(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    killed_at = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            # Kill right after the first mid-epoch checkpoint of the second epoch is complete.
            done = [p for p in list_checkpoints(out / "checkpoints") if (p / "manifest.json").exists()]
            if any(int(p.name.split("-")[1]) > 6 for p in done):
                proc.send_signal(signal.SIGKILL)
                killed_at = max(p.name for p in done)
                break
            time.sleep(0.005)
    finally:
        proc.wait(timeout=60)
    assert killed_at is not None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final").exists()

    resumed = subprocess.run(_cli(out, "--resume"), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    torch.set_num_threads(1)
    reference = train("lyadeq_mnist", tmp_path / "reference", overrides=OVERRIDES, progress=False)
    weights = load_file(str(out / "final" / "model.safetensors"))
    expected = reference.model.state_dict()
    assert weights.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(weights[k], expected[k])]
    assert not different, f"resumed weights differ from the uninterrupted run in {different}"
    # metrics.jsonl was cut back to the checkpoint, so its records match too (timings aside).
    assert _records(out / "metrics.jsonl") == _records(tmp_path / "reference" / "metrics.jsonl")


# -- the same data --------------------------------------------------------------------------------------
SHORT = [o if o != "train.epochs=3" else "train.epochs=1" for o in OVERRIDES]  # 1 epoch: 6 steps of 64 images


@pytest.fixture
def shared_mnist(shared_data: Path) -> Path:
    """The full MNIST of the shared data folder beside the checkout (fails, not skips, when it is missing)."""
    if (shared_data / "mnist").is_dir():
        return shared_data
    reason = f"the shared data sets are not at {shared_data} (set LYADEQ_SHARED_DATA to their location)"
    if os.environ.get("LYADEQ_ALLOW_NO_SHARED_DATA") == "1":
        pytest.skip(reason)
    pytest.fail(reason + "; set LYADEQ_ALLOW_NO_SHARED_DATA=1 to skip these tests instead")


def test_fingerprint_is_of_content_and_names_what_differs() -> None:
    config = {"data": {"type": "mnist", "root": "sample"}}
    small = load_split(config, "train", None, 100)
    large = load_split(config, "train", None, 200)
    a = fingerprint(small[0], small[1], "mnist", "train", "sample")
    b = fingerprint(large[0], large[1], "mnist", "train", "sample")
    assert a["count"] == 100 and a["shape"] == [1, 28, 28] and re.fullmatch("[0-9a-f]{64}", a["sha256"])
    assert fingerprint_differences(a, b) == [("count", 100, 200), ("sha256", a["sha256"], b["sha256"])]
    # Another path, the same content: no difference. One changed label: a different hash.
    assert fingerprint_differences(a, fingerprint(small[0].clone(), small[1], "mnist", "train", "/elsewhere")) == []
    labels = small[1].clone()
    labels[0] = (labels[0] + 1) % 10
    assert fingerprint_differences(a, fingerprint(small[0], labels, "mnist", "train", "sample"))[0][0] == "sha256"


def test_checkpoint_without_fingerprint_resumes_with_a_warning(tmp_path: Path) -> None:
    train("lyadeq_mnist", tmp_path, overrides=SHORT, progress=False)
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    tensors, state = load_checkpoint(newest)
    assert state["data"]["train"]["count"] == 384
    del state["data"]  # as written before fingerprints existed
    shutil.rmtree(newest)
    save_checkpoint(tmp_path / "checkpoints", state["position"]["global_step"], tensors, state)
    with pytest.warns(CheckpointWarning, match="records no fingerprint of its training data .* could not be verified"):
        result = train("lyadeq_mnist", tmp_path, resume=True, overrides=SHORT, progress=False)
    assert result.resumed_from == newest


def test_resume_refuses_other_data_and_accepts_a_copy(tmp_path: Path, shared_mnist: Path) -> None:
    out = tmp_path / "run"
    train("lyadeq_mnist", out, data_dir=shared_mnist, overrides=SHORT, progress=False)
    saved = json.loads((out / "data.json").read_text())["train"]
    assert saved["count"] == 384 and saved["root"] == str(shared_mnist)
    sample = fingerprint(*load_split({"data": {"type": "mnist"}}, "train", "sample", 384)[:2], "mnist", "train", "x")
    expected = re.escape(
        f"cannot resume from {list_checkpoints(out / 'checkpoints')[-1]}: the training data differs from the data "
        f"the run was trained on: content sha256: checkpoint {saved['sha256']!r}, now {sample['sha256']!r}. The "
        f"checkpoint's: mnist train split, 384 images read from {str(shared_mnist)!r}; now: 384 images read from "
        f"'sample'. Resume with the original data (--data-dir {shared_mnist}), or start a new run in another --out "
        "directory."
    )
    with pytest.raises(ConfigError, match=f"^{expected}$"):
        train("lyadeq_mnist", out, data_dir="sample", resume=True, overrides=SHORT, progress=False)
    # The same files under another path: the content is the same, so the run resumes.
    copy = tmp_path / "copy"
    shutil.copytree(shared_mnist / "mnist", copy / "mnist")
    resumed = train("lyadeq_mnist", out, data_dir=copy, resume=True, overrides=SHORT, progress=False)
    assert resumed.resumed_from == list_checkpoints(out / "checkpoints")[-1]
    assert json.loads((out / "data.json").read_text())["train"] == {**saved, "root": str(copy)}


# -- a full disk ------------------------------------------------------------------------------------------
def _private_mounts_work() -> bool:
    """Whether this machine lets us mount a tmpfs in a private user + mount namespace (no privileges needed)."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.slow  # a fresh Python process importing torch
def test_full_disk_stops_with_one_line_and_keeps_the_good_checkpoint(tmp_path: Path) -> None:
    if not _private_mounts_work():
        pytest.skip("needs unshare --user --map-root-user --mount (to mount a small tmpfs without privileges)")
    # A real 1.5 MB file system (tmpfs in a private mount namespace): the config, data.json, the metrics and one
    # checkpoint (~0.95 MB) fit, the second checkpoint does not. The check runs inside the namespace too.
    disk, report = tmp_path / "disk", tmp_path / "report.json"
    disk.mkdir()
    check = (
        "import json, sys; from pathlib import Path; from lyadeq_zoo.training.checkpoint import verify_checkpoint; "
        f"root = Path({str(disk / 'run' / 'checkpoints')!r}); "
        "json.dump({'entries': sorted(p.name for p in root.iterdir()), "
        "'intact': [verify_checkpoint(p) is None for p in sorted(root.iterdir())]}, open(sys.argv[1], 'w'))"
    )
    train_cmd = [sys.executable, str(ROOT / "tools" / "train.py"), "lyadeq_mnist", "--out", str(disk / "run"),
                 "--no-progress", *SHORT, "train.checkpoint_every_steps=3"]
    script = (
        f"mount -t tmpfs -o size=1500k tmpfs {disk} && "
        f"{shlex.join(train_cmd)} 2>{tmp_path / 'stderr.txt'}; echo $? > {tmp_path / 'rc.txt'}; "
        f"{shlex.join([sys.executable, '-c', check, str(report)])}"
    )
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "rc.txt").read_text().strip() == "2"
    assert (tmp_path / "stderr.txt").read_text().splitlines()[-1] == (
        f"error: cannot write checkpoints to {disk / 'run'}: [Errno 28] No space left on device — free space or "
        "choose another --out"
    )
    # The step-3 checkpoint is intact; the step-6 one left nothing behind (no partial .tmp folder).
    assert json.loads(report.read_text()) == {"entries": ["step-000000003"], "intact": [True]}
