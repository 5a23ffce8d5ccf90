"""Training objectives: ce, TRADES, PGD-AT on a real zoo model and real MNIST sample images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.config import ConfigError, validate_component
from lyadeq_zoo.objectives import PGDAT, TRADES, CrossEntropy, module_mode
from lyadeq_zoo.registry import build_component


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = lz.get_component("dataset", "mnist")(split="train", root="sample", limit=16).tensors()
    return x, y


def _model() -> nn.Module:
    torch.manual_seed(0)
    return lz.create_model("lyadeq_mnist", solver={"max_iter": 10})


def test_registered_with_paper_defaults() -> None:
    assert {"ce", "trades", "pgd_at"} <= set(lz.list_components("objective"))
    trades = build_component("objective", {"type": "trades"})
    assert (trades.eps, trades.step_size, trades.steps, trades.beta) == (0.031, 0.007, 10, 6.0)
    pgd = build_component("objective", {"type": "pgd_at"})
    assert (pgd.eps, pgd.step_size, pgd.steps, pgd.random_start) == (0.031, 0.00784, 7, True)
    assert trades.attack_mode == pgd.attack_mode == "eval"


@pytest.mark.parametrize(
    "spec",
    [{"type": "ce"}, {"type": "trades", "steps": 2}, {"type": "pgd_at", "steps": 2}],
    ids=["ce", "trades", "pgd_at"],
)
def test_one_step_finite_loss_and_gradients(spec: dict, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    model = _model().train()
    objective = build_component("objective", spec)
    loss, logits = objective(model, x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert logits.shape == (x.shape[0], 10)
    assert model.training and all(m.training for m in model.modules())  # mode restored after the attack
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    before = [p.detach().clone() for p in model.parameters()]
    torch.optim.Adam(model.parameters(), lr=1e-3).step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("cls", [TRADES, PGDAT])
def test_adversarial_examples_respect_threat_model(cls: type, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    model = _model().train()
    objective = cls(eps=8 / 255, step_size=2 / 255, steps=3)
    x_adv = objective.perturb(model, x) if cls is TRADES else objective.perturb(model, x, y)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x).any()
    assert all(p.grad is None for p in model.parameters())  # the attack never writes parameter grads
    # The perturbation raises the attacked loss (eval mode, as during the inner maximisation).
    model.eval()
    with torch.no_grad():
        if cls is PGDAT:
            clean = nn.functional.cross_entropy(model(x), y)
            adv = nn.functional.cross_entropy(model(x_adv), y)
        else:
            p = nn.functional.softmax(model(x), 1)
            clean = torch.tensor(0.0)
            adv = nn.functional.kl_div(nn.functional.log_softmax(model(x_adv), 1), p, reduction="sum")
    assert adv > clean


class _ModeRecorder(nn.Module):
    """A tiny classifier that records the training flag of each forward call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.calls: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(self.training)
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_attack_mode_controls_inner_maximisation(mode: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    for objective, n_attack in ((TRADES(steps=2, attack_mode=mode), 3), (PGDAT(steps=2, attack_mode=mode), 2)):
        model = _ModeRecorder().train()
        objective(model, x, y)
        attack_calls, loss_calls = model.calls[:n_attack], model.calls[n_attack:]
        assert attack_calls == [mode == "train"] * n_attack
        assert loss_calls and all(loss_calls)  # the loss itself is computed in train mode
        assert model.training


def test_module_mode_restores_each_flag() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    model[1].eval()  # a deliberately frozen submodule keeps its own flag
    with module_mode(model, False):
        assert not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[1].training


def test_ce_matches_cross_entropy(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    model = _ModeRecorder()
    loss, logits = CrossEntropy()(model, x, y)
    assert torch.allclose(loss, nn.functional.cross_entropy(logits, y))


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="beta"):
        validate_component("objective", {"type": "trades", "betta": 1.0}, ("train", "objective"))
    with pytest.raises(ValueError, match="attack_mode"):
        TRADES(attack_mode="test")
    with pytest.raises(ValueError, match="eps"):
        PGDAT(eps=-0.1)
    with pytest.raises(ValueError, match="steps"):
        PGDAT(steps=1.5)


def test_adversarial_objectives_raise_robust_accuracy_over_ce() -> None:
    """On a tiny problem (an MLP on the 2,000 shipped MNIST training digits), TRADES and PGD-AT each give
    higher PGD accuracy than plain cross-entropy training with the same budget."""

    train = lz.get_component("dataset", "mnist")(split="train", root="sample")
    test = lz.get_component("dataset", "mnist")(split="test", root="sample", limit=300)
    x_train, y_train = train.tensors()
    x_test, y_test = test.tensors()
    eps = 0.1
    robust = {}
    for name in ("ce", "pgd_at", "trades"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
        spec = {"type": name} if name == "ce" else {"type": name, "eps": eps, "step_size": eps / 4, "steps": 5}
        objective = build_component("objective", spec)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        for epoch in range(4):
            perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(epoch))
            for idx in perm.split(100):
                model.train()
                loss, _ = objective(model, x_train[idx], y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        x_adv = lz.create_attack("pgd", eps=eps, alpha=eps / 8, steps=20, seed=0)(model, x_test, y_test)
        with torch.no_grad():
            robust[name] = (model(x_adv).argmax(1) == y_test).float().mean().item()
    print(robust)
    assert robust["pgd_at"] > robust["ce"] + 0.1, robust
    assert robust["trades"] > robust["ce"] + 0.1, robust
