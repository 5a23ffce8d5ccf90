"""torchrun with 2 gloo processes trains like one process with the same global batch.

The model is lyadeq_mnist with the cell's per-sample LayerNorm (``model.cell.norm=layer``) instead of the
paper's BatchNorm: with BatchNorm each rank would normalise with the statistics of its half batch, so
the two runs would differ by design (SyncBatchNorm has no CPU kernel). The solvers run a fixed number
of iterations (``tol=0``) so that no stopping decision depends on which other samples share the batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lyadeq_zoo.training import list_checkpoints, train

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = [
    "data.root=sample", "model.cell.norm=layer", "model.solver.max_iter=8", "model.solver.tol=0",
    "model.backward.solver={type: anderson, max_iter: 8, tol: 0}", "train.epochs=2", "train.batch_size=64",
    "train.limit_train=256", "train.limit_test=64", "train.final_eval=null", "train.checkpoint_every_steps=3",
    "train.log_every_steps=2",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two fresh Python processes importing torch
def test_two_process_gloo_matches_one_process(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(ROOT / "tools" / "train.py"), "lyadeq_mnist", "--out", str(out),
        "--no-progress", *OVERRIDES,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]

    torch.set_num_threads(1)
    single = train("lyadeq_mnist", tmp_path / "single", overrides=OVERRIDES, progress=False)
    ddp = load_file(str(out / "final" / "model.safetensors"))
    expected = single.model.state_dict()
    assert ddp.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    # Rank 0 alone logged: one record per logging step, with metrics over the global batch.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    single_records = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records] == [r["global_step"] for r in single_records]
    for r, s in zip(records, single_records, strict=True):
        for key in ("loss", "acc", "train_loss", "train_acc", "test_acc"):
            if key in s:
                assert abs(r[key] - s[key]) < 1e-3, (key, r, s)
    # Checkpoints hold every rank's RNG state, written once by rank 0.
    newest = list_checkpoints(out / "checkpoints")[-1]
    rng = load_file(str(newest / "rng.safetensors"))
    assert {"rank0.torch_cpu", "rank1.torch_cpu"} <= set(rng)
    assert not torch.equal(rng["rank0.torch_cpu"], rng["rank1.torch_cpu"])
    assert json.loads((newest / "state.json").read_text())["world_size"] == 2
