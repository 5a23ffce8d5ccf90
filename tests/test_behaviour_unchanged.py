"""Refactors keep behaviour: the shipped zoo's logits and the results page are pinned to references made
before the package layout changed (commit e8abdb7, one thread).

``tests/data/zoo_logits_reference.safetensors`` holds each shipped model's logits on the first 64 images of
its shipped test sample; ``tests/data/results_page_reference.md`` is the page rendered from the eval results
stored in the shipped cards. Regenerate them only for a change that is meant to alter numbers, and say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lyadeq_zoo as lz

DATA = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parent.parent
REFERENCE_LOGITS = load_file(DATA / "zoo_logits_reference.safetensors")
# The keys of an lz.evaluate result: the shipped cards keep the paper-suite result at the top of "metrics".
RESULT_KEYS = ("format", "suite", "dataset", "n", "seed", "device", "clean", "eps", "attacks", "worst_case",
               "checks", "notes", "timing", "model", "data")


def test_every_shipped_model_has_reference_logits() -> None:
    assert sorted(REFERENCE_LOGITS) == sorted(lz.list_models(pretrained=True))


@pytest.mark.parametrize("name", sorted(REFERENCE_LOGITS))
def test_shipped_logits_are_bit_identical(name: str) -> None:
    model = lz.create_model(name, pretrained=True).eval()
    dataset = "mnist" if name.endswith("_mnist") else "cifar10"
    x, _ = lz.get_component("dataset", dataset)(split="test", root="sample").tensors()
    with torch.no_grad():
        logits = model(x[:64])
    assert torch.equal(logits, REFERENCE_LOGITS[name]), (name, (logits - REFERENCE_LOGITS[name]).abs().max())


def eval_results_from_cards(runs: Path) -> int:
    """Write the eval JSONs stored in the shipped cards to ``runs`` as ``tools/eval.py --json`` names them."""
    runs.mkdir(parents=True)
    written = 0
    for card_file in sorted((REPO / "lyadeq_zoo" / "pretrained").glob("*/config.json")):
        card = json.loads(card_file.read_text())
        metrics = card["metrics"]
        results = [{key: metrics[key] for key in RESULT_KEYS if key in metrics}]
        results += [metrics[slot] for slot in ("strong", "curve", "autoattack") if slot in metrics]
        for result in results:
            if "format" in result:
                (runs / f"{card['name']}_{result['suite']}.json").write_text(json.dumps(result))
                written += 1
    return written


def test_results_page_regenerates_byte_identical(tmp_path: Path) -> None:
    assert eval_results_from_cards(tmp_path / "runs" / "eval") >= 20
    command = [sys.executable, str(REPO / "tools" / "results_page.py"), "--runs", "runs/eval", "--out", "page.md",
               "--figures", "figures"]
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, text=True)
    assert (tmp_path / "page.md").read_text() == (DATA / "results_page_reference.md").read_text()
