"""The zoo's baselines without a DEQ (``plain_*``: ``deq_classifier`` with ``cell: null``): the same extractor,
normalisation and head as the DEQ models, no equilibrium; they train, say clearly that there is nothing to
solve, and attacks that need a DEQ layer are skipped rather than run against something else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lyadeq_zoo as lz
from lyadeq_zoo.attacks.gradients import has_deq_layer
from lyadeq_zoo.errors import AttackNotApplicable, ConfigError
from lyadeq_zoo.evaluation.results_page import collect_models
from lyadeq_zoo.evaluation.results_page.tables import results_table
from lyadeq_zoo.training import train

PLAIN = {"plain_mnist": "deq_mnist", "plain_cifar10": "deq_cifar10", "plain_trades_cifar10": "deq_cifar10"}


def _images(model: torch.nn.Module, n: int = 3) -> torch.Tensor:
    return torch.rand(n, model.in_chans, *model.img_size)


@pytest.mark.parametrize(("name", "deq_name"), PLAIN.items())
def test_plain_model_is_the_deq_models_extractor_and_head_without_the_deq(name: str, deq_name: str) -> None:
    model, deq = lz.create_model(name).eval(), lz.create_model(deq_name)
    assert model.deq is None and model.cell is None and model.lyapunov is None and not has_deq_layer(model)
    backbone = {k: v.shape for k, v in model.backbone.state_dict().items()}
    assert backbone == {k: v.shape for k, v in deq.backbone.state_dict().items()}
    assert model.num_features == deq.num_features == 64
    assert torch.equal(model.mean, deq.mean) and torch.equal(model.std, deq.std)
    assert set(model.state_dict()) == {f"backbone.{k}" for k in backbone} | {"head.fc.weight", "head.fc.bias"}
    x = _images(model)
    with torch.no_grad():
        expected = model.head(model.backbone((x - model.mean) / model.std))
        assert torch.equal(model(x), expected)
    assert model.last_info is None  # nothing was solved
    assert model.config["meta"]["baseline"] is True and model.config["meta"]["paper_table1"] is None


def test_plain_trades_has_the_objective_of_lyadeq_trades() -> None:
    plain, lyadeq = lz.zoo_config("plain_trades_cifar10"), lz.zoo_config("lyadeq_trades_cifar10")
    assert plain["train"] == lyadeq["train"]
    assert plain["model"]["backbone"] == lyadeq["model"]["backbone"]


def test_stability_report_says_there_is_no_deq() -> None:
    model = lz.create_model("plain_mnist").eval()
    with pytest.raises(TypeError, match=r"has no DEQ layer .*: it solves no equilibrium, so there is no solver"):
        lz.stability_report(model, _images(model))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lyapunov": {"type": "icnn"}}, r"model\.cell is null .*model\.lyapunov has no dynamics to stabilise"),
        ({"lyapunov": {"type": "icnn"}, "head_input": "corrected"}, r"model\.lyapunov has no dynamics"),
        ({"cell": {"type": "paper_mlp"}, "solver": None, "backward": None}, r"model\.solver and model\.backward is"),
        ({"cell": {"type": "paper_mlp"}, "backward": None}, r"model\.cell is set but model\.backward is null"),
    ],
)
def test_half_a_deq_is_refused(changes: dict, message: str) -> None:
    config = lz.zoo_config("plain_mnist")
    config["model"].update(changes)
    with pytest.raises(ConfigError, match=message):
        lz.build_model(config)


def test_solver_options_are_accepted_and_change_nothing() -> None:
    # One override for the whole zoo (e.g. a faster solver in a loop over lz.list_models()) works here too.
    torch.manual_seed(0)
    model = lz.create_model("plain_mnist", solver={"max_iter": 3}).eval()
    torch.manual_seed(0)
    default = lz.create_model("plain_mnist").eval()
    x = _images(model)
    with torch.no_grad():
        assert torch.equal(model(x), default(x))
    assert model.deq is None


def test_attacks_through_another_backward_do_not_apply_and_are_skipped() -> None:
    model = lz.create_model("plain_mnist", pretrained=True).eval()
    with pytest.raises(AttackNotApplicable, match="needs a model with DEQ layers"):
        lz.create_attack("pgd", eps=8 / 255, grad_mode="unroll").check_model(model)
    x, y = lz.get_component("dataset", "mnist")(split="test", root="sample", limit=8).tensors()
    suite = [
        {"name": "PGD", "type": "pgd", "eps": ["8/255"], "steps": 3},
        {"name": "PGD-unrolled", "type": "pgd", "eps": ["8/255"], "steps": 3, "grad_mode": "unroll"},
    ]
    result = lz.evaluate(model, [(x, y)], suite, progress=False)
    attacks = {a["name"]: a for a in result["attacks"]}
    assert "needs a model with DEQ layers" in attacks["PGD-unrolled"]["skipped"]
    assert not attacks["PGD"].get("skipped")
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["alternative_backward"]["passed"] is None  # not applicable, not a pass


def test_plain_model_trains(tmp_path: Path) -> None:
    config = lz.zoo_config("plain_mnist")
    config["data"] = {"type": "mnist", "root": "sample"}
    config["train"] = {"epochs": 2, "batch_size": 64, "limit_train": 256, "limit_test": 128, "final_eval": None,
                       "log_every_steps": 1, "checkpoint_every_steps": 4}
    result = train(config, tmp_path, progress=False)
    steps = [r for r in result.history if r["kind"] == "train"]
    epochs = [r for r in result.history if r["kind"] == "epoch"]
    assert steps[0]["loss"] > epochs[-1]["train_loss"] and epochs[-1]["test_acc"] > 0.3  # learns (chance: 0.1)
    assert all(r["nstep"] is None for r in steps)  # no solver, no step count
    reloaded = lz.create_model(f"local-dir:{tmp_path / 'final'}")
    assert reloaded.deq is None and set(reloaded.state_dict()) == set(result.model.state_dict())


def test_shipped_plain_mnist_card_and_results_page_place_it_first() -> None:
    model = lz.create_model("plain_mnist", pretrained=True)
    assert model.deq is None
    card = json.loads((lz.hub.shipped_folder(lz.hub.read_index()["plain_mnist"]["local_path"]) / "config.json")
                      .read_text())
    assert card["metrics"]["suite"] == "paper" and card["metrics"]["n"] == 10000
    assert card["metrics"]["strong"]["suite"] == "strong_cpu"
    models, _ = collect_models(Path("no such runs folder"))
    mnist = [m.name for m in models if m.dataset == "mnist"]
    assert mnist.index("plain_mnist") < mnist.index("deq_mnist")
    (plain,) = [m for m in models if m.name == "plain_mnist"]
    assert plain.baseline and plain.paper_row is None
    assert "| ↳ paper | not in the paper: a zoo baseline |" in "\n".join(results_table([plain]))
