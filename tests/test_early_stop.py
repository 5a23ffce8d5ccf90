"""``early_stop`` (on by default) makes iterative attacks stop stepping samples the model already misclassifies:
the model runs on fewer rows, and nothing else changes. Checked bit for bit against ``early_stop: false`` (the
previous implementation), for each attack that has the option, on a real DEQ and an MLP, and for a whole suite."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.benchmarks.suite_speed import compare_outcomes, previous_suite
from lyadeq_zoo.evaluation.runner import collect_batches, run_attacks
from lyadeq_zoo.evaluation.suites import load_suite

ATTACKS: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 12, "loss": "cw", "restarts": 2},
    "ifgsm": {"steps": 8},
    "apgd": {"steps": 12, "loss": "dlr"},
    "intermediate": {"steps": 6, "iterates": 4},
}


class RowCounter(nn.Module):
    """``model`` that counts the rows (images) of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.model(x)

    def __getattr__(self, name: str) -> Any:  # path_logits, equilibrium ... of the wrapped DEQ
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


def _run(attack: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, early: bool) -> torch.Tensor:
    torch.manual_seed(0)
    return lz.create_attack(attack, eps=eps, early_stop=early, **ATTACKS[attack])(model, x, y)


@pytest.mark.parametrize("attack", ["pgd", "ifgsm", "apgd"])
def test_same_examples_fewer_forward_rows_on_an_mlp(attack: str, trained_mlp) -> None:
    model, x, y = trained_mlp
    x, y = x[:64], y[:64]
    counted = RowCounter(model)
    before = _run(attack, counted, x, y, 0.15, early=False)
    rows_before, counted.rows = counted.rows, 0
    after = _run(attack, counted, x, y, 0.15, early=True)
    assert torch.equal(before, after)
    fooled = int((model(after).argmax(1) != y).sum())
    assert fooled >= 32  # most samples fall early at this eps, which is where the rows are saved
    assert counted.rows < 0.6 * rows_before


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_same_examples_on_a_lyapunov_deq(attack: str, tiny_model: nn.Module, mnist_digits) -> None:
    x, y = mnist_digits
    before = _run(attack, tiny_model, x, y, 0.3, early=False)
    after = _run(attack, tiny_model, x, y, 0.3, early=True)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_a_swapped_backward_keeps_the_full_loop(tiny_model: nn.Module, mnist_digits) -> None:
    # With grad_mode the last iterate is returned (no first-fooled tracking), so there is nothing to stop early.
    x, y = mnist_digits
    counted = RowCounter(tiny_model)
    torch.manual_seed(0)
    lz.create_attack("pgd", eps=0.3, steps=5, grad_mode="unroll")(counted, x, y)
    assert counted.rows == x.shape[0] * 6  # five steps and the judging forward of the base class


def test_whole_suite_same_per_image_outcomes(trained_mlp) -> None:
    model, x, y = trained_mlp
    suite = load_suite(
        [
            {"type": "pgd", "steps": 10, "eps": [0.05, 0.1]},
            {"type": "apgd", "steps": 10, "loss": "dlr", "subset": "remaining", "eps": [0.05, 0.1]},
            {"type": "ifgsm", "eps": [0.05, 0.1]},
        ],
        "mnist",
    )
    old = previous_suite(suite)
    assert all(spec["options"]["early_stop"] is False for spec in old["attacks"])
    assert all("early_stop" not in spec["options"] for spec in suite["attacks"])
    batches = collect_batches(model, torch.utils.data.TensorDataset(x[:100], y[:100]), None, 50)
    a = run_attacks(model, batches, old, torch.device("cpu"), seed=0, progress=False)
    b = run_attacks(model, batches, suite, torch.device("cpu"), seed=0, progress=False)
    same = compare_outcomes(a, b)
    assert same["run_outcomes_differ"] == 0 and set(same["worst_case_differ"].values()) == {0}
    # early_stop alone changes no run's subset: every outcome the old run measured, the new one measured too
    measured = sum(int((run["outcome"] >= 0).sum()) for run in a.runs)
    assert same["run_outcomes_not_run_now"] == 0 and same["run_outcomes_compared"] == measured > 300
    assert same["robust_old"] == same["robust_new"]
