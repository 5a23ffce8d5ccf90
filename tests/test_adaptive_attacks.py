"""DEQ-adaptive attacks: PGD through the solver's intermediate states (``intermediate``) and the solver-divergence
attack (``divergence``), on tiny DEQs built from the real registry (conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.attacks import AttackNotApplicable, Divergence, Intermediate, create_attack
from lyadeq_zoo.attacks.gradients import input_gradient
from lyadeq_zoo.attacks.intermediate import iterate_weights
from lyadeq_zoo.evaluation.checks import gather_evidence
from lyadeq_zoo.registry import register


class ZeroGradientBackward:
    """A backward mode that attaches nothing: the forward solve runs under no_grad, so z* carries no gradient.

    A model with it looks perfectly robust to every attack through its own gradient (the input gradient of a
    plain DEQ with ``head_input: state`` is exactly zero): gradient masking by construction.
    """

    def __call__(self, f: Callable, z0: torch.Tensor, solve: Callable) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            return solve(f, z0)


@pytest.fixture
def masked_deq(make_tiny_model: Callable[..., nn.Module], restore_registries: Any) -> Iterator[nn.Module]:
    """The tiny plain DEQ with the zero-gradient backward (registered for this test only)."""
    register("backward", "zero_gradient_for_test")(ZeroGradientBackward)
    yield make_tiny_model(lyapunov=False, backward={"type": "zero_gradient_for_test"})


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """32 shipped MNIST test digits (32, 1, 28, 28) in [0, 1] and their labels."""
    return lz.get_component("dataset", "mnist")(split="test", root="sample", limit=32).tensors()


def predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def fooled_fraction(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    return (predictions(model, x_adv) != y).float().mean().item()


def test_intermediate_breaks_what_the_masked_implicit_gradient_hides(masked_deq: nn.Module, digits) -> None:
    x, _ = digits
    y = predictions(masked_deq, x)  # the model's own labels: every sample starts correctly classified
    grad, _, _ = input_gradient(masked_deq, x, y, "ce")
    assert grad.abs().max().item() == 0.0  # the model's own gradient is masked completely
    eps = 0.1
    pgd_no_start = create_attack("pgd", eps=eps, steps=10, random_start=False, seed=0)(masked_deq, x, y)
    pgd = create_attack("pgd", eps=eps, steps=10, seed=0)(masked_deq, x, y)
    adaptive = create_attack("intermediate", eps=eps, steps=10, iterates=5, seed=0)(masked_deq, x, y)
    assert fooled_fraction(masked_deq, pgd_no_start, y) == 0.0  # a zero gradient never moves the input
    assert fooled_fraction(masked_deq, adaptive, y) >= 0.9
    assert fooled_fraction(masked_deq, adaptive, y) >= fooled_fraction(masked_deq, pgd, y) + 0.3


def test_path_logits_reach_the_models_logits_and_differentiate_without_the_backward(
    masked_deq: nn.Module, make_tiny_model: Callable[..., nn.Module], digits
) -> None:
    x, _ = digits
    model = make_tiny_model()  # LyaDEQ: the path goes through the Lyapunov stage as the forward does
    with torch.no_grad():
        path = model.path_logits(x, 60)
        assert len(path) == 60 and path[0].shape == (x.shape[0], 10)
        torch.testing.assert_close(path[-1], model(x), atol=1e-3, rtol=1e-3)  # plain iteration -> the same z*
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(masked_deq.path_logits(x_in, 3)[-1].logsumexp(1).sum(), x_in)
    assert grad.abs().sum() > 0  # the path carries a gradient where the model's own backward attaches none
    layer_path = masked_deq.deq.iterates(torch.zeros(2, 8), 4)
    assert len(layer_path) == 5 and torch.equal(layer_path[0], torch.zeros(2, 8))


def test_divergence_raises_the_residual_over_clean_inputs(make_tiny_model: Callable[..., nn.Module], digits) -> None:
    x, _ = digits
    # A budget of 4 solver evaluations with a tolerance no solve reaches: the residual the model reports is the lowest
    # its solver got to, the attack's objective when it is taken at the full budget (residual_at 4).
    model = make_tiny_model(solver={"type": "anderson", "max_iter": 4, "tol": 1e-6})
    y = predictions(model, x)
    x_adv = create_attack("divergence", eps=0.1, steps=10, residual_at=4, seed=0)(model, x, y)
    clean, attacked = lz.stability_report(model, x), lz.stability_report(model, x_adv)
    assert not clean["converged"].any() and not attacked["converged"].any()
    assert attacked["rel_residual"].median() > 1.3 * clean["rel_residual"].median()
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_divergence_finds_inputs_where_the_solve_fails(make_tiny_model: Callable[..., nn.Module], digits) -> None:
    x, _ = digits
    # A less contractive cell (out_scale 3) and a budget of 10: the solve converges on about half the clean digits.
    model = make_tiny_model(
        cell={"type": "paper_mlp", "norm": "batch", "out_scale": 3.0},
        solver={"type": "anderson", "max_iter": 10, "tol": 1e-4},
    )
    y = predictions(model, x)
    attack = create_attack("divergence", eps=0.1, steps=10, seed=0)
    assert attack.evaluations(model) == 5  # half the solver's budget by default
    clean = lz.stability_report(model, x)
    # r_k(x) with k the full budget (the solve without early stopping) is above tol exactly where the model's own
    # solve fails, and there it is the residual the model reports.
    residual, _ = create_attack("divergence", residual_at=10).budget_residual(model, x, gradient=False)
    failed = ~clean["converged"]
    assert 0 < failed.sum() < len(x)
    assert torch.equal(residual > 1e-4, failed)
    torch.testing.assert_close(residual[failed], clean["rel_residual"][failed])
    attacked = lz.stability_report(model, attack(model, x, y))
    assert (~attacked["converged"]).sum() >= failed.sum() + 6


@pytest.mark.parametrize("name", ["intermediate", "divergence"])
def test_not_applicable_without_a_deq_layer(name: str, digits) -> None:
    x, y = digits
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    with pytest.raises(AttackNotApplicable, match="DEQ"):
        create_attack(name, eps=0.1, steps=2)(mlp, x[:4], y[:4])


def test_the_masking_checks_count_them_as_another_gradient_path(tiny_model: nn.Module) -> None:
    suite = lz.evaluation.load_suite("strong_cpu", "mnist")
    runs = [
        {"spec": spec, "attack": create_attack(spec["type"], eps=spec["eps"][0], **spec["options"]), "skipped": None,
         "eps": spec["eps"][0], "outcome": torch.zeros(1, dtype=torch.int8)}
        for spec in suite["attacks"] if spec["type"] in ("pgd", "intermediate", "divergence")
    ]
    evidence = gather_evidence(runs, torch.ones(1, dtype=torch.bool), suite)
    alternative = {r["spec"]["name"] for r in evidence.alt}
    assert {"Intermediate", "Divergence", "PGD-unrolled"} <= alternative
    assert not alternative & {r["spec"]["name"] for r in evidence.multi}
    names = [a["name"] for a in suite["attacks"]]
    assert names.index("Divergence") < names.index("Square") < names.index("Transfer-DEQ")


def test_options() -> None:
    assert iterate_weights("uniform", 4) == [0.25] * 4
    assert iterate_weights("last", 3) == [0.0, 0.0, 1.0]
    assert sum(iterate_weights("increasing", 5)) == pytest.approx(1.0)
    attack = create_attack("intermediate", eps="8/255", steps=20, iterates=7, weighting="increasing")
    assert isinstance(attack, Intermediate) and attack.grad_mode["iterates"] == 7
    assert attack.alpha == pytest.approx(2.5 * (8 / 255) / 20) and attack.random_start
    assert isinstance(create_attack("divergence"), Divergence)
    assert create_attack("divergence").grad_mode == {"type": "unroll"}
    with pytest.raises(ValueError, match="weighting"):
        create_attack("intermediate", weighting="first")
    with pytest.raises(ValueError, match="iterates"):
        create_attack("intermediate", iterates=0)
    with pytest.raises(ValueError, match="residual_at"):
        create_attack("divergence", residual_at=0)
    with pytest.raises(TypeError, match="Accepted options"):
        create_attack("divergence", loss="ce")
