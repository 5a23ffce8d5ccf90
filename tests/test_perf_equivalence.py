"""The two speed-ups change no function: closed-form ∇V of the ICNN Lyapunov module (``grad_method: analytic``,
checked against the nested-autograd reference ``grad_method: autograd``) and parametrized weights (the orthogonal
head's ``matrix_exp``) computed once per attack / evaluation call (``parametrize.cached()``)."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.nn.utils import parametrize

import lyadeq_zoo as lz
from lyadeq_zoo import hub
from lyadeq_zoo.attacks import base as attack_base
from lyadeq_zoo.attacks.gradients import input_gradient
from lyadeq_zoo.evaluation import autograd_calls_in_forward, evaluate
from lyadeq_zoo.registry import build_component

PRETRAINED = lz.list_models(pretrained=True)


def _mnist(n: int, offset: int = 0, dataset: str = "mnist") -> tuple[torch.Tensor, torch.Tensor]:
    x, y = lz.get_component("dataset", dataset)(split="test", root="sample").tensors()
    return x[offset : offset + n], y[offset : offset + n]


def _icnn(hidden: list[int], large: bool, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    ly = build_component("lyapunov", {"type": "icnn", "hidden": hidden, "d": 0.1}, width=6).double()
    if large:  # where an optimiser may take the free parameters: big weights, mixed-sign raw U, offset biases
        with torch.no_grad():
            for raw in ly.U_raw:
                raw.copy_(torch.randn_like(raw) * 5)
            for lin in ly.W:
                lin.weight.mul_(10)
                lin.bias.normal_(0.0, 3.0)
    return ly


def _with_method(ly: torch.nn.Module, method: str) -> torch.nn.Module:
    other = copy.deepcopy(ly)
    other.grad_method = method
    return other


def _states(n: int = 64) -> torch.Tensor:
    z = torch.randn(n, 6, dtype=torch.float64) * torch.logspace(-4, 1, n, dtype=torch.float64)[:, None]
    z[0] = 0.0  # the minimiser, where ∇V = 0
    return z


@pytest.mark.parametrize("hidden", [[16, 16], [8], [5, 7, 9]])
@pytest.mark.parametrize("large", [False, True])
def test_analytic_grad_v_equals_autograd_float64(hidden: list[int], large: bool) -> None:
    ly = _icnn(hidden, large, seed=len(hidden))
    ref = _with_method(ly, "autograd")
    z = _states()
    v, gv = ly.grad_value(z)
    v_ref, gv_ref = ref.grad_value(z)
    assert torch.equal(gv[0], torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(v, v_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gv, gv_ref, rtol=1e-10, atol=1e-10)
    # states of any shape (N, ...): ∇V comes back in that shape
    v3, gv3 = ly.grad_value(z.view(-1, 2, 3))
    assert gv3.shape == (z.shape[0], 2, 3) and torch.equal(gv3.reshape(z.shape), gv)


@pytest.mark.parametrize("large", [False, True])
def test_second_order_terms_agree(large: bool) -> None:
    # Gradients through ∇V (to the state's history and to every ICNN parameter) are those of the reference.
    ly = _icnn([16, 16], large, seed=3)
    ref = _with_method(ly, "autograd")
    x = torch.randn(32, 6, dtype=torch.float64)
    w = torch.randn(32, 6, dtype=torch.float64)
    grads = []
    for module in (ly, ref):
        xx = x.clone().requires_grad_(True)
        z = torch.sinh(xx)  # the state has history
        v, gv = module.grad_value(z)
        loss = (gv * w).sum() + v.square().sum() + gv.square().sum()
        grads.append(torch.autograd.grad(loss, [xx, *module.parameters()]))
    for a, b in zip(*grads, strict=True):
        assert (a - b).abs().max() <= 1e-10 * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("large", [False, True])
def test_projection_still_certifies_decrease(large: bool) -> None:
    ly = _icnn([16, 16], large, seed=5)
    ref = _with_method(ly, "autograd")
    z = torch.randn(48, 6, dtype=torch.float64) * 2
    f = torch.randn(48, 6, dtype=torch.float64) * 3
    f[:8] = -z[:8]
    f_hat, info = ly.project(z, f)
    f_ref, info_ref = ref.project(z, f)
    v, gv = ly.grad_value(z)
    decrease = (gv * f_hat).sum(1) + ly.c * v
    assert (decrease <= 1e-8 * (1 + (gv * f).sum(1).abs())).all()
    assert torch.allclose(decrease, info["lyapunov_decrease"])
    assert torch.allclose(f_hat, f_ref, rtol=1e-10, atol=1e-10)
    assert torch.allclose(info["lyapunov_value"], info_ref["lyapunov_value"], rtol=1e-12, atol=0)
    with torch.no_grad():  # no graph, same numbers
        f_ng, _ = ly.project(z, f)
    assert not f_ng.requires_grad and torch.equal(f_ng, f_hat.detach())


def test_grad_method_is_a_validated_config_key() -> None:
    assert build_component("lyapunov", {"type": "icnn"}, width=4).grad_method == "analytic"
    model = lz.create_model("lyadeq_mnist", lyapunov={"grad_method": "autograd"})
    assert model.lyapunov.grad_method == "autograd"
    with pytest.raises(ValueError, match="grad_method must be one of analytic, autograd"):
        build_component("lyapunov", {"type": "icnn", "grad_method": "jacobian"}, width=4)


@pytest.mark.parametrize("name", PRETRAINED)
def test_shipped_weights_same_tensors_and_function(name: str) -> None:
    model = lz.create_model(name, pretrained=True).eval()
    stored = load_file(str(hub.resolve_pretrained_file(name)))
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in stored.items()} == {k: tuple(v.shape) for k, v in state.items()}
    x, y = _mnist(64, dataset=model.config["data"]["type"])
    ref = copy.deepcopy(model)
    if model.lyapunov is not None:
        assert model.lyapunov.grad_method == "analytic"  # the shipped configs get the new default
        ref.lyapunov.grad_method = "autograd"
    with torch.no_grad():
        logits, logits_ref = model(x), ref(x)
    assert (logits - logits_ref).abs().max() <= 1e-5 * max(1.0, float(logits_ref.abs().max()))
    # The trained weights are in use: well above chance (0.1), at least half the card's clean accuracy (the
    # CIFAR-10 zoo ran shortened CPU schedules; its adversarially trained models sit near 33 %). The
    # card-vs-sample comparison on 1,000 images is tests/test_pretrained_zoo.py's job.
    card = json.loads((hub.resolve_pretrained_file(name).parent / "config.json").read_text())
    metrics = card["metrics"]
    # an evaluated card's clean accuracy, else (a card fresh from publishing) the training run's last test accuracy
    recorded = metrics["clean"]["accuracy"] if "clean" in metrics else metrics["clean_accuracy"]
    assert (logits.argmax(1) == y).float().mean() > max(0.15, 0.5 * recorded), recorded
    # the attacks' input gradient, with the parametrized weights cached as attacks now do, vs the reference
    with parametrize.cached():
        grad, _, _ = input_gradient(model, x, y, "ce")
    grad_ref, _, _ = input_gradient(ref, x, y, "ce")
    assert (grad - grad_ref).norm() <= 1e-5 * grad_ref.norm()


def _lyadeq_pair(dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = lz.create_model("lyadeq_mnist", pretrained=True).to(dtype)
    ref = copy.deepcopy(model)
    ref.lyapunov.grad_method = "autograd"
    return model, ref


def test_lyadeq_mnist_input_gradient_matches_autograd_route() -> None:
    x, y = _mnist(16, offset=40)
    for dtype, tol in ((torch.float32, 2e-6), (torch.float64, 1e-10)):
        model, ref = (m.eval() for m in _lyadeq_pair(dtype))
        grads = []
        for m in (model, ref):
            xx = x.to(dtype).requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(m(xx), y), xx)
            grads.append(g)
        rel = float((grads[0] - grads[1]).norm() / grads[1].norm())
        assert grads[1].abs().sum() > 0 and rel <= tol, (dtype, rel)


def test_lyadeq_mnist_parameter_gradients_match_autograd_route() -> None:
    x, y = _mnist(16, offset=80)
    model, ref = (m.train() for m in _lyadeq_pair(torch.float64))
    for m in (model, ref):
        F.cross_entropy(m(x.double()), y).backward()
    names = [n for n, _ in model.named_parameters()]
    for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, n
        assert (p.grad - q.grad).abs().max() <= 1e-9 * max(1.0, float(q.grad.abs().max())), n
    # ∇V's parameters only get a gradient through ∇V (second order): check one is really non-zero
    assert any("U_raw" in n for n in names) and model.lyapunov.U_raw[0].grad.abs().sum() > 0


def test_dynamic_defense_note_only_for_the_autograd_route() -> None:
    x, y = _mnist(4)
    model, ref = (m.eval() for m in _lyadeq_pair())
    assert autograd_calls_in_forward(model, x[:2]) == []
    calls = autograd_calls_in_forward(ref, x[:2])
    assert calls and "lyapunov.py" in calls[0]
    data = torch.utils.data.TensorDataset(x, y)
    for m, expected in ((model, True), (ref, False)):
        result = evaluate(m, data, [{"type": "fgsm", "eps": [0.1]}], progress=False, dataset="mnist")
        check = next(c for c in result["checks"] if c["name"] == "dynamic_defense")
        assert check["passed"] is expected, check
    assert "grad_method: autograd" in check["detail"]


# -- parametrized weights cached inside attacks and evaluate ---------------------------------------------------
class _CountCalls:
    """Counts forward calls of the orthogonal parametrization (each one is a matrix_exp of the weight)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        module = model.head.orth.parametrizations.weight[0]
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1


