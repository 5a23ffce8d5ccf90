"""Backbones, cells, Lyapunov modules and heads: the math and options of the built-ins.

The shape contracts of every registered component (plugins included) are in test_contracts.py."""

from __future__ import annotations

import pytest
import torch

from lyadeq_zoo.deq.cells import FixedPointBatchNorm
from lyadeq_zoo.lyapunov import smooth_relu
from lyadeq_zoo.registry import build_component


# -- backbones --------------------------------------------------------------------------------------
def test_resnet20_default_is_resnet20() -> None:
    net = build_component("backbone", {"type": "resnet20"}, in_chans=3, img_size=32, out_features=64)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19  # stem + 3 stages x 3 blocks x 2 convs; + the projection = 20 weighted layers
    assert [b.conv2.out_channels for b in net.stages][::3] == [16, 32, 64]


def test_fc_backbone_is_one_linear_layer() -> None:
    net = build_component("backbone", {"type": "fc"}, in_chans=1, img_size=28, out_features=64)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 and linears[0].weight.shape == (64, 784)


def test_timm_backbone_unknown_name_is_explained() -> None:
    with pytest.raises(ValueError, match="timm has no model"):
        build_component("backbone", {"type": "timm", "model_name": "resnet_nope"}, in_chans=3, img_size=32,
                        out_features=4)


# -- heads ------------------------------------------------------------------------------------------
def test_orthogonal_head_weight_is_orthogonal_after_training_steps() -> None:
    head = build_component("head", {"type": "orthogonal"}, in_features=8, num_classes=3)
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        head(torch.randn(16, 8)).square().sum().backward()
        opt.step()
    Z = head.orthogonal_weight
    assert torch.allclose(Z.T @ Z, torch.eye(8), atol=1e-5)


# -- cells ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_paper_mlp_norm_options(norm: str) -> None:
    cell = build_component("cell", {"type": "paper_mlp", "norm": norm}, width=6)
    out = cell(torch.randn(4, 6), torch.randn(4, 6))
    assert out.shape == (4, 6)
    with pytest.raises(ValueError, match="norm must be one of"):
        build_component("cell", {"type": "paper_mlp", "norm": "group"}, width=6)


def test_batchnorm_cell_never_updates_running_stats_in_forward() -> None:
    cell = build_component("cell", {"type": "paper_mlp"}, width=6).train()
    z, x = torch.randn(8, 6), torch.randn(8, 6)
    for _ in range(5):  # a solver's iterations
        z = cell(z, x)
    bn = cell.norm1
    assert isinstance(bn, FixedPointBatchNorm)
    assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_mean, torch.zeros(6))
    cell.update_running_stats(z, x)
    assert int(bn.num_batches_tracked) == 1 and int(cell.norm2.num_batches_tracked) == 1
    assert not torch.equal(bn.running_mean, torch.zeros(6))


def test_batchnorm_cell_train_map_is_fixed_for_a_batch_and_eval_map_is_per_sample() -> None:
    cell = build_component("cell", {"type": "paper_mlp"}, width=6).train()
    z, x = torch.randn(8, 6), torch.randn(8, 6)
    assert torch.equal(cell(z, x), cell(z, x))  # same map at every solver call
    cell.update_running_stats(z, x)
    cell.eval()
    full = cell(z, x)
    assert torch.allclose(cell(z[:3], x[:3]), full[:3], atol=1e-6)  # no dependence on the rest of the batch
    assert torch.allclose(cell(z[5:], x[5:]), full[5:], atol=1e-6)


def test_fixed_point_batchnorm_single_update_matches_batchnorm1d() -> None:
    ours, ref = FixedPointBatchNorm(5), torch.nn.BatchNorm1d(5)
    x = torch.randn(10, 5) * 3 + 1
    ours._recording = True
    out = ours(x)
    assert torch.allclose(out, ref(x), atol=1e-6)
    assert torch.allclose(ours.running_mean, ref.running_mean) and torch.allclose(ours.running_var, ref.running_var)


