"""lyadeq-benchmark (:mod:`lyadeq_zoo.cli.benchmark` over :mod:`lyadeq_zoo.benchmarks`) smoke test: the ``--quick``
run writes a complete result (schema only, no timing asserts).

The whole quick run (every section, memory subprocesses included) takes ~20-40 s on 2 shared cores, so it
runs once per session and the tests that read its result are marked ``slow``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from lyadeq_zoo.benchmarks.common import results_dir
from lyadeq_zoo.benchmarks.report import markdown
from lyadeq_zoo.benchmarks.solvers import bench_solvers
from lyadeq_zoo.cli.benchmark import main as benchmark_main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench") / "results-test.json"
    assert benchmark_main(["--quick", "--json", str(out)]) == 0
    return json.loads(out.read_text()), out


def _positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_run_writes_every_section(quick: tuple[dict, Path]) -> None:
    result, path = quick
    assert result["format"] == "lyadeq-zoo-bench/1" and result["quick"] is True
    assert result["threads"] == 1 and result["device"] == "cpu"
    assert result["command"] == f"lyadeq-benchmark --quick --json {os.path.relpath(path)}"  # no absolute paths
    assert result["machine"].startswith("cpu-") and result["machine"].endswith("core")
    assert _positive(result["gemm"]["flops_per_s"])
    for section in ("solvers", "model", "memory", "attacks", "suite_speed", "targets"):
        assert section in result, section
    assert path.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_solver_section_compares_with_torchdeq_on_the_same_f(quick: tuple[dict, Path]) -> None:
    solvers = quick[0]["solvers"]
    assert solvers["cases"], "at least one solver case"
    for case in solvers["cases"]:
        assert case["dataset"] in ("mnist", "cifar10") and case["batch"] >= 1
        assert _positive(case["f_seconds"])
        for name in ("anderson", "broyden", "naive", "anderson_solver", "broyden_solver", "fixed_point_iter"):
            row = case["results"][name]
            assert _positive(row["seconds"]) and row["f_evals"] >= 1
            assert row["max_rel_residual"] >= 0 and math.isfinite(row["overhead_per_iter_s"])
        # Our quasi-Newton solvers stop by the rule they are given: the returned point meets the tolerance.
        # Plain iteration need not converge on a trained cell (not a contraction everywhere); then it must
        # have spent its whole budget and report the residual it actually reached.
        for ours in ("anderson", "broyden", "naive"):
            row = case["results"][ours]
            if ours != "naive":
                assert row["max_rel_residual"] <= solvers["tol"]
            elif row["max_rel_residual"] > solvers["tol"]:
                assert row["f_evals"] >= solvers["max_iter"]
            assert _positive(case["ours_vs_torchdeq"][ours]["time_ratio"])


@pytest.mark.slow
def test_model_memory_attack_sections(quick: tuple[dict, Path]) -> None:
    result = quick[0]
    for ds in result["model"]["datasets"].values():
        assert len(ds["models"]) == 5  # deq, lyadeq, deq_orth, lyadeq_no_orth, plain
        for row in ds["models"].values():
            assert _positive(row["train_images_per_s"]) and _positive(row["eval_images_per_s"])
            assert _positive(row["train_flops_per_image"]) and _positive(row["train_over_floor"])
            # FlopCounterMode counts the backward too: a train step costs more FLOPs than eval.
            assert row["train_flops_per_image"] > row["eval_flops_per_image"]
        assert _positive(ds["ratios"]["lyadeq_over_deq_train_step"])
        assert ds["flops_breakdown_per_image"]["cell_per_f_eval"] > 0
    rows = result["memory"]["rows"]
    assert {(r["scope"], r["mode"]) for r in rows} >= {("layer", "ift"), ("layer", "unroll")}
    assert all(r["peak_extra_bytes"] >= 0 and r["method"] for r in rows)
    attacks = result["attacks"]
    assert _positive(attacks["pgd10"]["lyadeq_cifar10"]["images_per_s"])
    assert _positive(attacks["suite"]["images_per_s"]) and attacks["suite"]["n"] >= 1
    for target in result["targets"].values():
        assert target["met"] in (True, False, None) and "detail" in target


@pytest.mark.slow
def test_suite_speed_section_compares_with_the_previous_implementation(quick: tuple[dict, Path]) -> None:
    speed = quick[0]["suite_speed"]
    assert speed["suite"] == "paper" and speed["n"] == 4  # --quick: the paper suite on 4 images
    assert _positive(speed["previous_seconds"]) and _positive(speed["seconds"]) and _positive(speed["speedup"])
    # 2 attacks x 4 eps x 4 images, subset all: both implementations measure every outcome
    assert speed["run_outcomes_compared"] == 4 * 8 and speed["run_outcomes_not_run_now"] == 0
    assert speed["run_outcomes_differ"] == 0 and set(speed["worst_case_weaker_now"].values()) == {0}
    assert set(speed["per_attack_seconds"]) == {"I-FGSM", "PGD"}
    # the strong_cpu target is judged on a strong_cpu run only
    assert quick[0]["targets"]["strong_cpu_suite_ge_3x_previous_same_outcomes"]["met"] is None


@pytest.mark.slow
def test_markdown_table_from_result(quick: tuple[dict, Path]) -> None:
    text = markdown(quick[0])
    assert "| anderson |" in text and "**Targets**" in text and "Backward memory" in text
    assert "**Suite speed**" in text and "| **whole suite** |" in text


def test_missing_torchdeq_is_reported_and_only_that_comparison_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchdeq", None)  # makes `import torchdeq` raise ImportError
    out = bench_solvers(torch.device("cpu"), quick=True)
    assert "not installed" in out["torchdeq"]
    case = out["cases"][0]
    assert set(case["results"]) == {"anderson", "broyden", "naive"} and case["ours_vs_torchdeq"] == {}


def test_results_go_to_the_checkouts_benchmarks_folder() -> None:
    # The code lives in the package; the results it writes by default stay in the repository's benchmarks/.
    assert results_dir() == REPO / "benchmarks"
    assert (REPO / "benchmarks" / "README.md").is_file() and not list((REPO / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("images", ["0", "1001"])
def test_suite_images_outside_the_sample_is_refused(images: str) -> None:
    with pytest.raises(SystemExit, match=r"--suite-images must be in 1\.\.1000.*got " + images):
        benchmark_main(["--sections", "suite_speed", "--suite-images", images])
