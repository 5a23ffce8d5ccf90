"""lz.evaluate and the gradient-masking checks, on a small MLP trained here on the real MNIST sample
and on the same MLP behind a real masking defense (input quantisation + detach)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.errors import ConfigError, DataFormatError
from lyadeq_zoo.evaluation import (
    autograd_calls_in_forward,
    dataset_name,
    evaluate,
    format_table,
    load_suite,
    read_result,
    write_result,
)
from lyadeq_zoo.evaluation.checks import CHECK_NAMES
from lyadeq_zoo.model_source import RandomWeightsWarning, resolve_model

N = 100


@pytest.fixture(scope="module")
def honest(trained_mlp: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> nn.Module:
    """An honestly evaluable model: conftest's MLP trained on the shipped MNIST sample."""
    return trained_mlp[0]


@pytest.fixture(scope="module")
def test_set() -> torch.utils.data.Dataset:
    return lz.get_component("dataset", "mnist")(split="test", root="sample", limit=N)


class Quantised(nn.Module):
    """A gradient-masking 'defense': rounds the input to 8 bits and detaches it, so the input gradient
    is exactly zero, while the logits (and so score-based and transfer attacks) are unchanged."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x * 255).round().detach() / 255)


class GradInForward(nn.Module):
    """Computes an input gradient inside its forward pass, as a Lyapunov projection does."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1).detach().requires_grad_(True)
        with torch.enable_grad():
            energy = (self.lin(z) ** 2).sum()
            (g,) = torch.autograd.grad(energy, z, create_graph=True)
        return self.lin(x.flatten(1) - 0.01 * g)


def suite(source: nn.Module) -> list[dict]:
    return [
        {"name": "I-FGSM", "type": "ifgsm", "eps": ["2/255", "8/255", 0.3]},
        {"name": "PGD", "type": "pgd", "eps": ["2/255", "8/255", 0.3]},
        {"name": "PGD-20x2", "type": "pgd", "steps": 20, "restarts": 2, "eps": ["8/255", 0.3], "subset": "remaining"},
        {"name": "Square", "type": "square", "n_queries": 100, "eps": ["8/255", 0.3], "subset": "remaining"},
        {"name": "Transfer", "type": "transfer", "source": source, "eps": ["8/255", 0.3]},
    ]


def checks_of(result: dict) -> dict[str, bool | None]:
    return {c["name"]: c["passed"] for c in result["checks"]}


@pytest.fixture(scope="module")
def honest_result(honest, test_set) -> dict:
    return evaluate(honest, test_set, suite(honest), dataset="mnist", progress=False, batch_size=64)


def test_result_shape_and_worst_case(honest_result: dict) -> None:
    r = json.loads(json.dumps(honest_result))  # JSON round trip
    assert r == honest_result
    assert r["n"] == N and 0.8 < r["clean"]["accuracy"] <= 1
    worst = {round(w["eps"], 6): w["accuracy"] for w in r["worst_case"]}
    assert set(worst) == {round(e, 6) for e in (2 / 255, 8 / 255, 0.3)}
    for attack in r["attacks"]:
        for item in attack["results"]:
            key = round(item["eps"], 6)
            assert worst[key] <= item["cumulative_accuracy"] <= r["clean"]["accuracy"]
            if attack["subset"] == "all":
                assert worst[key] <= item["accuracy"] <= r["clean"]["accuracy"]
            else:
                assert item["accuracy"] is None  # own accuracy is unknown on the remaining subset
    pgd = next(a for a in r["attacks"] if a["name"] == "PGD")
    assert [i["eps_255"] for i in pgd["results"]] == [2, 8, 76.5]
    assert pgd["results"][-1]["accuracy"] < 0.05  # eps 0.3 breaks an undefended MLP
    table = format_table(r, "mlp")
    assert "worst case" in table and "PGD 8" in table


def test_honest_model_passes_the_masking_checks(honest_result: dict) -> None:
    checks = checks_of(honest_result)
    for name in (
        "input_gradients",
        "large_eps",
        "monotone_eps",
        "flat_curve",
        "score_based",
        "transfer",
        "dynamic_defense",
    ):
        assert checks[name] is True, (name, honest_result["checks"])
    assert checks["alternative_backward"] is None  # not a DEQ: reported as not run, not as passed


