"""Stability under attack: the solver's statistics at each image's worst-case adversarial input in ``lz.evaluate``'s
result (``worst_case[*].solver_converged`` ...), recomputed independently, and how the table, the model card and the
results page show them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import lyadeq_zoo as lz
from lyadeq_zoo.attacks import create_attack
from lyadeq_zoo.evaluation import format_table
from lyadeq_zoo.evaluation.result import NOTES
from lyadeq_zoo.evaluation.results_page import ModelEntry
from lyadeq_zoo.evaluation.results_page.figure import curve_figure, stability_models
from lyadeq_zoo.evaluation.results_page.tables import results_table
from lyadeq_zoo.evaluation.under_attack import CERTIFICATE_RTOL, STABILITY_NOTE, WorstCaseStability
from lyadeq_zoo.hub import model_card

EPS = (0.05, 0.3)
SUITE = [  # every attack seeded, so that the test can replay it exactly
    {"name": "PGD", "type": "pgd", "steps": 3, "seed": 0, "eps": list(EPS)},
    {"name": "Intermediate", "type": "intermediate", "steps": 3, "iterates": 3, "seed": 0, "subset": "remaining",
     "eps": list(EPS)},
    {"name": "Divergence", "type": "divergence", "steps": 3, "seed": 0, "subset": "remaining", "eps": list(EPS)},
    {"name": "FGSM", "type": "fgsm", "eps": list(EPS)},  # subset all, last: the unbroken images' last attack
]
STABILITY_KEYS = ("solver_converged", "residual_median", "residual_max")


def slow_solving_model(make_tiny_model: Callable[..., nn.Module], lyapunov: bool) -> nn.Module:
    """A tiny DEQ whose solve converges on some inputs and not on others (a less contractive cell, 10 evaluations)."""
    return make_tiny_model(
        lyapunov=lyapunov,
        cell={"type": "paper_mlp", "norm": "batch", "out_scale": 3.0},
        solver={"type": "anderson", "max_iter": 10, "tol": 1e-4},
    )


def digits_for(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """24 shipped MNIST digits: the first 18 labelled with the model's own prediction (clean-correct), the last 6
    with a label the model does not predict (clean-misclassified, never attacked)."""
    x, _ = lz.get_component("dataset", "mnist")(split="test", root="sample", limit=24).tensors()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[18:] = (y[18:] + 1) % 10
    return x, y


def replay(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[dict[float, torch.Tensor], dict[tuple[str, float], int]]:
    """The worst-case inputs at each eps of ``EPS`` by the documented rule, recomputed from the suite in its order
    (per attack, the eps ascending): the clean image for a clean mistake, the example of the first run that broke
    the image at that eps or a smaller one (the balls are nested), else of the last run at that eps that ran on it.
    Also each (attack, eps) run's count of returned inputs at which the solve did not converge."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    worst = {eps: x.clone() for eps in EPS}
    settled = {eps: ~correct for eps in EPS}
    alive = {eps: correct.clone() for eps in EPS}
    not_converged = {}
    for spec in SUITE:
        options = {k: v for k, v in spec.items() if k not in ("name", "type", "eps", "subset")}
        for eps in sorted(EPS):
            targets = correct if spec.get("subset", "all") == "all" else alive[eps]
            idx = targets.nonzero().squeeze(1)
            if idx.numel() == 0:  # nothing left to attack (lz.evaluate then runs nothing either)
                not_converged[spec["name"], eps] = 0
                continue
            x_adv = create_attack(spec["type"], eps=eps, **options)(model, x[idx], y[idx])
            with torch.no_grad():
                broken = model(x_adv).argmax(1) != y[idx]
            fresh = ~settled[eps][idx]
            worst[eps][idx[fresh]] = x_adv[fresh]
            for larger in (e for e in EPS if e >= eps):  # a break counts at every eps whose ball holds it
                hit = broken & ~settled[larger][idx]
                worst[larger][idx[hit]] = x_adv[hit]
                settled[larger][idx[hit]] = True
                alive[larger][idx[broken]] = False
            not_converged[spec["name"], eps] = int((~lz.stability_report(model, x_adv)["converged"]).sum())
    return worst, not_converged


