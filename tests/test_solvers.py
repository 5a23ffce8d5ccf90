"""Fixed-point solvers: convergence, per-sample stopping, honest residuals, dtypes, registry and validation."""

from __future__ import annotations

import pytest
import torch

import lyadeq_zoo as lz
from lyadeq_zoo.config import ConfigError, validate_component
from lyadeq_zoo.deq.solvers import anderson, naive, residuals

SOLVERS = ["anderson", "broyden", "naive"]
DTYPES = [torch.float32, torch.float64]


def contractive_map(n: int, d: int, rho: float | torch.Tensor, dtype: torch.dtype, x_scale: float = 1.0) -> tuple:
    """``z -> tanh(s_i · W z + x_i)`` with ``||W||_2 = 1``: a contraction with factor ``<= s_i`` per sample."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(d, d, generator=gen, dtype=torch.float64)
    weight = weight + weight.T  # symmetric: spectral radius = norm, so the contraction is really ~s_i
    weight = (weight / torch.linalg.matrix_norm(weight, 2)).to(dtype)
    x = x_scale * torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
    scale = torch.as_tensor(rho, dtype=dtype).reshape(-1, 1).expand(n, 1)

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(scale * (z @ weight.T) + x)

    return f, x


def solve(name: str, f, z0: torch.Tensor, **options):
    with torch.no_grad():
        return lz.get_component("solver", name)(f, z0, **options)


def test_registered_and_validated_by_signature() -> None:
    assert {"anderson", "broyden", "naive"} <= set(lz.list_components("solver"))
    spec = {"type": "anderson", "max_iter": 10, "tol": 1e-3, "m": 4, "beta": 0.9, "lam": 1e-4}
    validate_component("solver", spec, ("solver",))
    with pytest.raises(ConfigError, match="accepts no key 'mm'"):
        validate_component("solver", {"type": "anderson", "mm": 4}, ("solver",))
    # f and z0 are positional-only: they are not config keys.
    with pytest.raises(ConfigError, match="accepts no key 'z0'"):
        validate_component("solver", {"type": "naive", "z0": 0}, ("solver",))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SOLVERS)
def test_converges_and_agrees_with_naive(name: str, dtype: torch.dtype) -> None:
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    f, x = contractive_map(16, 24, 0.8, dtype)
    z, info = solve(name, f, torch.zeros_like(x), max_iter=200, tol=tol)
    assert z.dtype == dtype and z.shape == x.shape
    assert info["converged"].all()
    assert (info["rel_residual"] <= tol).all()
    assert info["nstep"].dtype == torch.int64 and info["nstep"].shape == (16,)
    # The reported residual is the one of the returned point.
    abs_r, rel_r = residuals(z, f(z))
    torch.testing.assert_close(info["rel_residual"], rel_r)
    torch.testing.assert_close(info["abs_residual"], abs_r)
    # Same fixed point as a long plain iteration (contraction 0.8: error <= residual / 0.2).
    ref, _ = solve("naive", f, torch.zeros_like(x), max_iter=400, tol=tol / 10)
    assert (z - ref).norm(dim=1).max() <= 20 * tol * ref.norm(dim=1).max()
    assert int(info["n_f_evals"]) == int(info["nstep"].max())


@pytest.mark.parametrize("name", SOLVERS)
def test_per_sample_stopping_matches_solving_each_sample_alone(name: str) -> None:
    rho = torch.tensor([0.1, 0.5, 0.9, 0.97], dtype=torch.float64)
    f, x = contractive_map(4, 12, rho, torch.float64, x_scale=0.3)
    z, info = solve(name, f, torch.zeros_like(x), max_iter=300, tol=1e-9)
    assert info["converged"].all()
    steps = info["nstep"].tolist()
    assert len(set(steps)) > 1, f"per-sample steps should differ with the contraction, got {steps}"
    assert steps[0] < steps[3]
    # Freezing a converged sample must leave it exactly where a solve of that sample alone stops.
    for i in range(4):
        fi, xi = contractive_map(4, 12, rho, torch.float64, x_scale=0.3)

        def single(zi: torch.Tensor, i: int = i, fi=fi) -> torch.Tensor:
            full = torch.zeros_like(x)
            full[i] = zi[0]
            return fi(full)[i : i + 1]

        zi, info_i = solve(name, single, torch.zeros_like(xi[i : i + 1]), max_iter=300, tol=1e-9)
        assert info_i["nstep"].item() == steps[i]
        torch.testing.assert_close(zi[0], z[i], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SOLVERS)
def test_non_convergence_is_reported_not_hidden(name: str) -> None:
    f, x = contractive_map(6, 16, 0.999, torch.float64, x_scale=0.05)
    z, info = solve(name, f, torch.zeros_like(x), max_iter=3, tol=1e-12)
    assert not info["converged"].any()
    assert (info["rel_residual"] > 1e-12).all()
    assert int(info["n_f_evals"]) == 3
    _, rel_r = residuals(z, f(z))
    torch.testing.assert_close(info["rel_residual"], rel_r)


def test_anderson_needs_fewer_f_evals_than_naive_on_a_slow_map() -> None:
    f, x = contractive_map(32, 32, 0.98, torch.float64, x_scale=0.05)
    _, info_naive = solve("naive", f, torch.zeros_like(x), max_iter=2000, tol=1e-8)
    _, info_anderson = solve("anderson", f, torch.zeros_like(x), max_iter=2000, tol=1e-8)
    assert info_naive["converged"].all() and info_anderson["converged"].all()
    assert int(info_anderson["n_f_evals"]) * 3 < int(info_naive["n_f_evals"])


@pytest.mark.parametrize("name", SOLVERS)
def test_trailing_dims_and_nan_sample_isolated(name: str) -> None:
    f_flat, x = contractive_map(5, 2 * 3 * 4, 0.7, torch.float32)
    x = x.clone()
    x[2] = float("nan")  # one broken sample must not spoil the others

    def f(z: torch.Tensor) -> torch.Tensor:  # (N, 2, 3, 4) states
        return torch.tanh(0.7 * (z.flatten(1) @ torch.eye(24)) + x).view_as(z)

    z, info = solve(name, f, torch.zeros(5, 2, 3, 4), max_iter=100, tol=1e-5)
    assert z.shape == (5, 2, 3, 4)
    ok = torch.tensor([True, True, False, True, True])
    assert info["converged"].tolist() == ok.tolist()
    assert torch.isfinite(z[ok]).all()
    assert not torch.isfinite(info["rel_residual"][2])  # returned with its (NaN) residual, not replaced


@pytest.mark.parametrize("name", SOLVERS)
def test_non_contractive_map_returns_its_best_point_honestly(name: str) -> None:
    # |f'| up to 2.7: plain iteration oscillates, Broyden may overshoot and restart.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 6, generator=gen, dtype=torch.float64)

    def f(z: torch.Tensor) -> torch.Tensor:
        return 0.9 * torch.sin(3.0 * z) + x

    z0 = torch.zeros_like(x)
    z, info = solve(name, f, z0, max_iter=40, tol=1e-10)
    assert torch.isfinite(z).all()
    _, rel_r = residuals(z, f(z))
    torch.testing.assert_close(info["rel_residual"], rel_r)
    assert (info["rel_residual"] <= residuals(z0, f(z0))[1]).all()  # never worse than the start
    assert (info["converged"] == (info["rel_residual"] <= 1e-10)).all()


@pytest.mark.parametrize("name", SOLVERS)
def test_bad_arguments_are_rejected(name: str) -> None:
    solver = lz.get_component("solver", name)
    f, x = contractive_map(2, 3, 0.5, torch.float32)
    with pytest.raises(ValueError, match="max_iter"):
        solver(f, x, max_iter=0)
    with pytest.raises(ValueError, match="floating-point"):
        solver(f, torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="keep the state shape"):
        solver(lambda z: z[:, :2], torch.zeros(2, 3))
    with pytest.raises(TypeError):
        solver(f, x, 10)  # options are keyword-only


def test_anderson_options() -> None:
    f, x = contractive_map(8, 16, 0.9, torch.float64, x_scale=0.1)
    for options in ({"m": 1}, {"m": 3, "beta": 0.7}, {"lam": 0.0}):
        z, info = anderson(f, torch.zeros_like(x), max_iter=300, tol=1e-10, **options)
        assert info["converged"].all(), options
    with pytest.raises(ValueError, match="beta"):
        anderson(f, x, beta=0.0)
    with pytest.raises(ValueError, match="damping"):
        naive(f, x, damping=1.0)


def test_naive_damping_and_already_converged_start() -> None:
    f, x = contractive_map(4, 8, 0.5, torch.float64)
    z, info = naive(f, torch.zeros_like(x), max_iter=500, tol=1e-12, damping=0.5)
    assert info["converged"].all()
    z2, info2 = anderson(f, z, max_iter=10, tol=1e-10)  # start at the fixed point: no step taken
    assert info2["nstep"].tolist() == [1, 1, 1, 1] and int(info2["n_f_evals"]) == 1
    assert torch.equal(z2, z)