def test_masked_model_fires_the_checks(honest, test_set) -> None:
    masked = Quantised(honest)
    result = evaluate(masked, test_set, suite(honest), dataset="mnist", progress=False, batch_size=64)
    checks = checks_of(result)
    for name in ("input_gradients", "large_eps", "flat_curve", "score_based", "transfer"):
        assert checks[name] is False, (name, result["checks"])
    # the white-box numbers look robust, the worst case does not
    pgd = next(a for a in result["attacks"] if a["name"] == "PGD")
    assert pgd["results"][1]["accuracy"] > 0.8
    assert result["worst_case"][-1]["accuracy"] < 0.1


def test_deterministic_under_a_seed(honest, test_set) -> None:
    spec = [{"type": "pgd", "eps": ["8/255"]}, {"type": "square", "n_queries": 30, "eps": ["8/255"]}]
    runs = [evaluate(honest, test_set, spec, seed=1, progress=False, limit=60) for _ in range(2)]
    for r in runs:
        r.pop("timing")
        for a in r["attacks"]:
            for item in a["results"]:
                item.pop("seconds")
    assert runs[0] == runs[1]


def test_model_mode_and_device_kept(honest, test_set) -> None:
    honest.train()
    evaluate(honest, test_set, [{"type": "fgsm", "eps": [0.1]}], progress=False, limit=20)
    assert honest.training
    honest.eval()


def test_dynamic_defense_is_detected(test_set) -> None:
    x = test_set.tensors()[0][:2]
    calls = autograd_calls_in_forward(GradInForward(), x)
    assert calls and "grad" in calls[0] and "test_evaluation.py" in calls[0]
    assert autograd_calls_in_forward(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), x) == []
    result = evaluate(GradInForward(), test_set, [{"type": "fgsm", "eps": [0.1]}], progress=False, limit=10)
    check = checks_of(result)["dynamic_defense"]
    assert check is False


def test_transfer_without_weights_is_skipped_with_a_reason(honest, test_set) -> None:
    # SVHN cannot be trained here (no copy of the data), so deq_svhn never has shipped weights.
    spec = [{"type": "fgsm", "eps": [0.1]}, {"type": "transfer", "source": "deq_svhn", "eps": [0.1]}]
    result = evaluate(honest, test_set, spec, dataset="mnist", progress=False, limit=10)
    transfer = result["attacks"][1]
    assert "deq_svhn" in transfer["skipped"] and transfer["results"][0]["accuracy"] is None
    assert result["worst_case"][0]["attacks"] == ["fgsm"]


def test_transfer_from_the_shipped_deq_baseline_runs(honest, test_set) -> None:
    assert "deq_mnist" in lz.list_models(pretrained=True)
    spec = [{"type": "transfer", "source": "deq_{dataset}", "attack": {"type": "pgd", "steps": 5}, "eps": [0.3]}]
    result = evaluate(honest, test_set, spec, dataset="mnist", progress=False, limit=10)
    transfer = result["attacks"][0]
    assert not transfer.get("skipped")
    accuracy = transfer["results"][0]["accuracy"]
    assert accuracy is not None and accuracy <= result["clean"]["accuracy"]


