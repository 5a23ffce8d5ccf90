"""RobustBench's field names on the model cards (:mod:`lyadeq_zoo.evaluation.robustbench`), from real
``lz.evaluate`` results that ran the official AutoAttack (standard; the ``[autoattack]`` extra, which README's
test command installs) beside our own attacks."""

from __future__ import annotations

import copy

import pytest
import torch

import lyadeq_zoo as lz
from lyadeq_zoo.evaluation.robustbench import gradient_path, robustbench_fields
from lyadeq_zoo.hub.card import robustbench_lines

SUITE = [
    {"name": "PGD", "type": "pgd", "steps": 10, "eps": [0.1, 0.3]},
    {"name": "PGD-unrolled", "type": "pgd", "steps": 10, "grad_mode": "unroll", "eps": [0.3]},
    {"name": "AutoAttack", "type": "autoattack", "version": "standard", "eps": [0.3]},
]


@pytest.fixture(scope="module")
def strong_result(trained_mlp) -> dict:
    model, x, y = trained_mlp
    data = torch.utils.data.TensorDataset(x[:24], y[:24])
    return lz.evaluate(model, data, SUITE, progress=False, dataset="mnist", checks=False)


def test_fields_of_a_plain_model(strong_result: dict) -> None:
    config = lz.zoo_config("plain_mnist")
    fields = robustbench_fields({"strong": strong_result}, config, "mnist")
    assert fields["eps"] == 0.3 and fields["threat_model"] == "Linf"
    assert fields["clean_acc"] == round(100 * strong_result["clean"]["accuracy"], 2) and fields["clean_n"] == 24
    (aa,) = [a for a in strong_result["attacks"] if a["name"] == "AutoAttack"]
    assert fields["autoattack_acc"] == round(100 * aa["results"][0]["accuracy"], 2) and fields["autoattack_n"] == 24
    assert fields["additional_data"] is False and fields["number_forward_passes"] == 1
    # the unrolled-gradient attack is skipped on a model without a DEQ; the rest used the model's own gradient
    assert fields["solver"] is None and fields["attack_grad_modes"] is None
    worst = strong_result["worst_case"][-1]["accuracy"]
    assert fields["worst_case_acc"] == round(100 * worst, 2)
    assert fields["unreliable"] is (worst < aa["results"][0]["accuracy"] - max(0.02, 3 / 24))


def test_unreliable_when_the_worst_case_lies_below_autoattack(strong_result: dict) -> None:
    # The same result with AutoAttack's own accuracy raised above the worst case by more than the tolerance
    # (as when an adaptive attack breaks what AutoAttack could not): flagged.
    edited = copy.deepcopy(strong_result)
    (aa,) = [a for a in edited["attacks"] if a["name"] == "AutoAttack"]
    aa["results"][0]["accuracy"] = edited["worst_case"][-1]["accuracy"] + 0.2
    assert robustbench_fields({"strong": edited}, {}, "mnist")["unreliable"] is True
    # an autoattack-suite result (its second entry attacks through the unrolled solver) serves the same way
    flagged = robustbench_fields({"autoattack": edited}, {}, "mnist")
    assert flagged["unreliable"] is True and flagged["worst_case_suite"] == edited["suite"]
    # without a strong result there is nothing to compare: unknown, not "reliable"
    fields = robustbench_fields({"paper": strong_result}, {}, "mnist")
    assert fields["unreliable"] is None and fields["autoattack_acc"] is None


def test_deq_fields_and_card_lines(strong_result: dict) -> None:
    config = lz.zoo_config("lyadeq_mnist")
    fields = robustbench_fields({"strong": strong_result}, config, "mnist")
    solver = config["model"]["solver"]
    assert (fields["solver"], fields["max_iter"], fields["tol"]) == (solver["type"], solver["max_iter"], solver["tol"])
    assert fields["attack_grad_modes"] == ["model"]  # the unroll run was skipped (not a DEQ), so it does not count
    lines = robustbench_lines(fields)
    assert "eps 0.3;" in lines[1] and "| clean_acc | clean_n | autoattack_acc | autoattack_n |" in lines[3]
    assert lines[5].startswith(f"| {fields['clean_acc']} | 24 | {fields['autoattack_acc']} | 24 |")
    assert "eps 8/255;" in robustbench_lines({**fields, "eps": 8 / 255})[1]
    assert robustbench_lines(None) == []


def test_gradient_paths_of_the_strong_suites_attacks() -> None:
    suite = lz.evaluation.load_suite("strong_cpu", "cifar10")
    paths = {a["name"]: gradient_path(a["type"], a["options"]) for a in suite["attacks"]}
    assert paths["PGD"] == paths["APGD-DLR"] == paths["AutoAttack-CPU"] == "model"
    assert paths["PGD-unrolled"] == paths["Divergence"] == "unroll"  # the divergence attack unrolls by default
    others = (paths["Intermediate"], paths["Square"], paths["Transfer-DEQ"])
    assert others == ("intermediate_states", "none", "transfer")


def test_results_table_shows_the_standard_autoattack_column(strong_result: dict) -> None:
    from lyadeq_zoo.evaluation.results_page.entries import ModelEntry
    from lyadeq_zoo.evaluation.results_page.tables import results_table

    with_aa = ModelEntry("plain_mnist", "mnist", "plain", {"baseline": True}, {}, results={"autoattack": strong_result})
    without = ModelEntry("deq_mnist", "mnist", "deq", {}, {}, results={"paper": strong_result})
    lines = results_table([with_aa, without])
    assert lines[0].endswith(" strong suite | AutoAttack (standard) |")
    (aa,) = [a for a in strong_result["attacks"] if a["name"] == "AutoAttack"]
    row = next(line for line in lines if line.startswith("| `plain_mnist` (not shipped) |"))
    assert row.endswith(f" | {100 * aa['results'][0]['accuracy']:.2f} at 76.5/255 (n=24) |")
    other = next(line for line in lines if line.startswith("| `deq_mnist` (not shipped) |"))
    assert other.endswith(" | – |")
    # every row has the header's number of cells
    assert len({line.count("|") for line in lines if line.startswith("|")}) == 1
    assert any(line.startswith("AutoAttack (standard): the official AutoAttack") for line in lines)
    # no model with an AutoAttack result: no such column
    assert "AutoAttack" not in results_table([without])[0]


def test_mean_solver_steps_come_from_the_paper_results_clean_inputs(strong_result: dict) -> None:
    config = lz.zoo_config("lyadeq_mnist")
    paper = copy.deepcopy(strong_result)
    paper["suite"], paper["clean"]["solver"] = "paper", {"mean_steps": 7.256, "max_steps": 12.0, "converged": 1.0}
    fields = robustbench_fields({"strong": strong_result, "paper": paper}, config, "mnist")
    assert fields["mean_solver_steps"] == 7.26
    assert fields["mean_solver_steps_on"] == "the 24 clean test images of the `paper` result"
    # results without the statistics (older ones) leave the field to the card's measurement on the sample
    assert "mean_solver_steps" not in robustbench_fields({"strong": strong_result}, config, "mnist")
    # a model without a solver has none, whatever a result holds
    assert "mean_solver_steps" not in robustbench_fields({"paper": paper}, lz.zoo_config("plain_mnist"), "mnist")
