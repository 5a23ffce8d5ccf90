"""Kill -9 in the middle of a run, resume with --resume: the final weights equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lyadeq_zoo.training import list_checkpoints, train

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
