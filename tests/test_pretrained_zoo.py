"""Every shipped pretrained zoo entry loads with ``pretrained=True`` (sha256-verified, strict) and its clean
accuracy on the shipped real test sample matches the accuracy its model card records on the full test set,
within sampling error."""

from __future__ import annotations

import json
import math

import pytest
import torch

import lyadeq_zoo as lz
from lyadeq_zoo import hub

SHIPPED = lz.list_models(pretrained=True)


def test_the_zoo_ships_weights() -> None:
    # Guards the parametrised test below against passing vacuously.
    variants = ("deq", "deq_orth", "lyadeq_no_orth", "lyadeq")
    table1 = {f"{v}_{data}" for v in variants for data in ("mnist", "cifar10")}
    assert table1 | {"lyadeq_trades_cifar10", "lyadeq_pgdat_cifar10"} <= set(SHIPPED)


def recorded_clean_accuracy(metrics: dict) -> tuple[float, int | None]:
    """(accuracy in [0, 1], n) from a shipped config.json's metrics: an lz.evaluate result or training's."""
    if isinstance(metrics.get("clean"), dict):
        return float(metrics["clean"]["accuracy"]), metrics["clean"].get("n")
    training = metrics.get("training", metrics)
    return float(training["clean_accuracy"]), None


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_entry_loads_and_matches_its_card(name: str) -> None:
    entry = hub.read_index()[name]
    folder = hub.shipped_folder(entry["local_path"])
    card = json.loads((folder / "config.json").read_text())
    assert card["weights_sha256"] == entry["sha256"]
    recorded, _ = recorded_clean_accuracy(card["metrics"])
    card_text = (folder / "README.md").read_text()
    shown = {f"{100 * recorded:.2f}", f"{100 * recorded:.4g}", f"{recorded:.4f}", f"{recorded:g}"}
    assert any(text in card_text for text in shown), "the model card shows the recorded accuracy"

    model = lz.create_model(name, pretrained=True).eval()
    data = lz.get_component("dataset", card["dataset"])(split="test", root="sample")
    x, y = data.tensors()
    correct = 0
    with torch.no_grad():
        for xb, yb in zip(x.split(250), y.split(250), strict=True):
            correct += (model(xb).argmax(1) == yb).sum().item()
    measured = correct / len(y)
    # The sample is 1,000 images drawn from the test set: binomial sampling error around the full-set value.
    sigma = math.sqrt(max(recorded * (1 - recorded), 1e-4) / len(y))
    assert abs(measured - recorded) <= 4 * sigma + 0.005, (name, measured, recorded)
