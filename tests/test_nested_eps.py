"""The eps balls are nested: an example that breaks an image at one eps breaks it at every larger eps, so the
evaluation counts it there at once (the worst case never rises with eps, and ``remaining`` attacks at the larger
eps skip the image), and a job's merged result recomputes the same worst case from the per-image outcomes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import lyadeq_zoo as lz
from lyadeq_zoo.attacks.sign_gradient import PGD
from lyadeq_zoo.evaluation.result import worst_case_robust
from lyadeq_zoo.evaluation.runner import collect_batches, run_attacks
from lyadeq_zoo.evaluation.suites import load_suite
from lyadeq_zoo.registry import register

SMALL, LARGE = 0.05, 0.3


class GivesUpAboveForTest(PGD):
    """PGD that returns the clean images when eps is above ``cap``: an attack whose curve rises with eps (like
    FGSM's overshoot, but certain), so that what the large eps gets from the small one is visible."""

    def __init__(self, eps: float | str = 8 / 255, steps: int = 10, cap: float = SMALL) -> None:
        super().__init__(eps=eps, steps=steps)
        self.cap = cap

    def run_once(self, model, x, y, generator, restart):  # noqa: ANN001, ANN201 - the Attack contract
        return x.clone() if self.eps > self.cap else super().run_once(model, x, y, generator, restart)


@pytest.fixture
def gives_up(restore_registries: Any) -> str:
    register("attack", "gives_up_above_for_test")(GivesUpAboveForTest)
    return "gives_up_above_for_test"


@pytest.fixture(scope="module")
def digits(trained_mlp) -> tuple[nn.Module, list]:  # noqa: ANN001 - conftest's fixture
    model = trained_mlp[0].eval()
    data = lz.get_component("dataset", "mnist")(split="test", root="sample", limit=64)
    return model, collect_batches(model, data, None, 32)


def specs(attack_type: str) -> list[dict]:
    return [
        {"name": "GivesUp", "type": attack_type, "steps": 10, "eps": [SMALL, LARGE]},
        {"name": "PGD-remaining", "type": "pgd", "steps": 10, "subset": "remaining", "eps": [SMALL, LARGE]},
    ]


def test_worst_case_robust_counts_a_break_at_every_larger_eps() -> None:
    clean = torch.tensor([True, True, True, False])
    runs = [
        {"eps": 0.1, "skipped": None, "outcome": torch.tensor([0, 1, 1, 0], dtype=torch.int8)},
        {"eps": 0.2, "skipped": None, "outcome": torch.tensor([1, 1, 0, 0], dtype=torch.int8)},
        {"eps": 0.3, "skipped": "not a DEQ", "outcome": torch.tensor([-1, -1, -1, -1], dtype=torch.int8)},
    ]
    robust = worst_case_robust(runs, clean)
    assert list(robust) == [0.1, 0.2, 0.3]
    assert robust[0.1].tolist() == [False, True, True, False]
    assert robust[0.2].tolist() == [False, True, False, False]  # image 0: broken at 0.1, robust to the 0.2 run
    assert robust[0.3].tolist() == [False, True, False, False]  # a skipped run breaks nothing


def test_a_break_at_a_small_eps_counts_at_the_large_one(digits, gives_up: str) -> None:
    model, batches = digits
    suite = load_suite(specs(gives_up), "mnist")
    nested = run_attacks(model, batches, suite, torch.device("cpu"), seed=0, progress=False)
    per_eps = run_attacks(model, batches, suite, torch.device("cpu"), seed=0, progress=False, nested_eps=False)
    gave_up_small, gave_up_large = nested.runs[0]["outcome"], nested.runs[1]["outcome"]
    broken_small = nested.clean_correct & (gave_up_small == 0)
    assert broken_small.sum() >= 5  # PGD at 0.05 breaks some digits of the undefended MLP
    assert bool((gave_up_large[nested.clean_correct] == 1).all())  # the attack failed on every image at 0.3

    # Each eps on its own: the large eps forgets what the small one found, and PGD-remaining re-attacks those.
    assert bool((per_eps.runs[3]["outcome"][broken_small] >= 0).all())
    # Nested: broken at 0.05 means broken at 0.3, never attacked again there, and the worst case never rises.
    assert not bool((nested.robust[LARGE] & broken_small).any())
    assert bool((nested.runs[3]["outcome"][broken_small] == -1).all())
    assert bool((nested.robust[LARGE] <= nested.robust[SMALL]).all())
    recomputed = worst_case_robust(nested.runs, nested.clean_correct)
    assert {k: v.tolist() for k, v in recomputed.items()} == {k: v.tolist() for k, v in nested.robust.items()}


def test_the_result_reports_the_nested_worst_case(digits, gives_up: str) -> None:
    model, batches = digits
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    result = lz.evaluate(model, TensorDataset(x, y), specs(gives_up), dataset="mnist",
                         progress=False, batch_size=32, checks=False)
    worst = [w["accuracy"] for w in result["worst_case"]]
    assert worst[1] <= worst[0]
    gives_up_items = result["attacks"][0]["results"]
    assert gives_up_items[1]["accuracy"] == pytest.approx(result["clean"]["accuracy"])  # its own curve rises
    # The cumulative accuracy at the large eps already counts the small eps' breaks.
    assert gives_up_items[1]["cumulative_accuracy"] <= gives_up_items[0]["cumulative_accuracy"]
    remaining = result["attacks"][1]["results"]
    assert remaining[1]["attacked"] <= round(gives_up_items[0]["cumulative_accuracy"] * result["n"])
    assert remaining[1]["cumulative_accuracy"] == pytest.approx(worst[1])
