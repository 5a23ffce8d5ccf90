"""Attacks on a small MLP trained here on the shipped real MNIST sample (about 0.5 s to train)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.attacks import (
    APGD,
    AttackNotApplicable,
    apgd_checkpoints,
    attack_loss,
    create_attack,
    margin,
    paper_steps,
    square_fraction,
)
from lyadeq_zoo.registry import UnknownComponentError

EPS = 0.1  # large enough that every attack must clearly lower the MLP's accuracy


def _mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = lz.get_component("dataset", "mnist")(split=split, root="sample")
    return data.tensors()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        raise RuntimeError("this model refuses to give gradients")


class NoGradientModel(nn.Module):
    """The wrapped model, but any backward pass through it raises: only logits are available."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_NoBackward.apply(x))


ATTACKS = {
    "fgsm": {},
    "ifgsm": {},
    "pgd": {"restarts": 2},
    "apgd": {"steps": 10},
    "square": {"n_queries": 200},
}


def test_paper_step_counts() -> None:
    # floor(min(e + 4, 1.25 e)) for e = 2, 4, 6, 8: min(6, 2.5), min(8, 5), min(10, 7.5), min(12, 10).
    assert [paper_steps(e / 255) for e in (2, 4, 6, 8)] == [2, 5, 7, 10]
    assert paper_steps(20 / 255) == 24  # Figure 4 goes to 20/255: min(24, 25)
    assert paper_steps(0.3) == 80  # e = 76.5: min(80.5, 95.6)
    for e in (2, 4, 6, 8):
        attack = create_attack("ifgsm", eps=f"{e}/255")
        assert attack.steps == paper_steps(e / 255)
        assert attack.alpha == pytest.approx(1 / 255)
        assert attack.random_start is False
    assert create_attack("pgd", eps="8/255").random_start is True
    madry = create_attack("pgd", eps="8/255", steps=40)
    assert madry.alpha == pytest.approx(2.5 * (8 / 255) / 40)


@pytest.mark.parametrize("name", sorted(ATTACKS) + ["transfer"])
def test_threat_model_flags_and_strength(name: str, trained_mlp) -> None:
    model, x, y = trained_mlp
    options = {"source": model} if name == "transfer" else ATTACKS[name]
    attack = create_attack(name, eps=EPS, seed=0, **options)
    frozen = model[1].weight
    frozen.requires_grad_(False)
    model.train()
    try:
        x_adv = attack(model, x, y)
        assert model.training  # mode left as it was
    finally:
        model.eval()
        frozen.requires_grad_(True)
    assert [p.requires_grad for p in model.parameters()] == [True] * 4
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient written
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    clean, robust = accuracy(model, x, y), accuracy(model, x_adv, y)
    assert clean > 0.8
    assert robust < clean - 0.3, f"{name}: {clean:.2f} -> {robust:.2f}"


def test_more_steps_and_restarts_at_least_as_strong(trained_mlp) -> None:
    model, x, y = trained_mlp
    weak = create_attack("pgd", eps="8/255", seed=0)
    strong = create_attack("pgd", eps="8/255", steps=40, restarts=3, seed=0)
    acc_weak = accuracy(model, weak(model, x, y), y)
    acc_strong = accuracy(model, strong(model, x, y), y)
    assert acc_weak < accuracy(model, x, y)
    assert acc_strong <= acc_weak + 1 / len(y)


def test_seeded_attacks_are_deterministic(trained_mlp) -> None:
    model, x, y = trained_mlp
    a = create_attack("pgd", eps="8/255", seed=3)(model, x[:50], y[:50])
    b = create_attack("pgd", eps="8/255", seed=3)(model, x[:50], y[:50])
    c = create_attack("pgd", eps="8/255", seed=4)(model, x[:50], y[:50])
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_square_needs_no_gradient(trained_mlp) -> None:
    model, x, y = trained_mlp
    blind = NoGradientModel(model)
    with pytest.raises(RuntimeError, match="refuses"):
        create_attack("pgd", eps=EPS)(blind, x, y)
    x_adv = create_attack("square", eps=EPS, n_queries=200, seed=0)(blind, x, y)
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.3


def test_square_schedule() -> None:
    assert square_fraction(0.8, 1, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 9000, 10000) == pytest.approx(0.8 / 512)
    assert square_fraction(0.8, 60, 1000) == pytest.approx(0.8 / 16)  # rescaled: 600 of 10,000


def test_apgd_checkpoints_follow_the_paper() -> None:
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (intervals shrink by .03 down to .06)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert all(0 < w < 10 for w in apgd_checkpoints(10))
    with pytest.raises(ValueError, match="at least 3 classes"):
        APGD(loss="dlr")(nn.Linear(4, 2), torch.rand(2, 4), torch.tensor([0, 1]))


def test_losses() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0])
    assert margin(logits, y).tolist() == [-2.0, 2.0]  # > 0 exactly when misclassified
    assert attack_loss("cw", logits, y).tolist() == [-2.0, 2.0]
    assert attack_loss("dlr", logits, y).tolist() == pytest.approx([-2 / 3, 2 / 2])
    # dlr is invariant to scaling the logits
    assert attack_loss("dlr", 7 * logits, y).tolist() == pytest.approx(attack_loss("dlr", logits, y).tolist())


def test_eps_zero_and_bad_inputs(trained_mlp) -> None:
    model, x, y = trained_mlp
    assert torch.equal(create_attack("pgd", eps=0)(model, x[:5], y[:5]), x[:5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        create_attack("pgd")(model, x[:5] * 2 - 0.5, y[:5])
    with pytest.raises(ValueError, match="one label per image"):
        create_attack("pgd")(model, x[:5], y[:4])
    with pytest.raises(ValueError, match="eps"):
        create_attack("pgd", eps=-1)


def test_create_attack_errors() -> None:
    with pytest.raises(UnknownComponentError, match="Did you mean 'pgd'"):
        create_attack("pdg")
    with pytest.raises(TypeError, match="Accepted options: .*steps"):
        create_attack("pgd", stepz=3)
    with pytest.raises(ValueError, match="unknown loss"):
        create_attack("pgd", loss="hinge")
    assert set(lz.list_components("attack")) >= {"fgsm", "ifgsm", "pgd", "apgd", "square", "transfer"}


def test_grad_mode_needs_a_deq(trained_mlp) -> None:
    model, x, y = trained_mlp
    with pytest.raises(AttackNotApplicable, match="DEQ"):
        create_attack("pgd", grad_mode="unroll")(model, x[:4], y[:4])


def test_grad_mode_on_a_deq_model() -> None:
    """Attack a (randomly initialised) zoo DEQ through the unrolled solver; its backward is restored."""
    from lyadeq_zoo.deq.layer import DEQLayer

    torch.manual_seed(0)
    model = lz.create_model("deq_mnist").eval()
    x, y = _mnist("test")
    x, y = x[:16], y[:16]
    layers = [m for m in model.modules() if isinstance(m, DEQLayer)]
    before = [dict(layer.backward_spec) for layer in layers]
    for mode in ("unroll", {"type": "phantom", "k": 3}, None):
        x_adv = create_attack("pgd", eps="8/255", steps=3, grad_mode=mode, seed=0)(model, x, y)
        assert (x_adv - x).abs().max().item() <= 8 / 255 + 1e-6
        assert not torch.equal(x_adv, x)  # the gradient reached the input
    assert [dict(layer.backward_spec) for layer in layers] == before
