"""The results page (lyadeq_zoo.evaluation.results_page through tools/results_page.py) from real lz.evaluate
JSONs, and --update-cards on a copied checkpoint.

The eval JSONs are produced here by ``lz.evaluate`` on the shipped ``lyadeq_mnist`` weights and 50 shipped MNIST
sample images (the real ``paper`` suite; cheap stand-ins for the strong and curve suites), so the tests never
read ``runs/``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import lyadeq_zoo as lz
from lyadeq_zoo import hub
from lyadeq_zoo.evaluation import evaluate
from lyadeq_zoo.evaluation.result import merge_results, sample_note
from lyadeq_zoo.fileio import sha256_file

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_IMAGES = 50
EPS = ["2/255", "4/255", "6/255", "8/255"]
STRONG_SUITE = {  # the strong suites' shape (own-gradient attacks, FGSM, Square, large eps) at tiny budgets
    "name": "strong_cpu",
    "attacks": [
        {"name": "I-FGSM", "type": "ifgsm", "steps": 3, "eps": [*EPS, "large"]},
        {"name": "PGD", "type": "pgd", "steps": 3, "eps": [*EPS, "large"]},
        {"name": "FGSM", "type": "fgsm", "eps": [*EPS, "large"]},
        {"name": "Square", "type": "square", "n_queries": 5, "subset": "remaining", "eps": [*EPS, "large"]},
    ],
}
CURVE_SUITE = {  # configs/eval/curve.yaml's attacks on fewer radii, fewer steps
    "name": "curve",
    "attacks": [
        {"name": "I-FGSM", "type": "ifgsm", "steps": 2, "eps": ["2/255", "8/255", "20/255"], "track_best": False},
        {"name": "PGD", "type": "pgd", "steps": 2, "eps": ["2/255", "8/255", "20/255"], "track_best": False},
        {"name": "PGD-CW-20", "type": "pgd", "steps": 2, "loss": "cw", "eps": ["2/255", "8/255", "20/255"]},
    ],
}


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tool_results_page", REPO / "tools" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    """slot -> lz.evaluate result for lyadeq_mnist, with the model/data keys tools/eval.py adds."""
    model = lz.create_model("lyadeq_mnist", pretrained=True)
    data = lz.get_component("dataset", "mnist")(split="test", root="sample", limit=N_IMAGES)
    out = {}
    for slot, suite in (("paper", "paper"), ("strong", STRONG_SUITE), ("curve", CURVE_SUITE)):
        result = evaluate(model, data, suite, progress=False, batch_size=N_IMAGES, seed=0)
        result["model"] = {"name": "lyadeq_mnist", "source": "lyadeq_mnist", "weights": "pretrained"}
        result["data"] = {"dataset": "mnist", "split": "test", "root": "sample", "limit": N_IMAGES}
        out[slot] = result
    return out


def _write_runs(folder: Path, results: dict[str, dict[str, Any]], slots: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for slot in slots:
        (folder / f"lyadeq_mnist_{slot}.json").write_text(json.dumps(results[slot]), encoding="utf-8")
    return folder


def _row(page: str, start: str) -> str:
    return next(line for line in page.splitlines() if line.startswith(start))


def test_page_has_our_numbers_the_papers_row_and_the_figure(tmp_path: Path, results: dict) -> None:
    tool = _tool()
    runs = _write_runs(tmp_path / "runs", results, ("paper", "strong", "curve"))
    out, figures = tmp_path / "docs" / "results.md", tmp_path / "docs" / "figures"
    assert tool.main(["--runs", str(runs), "--out", str(out), "--figures", str(figures)]) == 0
    page = out.read_text(encoding="utf-8")

    ours = _row(page, "| `lyadeq_mnist` |")
    paper = results["paper"]
    assert f"{100 * paper['clean']['accuracy']:.2f}" in ours
    pgd = next(a for a in paper["attacks"] if a["name"] == "PGD")
    pgd_cells = [f"{100 * i['accuracy']:.2f}" for i in pgd["results"]]
    assert all(cell in ours for cell in pgd_cells)
    assert f"n={N_IMAGES}, shipped sample" in ours and "`strong_cpu`" in ours
    worst8 = next(w for w in results["strong"]["worst_case"] if w["eps_255"] == 8)
    assert f"{100 * worst8['accuracy']:.2f}" in ours
    assert "at 76.5/255" in ours  # MNIST's sanity radius 0.3 from the strong-shaped suite

    # The paper's row sits right below ours, with the numbers of the config's meta.
    lines = page.splitlines()
    below = lines[lines.index(ours) + 1]
    meta = lz.zoo_config("lyadeq_mnist")["meta"]["paper_table1"]
    assert below.startswith("| ↳ paper (Table 1) |") and f"{meta['clean']:.2f}" in below
    assert "96.59" in below and "50.78 / 50.60 / 50.55 / 50.43" in below and "50.72 / 50.54 / 50.52 / 50.35" in below
    # Our PGD numbers are far above the paper's ~50%, so they are in bold and the Δ column says so.
    assert f"**{pgd_cells[0]}**" in ours and "PGD 8 +" in ours

    # Models without a JSON are listed, with no numbers.
    assert "| `deq_mnist` | **not evaluated** |" in page
    assert "## Not evaluated" in page and "SVHN" in page

    figure = figures / "robustness_mnist.png"
    assert figure.read_bytes()[:8] == PNG_MAGIC
    assert "](figures/robustness_mnist.png)" in page

    # Masking checks come from the strong JSON, training facts from the shipped config.json.
    checks = _row(page, "| `lyadeq_mnist` | `strong_cpu`")
    assert "pass" in checks and "n/a" in checks
    training = _row(page, "| `lyadeq_mnist` | yes |")
    assert "the paper's" in training and "shipped weights (zoo name)" in training
    assert "### Where we differ from the paper (MNIST)" in page
    assert "PGD curve is flat from 2/255 to 8/255: paper 50.72 → 50.35" in page
    assert (
        f"eval.py lyadeq_mnist --pretrained --suite paper --limit {N_IMAGES} --json {runs}/lyadeq_mnist_paper.json"
        in page
    )


def test_nothing_evaluated_and_unreadable_files(tmp_path: Path) -> None:
    tool = _tool()
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "deq_mnist_paper.json").write_text("{not json", encoding="utf-8")
    (runs / "deq_orth_mnist_paper.json").write_text(json.dumps({"accuracy": 0.5}), encoding="utf-8")
    out, figures = tmp_path / "results.md", tmp_path / "figures"
    assert tool.main(["--runs", str(runs), "--out", str(out), "--figures", str(figures)]) == 0
    page = out.read_text(encoding="utf-8")
    for name in ("deq_mnist", "deq_orth_mnist", "lyadeq_no_orth_mnist", "lyadeq_mnist"):
        assert f"| `{name}` | **not evaluated** |" in page
    assert "deq_mnist_paper.json`: not readable JSON" in page
    assert "deq_orth_mnist_paper.json`: not an lz.evaluate result" in page
    assert not figures.exists()  # no numbers, no figure
    assert "No model of this data set has been evaluated" in page
    # Training facts come from the shipped cards even without results: schedule, fine-tuning.
    pgdat = _row(page, "| `lyadeq_pgdat_cifar10` | yes |")
    card = json.loads((hub.INDEX_PATH.parent / "pretrained" / "lyadeq_pgdat_cifar10" / "config.json").read_text())
    assert f"| {card['epochs']} | 50 |" in pgdat
    assert f"**fine-tuned** from `{card['config']['train']['init_from']}`" in pgdat
    assert "fine-tuned" not in _row(page, "| `lyadeq_cifar10` | yes |")


def _copy_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> tuple[Path, Path]:
    """A copy of the shipped checkpoint ``name`` and a registry pointing at it (absolute local_path)."""
    entry = hub.read_index(hub.INDEX_PATH)[name]
    source = hub.INDEX_PATH.parent / entry["local_path"]
    folder = tmp_path / "pretrained" / name
    shutil.copytree(source, folder)
    registry = tmp_path / "pretrained.json"
    registry.write_text(json.dumps({name: {**entry, "local_path": str(folder)}}, indent=2), encoding="utf-8")
    monkeypatch.setenv(hub.INDEX_ENV, str(registry))
    return folder, registry


def test_update_cards_keeps_weights_and_writes_metrics(tmp_path: Path, results: dict, monkeypatch) -> None:
    tool = _tool()
    folder, registry = _copy_shipped(tmp_path, monkeypatch, "lyadeq_mnist")
    shipped = hub.INDEX_PATH.parent / "pretrained" / "lyadeq_mnist"
    shipped_bytes = {f: (shipped / f).read_bytes() for f in hub.CHECKPOINT_FILES}
    weights = (folder / hub.WEIGHTS_NAME).read_bytes()
    registry_text = registry.read_text(encoding="utf-8")
    old_info = json.loads((folder / hub.CONFIG_NAME).read_text(encoding="utf-8"))
    runs = _write_runs(tmp_path / "runs", results, ("paper", "strong"))
    argv = ["--runs", str(runs), "--out", str(tmp_path / "r.md"), "--figures", str(tmp_path / "f"), "--update-cards"]

    assert tool.main(argv) == 0
    assert (folder / hub.WEIGHTS_NAME).read_bytes() == weights
    assert registry.read_text(encoding="utf-8") == registry_text  # weights unchanged: the index is untouched
    info = json.loads((folder / hub.CONFIG_NAME).read_text(encoding="utf-8"))
    metrics = info["metrics"]
    assert metrics["suite"] == "paper" and metrics["clean"] == results["paper"]["clean"]
    assert metrics["strong"]["worst_case"] == results["strong"]["worst_case"]
    # the training-time numbers are kept (a card updated before keeps them under "training")
    assert metrics["training"] == old_info["metrics"].get("training", old_info["metrics"])
    assert info["epochs"] == old_info["epochs"] and info["train_command"] == old_info["train_command"]
    assert info["weights_sha256"] == sha256_file(folder / hub.WEIGHTS_NAME)
    card = (folder / hub.CARD_NAME).read_text(encoding="utf-8")
    pgd8 = next(i for a in results["paper"]["attacks"] if a["name"] == "PGD" for i in a["results"] if i["eps_255"] == 8)
    assert f"| PGD @ eps 8/255 (%) | {100 * pgd8['accuracy']:.4g} |" in card
    assert "worst case, strong_cpu suite (n=50) @ eps 8/255 (%)" in card
    # RobustBench's field names, from the paper result (clean) and the DEQ's config (these results ran no AutoAttack)
    bench = metrics["robustbench"]
    assert bench["clean_acc"] == round(100 * results["paper"]["clean"]["accuracy"], 2)
    assert bench["autoattack_acc"] is None and bench["unreliable"] is None and bench["eps"] == 0.3
    assert bench["solver"] == old_info["config"]["model"]["solver"]["type"]
    # the mean solver steps of the paper result's clean inputs (results from before those existed: see below)
    assert bench["mean_solver_steps"] == round(results["paper"]["clean"]["solver"]["mean_steps"], 2)
    assert 1 <= bench["mean_solver_steps"] <= old_info["config"]["model"]["solver"]["max_iter"]
    assert bench["mean_solver_steps_on"] == f"the {N_IMAGES} clean test images of the `paper` result"
    assert "RobustBench-style fields" in card and f"| {bench['clean_acc']} | {bench['clean_n']} | n/a | n/a |" in card

    # Still a valid, verified pretrained checkpoint; a second run gives the same files; the real one is untouched.
    assert lz.create_model("lyadeq_mnist", pretrained=True) is not None
    first = {f: (folder / f).read_bytes() for f in hub.CHECKPOINT_FILES}
    assert tool.main(argv) == 0
    assert {f: (folder / f).read_bytes() for f in hub.CHECKPOINT_FILES} == first
    assert {f: (shipped / f).read_bytes() for f in hub.CHECKPOINT_FILES} == shipped_bytes


def test_update_cards_refuses_results_of_other_weights(tmp_path: Path, results: dict, monkeypatch, capsys) -> None:
    tool = _tool()
    folder, _ = _copy_shipped(tmp_path, monkeypatch, "lyadeq_mnist")
    before = (folder / hub.CONFIG_NAME).read_bytes()
    other = tmp_path / "other"  # a checkpoint folder with different weights, as if evaluated from a new run
    lz.save_pretrained(lz.create_model("lyadeq_mnist"), other)
    result = dict(results["paper"], model={"name": f"local-dir:{other}", "weights": "checkpoint"})
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "lyadeq_mnist_paper.json").write_text(json.dumps(result), encoding="utf-8")
    argv = ["--runs", str(runs), "--out", str(tmp_path / "r.md"), "--figures", str(tmp_path / "f"), "--update-cards"]
    assert tool.main(argv) == 0
    assert "NOT updated" in capsys.readouterr().out
    assert (folder / hub.CONFIG_NAME).read_bytes() == before
    assert "**other weights than shipped**" in (tmp_path / "r.md").read_text(encoding="utf-8")


def test_merged_card_metrics(results: dict) -> None:
    training = {"clean_accuracy": 0.98, "epochs": 10}
    merged = merge_results({"strong": results["strong"], "paper": results["paper"]}, training)
    assert merged["suite"] == "paper" and merged["strong"] == results["strong"] and "curve" not in merged
    worst8 = next(w for w in results["strong"]["worst_case"] if w["eps_255"] == 8)
    assert merged["worst case, strong_cpu suite (n=50) @ eps 8/255 (%)"] == 100 * worst8["accuracy"]
    assert merged["training"] == training
    # merging again from a card that already holds results keeps the training numbers, not the old results
    assert merge_results({"curve": results["curve"]}, merged)["training"] == training
    with pytest.raises(ValueError, match="no result to merge"):
        merge_results({}, training)


def test_card_metrics_measure_the_steps_on_the_sample_for_older_results(results: dict) -> None:
    """A result from before the clean solver statistics existed: the card measures the steps on the shipped
    sample instead (the same model, so within the solver's range), and says so."""
    from lyadeq_zoo.evaluation.results_page.cards import card_metrics
    from lyadeq_zoo.evaluation.results_page.entries import ModelEntry

    older = {**results["paper"], "clean": {k: v for k, v in results["paper"]["clean"].items() if k != "solver"}}
    config = lz.zoo_config("lyadeq_mnist")
    entry = ModelEntry("lyadeq_mnist", "mnist", "lyadeq", {}, {}, card={"dataset": "mnist", "config": config,
                                                                       "metrics": {"clean_accuracy": 0.97}},
                       results={"paper": older})
    model = lz.create_model("lyadeq_mnist", pretrained=True)
    bench = card_metrics(entry, model)["robustbench"]
    assert 1 <= bench["mean_solver_steps"] <= config["model"]["solver"]["max_iter"]
    assert bench["mean_solver_steps_on"] == "the shipped mnist test sample, clean, eval mode"
    assert "mean_solver_steps" not in card_metrics(entry)["robustbench"]  # no model given: nothing to measure


@pytest.mark.parametrize(
    ("data", "n", "expected"),
    [
        ({"root": "../shared/data", "limit": 500}, 500, "n=500, first 500 test images"),
        ({"root": "../shared/data", "limit": 10000}, 10000, "n=10000, full test set"),  # the whole test split
        ({"root": "../shared/data", "limit": 9999}, 9999, "n=9999, first 9999 test images"),
        ({"root": "../shared/data"}, 10000, "n=10000, full test set"),
        ({"root": "sample", "limit": 10000}, 1000, "n=1000, shipped sample"),
    ],
)
def test_sample_note_names_a_limit_that_covers_the_test_split_the_full_test_set(
    data: dict[str, Any], n: int, expected: str
) -> None:
    assert sample_note({"dataset": "cifar10", "n": n, "data": data}) == expected
