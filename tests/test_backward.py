"""Backward modes and the DEQ layer: gradients vs. autograd through a long unrolled solve, eval-mode input
gradients, value independence from the mode, overrides, solver phase, and config validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.config import ConfigError
from lyadeq_zoo.deq.layer import DEQLayer, in_solver_phase, override_backward, override_solver

TIGHT = {"type": "anderson", "max_iter": 200, "tol": 1e-13}


class TanhCell(nn.Module):
    """``f(z, x) = tanh(W z + x + b)`` with ``||W||_2 = rho``; records whether each call is a solver step."""

    def __init__(self, width: int, rho: float = 0.7, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        weight = torch.randn(width, width, generator=gen, dtype=torch.float64)
        self.weight = nn.Parameter((rho * weight / torch.linalg.matrix_norm(weight, 2)).to(dtype))
        self.bias = nn.Parameter(0.1 * torch.randn(width, generator=gen, dtype=torch.float64).to(dtype))
        self.phases: list[bool] = []

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.phases.append(in_solver_phase())
        return torch.tanh(z @ self.weight.T + x + self.bias)


def reference_grads(cell: TanhCell, x: torch.Tensor, probe: torch.Tensor, steps: int = 300) -> list[torch.Tensor]:
    """Gradients of ``<z*, probe>`` w.r.t. (W, b, x) by autograd through a long plain iteration."""
    x = x.detach().requires_grad_()
    z = torch.zeros_like(x)
    for _ in range(steps):
        z = cell(z, x)
    return list(torch.autograd.grad((z * probe).sum(), [cell.weight, cell.bias, x]))


def layer_grads(layer: DEQLayer, x: torch.Tensor, probe: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    x = x.detach().requires_grad_()
    z, info = layer(x)
    grads = torch.autograd.grad((z * probe).sum(), [layer.cell.weight, layer.cell.bias, x])
    return list(grads), info


def inputs(n: int = 5, width: int = 8, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(n, width, generator=gen, dtype=torch.float64).to(dtype)
    probe = torch.randn(n, width, generator=gen, dtype=torch.float64).to(dtype)
    return x, probe


def assert_grads_close(got: list[torch.Tensor], want: list[torch.Tensor], rtol: float) -> None:
    for g, w, name in zip(got, want, ("weight", "bias", "x"), strict=True):
        err = ((g - w).norm() / w.norm()).item()
        assert err < rtol, f"gradient w.r.t. {name}: relative error {err:.2e} >= {rtol:.0e}"


def test_backward_modes_are_registered() -> None:
    assert {"ift", "phantom", "unroll"} <= set(lz.list_components("backward"))


@pytest.mark.parametrize("solver", ["anderson", "broyden", "naive"])
def test_ift_matches_autograd_through_long_unroll(solver: str) -> None:
    cell = TanhCell(8)
    x, probe = inputs()
    want = reference_grads(cell, x, probe)
    backward = {"type": "ift", "solver": {"type": solver, "max_iter": 300, "tol": 1e-13}}
    layer = DEQLayer(cell, solver={**TIGHT, "type": solver, "max_iter": 300}, backward=backward)
    got, info = layer_grads(layer, x, probe)
    assert info["converged"].all()
    assert_grads_close(got, want, 1e-9)
    adjoint = layer.backward_mode.last_backward_info
    assert adjoint is not None and adjoint["converged"].all() and (adjoint["rel_residual"] <= 1e-13).all()


def test_ift_passes_gradcheck() -> None:
    cell = TanhCell(4, rho=0.5)
    backward = {"type": "ift", "solver": {"type": "anderson", "max_iter": 100, "tol": 1e-14}}
    layer = DEQLayer(cell, solver={**TIGHT, "tol": 1e-14}, backward=backward)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp)[0], (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("solver", ["naive", "anderson", "broyden"])
def test_unroll_matches_autograd_through_long_unroll(solver: str) -> None:
    cell = TanhCell(8)
    x, probe = inputs()
    want = reference_grads(cell, x, probe)
    layer = DEQLayer(cell, solver={"type": solver, "max_iter": 300, "tol": 1e-12}, backward={"type": "unroll"})
    got, info = layer_grads(layer, x, probe)
    assert info["converged"].all()
    # Differentiating the converged iterations gives the implicit gradient (measured errors ~1e-11).
    assert_grads_close(got, want, 1e-8)


class BatchMeanCell(TanhCell):
    """``tanh(W z_i + x_i + b + 0.25 · mean_j z_j)``: each sample sees the batch, as with BatchNorm statistics."""

    couples_samples = True

    def __init__(self, width: int) -> None:
        super().__init__(width, rho=0.6)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return super().forward(z, x + 0.25 * z.mean(0, keepdim=True))


@pytest.mark.parametrize("solver", ["anderson", "broyden", "naive"])
def test_ift_of_a_cell_that_couples_samples(solver: str) -> None:
    # The forward and the adjoint solve both stop on the whole batch (one nstep for all samples), and the
    # gradient is the one of autograd through a long plain iteration of the coupled map.
    cell = BatchMeanCell(8)
    x, probe = inputs(n=6)
    want = reference_grads(cell, x, probe)
    spec = {"type": solver, "max_iter": 300, "tol": 1e-13}
    layer = DEQLayer(cell, solver=spec, backward={"type": "ift", "solver": spec})
    got, info = layer_grads(layer, x, probe)
    assert_grads_close(got, want, rtol=1e-9)
    adjoint = layer.backward_mode.last_backward_info
    assert info["converged"].all() and adjoint["converged"].all()
    assert len(set(info["nstep"].tolist())) == 1 and len(set(adjoint["nstep"].tolist())) == 1


@pytest.mark.parametrize("solver", ["anderson", "broyden", "naive"])
def test_unroll_through_whole_batch_stopping(solver: str) -> None:
    cell = BatchMeanCell(8)
    x, probe = inputs(n=6)
    want = reference_grads(cell, x, probe)
    layer = DEQLayer(cell, solver={"type": solver, "max_iter": 300, "tol": 1e-12}, backward={"type": "unroll"})
    got, info = layer_grads(layer, x, probe)
    assert info["converged"].all() and len(set(info["nstep"].tolist())) == 1
    assert_grads_close(got, want, 1e-8)


def test_phantom_tends_to_ift_as_k_grows() -> None:
    cell = TanhCell(8)
    x, probe = inputs()
    want = reference_grads(cell, x, probe)
    errors = []
    for k in (1, 5, 80):
        layer = DEQLayer(cell, solver=TIGHT, backward={"type": "phantom", "k": k, "damping": 0.5})
        got, _ = layer_grads(layer, x, probe)
        errors.append(max(((g - w).norm() / w.norm()).item() for g, w in zip(got, want, strict=True)))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-9, errors


@pytest.mark.parametrize("backward", [{"type": "ift"}, {"type": "phantom"}, {"type": "unroll"}])
def test_value_is_the_solver_output_whatever_the_mode(backward: dict) -> None:
    cell = TanhCell(8, dtype=torch.float32)
    x, _ = inputs(dtype=torch.float32)
    layer = DEQLayer(cell, solver={"type": "anderson", "max_iter": 30, "tol": 1e-4}, backward=backward)
    with torch.no_grad():
        z_plain, info_plain = layer(x)
    z_grad, info = layer(x.requires_grad_())
    assert z_grad.requires_grad and not z_plain.requires_grad
    torch.testing.assert_close(z_grad, z_plain, rtol=0, atol=0)
    torch.testing.assert_close(info["rel_residual"], info_plain["rel_residual"], rtol=0, atol=0)
    assert layer.last_info is info


class TinyModel(nn.Module):
    """Images -> linear features -> DEQ -> linear head, to check gradients reach the input."""

    def __init__(self, backward: dict) -> None:
        super().__init__()
        self.features = nn.Linear(12, 6)
        self.deq = DEQLayer(
            TanhCell(6, dtype=torch.float32),
            solver={"type": "anderson", "max_iter": 30, "tol": 1e-5},
            backward=backward,
        )
        self.head = nn.Linear(6, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z, _ = self.deq(self.features(images.flatten(1)))
        return self.head(z)


@pytest.mark.parametrize("backward", [{"type": "ift"}, {"type": "phantom", "k": 3}, {"type": "unroll"}])
def test_input_gradient_in_eval_mode(backward: dict) -> None:
    model = TinyModel(backward).eval()
    images = torch.rand(4, 1, 3, 4, requires_grad=True)
    loss = nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.deq.cell.weight.grad.abs().sum() > 0


def test_ift_hook_survives_repeated_backward() -> None:
    cell = TanhCell(8)
    x, probe = inputs()
    layer = DEQLayer(cell, solver=TIGHT, backward={"type": "ift", "solver": TIGHT})
    xg = x.clone().requires_grad_()
    z, _ = layer(xg)
    loss = (z * probe).sum()
    loss.backward(retain_graph=True)
    first = xg.grad.clone()
    loss.backward()
    torch.testing.assert_close(xg.grad, 2 * first)


@pytest.mark.parametrize("backward", [{"type": "ift"}, {"type": "phantom", "k": 3}, {"type": "unroll"}])
def test_graph_is_freed_without_the_cyclic_gc(backward: dict) -> None:
    # An attack runs thousands of forward + input-gradient steps: their graphs must be freed by reference
    # counting alone. (A backward hook that refers to the tensor it is registered on makes a cycle through
    # the graph; only gc.collect() frees it, and memory grew by ~25 MB per TRADES step before the fix.)
    import gc
    import weakref

    model = TinyModel(backward).eval()
    outputs: list[weakref.ref] = []
    handle = model.deq.cell.register_forward_hook(
        lambda module, args, out: outputs.append(weakref.ref(out)) if out.requires_grad else None
    )
    gc.collect()
    gc.disable()
    try:
        images = torch.rand(4, 1, 3, 4, requires_grad=True)
        loss = nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 0]))
        (grad,) = torch.autograd.grad(loss, images)
        assert grad.abs().sum() > 0 and outputs  # the cell ran with grad: there is something to free
        del loss, grad
        alive = [ref for ref in outputs if ref() is not None]
    finally:
        gc.enable()
        handle.remove()
    assert not alive, f"{len(alive)} of {len(outputs)} cell outputs outlived the step (a reference cycle)"


def test_solver_phase_marks_solver_calls() -> None:
    cell = TanhCell(8)
    x, _ = inputs()
    layer = DEQLayer(cell, solver={"type": "anderson", "max_iter": 30, "tol": 1e-6}, backward={"type": "ift"})
    with torch.no_grad():
        layer(x)
    assert cell.phases and all(cell.phases)
    cell.phases.clear()
    layer(x.requires_grad_())
    assert cell.phases[-1] is False and all(cell.phases[:-1])  # one final differentiable application
    cell.phases.clear()
    with override_backward(layer, {"type": "phantom", "k": 4}):
        layer(x)
    assert cell.phases[-4:] == [True, True, True, False]
    assert not in_solver_phase()


def test_override_backward_and_solver_swap_and_restore() -> None:
    model = TinyModel({"type": "ift"})
    original_mode, original_solver = model.deq.backward_mode, dict(model.deq.solver_spec)
    with override_backward(model, {"type": "unroll"}):
        assert model.deq.backward_spec == {"type": "unroll"}
        assert type(model.deq.backward_mode).__name__ == "Unroll"
    assert model.deq.backward_mode is original_mode and model.deq.backward_spec == {"type": "ift"}
    with override_backward(model, None):
        assert model.deq.backward_mode is original_mode
    with pytest.raises(RuntimeError, match="boom"), override_backward(model, {"type": "phantom"}):
        raise RuntimeError("boom")
    assert model.deq.backward_mode is original_mode

    with override_solver(model, max_iter=3, tol=0.0):
        assert model.deq.solver_spec == {**original_solver, "max_iter": 3, "tol": 0.0}
        model(torch.rand(2, 12))
        assert int(model.deq.last_info["n_f_evals"]) == 3
    with override_solver(model, type="naive", damping=0.2):
        assert model.deq.solver_spec == {"type": "naive", "damping": 0.2}
    assert model.deq.solver_spec == original_solver
    with pytest.raises(ConfigError, match="accepts no key 'dampin'"), override_solver(model, dampin=0.1):
        pass
    assert model.deq.solver_spec == original_solver
    with pytest.raises(ValueError, match="no DEQLayer"), override_backward(nn.Linear(2, 2), {"type": "ift"}):
        pass


def test_specs_are_validated() -> None:
    cell = TanhCell(4)
    with pytest.raises(ConfigError, match="accepts no key 'maxiter'"):
        DEQLayer(cell, solver={"type": "anderson", "maxiter": 3}, backward={"type": "ift"})
    with pytest.raises(ConfigError, match="unknown backward 'implicit'"):
        DEQLayer(cell, solver={"type": "anderson"}, backward={"type": "implicit"})
    with pytest.raises(ConfigError, match="backward.solver.type"):
        DEQLayer(cell, solver={"type": "anderson"}, backward={"type": "ift", "solver": {"type": "newton"}})
    with pytest.raises(ValueError, match="k must be >= 1"):
        DEQLayer(cell, solver={"type": "anderson"}, backward={"type": "phantom", "k": 0})