@pytest.fixture(params=[True, False], ids=["lyadeq", "deq"])
def evaluated(
    request: pytest.FixtureRequest, make_tiny_model: Callable[..., nn.Module]
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(model, images, labels, lz.evaluate result of SUITE) for the slow-solving tiny LyaDEQ and plain DEQ."""
    model = slow_solving_model(make_tiny_model, lyapunov=request.param)
    x, y = digits_for(model)
    result = lz.evaluate(model, TensorDataset(x, y), SUITE, progress=False, batch_size=64, checks=False)
    return model, x, y, result


def test_worst_case_entries_carry_the_stability_keys(evaluated) -> None:
    model, _, _, result = evaluated
    lyapunov = model.lyapunov is not None
    assert len(result["worst_case"]) == len(EPS)
    for item in result["worst_case"]:
        for key in STABILITY_KEYS:
            assert key in item
        assert 0.0 <= item["solver_converged"] <= 1.0
        assert ("lyapunov_certified" in item) == lyapunov
        if lyapunov:
            assert 0.0 <= item["lyapunov_certified"] <= 1.0
        assert 0.0 <= item["residual_median"] <= item["residual_max"]
    assert result["worst_case"][-1]["solver_converged"] < 1.0  # the solve fails somewhere: the number means something
    for attack in result["attacks"]:
        for item in attack["results"]:
            count = item["solver_not_converged"]
            assert isinstance(count, int) and 0 <= count <= item["attacked"]
    assert result["notes"] == [*NOTES, STABILITY_NOTE]
    assert result["timing"]["stability_seconds"] >= 0


def test_worst_case_stability_matches_an_independent_recomputation(evaluated) -> None:
    model, x, y, result = evaluated
    n = x.shape[0]
    worst_inputs, not_converged = replay(model, x, y)
    for item in result["worst_case"]:
        eps = next(e for e in EPS if abs(e - item["eps"]) < 1e-9)
        report = lz.stability_report(model, worst_inputs[eps])
        assert item["solver_converged"] == pytest.approx(report["converged"].sum().item() / n)
        if "lyapunov_certified" in item:
            bound = CERTIFICATE_RTOL * (1 + report["lyapunov_value"].double().abs())
            certified = report["lyapunov_decrease"].double() <= bound
            assert item["lyapunov_certified"] == pytest.approx(certified.sum().item() / n)
        residual = report["rel_residual"].double()
        assert item["residual_max"] == pytest.approx(residual.max().item(), rel=1e-4)
        assert item["residual_median"] == pytest.approx(residual.median().item(), rel=1e-4)
        counts = {a["name"]: next(i for i in a["results"] if i["eps"] == item["eps"]) for a in result["attacks"]}
        assert {name: c["solver_not_converged"] for name, c in counts.items()} == {
            name: count for (name, e), count in not_converged.items() if e == eps
        }


def test_the_worst_case_input_rule() -> None:
    store = WorstCaseStability.empty(4, lyapunov=True)

    def stats(converged: list[bool], residual: float) -> dict[str, torch.Tensor]:
        k = len(converged)
        return {"rel_residual": torch.full((k,), residual, dtype=torch.float64),
                "converged": torch.tensor(converged), "certified": torch.tensor(converged)}

    store.record(torch.tensor([3]), stats([False], 0.5), settle=torch.tensor([True]))  # clean mistake: final
    store.record(torch.tensor([0, 1, 2]), stats([True, True, True], 1e-5), settle=torch.tensor([True, False, False]))
    store.record(torch.tensor([0, 1, 2, 3]), stats([False] * 4, 0.9), settle=torch.tensor([False, False, True, False]))
    store.record(torch.tensor([1]), stats([True], 2e-5), settle=torch.tensor([False]))  # a later, last attack
    # image 0: broken by the first attack (kept); 1: never broken, the last attack's; 2: broken by the second; 3: clean
    assert store.converged.tolist() == [True, True, False, False]
    assert store.rel_residual.tolist() == [1e-5, 2e-5, 0.9, 0.5]
    summary = store.summary()
    assert summary["solver_converged"] == 0.5 and summary["lyapunov_certified"] == 0.5
    assert summary["residual_max"] == 0.9 and summary["residual_median"] == 2e-5


def test_a_plain_network_gets_no_stability_keys() -> None:
    x, y = lz.get_component("dataset", "mnist")(split="test", root="sample", limit=16).tensors()
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    result = lz.evaluate(mlp, TensorDataset(x, y), SUITE, progress=False, checks=False)
    skipped = {a["name"]: a["skipped"] for a in result["attacks"]}
    assert "DEQ" in skipped["Intermediate"] and "DEQ" in skipped["Divergence"] and skipped["PGD"] is None
    assert all(not set(STABILITY_KEYS) & set(item) for item in result["worst_case"])
    assert all("solver_not_converged" not in i for a in result["attacks"] for i in a["results"])
    assert result["notes"] == NOTES and "stability_seconds" not in result["timing"]


def test_table_card_and_page_show_them_only_when_present(evaluated, tmp_path: Path) -> None:
    model, _, _, result = evaluated
    lyapunov = model.lyapunov is not None
    table = format_table(result)
    assert "| solver converged at the worst case |" in table
    assert ("| Lyapunov certified at the worst case |" in table) == lyapunov
    assert "| residual median / max at the worst case |" in table
    old = {**result, "worst_case": [{k: v for k, v in i.items() if k not in (*STABILITY_KEYS, "lyapunov_certified")}
                                     for i in result["worst_case"]]}
    assert "solver converged" not in format_table(old)

    card = model_card({"name": "tiny", "dataset": "mnist", "metrics": result})
    assert "| metric | value | solver converged (%) |" in card
    worst_row = next(line for line in card.splitlines() if line.startswith("| worst case @ eps 76.5/255"))
    converged = 100 * result["worst_case"][-1]["solver_converged"]
    assert worst_row.split("|")[3].strip() == f"{converged:.4g}"
    old_card = model_card({"name": "tiny", "dataset": "mnist", "metrics": old})
    assert "| metric | value |\n|---|---|\n" in old_card and "solver converged" not in old_card

    entry = ModelEntry(name="tiny_mnist", dataset="mnist", variant="tiny", meta={}, train={})
    entry.results = {"paper": old, "strong": result}
    head, rule, row = results_table([entry])[:3]
    assert head.endswith("| solver converged 2 / 4 / 6 / 8 |" + (" Lyapunov certified 2 / 4 / 6 / 8 |" * lyapunov))
    assert rule.count("---") == 10 + lyapunov and row.count("|") == head.count("|")
    assert stability_models([entry]) == [entry]
    assert curve_figure([entry], tmp_path / "figure.png").read_bytes()[:4] == b"\x89PNG"
    entry.results = {"paper": old, "strong": old}
    assert "solver converged" not in "\n".join(results_table([entry])) and stability_models([entry]) == []


def test_clean_solver_statistics_match_an_independent_recomputation(evaluated) -> None:
    model, x, _, result = evaluated
    solver = result["clean"]["solver"]
    report = lz.stability_report(model, x)
    steps = report["nstep"].double()
    assert solver["mean_steps"] == pytest.approx(round(steps.mean().item(), 3))
    assert solver["max_steps"] == steps.max().item()
    assert solver["converged"] == pytest.approx(report["converged"].sum().item() / x.shape[0])
    assert 0.0 < solver["converged"] < 1.0  # the slow-solving cell converges on some clean digits and not others
    if model.lyapunov is not None:
        bound = CERTIFICATE_RTOL * (1 + report["lyapunov_value"].double().abs())
        certified = (report["lyapunov_decrease"].double() <= bound).sum().item() / x.shape[0]
        assert solver["lyapunov_certified"] == pytest.approx(certified)
    else:
        assert "lyapunov_certified" not in solver
    assert f"solver at the clean inputs: {solver['mean_steps']:.2f} steps on average" in format_table(result)
    # a network without a DEQ has none
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    plain = lz.evaluate(mlp, TensorDataset(x, torch.zeros(x.shape[0], dtype=torch.long)), SUITE[:1], progress=False,
                        checks=False)
    assert "solver" not in plain["clean"] and "solver at the clean" not in format_table(plain)
