"""``lyadeq-eval --out DIR`` as a job (lyadeq_zoo/evaluation/job.py): the same numbers as one ``lz.evaluate`` call,
whether it ran in one go, was killed (``kill -9``) and resumed, or was sharded over two gloo processes by torchrun;
a resume with other settings is refused by name."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import lyadeq_zoo as lz
from lyadeq_zoo.cli.eval import main as eval_main
from lyadeq_zoo.evaluation import evaluation_data
from lyadeq_zoo.evaluation.job import read_records, restore_run_info

REPO = Path(__file__).resolve().parent.parent
TINY_SUITE = "attacks:\n  - {type: fgsm, eps: [2/255, 0.3]}\n  - {type: pgd, steps: 2, eps: [0.3]}\n"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def numbers(result: dict[str, Any]) -> dict[str, Any]:
    """A result without what legitimately differs between runs: wall-clock seconds and the job bookkeeping."""
    out = {k: v for k, v in result.items() if k not in ("timing", "job")}
    out["attacks"] = [
        {**a, "results": [{k: v for k, v in i.items() if k != "seconds"} for i in a["results"]]}
        for a in result["attacks"]
    ]
    return out


def cli(*args: str) -> list[str]:
    return [*args, "--no-progress", "--threads", "1", "--device", "cpu"]


@pytest.fixture()
def tiny_suite(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SUITE)
    return path


def test_job_equals_one_evaluate_call(tmp_path: Path, tiny_suite: Path) -> None:
    """Chunks of 8 in batches of 4 seed every batch by its place in the whole run: evaluate(batch_size=4)."""
    out = tmp_path / "job"
    code = eval_main(cli("lyadeq_mnist", "--limit", "12", "--suite", str(tiny_suite), "--batch-size", "4",
                         "--chunk-size", "8", "--out", str(out)))
    assert code == 0
    job = json.loads((out / "result.json").read_text())
    assert job["job"] == {"chunks": 2, "chunk_size": 8}
    assert sorted(read_records(out)) == [0, 1]
    model = lz.create_model("lyadeq_mnist", pretrained=True)
    data, record = evaluation_data(model, "mnist", limit=12)
    direct = lz.evaluate(model, data, str(tiny_suite), device="cpu", progress=False, limit=12, batch_size=4)
    assert numbers(job) == numbers({**direct, "model": job["model"], "data": record})
    assert [c["name"] for c in job["checks"]][:2] == ["input_gradients", "large_eps"]
    assert "solver_converged" in job["worst_case"][0]  # the stability-under-attack statistics survive the merge
    assert job["clean"]["solver"]["mean_steps"] >= 1  # so do the clean inputs' (equal to one call's, above)


def test_records_from_before_the_clean_solver_statistics_merge_without_them(tmp_path: Path, tiny_suite: Path) -> None:
    """A job resumed over chunk records written by an older version (no ``clean_solver`` per image) leaves the
    summary out instead of computing it on a part of the images."""
    out = tmp_path / "job"
    args = cli("lyadeq_mnist", "--limit", "8", "--suite", str(tiny_suite), "--batch-size", "4", "--chunk-size", "4",
               "--out", str(out))
    assert eval_main(args) == 0
    assert "solver" in json.loads((out / "result.json").read_text())["clean"]
    (records,) = out.glob("records-rank*.jsonl")
    first, second = records.read_text().splitlines()
    old = json.loads(first)
    for image in old["images"]:
        del image["clean_solver"]
    records.write_text(json.dumps(old) + "\n" + second + "\n")
    assert eval_main([*args, "--resume"]) == 0
    merged = json.loads((out / "result.json").read_text())
    assert "solver" not in merged["clean"] and merged["clean"]["n"] == 8


def test_resume_redoes_only_a_half_written_chunk(tmp_path: Path, tiny_suite: Path) -> None:
    args = cli("lyadeq_mnist", "--limit", "12", "--suite", str(tiny_suite), "--batch-size", "4", "--out",
               str(tmp_path / "job"))
    assert eval_main(args) == 0
    full = json.loads((tmp_path / "job" / "result.json").read_text())
    records = tmp_path / "job" / "records-rank0.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    records.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # a kill in the middle of the append
    (tmp_path / "job" / "result.json").unlink()
    assert sorted(read_records(tmp_path / "job")) == [0, 1]
    assert eval_main([*args, "--resume"]) == 0
    assert len(records.read_text().splitlines()) == 3  # chunk 2 redone once; 0 and 1 not attacked again
    assert numbers(json.loads((tmp_path / "job" / "result.json").read_text())) == numbers(full)


def test_resume_with_other_settings_is_refused(
    tmp_path: Path, tiny_suite: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "job")
    base = ["lyadeq_mnist", "--limit", "8", "--suite", str(tiny_suite), "--batch-size", "4"]
    assert eval_main(cli(*base, "--out", out)) == 0
    capsys.readouterr()
    assert eval_main(cli(*base, "--out", out, "--seed", "1", "--resume")) == 2
    assert "seed (was 0, now 1)" in capsys.readouterr().err
    assert eval_main(cli(*base[:-1], "8", "--out", out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "batch_size (was 4, now 8)" in err and "chunk_size (was 4, now 8)" in err
    assert eval_main(cli("lyadeq_mnist", "--limit", "8", "--batch-size", "4", "--out", out, "--resume")) == 2
    assert "suite (was" in capsys.readouterr().err  # the paper suite instead of the tiny one
    assert eval_main(cli(*base, "--out", out)) == 2  # an existing job without --resume
    assert "pass --resume" in capsys.readouterr().err
    assert eval_main(cli(*base, "--out", out, "--resume")) == 0  # the same settings resume (nothing left to do)


def test_resume_and_chunk_size_need_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        eval_main(cli("lyadeq_mnist", "--resume"))
    assert exited.value.code == 2 and "need --out DIR" in capsys.readouterr().err


def test_chunk_size_must_be_a_multiple_of_the_batch_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = eval_main(cli("lyadeq_mnist", "--limit", "8", "--batch-size", "4", "--chunk-size", "6", "--out",
                         str(tmp_path / "job")))
    assert code == 2
    assert "multiple of the batch size 4" in capsys.readouterr().err


PAPER_60 = ["lyadeq_mnist", "--suite", "paper", "--limit", "60", "--batch-size", "10"]


def _tool(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "tools" / "eval.py"), *cli(*args)]


@pytest.mark.slow
def test_kill_9_and_resume_gives_the_uninterrupted_numbers(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(_tool(*PAPER_60, "--out", str(whole)), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(_tool(*PAPER_60, "--out", str(killed)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    records = killed / "records-rank0.jsonl"
    deadline = time.monotonic() + 300
    while not (records.exists() and records.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(read_records(killed))
    assert 1 <= finished < 6 and not (killed / "result.json").exists()  # killed mid-run, after the first chunk
    resumed = subprocess.run(_tool(*PAPER_60, "--out", str(killed), "--resume"), env=ENV, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(read_records(killed)) == list(range(6))
    assert len(records.read_text().splitlines()) == 6  # no chunk attacked twice
    a = json.loads((whole / "result.json").read_text())
    b = json.loads((killed / "result.json").read_text())
    assert numbers(a) == numbers(b)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_give_one_process_numbers(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    done = subprocess.run(_tool(*PAPER_60, "--out", str(one)), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port())]
    shard = subprocess.run([*torchrun, *_tool(*PAPER_60, "--out", str(two))[1:]], env=ENV, capture_output=True,
                           text=True, timeout=600, cwd=tmp_path)
    assert shard.returncode == 0, shard.stderr
    assert sorted(p.name for p in two.glob("records-rank*.jsonl")) == ["records-rank0.jsonl", "records-rank1.jsonl"]
    assert len((two / "records-rank1.jsonl").read_text().splitlines()) == 3  # chunks 1, 3, 5
    assert shard.stdout.count("60 images") == 1  # only rank 0 reports
    a = json.loads((one / "result.json").read_text())
    b = json.loads((two / "result.json").read_text())
    assert numbers(a) == numbers(b)


def test_autoattack_flags_of_the_chunks_merge_as_one_attack_object_holds_them() -> None:
    attack = lz.create_attack("autoattack", eps=0.1, version="custom", attacks_to_run=["apgd-ce"], n_iter=2)
    run = {"attack": attack}
    zero = {"flag": "zero_gradients", "level": "warning", "count": 2, "message": "zero gradient (chunk 0)"}
    dynamic = {"flag": "dynamic", "level": "info", "count": 1, "message": "dynamic defense"}
    settings = {"attacks": ["apgd-ce"], "apgd_iterations": 2}
    restore_run_info(run, [
        {"autoattack_flags": [zero], "autoattack_settings": settings},
        {"autoattack_flags": [dynamic, {**zero, "count": 3, "message": "zero gradient (chunk 1)"}],
         "autoattack_settings": settings},
        {"autoattack_flags": [], "autoattack_settings": {}},  # a chunk with no image left to attack
    ])
    assert attack.run_info() == {
        "autoattack_flags": [{**zero, "count": 5}, dynamic],  # first appearance order, counts summed, first message
        "autoattack_settings": settings,
    }
