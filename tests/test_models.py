"""Zoo models: every config builds and rebuilds, passes the input gradient through the Lyapunov
gradient, treats BatchNorm soundly, and reports its stability per sample. That every model returns logits and
gives every parameter a gradient, and that every backward mode gives an input gradient in eval mode, is checked
with the other component contracts in test_contracts.py."""

from __future__ import annotations

import pytest
import torch

import lyadeq_zoo as lz
from lyadeq_zoo.deq.cells import FixedPointBatchNorm
from lyadeq_zoo.stability import stability_report

ZOO = lz.list_models()
LYAPUNOV_ZOO = [n for n in ZOO if n.startswith("lyadeq")]


def _input(model: torch.nn.Module, n: int = 4) -> torch.Tensor:
    return torch.rand(n, model.in_chans, *model.img_size)


def test_zoo_lists_every_table1_row() -> None:
    for variant in ("deq", "deq_orth", "lyadeq_no_orth", "lyadeq"):
        for dataset in ("mnist", "cifar10"):
            assert f"{variant}_{dataset}" in ZOO
    for name in ("deq_svhn", "lyadeq_svhn", "deq_cifar100", "lyadeq_cifar100", "lyadeq_trades_cifar10",
                 "lyadeq_pgdat_cifar10"):
        assert name in ZOO


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_builds_and_rebuilds_from_its_config(name: str) -> None:
    model = lz.create_model(name)
    rebuilt = lz.build_model(model.config)
    ours = {k: v.shape for k, v in model.state_dict().items()}
    theirs = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert ours == theirs
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert model.config["meta"]["description"]
    assert (model.lyapunov is not None) == name.startswith("lyadeq")


def test_lyadeq_input_gradient_passes_through_the_lyapunov_gradient() -> None:
    # With head_input "projected" the logits depend on z* only through F̂(z*), which holds ∇V(z*):
    # a detached ∇V (the public-code defect) would still leave some gradient, so compare against that.
    model = lz.create_model("lyadeq_no_orth_mnist", head_input="projected").eval()
    x = _input(model).requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    ly = model.lyapunov
    original = ly.grad_value

    def detached_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v, gv = original(z)
        return v, gv.detach()

    ly.grad_value = detached_grad
    try:
        (masked,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    finally:
        del ly.grad_value
    assert not torch.allclose(grad, masked)


def test_batchnorm_stats_update_once_per_train_forward_and_eval_map_is_fixed() -> None:
    model = lz.create_model("lyadeq_mnist", solver={"tol": 1e-6}).train()
    bns = [m for m in model.cell.modules() if isinstance(m, FixedPointBatchNorm)]
    assert len(bns) == 2
    x = _input(model, 8)
    model(x)
    assert model.last_info["nstep"].max() > 2  # the solver did iterate
    assert [int(bn.num_batches_tracked) for bn in bns] == [1, 1]
    model(x).sum().backward()
    assert [int(bn.num_batches_tracked) for bn in bns] == [2, 2]
    model.eval()
    with torch.no_grad():
        full = model(x)
        assert torch.allclose(model(x), full)
        assert torch.allclose(model(x[:3]), full[:3], atol=1e-4)  # the eval map does not see the batch
    assert [int(bn.num_batches_tracked) for bn in bns] == [2, 2]


def test_running_stats_come_from_the_equilibrium() -> None:
    model = lz.create_model("deq_mnist", solver={"tol": 1e-7, "max_iter": 60}).train()
    x = _input(model, 16)
    model(x)
    z_star, u, _ = model.equilibrium(x)
    bn = model.cell.norm2
    pre = torch.relu(u + model.cell.fc2(model.cell.norm1(torch.relu(model.cell.fc1(z_star)))))
    # After two updates from (nearly) the same batch, running_mean = 0.19 * batch mean (momentum 0.1).
    assert torch.allclose(bn.running_mean, 0.19 * pre.mean(0).detach(), atol=1e-4)


@pytest.mark.parametrize("name", ["deq_mnist", "lyadeq_mnist"])
def test_wrong_input_shape_is_explained(name: str) -> None:
    model = lz.create_model(name)
    with pytest.raises(ValueError, match=r"expected \(N, C, H, W\) = \(N, 1, 28, 28\), got \(4, 3, 28, 28\)"):
        model(torch.rand(4, 3, 28, 28))
    with pytest.raises(ValueError, match=r"got \(1, 28, 28\)"):
        model(torch.rand(1, 28, 28))


def test_head_input_options() -> None:
    x = torch.rand(4, 1, 28, 28)
    outputs = {}
    for head_input in ("corrected", "projected", "state"):
        torch.manual_seed(0)
        model = lz.create_model("lyadeq_mnist", head_input=head_input).eval()
        with torch.no_grad():
            outputs[head_input] = model(x)
    assert not torch.allclose(outputs["corrected"], outputs["projected"])
    assert not torch.allclose(outputs["corrected"], outputs["state"])
    with pytest.raises(ValueError, match="needs a Lyapunov module"):
        lz.create_model("deq_mnist", head_input="corrected")
    with pytest.raises(ValueError, match="head_input: expected one of"):
        lz.create_model("lyadeq_mnist", head_input="z")


def test_corrected_is_state_plus_projected() -> None:
    model = lz.create_model("lyadeq_mnist").eval().double()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        z_star, u, _ = model.equilibrium(x)
        f_hat, _ = model.lyapunov.project(z_star, model.cell(z_star, u) - z_star)
        assert torch.allclose(model.features(x), z_star + f_hat)
        model.head_input = "projected"
        assert torch.allclose(model.features(x), f_hat)


@pytest.mark.parametrize("name", ["deq_mnist", "lyadeq_mnist", "lyadeq_cifar10"])
def test_stability_report(name: str) -> None:
    model = lz.create_model(name).eval().double()
    x = _input(model, 5).double()
    report = stability_report(model, x)
    assert report["nstep"].shape == (5,) and report["nstep"].dtype == torch.int64
    assert (report["rel_residual"] < 1e-3).all()
    if name.startswith("lyadeq"):
        assert (report["lyapunov_value"] > 0).all()
        assert (report["lyapunov_decrease"] <= 1e-5).all()  # certified at z*, per sample
    else:
        assert "lyapunov_value" not in report
    with pytest.raises(TypeError, match="no solver diagnostics"):
        stability_report(torch.nn.Linear(2, 2), torch.rand(1, 2))
