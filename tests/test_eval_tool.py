"""tools/eval.py and tools/plot.py end to end on a tiny setting (shipped MNIST sample, a few images)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tool(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_eval_tool_subprocess(tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "eval.py"),
            "deq_mnist",
            "--no-pretrained",
            "--limit",
            "12",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
            "--no-progress",
            "--threads",
            "1",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "RANDOMLY INITIALISED" in proc.stderr  # loud warning: no weights
    assert "| deq_mnist |" in proc.stdout and "worst case" in proc.stdout
    result = json.loads(out_json.read_text())
    assert result["n"] == 12 and result["model"] == {"name": "deq_mnist", "source": "deq_mnist", "weights": "random"}
    assert [a["name"] for a in result["attacks"]] == ["I-FGSM", "PGD"]
    assert out_png.read_bytes()[:8] == PNG_MAGIC


def test_eval_tool_in_process_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "tiny.yaml"
    suite.write_text("attacks:\n  - {type: fgsm, eps: [2/255, 0.3]}\n  - {type: pgd, steps: 2, eps: [0.3]}\n")
    eval_tool = _tool("eval")
    code = eval_tool.main(
        [
            "lyadeq_mnist",
            "--no-pretrained",
            "--limit",
            "8",
            "--suite",
            str(suite),
            "--json",
            str(tmp_path / "a.json"),
            "--no-progress",
        ]
    )
    assert code == 0
    assert "dynamic_defense" in capsys.readouterr().out  # the check line is printed whatever its verdict
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["suite"] == "tiny" and result["dataset"] == "mnist"
    plot_tool = _tool("plot")
    assert plot_tool.main([str(tmp_path / "a.json"), "--out", str(tmp_path / "one.png")]) == 0
    assert (
        plot_tool.main([str(tmp_path / "a.json")] * 2 + ["--labels", "x", "y", "--out", str(tmp_path / "two.png")]) == 0
    )
    assert (tmp_path / "two.png").read_bytes()[:8] == PNG_MAGIC


def test_eval_tool_errors(capsys: pytest.CaptureFixture[str]) -> None:
    eval_tool = _tool("eval")
    assert eval_tool.main(["lyadeq_mnist", "--no-pretrained", "--suite", "papr", "--limit", "2"]) == 2
    assert "Did you mean 'paper'" in capsys.readouterr().err
    assert eval_tool.main(["lyadeq_mnst", "--limit", "2"]) == 2
    assert "Did you mean 'lyadeq_mnist'" in capsys.readouterr().err
