"""Agreement with well-kept reference implementations (test-only dependencies, see pyproject's `dev`):
our solvers against torchdeq's on the same problem, our PGD against torchattacks' PGD with the same
settings on a small model trained here on real MNIST digits."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn
from torchdeq.solver import anderson_solver, broyden_solver, fixed_point_iter

import lyadeq_zoo as lz
from lyadeq_zoo.deq.solvers import anderson, broyden, naive


def contractive_problem(batch: int = 16, dim: int = 24, rho: float = 0.8, dtype=torch.float64):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(dim, dim, generator=gen, dtype=dtype)
    w = rho * w / torch.linalg.matrix_norm(w, ord=2)
    x = torch.randn(batch, dim, generator=gen, dtype=dtype)
    return (lambda z: torch.tanh(z @ w.T + x)), torch.zeros(batch, dim, dtype=dtype)


@pytest.mark.parametrize(
    ("ours", "theirs"), [(anderson, anderson_solver), (broyden, broyden_solver), (naive, fixed_point_iter)]
)
def test_solvers_reach_torchdeqs_fixed_point(ours, theirs) -> None:
    f, z0 = contractive_problem()
    reference = z0
    for _ in range(400):  # float64 plain iteration to machine precision
        reference = f(reference)
    z_ours, info = ours(f, z0, max_iter=200, tol=1e-9)
    z_theirs = theirs(f, z0, max_iter=200, tol=1e-9, stop_mode="rel")[0]
    scale = reference.norm(dim=1)
    assert bool(info["converged"].all())
    assert ((z_ours - reference).norm(dim=1) / scale).max() < 1e-5
    assert ((z_theirs - reference).norm(dim=1) / scale).max() < 1e-5
    assert ((z_ours - z_theirs).norm(dim=1) / scale).max() < 1e-5


@pytest.fixture(scope="module")
def small_mnist_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    data = lz.get_component("dataset", "mnist")(split="train", root="sample")
    x_train, y_train = data.tensors()
    test = lz.get_component("dataset", "mnist")(split="test", root="sample", limit=400)
    x_test, y_test = test.tensors()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(6):
        perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(epoch))
        for idx in perm.split(100):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    return model.eval(), x_test, y_test


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_pgd_matches_torchattacks_pgd(small_mnist_model) -> None:
    model, x, y = small_mnist_model
    clean = accuracy(model, x, y)
    assert clean > 0.85
    eps, alpha, steps = 0.1, 0.01, 20
    torch.manual_seed(1)
    theirs = accuracy(model, torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y), y)
    ifgsm = lz.create_attack("ifgsm", eps=eps, alpha=alpha, steps=steps)
    ours_attack = lz.create_attack(
        "pgd", eps=eps, alpha=alpha, steps=steps, random_start=True, track_best=False, seed=1
    )
    x_adv = ours_attack(model, x, y)
    ours = accuracy(model, x_adv, y)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert ours < clean - 0.3  # the attack does something on a model that is not robust at eps 0.1
    print(f"clean {clean:.3f} ours {ours:.3f} torchattacks {theirs:.3f}")
    assert abs(ours - theirs) <= 0.02, (ours, theirs)
    assert ours <= accuracy(model, ifgsm(model, x, y), y) + 0.01