# -- Lyapunov ---------------------------------------------------------------------------------------
def test_smooth_relu_matches_eq8_and_is_monotone_convex() -> None:
    d = 0.5
    t = torch.linspace(-2, 2, 401, dtype=torch.float64)
    expected = torch.where(t <= 0, torch.zeros_like(t), torch.where(t < d, t**2 / (2 * d), t - d / 2))
    s = smooth_relu(t, d)
    assert torch.allclose(s, expected)
    assert (s.diff() >= 0).all()  # non-decreasing (the defect in public code: t²/2d for t < 0)
    assert (s[:-2] + s[2:] - 2 * s[1:-1] >= -1e-12).all()  # convex on the grid


@pytest.fixture
def icnn() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_component("lyapunov", {"type": "icnn", "hidden": [16, 16], "d": 0.1}, width=6).double()


def test_icnn_lyapunov_is_convex_along_random_segments(icnn: torch.nn.Module) -> None:
    a, b = torch.randn(64, 6, dtype=torch.float64) * 2, torch.randn(64, 6, dtype=torch.float64) * 2
    with torch.no_grad():
        for lam in (0.25, 0.5, 0.75):
            mix = icnn.value(lam * a + (1 - lam) * b)
            chord = lam * icnn.value(a) + (1 - lam) * icnn.value(b)
            assert (mix <= chord + 1e-12).all()


def test_icnn_lyapunov_is_positive_definite(icnn: torch.nn.Module) -> None:
    with torch.no_grad():
        assert torch.equal(icnn.value(torch.zeros(3, 6, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64))
        z = torch.randn(256, 6, dtype=torch.float64) * torch.logspace(-3, 1, 256, dtype=torch.float64)[:, None]
        assert (icnn.value(z) > 0).all()


def test_icnn_stays_convex_whatever_the_free_parameters(icnn: torch.nn.Module) -> None:
    # U = softplus(R): an optimiser may push R anywhere (here large, mixed-sign values) and g stays convex.
    with torch.no_grad():
        for raw in icnn.U_raw:
            raw.copy_(torch.randn_like(raw) * 5)
        for lin in icnn.W:
            lin.weight.mul_(10)
        a, b = torch.randn(64, 6, dtype=torch.float64), torch.randn(64, 6, dtype=torch.float64)
        assert (icnn.value((a + b) / 2) <= (icnn.value(a) + icnn.value(b)) / 2 + 1e-9).all()


def test_projection_certifies_decrease_per_sample(icnn: torch.nn.Module) -> None:
    z = torch.randn(32, 6, dtype=torch.float64)
    F = torch.randn(32, 6, dtype=torch.float64) * 3
    F[:4] = -z[:4]  # some samples already decrease V: projection must leave them untouched
    f_hat, info = icnn.project(z, F)
    v, gv = icnn.grad_value(z)
    decrease = (gv * f_hat).sum(1) + icnn.c * v
    assert (decrease <= 1e-5).all()
    assert torch.allclose(decrease, info["lyapunov_decrease"])
    phi = (gv * F).sum(1) + icnn.c * v
    untouched = phi <= 0
    assert untouched.any() and (~untouched).any()
    assert torch.allclose(f_hat[untouched], F[untouched])


def test_projection_is_per_sample(icnn: torch.nn.Module) -> None:
    z, F = torch.randn(6, 6, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64)
    full, _ = icnn.project(z, F)
    part, _ = icnn.project(z[2:4], F[2:4])
    assert torch.allclose(full[2:4], part)


def test_projection_at_origin_is_finite(icnn: torch.nn.Module) -> None:
    f_hat, info = icnn.project(torch.zeros(2, 6, dtype=torch.float64), torch.ones(2, 6, dtype=torch.float64))
    assert torch.isfinite(f_hat).all() and torch.equal(info["lyapunov_value"], torch.zeros(2, dtype=torch.float64))


def test_projection_keeps_grad_of_nabla_v_and_of_the_input(icnn: torch.nn.Module) -> None:
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    z = torch.tanh(x) * 2  # the state has history: gradients must reach x through ∇V too
    f_hat, _ = icnn.project(z, -0.1 * z + 1.0)
    f_hat.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in icnn.parameters())
    assert any(p.grad.abs().sum() > 0 for p in icnn.U_raw)  # reached only through ∇V (create_graph)


def test_projection_under_no_grad_still_projects(icnn: torch.nn.Module) -> None:
    z, F = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    with torch.no_grad():
        f_hat, info = icnn.project(z, F)
    assert not f_hat.requires_grad and (info["lyapunov_decrease"] <= 1e-5).all()
    assert torch.allclose(f_hat, icnn.project(z, F)[0])
