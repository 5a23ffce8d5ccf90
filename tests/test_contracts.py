"""Every registered component against its contract ("Component contracts" in docs/ARCHITECTURE.md).

The names come from ``lz.list_components(kind)`` for all ten kinds, so built-ins and installed plugins are
checked alike; a new component is checked with its default options unless ``TINY_OPTIONS`` / ``ATTACK_OPTIONS``
/ ``OBJECTIVE_OPTIONS`` give cheaper ones. Components that a test module registers for its own use (origin
``user``, e.g. at import time in test_config.py) are left to that module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.data.samples import available_samples
from lyadeq_zoo.deq.layer import override_backward
from lyadeq_zoo.registry import build_component, registry

COVERED_KINDS: set[str] = set()


def components(kind: str) -> list[str]:
    """The names of ``kind`` from the library and installed plugins (not those that test modules register)."""
    COVERED_KINDS.add(kind)
    reg = registry(kind)
    return [name for name in lz.list_components(kind) if reg.origin(name) != "user"]


# Small options so that every built-in builds and runs fast; other components get their defaults.
TINY_OPTIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("backbone", "resnet20"): {"widths": [4, 8], "blocks": 1},
    ("backbone", "timm"): {"model_name": "test_resnet"},
    ("lyapunov", "icnn"): {"hidden": [8, 8]},
}
ATTACK_OPTIONS: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 2},
    "ifgsm": {"steps": 2},
    "apgd": {"steps": 3},
    "square": {"n_queries": 10},
    "autoattack": {"version": "custom", "attacks_to_run": ["apgd-ce"], "n_iter": 3},
    "divergence": {"steps": 2},
    "intermediate": {"steps": 2},
}
OBJECTIVE_OPTIONS: dict[str, dict[str, Any]] = {"trades": {"steps": 2}, "pgd_at": {"steps": 2}}
# Architectures (model classes) are built from the tiny config (conftest.py) with their name as model.type;
# zoo entries are factories and need no config.
ARCHITECTURES_BUILT_FROM_TINY_CONFIG = ("deq_classifier",)
EPS = 0.1


def spec(kind: str, name: str) -> dict[str, Any]:
    return {"type": name, **TINY_OPTIONS.get((kind, name), {})}


def test_every_kind_is_checked_and_has_components() -> None:
    assert set(lz.KINDS) == COVERED_KINDS
    empty = [kind for kind in lz.KINDS if not components(kind)]
    assert not empty, f"no registered components of kind(s) {empty}"


# -- backbone: (in_chans, img_size, out_features, ...) -> images (N, C, H, W) -> (N, out_features) -------------
@pytest.mark.parametrize("name", components("backbone"))
@pytest.mark.parametrize("in_chans,img_size", [(1, 28), (3, 32)])
def test_backbone_maps_images_to_features(name: str, in_chans: int, img_size: int) -> None:
    net = build_component("backbone", spec("backbone", name), in_chans=in_chans, img_size=img_size, out_features=6)
    out = net(torch.rand(2, in_chans, img_size, img_size))
    assert out.shape == (2, 6) and torch.isfinite(out).all()


# -- cell: (width, ...) -> forward(z, x) with z, x (N, width) -> (N, width) -----------------------------------
@pytest.mark.parametrize("name", components("cell"))
def test_cell_maps_state_and_injection_to_a_state(name: str) -> None:
    cell = build_component("cell", spec("cell", name), width=6)
    z, x = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    out = cell(z, x)
    assert out.shape == (4, 6) and torch.isfinite(out).all()
    grad_z, grad_x = torch.autograd.grad(out.square().sum(), (z, x))
    assert torch.isfinite(grad_z).all() and torch.isfinite(grad_x).all()


# -- solver: solve(f, z0, *, max_iter, tol) -> (z_star, info) with per-sample nstep / rel_residual ------------
def contraction(n: int = 5, d: int = 7) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z -> 0.5 tanh(A z) + b_i`` with ``||A||_2 = 1``: a contraction (factor 0.5) per sample, float64."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    a = a / torch.linalg.matrix_norm(a, 2)
    b = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return lambda z: 0.5 * torch.tanh(z @ a.T) + b


@pytest.mark.parametrize("name", components("solver"))
def test_solver_reaches_the_fixed_point_and_reports_per_sample(name: str) -> None:
    f, tol = contraction(), 1e-10
    z0 = torch.zeros(5, 7, dtype=torch.float64)
    reference = z0
    for _ in range(200):  # error <= 0.5^200 of the start: the exact fixed point in float64
        reference = f(reference)
    with torch.no_grad():
        z_star, info = lz.get_component("solver", name)(f, z0, max_iter=100, tol=tol)
    assert z_star.shape == z0.shape and z_star.dtype == z0.dtype
    assert info["nstep"].shape == (5,) and info["nstep"].dtype == torch.int64
    assert info["rel_residual"].shape == (5,) and info["rel_residual"].is_floating_point()
    fz = f(z_star)
    rel = (fz - z_star).norm(dim=1) / (fz.norm(dim=1) + 1e-8)  # the contract's definition, at the returned z*
    torch.testing.assert_close(info["rel_residual"].double(), rel, rtol=1e-6, atol=1e-14)
    assert (rel <= tol).all()
    torch.testing.assert_close(z_star, reference, rtol=0, atol=1e-8)


# -- backward: mode(f, z0, solve) -> (z_star, info); same value whatever the mode, gradient in eval mode ------
@pytest.mark.parametrize("name", components("backward"))
def test_backward_mode_keeps_the_value_and_gives_an_input_gradient(
    name: str, tiny_model: nn.Module, mnist_digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = mnist_digits[0][:2], mnist_digits[1][:2]
    with torch.no_grad():
        expected = tiny_model(x)
    with override_backward(tiny_model, {"type": name}):
        x = x.clone().requires_grad_(True)
        logits = tiny_model(x)  # eval mode: attacks need this gradient
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(logits, y), x)
    torch.testing.assert_close(logits.detach(), expected)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# -- lyapunov: value(z) -> V (N,) >= 0 with V(0) = 0; project(z, F) -> (F_hat, info) that certifies decrease --
@pytest.mark.parametrize("name", components("lyapunov"))
def test_lyapunov_is_positive_definite_and_its_projection_certifies_decrease(name: str) -> None:
    ly = build_component("lyapunov", spec("lyapunov", name), width=6).double()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(16, 6, generator=gen, dtype=torch.float64) * 2
    F = torch.randn(16, 6, generator=gen, dtype=torch.float64) * 3
    F[:4] = -z[:4]  # dynamics that already decrease V on some samples
    v = ly.value(z)
    assert v.shape == (16,) and (v >= 0).all()
    torch.testing.assert_close(ly.value(torch.zeros(3, 6, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64))
    f_hat, info = ly.project(z, F)
    assert f_hat.shape == F.shape and torch.isfinite(f_hat).all()
    torch.testing.assert_close(info["lyapunov_value"], v)
    # The decrease certificate from an independent gradient: ∇V(z)ᵀF̂(z) + c·V(z) <= 0 (c = 0 if it has none).
    zg = z.clone().requires_grad_(True)
    (grad_v,) = torch.autograd.grad(ly.value(zg).sum(), zg)
    decrease = (grad_v * f_hat).sum(1) + getattr(ly, "c", 0.0) * v
    assert (decrease <= 1e-8).all()
    torch.testing.assert_close(info["lyapunov_decrease"], decrease.detach())


# -- head: (in_features, num_classes, ...) -> (N, in_features) -> (N, num_classes) ---------------------------
@pytest.mark.parametrize("name", components("head"))
def test_head_maps_features_to_logits(name: str) -> None:
    head = build_component("head", spec("head", name), in_features=8, num_classes=5)
    out = head(torch.randn(3, 8))
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


# -- attack: attack(model, x, y) -> x_adv in the eps-ball and in [0, 1], model mode restored -------------------
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", components("attack"))
def test_attack_stays_in_the_threat_model_and_restores_the_mode(
    name: str,
    training: bool,
    make_tiny_model: Callable[..., nn.Module],
    mnist_digits: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = mnist_digits[0][:4], mnist_digits[1][:4]
    model = make_tiny_model().train(training)
    options = dict(ATTACK_OPTIONS.get(name, {}))
    if name == "transfer":
        options["source"] = make_tiny_model(lyapunov=False, seed=1)
    attack = lz.create_attack(name, eps=EPS, seed=0, **options)
    modes = [m.training for m in model.modules()]
    x_adv = attack(model, x, y)
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1


# -- objective: (...) -> callable(model, x, y) -> (loss, logits) ----------------------------------------------
@pytest.mark.parametrize("name", components("objective"))
def test_objective_gives_a_loss_with_finite_gradients(
    name: str, tiny_model: nn.Module, mnist_digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = mnist_digits
    model = tiny_model.train()
    objective = build_component("objective", {"type": name, **OBJECTIVE_OPTIONS.get(name, {})})
    loss, logits = objective(model, x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert logits.shape == (x.shape[0], 10)
    assert all(m.training for m in model.modules())  # whatever mode its attack used, train mode is back
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


# -- dataset: (split="test", root=None, download=False, ...) -> (image (C, H, W) in [0, 1], int label) --------
@pytest.mark.parametrize("name", components("dataset"))
def test_dataset_sample_yields_images_in_unit_range_or_says_what_is_missing(name: str) -> None:
    dataset = lz.get_component("dataset", name)
    splits = available_samples().get(name)
    if not splits:
        with pytest.raises(FileNotFoundError) as err:
            dataset(split="test", root="sample")
        message = str(err.value)
        assert name in message and "no shipped sample" in message  # what is missing
        assert "root=" in message and "download=True" in message  # and how to get it
        return
    for split in splits:
        data = dataset(split=split, root="sample")
        assert len(data) > 0
        for i in range(0, len(data), max(1, len(data) // 10)):
            image, label = data[i]
            assert image.dtype == torch.float32 and image.dim() == 3
            assert image.min().item() >= 0 and image.max().item() <= 1
            assert isinstance(label, int)


# -- model: zoo factories and architectures -> images in [0, 1] (N, C, H, W) -> logits (N, classes) ------------
def build(name: str, tiny_config: dict[str, Any]) -> nn.Module:
    """Zoo entry ``name`` (random init), or architecture ``name`` built from ``tiny_config``."""
    entry = lz.get_component("model", name)
    if not inspect.isclass(entry):
        return lz.create_model(name)
    assert issubclass(entry, nn.Module), f"architecture {name!r} is not an nn.Module class"
    if name not in ARCHITECTURES_BUILT_FROM_TINY_CONFIG:
        pytest.fail(f"no config to build architecture {name!r}: add it to ARCHITECTURES_BUILT_FROM_TINY_CONFIG "
                    f"(or give it a config of its own) in {__file__}")
    tiny_config["model"]["type"] = name
    return lz.build_model(tiny_config)


@pytest.mark.parametrize("name", components("model"))
def test_model_returns_logits_and_every_parameter_gets_a_gradient(name: str, tiny_model_config: dict) -> None:
    model = build(name, tiny_model_config).train()
    geometry = model.config["model"]
    size, classes = geometry["img_size"], geometry["num_classes"]
    x = torch.rand(2, geometry["in_chans"], *((size, size) if isinstance(size, int) else size))
    logits = model(x)
    assert logits.shape == (2, classes) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.arange(2) % classes).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{pname}: no finite gradient"
    info = getattr(model, "last_info", None)
    if info is not None:  # a DEQ model: per-sample, detached solver diagnostics of the last forward
        assert info["nstep"].shape == (2,) and info["rel_residual"].shape == (2,)
        assert all(not v.requires_grad for v in info.values())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, classes)