def test_shipped_suites() -> None:
    paper = load_suite("paper", "mnist")
    assert [a["type"] for a in paper["attacks"]] == ["ifgsm", "pgd"]
    for attack in paper["attacks"]:
        assert [round(e * 255, 6) for e in attack["eps"]] == [2, 4, 6, 8]
        built = [lz.get_component("attack", attack["type"])(eps=e, **attack["options"]) for e in attack["eps"]]
        assert [a.steps for a in built] == [2, 5, 7, 10]
    strong = load_suite("strong", "cifar10")
    types = {a["type"] for a in strong["attacks"]}
    assert types == {"ifgsm", "pgd", "apgd", "fgsm", "transfer", "square", "autoattack", "intermediate", "divergence"}
    assert all(a["eps"][-1] == pytest.approx(32 / 255) for a in strong["attacks"])
    assert load_suite("strong", "mnist")["attacks"][0]["eps"][-1] == pytest.approx(0.3)
    transfer = next(a for a in strong["attacks"] if a["type"] == "transfer")
    assert transfer["options"]["source"] == "deq_cifar10"
    assert any(a["options"].get("grad_mode") == "unroll" for a in strong["attacks"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([{"type": "pdg", "eps": [0.1]}], "Did you mean 'pgd'"),
        ([{"type": "pgd", "eps": [0.1], "stepz": 3}], "Did you mean 'steps'"),
        ([{"type": "pgd"}], "give 'eps'"),
        ([{"type": "pgd", "eps": ["eight"]}], "not a number"),
        ([{"type": "pgd", "eps": [0.1], "subset": "some"}], "subset"),
        ([{"type": "pgd", "eps": [0.1]}, {"type": "pgd", "eps": [0.2]}], "used twice"),
        ([{"type": "pgd", "eps": [0.1], "loss": "hinge"}], "loss: expected one of 'ce', 'cw', 'dlr', got 'hinge'"),
        ({"attacks": [{"type": "pgd", "eps": [0.1]}], "chekcs": {}}, "Did you mean 'checks'"),
        ("papr", "Did you mean 'paper'"),
    ],
)
def test_suite_errors(spec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_suite(spec, "mnist")


def test_checks_come_in_the_documented_order(honest_result: dict) -> None:
    # the suite runs the paper's PGD and a longer one: paper_budget follows the fixed checks
    assert tuple(c["name"] for c in honest_result["checks"]) == (*CHECK_NAMES, "paper_budget")
    assert all(set(c) == {"name", "passed", "level", "detail"} for c in honest_result["checks"])


def test_result_file_round_trip_and_bad_files(honest_result: dict, tmp_path: Path) -> None:
    path = write_result(honest_result, tmp_path / "deep" / "r.json")
    assert read_result(path) == honest_result
    (tmp_path / "other.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(DataFormatError, match="not an lz.evaluate result"):
        read_result(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{oops")
    with pytest.raises(DataFormatError, match="not readable JSON"):
        read_result(tmp_path / "broken.json")


def test_resolve_model_says_where_the_weights_come_from(honest: nn.Module) -> None:
    assert resolve_model(honest) == (honest, {"source": "Sequential", "weights": "given"})
    model, source = resolve_model("lyadeq_mnist")
    assert source == {"source": "lyadeq_mnist", "weights": "pretrained"} and dataset_name(model) == "mnist"
    config = lz.configs_dir() / "mnist" / "deq.yaml"
    with pytest.warns(RandomWeightsWarning, match="RANDOMLY INITIALISED"):
        _, source = resolve_model(str(config))
    assert source["weights"] == "random"
    with pytest.warns(RandomWeightsWarning):
        _, source = resolve_model("lyadeq_mnist", pretrained=False)
    assert source["weights"] == "random"


@pytest.mark.parametrize(
    ("spec", "options", "error", "message"),
    [
        ("deq_svhn", {"pretrained": True}, ValueError, "no pretrained weights yet"),
        ("deq_svhn", {"require_weights": True}, ValueError, "a random model transfers nothing"),
        (str(lz.configs_dir() / "mnist" / "deq.yaml"), {"require_weights": True}, ValueError, "pass a checkpoint"),
        ("lyadeq_mnst", {}, lz.UnknownComponentError, "lyadeq_mnist"),
    ],
)
def test_resolve_model_refuses_what_it_cannot_give(spec: str, options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        resolve_model(spec, **options)


def test_the_papers_schedule_is_judged_apart_from_the_suites_own_budgets(honest, test_set) -> None:
    # At eps 12/255 the paper's PGD (15 steps of 1/255) leaves images that PGD-40 breaks: that is the protocol's
    # weakness (paper_budget, info), not a sign that the suite's own budgets did not converge.
    specs = [
        {"name": "PGD", "type": "pgd", "eps": ["12/255"]},
        {"name": "PGD-40", "type": "pgd", "steps": 40, "eps": ["12/255"], "subset": "remaining"},
    ]
    result = evaluate(honest, test_set, specs, dataset="mnist", progress=False, batch_size=64)
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["paper_budget"]["passed"] is False and checks["paper_budget"]["level"] == "info"
    assert "PGD-40 @ 12/255 break" in checks["paper_budget"]["detail"]
    assert checks["more_iterations"]["passed"] is None  # no pair of the suite's own budgets
    # a second budget of the suite's own is compared with the first, and converged here
    specs.append({"name": "PGD-40x3", "type": "pgd", "steps": 40, "restarts": 3, "eps": ["12/255"],
                  "subset": "remaining"})
    result = evaluate(honest, test_set, specs, dataset="mnist", progress=False, batch_size=64)
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["more_iterations"]["passed"] is True and "1 budget comparison" in checks["more_iterations"]["detail"]
    assert "PGD-40, PGD-40x3 @ 12/255 break" in checks["paper_budget"]["detail"]  # every larger budget together