@contextlib.contextmanager
def _no_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The attack loop and evaluate as before the change (``parametrize.cached`` made a no-op)."""
    with monkeypatch.context() as m:
        m.setattr(attack_base.parametrize, "cached", contextlib.nullcontext)
        yield


def test_pgd_computes_the_orthogonal_weight_once_and_finds_the_same_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    model = lz.create_model("lyadeq_mnist", pretrained=True).eval()
    x, y = _mnist(24)
    counter = _CountCalls(model)
    pgd = lz.create_attack("pgd", eps=0.1, alpha=0.02, steps=4, restarts=2, seed=3)
    x_adv = pgd(model, x, y)
    cached_calls, counter.calls = counter.calls, 0
    assert parametrize._cache_enabled == 0 and not parametrize._cache  # nothing left behind
    with _no_cache(monkeypatch):
        x_ref = pgd(model, x, y)
    assert cached_calls == 1 and counter.calls > 4
    assert torch.equal(x_adv, x_ref)


def test_evaluate_computes_the_orthogonal_weight_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model = lz.create_model("deq_orth_mnist", pretrained=True)
    data = torch.utils.data.TensorDataset(*_mnist(16))
    suite = [{"type": "pgd", "steps": 3, "eps": [0.1, 0.2]}, {"type": "fgsm", "eps": [0.1]}]
    counter = _CountCalls(model)
    result = evaluate(model, data, suite, progress=False, batch_size=8, dataset="mnist")
    assert counter.calls == 1 and parametrize._cache_enabled == 0 and not parametrize._cache
    with _no_cache(monkeypatch):
        reference = evaluate(model, data, suite, progress=False, batch_size=8, dataset="mnist")
    for r in (result, reference):
        r.pop("timing")
        for a in r["attacks"]:
            for item in a["results"]:
                item.pop("seconds")
    assert result == reference


def test_attack_inside_a_training_step_leaves_no_stale_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    # Adversarial training calling an attack: the optimiser step must act on (and the next forward must see)
    # the freshly recomputed orthogonal weight, exactly as without caching.
    x, y = _mnist(16, offset=100)
    pgd = lz.create_attack("pgd", eps=0.1, alpha=0.05, steps=2, seed=0)

    def train(cache: bool) -> tuple[torch.nn.Module, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = lz.create_model("deq_orth_mnist", pretrained=True).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        weights = []
        ctx = contextlib.nullcontext() if cache else _no_cache(monkeypatch)
        with ctx:
            for _ in range(2):
                x_adv = pgd(model, x, y)
                assert parametrize._cache_enabled == 0
                opt.zero_grad()
                F.cross_entropy(model(x_adv), y).backward()
                opt.step()
                weights.append(model.head.orthogonal_weight.detach().clone())
        return model, weights

    model, weights = train(cache=True)
    ref, weights_ref = train(cache=False)
    assert not torch.allclose(weights[0], weights[1])  # the step did move the orthogonal weight ...
    eye = torch.eye(weights[1].shape[0])
    assert torch.allclose(weights[1].T @ weights[1], eye, atol=1e-5)  # ... and it stays orthogonal
    for a, b in zip(weights, weights_ref, strict=True):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)
