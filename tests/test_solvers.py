"""Fixed-point solvers: convergence, per-sample and whole-batch stopping, residuals true at the returned batch,
dtypes, registry and validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.config import ConfigError, validate_component
from lyadeq_zoo.deq.layer import DEQLayer, couples_samples
from lyadeq_zoo.deq.solvers import anderson, naive, residuals, run_solver

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


# --- samples coupled through the map (BatchNorm batch statistics): whole-batch stopping -----------------------


def coupled_map(n: int, d: int, dtype: torch.dtype = torch.float64) -> tuple:
    """``Z -> tanh(s_i · W z_i + c · mean_j z_j + x_i)``: sample i sees the batch mean, contraction <= 0.9.

    Per-sample factors ``s_i`` from 0.05 to 0.45 (``c = 0.45``) make the samples converge at very different
    speeds, so per-sample stopping would freeze some while the mean they see still moves.
    """
    f_single, x = contractive_map(n, d, torch.linspace(0.05, 0.45, n, dtype=torch.float64), dtype, x_scale=0.5)

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.atanh(f_single(z)) + 0.45 * z.mean(0, keepdim=True))

    return f, x


@pytest.mark.parametrize("max_iter", [6, 300])
@pytest.mark.parametrize("name", SOLVERS)
def test_coupled_statistics_are_true_at_the_returned_batch(name: str, max_iter: int) -> None:
    tol = 1e-9
    f, x = coupled_map(16, 10)
    z, info = solve(name, f, torch.zeros_like(x), max_iter=max_iter, tol=tol, coupled=True)
    abs_r, rel_r = residuals(z, f(z))  # measured again, independently, at the returned batch
    torch.testing.assert_close(info["rel_residual"], rel_r, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(info["abs_residual"], abs_r, rtol=1e-9, atol=1e-15)
    assert (rel_r[info["converged"]] <= tol).all()
    assert (info["converged"] == (rel_r <= tol)).all()
    assert len(set(info["nstep"].tolist())) == 1, "one iterate is returned for the whole batch"
    if max_iter == 300:
        assert info["converged"].all() and int(info["n_f_evals"]) == int(info["nstep"][0])
    else:
        assert not info["converged"].all() and int(info["n_f_evals"]) == max_iter


@pytest.mark.parametrize("name", SOLVERS)
def test_the_coupled_map_really_defeats_per_sample_stopping(name: str) -> None:
    # Why coupled=True exists: on this map, per-sample freezing reports residuals that the returned batch
    # does not have (so the test above is not vacuous).
    f, x = coupled_map(16, 10)
    z, info = solve(name, f, torch.zeros_like(x), max_iter=300, tol=1e-9)
    _, rel_r = residuals(z, f(z))
    assert info["converged"].all() and len(set(info["nstep"].tolist())) > 1
    assert (rel_r > 1e-9).any() and not torch.allclose(info["rel_residual"], rel_r, rtol=1e-3, atol=0)


def plain_iteration(f, z0: torch.Tensor, *, max_iter: int = 50, tol: float = 1e-4) -> tuple:
    """A solver without a ``coupled`` option, as a plugin may register one."""
    return naive(f, z0, max_iter=max_iter, tol=tol)


def test_run_solver_measures_a_solver_without_coupled_option_again() -> None:
    f, x = coupled_map(16, 10)
    options = {"max_iter": 300, "tol": 1e-9}
    z_plain, info_plain = plain_iteration(f, torch.zeros_like(x), **options)
    with torch.no_grad():
        z, info = run_solver(plain_iteration, f, torch.zeros_like(x), options, coupled=True)
    assert torch.equal(z, z_plain)
    abs_r, rel_r = residuals(z, f(z))
    assert torch.equal(info["rel_residual"], rel_r) and torch.equal(info["abs_residual"], abs_r)
    assert torch.equal(info["converged"], rel_r <= 1e-9) and not info["converged"].all()
    assert int(info["n_f_evals"]) == int(info_plain["n_f_evals"]) + 1  # the extra evaluation is counted
    assert torch.equal(info["nstep"], info_plain["nstep"])
    # Uncoupled: the solver's own info, no extra evaluation.
    with torch.no_grad():
        _, info_uncoupled = run_solver(plain_iteration, f, torch.zeros_like(x), options, coupled=False)
    assert int(info_uncoupled["n_f_evals"]) == int(info_plain["n_f_evals"])


# The per-sample results of the shipped solvers before whole-batch stopping was added (must not change).
PER_SAMPLE_NSTEPS = {
    "anderson": ([12, 17, 26, 22, 14, 24], 26),
    "broyden": ([8, 14, 19, 18, 11, 18], 19),
    "naive": ([10, 26, 77, 52, 17, 65], 77),
}


@pytest.mark.parametrize("name", SOLVERS)
def test_uncoupled_maps_keep_per_sample_stopping_and_their_results(name: str) -> None:
    rho = torch.tensor([0.1, 0.5, 0.9, 0.97, 0.3, 0.8], dtype=torch.float64)
    f, x = contractive_map(6, 12, rho, torch.float64, x_scale=0.3)
    z, info = solve(name, f, torch.zeros_like(x), max_iter=300, tol=1e-9)
    z_explicit, info_explicit = solve(name, f, torch.zeros_like(x), max_iter=300, tol=1e-9, coupled=False)
    assert torch.equal(z, z_explicit) and torch.equal(info["nstep"], info_explicit["nstep"])
    steps, evals = PER_SAMPLE_NSTEPS[name]
    assert info["nstep"].tolist() == steps and int(info["n_f_evals"]) == evals
    assert info["converged"].all()


@pytest.mark.parametrize("coupled", [False, True])
@pytest.mark.parametrize("name", SOLVERS)
def test_nstep_is_the_index_of_the_returned_iterate(name: str, coupled: bool) -> None:
    # Non-contractive map: the best iterate is often not the last one. A solve cut at max_iter = nstep[i]
    # (the same first nstep[i] evaluations) must return the same point for sample i.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 6, generator=gen, dtype=torch.float64)

    def f(z: torch.Tensor) -> torch.Tensor:
        return 0.9 * torch.sin(3.0 * z) + x

    z, info = solve(name, f, torch.zeros_like(x), max_iter=40, tol=1e-10, coupled=coupled)
    nsteps = info["nstep"].tolist()
    assert min(nsteps) >= 1 and max(nsteps) <= int(info["n_f_evals"]) <= 40
    for k in sorted(set(nsteps)):
        z_cut, info_cut = solve(name, f, torch.zeros_like(x), max_iter=k, tol=1e-10, coupled=coupled)
        rows = info["nstep"] == k
        assert torch.equal(z_cut[rows], z[rows]) and (info_cut["nstep"][rows] == k).all()


def test_coupled_is_set_by_the_layer_not_the_config() -> None:
    for name in SOLVERS:
        with pytest.raises(ConfigError, match="'coupled' is set by the enclosing model"):
            validate_component("solver", {"type": name, "coupled": True}, ("solver",))


def test_couples_samples_follows_the_cell_and_its_mode() -> None:
    batch_cell = lz.build_component("cell", {"type": "paper_mlp", "norm": "batch"}, width=8)
    assert couples_samples(batch_cell.train()) and not couples_samples(batch_cell.eval())
    for norm in ("layer", "none"):
        cell = lz.build_component("cell", {"type": "paper_mlp", "norm": norm}, width=8)
        assert not couples_samples(cell.train()) and not couples_samples(cell.eval())
    no_running_stats = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval()
    assert couples_samples(no_running_stats)  # batch statistics in eval mode too

    class Declared(nn.Module):
        couples_samples = True

    assert couples_samples(Declared())


def batchnorm_layer(name: str) -> tuple[DEQLayer, torch.Tensor]:
    """The zoo's paper cell with BatchNorm, W2 at 0.3 of PyTorch's default scale (tens of iterations), float64."""
    torch.manual_seed(0)
    cell = lz.build_component("cell", {"type": "paper_mlp", "norm": "batch", "out_scale": 0.3}, width=16).double()
    layer = DEQLayer(cell, solver={"type": name, "max_iter": 60, "tol": 1e-8}, backward={"type": "ift"})
    x = torch.randn(24, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return layer, x


@pytest.mark.parametrize("name", SOLVERS)
def test_batchnorm_cell_in_train_mode_reports_true_statistics(name: str) -> None:
    layer, x = batchnorm_layer(name)
    layer.train()
    with torch.no_grad():
        z, info = layer(x)
        _, rel_r = residuals(z, layer.cell(z, x))
    torch.testing.assert_close(info["rel_residual"], rel_r, rtol=1e-9, atol=1e-15)
    assert info["converged"].all() and (rel_r <= 1e-8).all()
    assert len(set(info["nstep"].tolist())) == 1
    # Eval mode: running statistics, a per-sample map: the solver runs as called directly (per-sample stopping).
    layer.eval()
    with torch.no_grad():
        z_eval, info_eval = layer(x)
        z_direct, info_direct = lz.get_component("solver", name)(
            lambda s: layer.cell(s, x), torch.zeros_like(x), max_iter=60, tol=1e-8
        )
    assert torch.equal(z_eval, z_direct) and torch.equal(info_eval["nstep"], info_direct["nstep"])


@pytest.fixture(scope="module")
def deq_mnist_train() -> tuple[nn.Module, torch.Tensor]:
    model = lz.create_model("deq_mnist", pretrained=True).train()
    x, _ = lz.get_component("dataset", "mnist")(split="test", root="sample").tensors()
    return model, x[:384]


def test_pretrained_deq_mnist_in_train_mode_reports_true_converged_flags(deq_mnist_train) -> None:
    model, x = deq_mnist_train
    tol = model.deq.solver_spec["tol"]
    n_converged = 0
    for xb in x.split(128):
        with torch.no_grad():
            z, u, info = model.equilibrium(xb)
            abs_r, rel_r = residuals(z, model.cell(z, u))  # the train-mode map: batch statistics
        assert (rel_r[info["converged"]] <= tol).all(), "a sample is reported converged above tol"
        assert torch.equal(info["converged"], rel_r <= tol)
        torch.testing.assert_close(info["rel_residual"], rel_r, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(info["abs_residual"], abs_r, rtol=1e-4, atol=1e-9)
        n_converged += int(info["converged"].sum())
    assert n_converged > len(x) // 2  # the check is not vacuous


def test_stability_report_has_solver_statistics_at_z_star(deq_mnist_train) -> None:
    model, x = deq_mnist_train
    report = lz.stability_report(model, x[:64])
    assert {"nstep", "rel_residual", "abs_residual", "converged", "n_f_evals"} <= set(report)
    for key, value in report.items():
        assert value.shape == (64,), key
    assert report["converged"].dtype == torch.bool and report["n_f_evals"].dtype == torch.int64
    assert (report["nstep"] <= report["n_f_evals"]).all()
    assert torch.equal(report["converged"], report["rel_residual"] <= model.deq.solver_spec["tol"])
