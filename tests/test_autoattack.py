"""The official AutoAttack (``pyautoattack``) as the ``autoattack`` attack, and our APGD and Square checked against
its implementations of the same attacks.

Cross-checks compare two attacks on the same images, so they are paired: of the images exactly one of the two
breaks, ``b`` are broken by the official attack only and ``c`` by ours only. If both attacks are equally strong,
``b`` is Binomial(b + c, 1/2) given b + c, so ``b - c`` has mean 0 and standard deviation ``sqrt(b + c)``; we allow
3 standard deviations plus one image (:func:`within_sampling_error`; a false failure has probability < 0.3%).
The seeds are fixed, so each test is deterministic; the bound says how far apart two correct implementations
may land, not how lucky a run was.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pyautoattack.autopgd_base import APGDAttack  # the autoattack extra (README's test command installs it)
from pyautoattack.square import SquareAttack
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.attacks import AttackNotApplicable, AutoAttack, create_attack
from lyadeq_zoo.errors import ConfigError
from lyadeq_zoo.evaluation import format_table, load_suite
from lyadeq_zoo.evaluation.checks import CHECK_NAMES, OPTIONAL_CHECK_NAMES

REPO = Path(__file__).resolve().parent.parent
# A budget for tests; FAB-T (which calls .backward()) first, so that it runs on every digit.
FAST = {"version": "custom", "attacks_to_run": ["fab-t", "apgd-ce", "apgd-t", "square"], "n_iter": 5,
        "n_restarts": 1, "n_target_classes": 2, "n_queries": 20}


def _mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    return lz.get_component("dataset", "mnist")(split=split, root="sample").tensors()


def still_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def discordant(ours: torch.Tensor, official: torch.Tensor) -> tuple[int, int]:
    """(images only the official attack broke, images only ours broke), from per-image 'still correct' flags."""
    return int((ours & ~official).sum()), int((~ours & official).sum())


def within_sampling_error(excess: int, b: int, c: int) -> bool:
    """``excess`` (b - c, or |b - c|) is at most 3 standard deviations of b - c under 'equally strong', plus one."""
    return excess <= 3 * math.sqrt(b + c) + 1


# -- our attacks against the official ones ------------------------------------------------------------------------
EPS = 0.05  # the MLP keeps ~40% under APGD here: the comparison is on a curve's steep part, not at 0% or 100%


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_our_apgd_matches_the_official_apgd(trained_mlp, loss: str) -> None:
    model, x, y = trained_mlp
    ours = still_correct(model, create_attack("apgd", eps=EPS, steps=100, loss=loss, seed=0)(model, x, y), y)
    official_attack = APGDAttack(model, n_iter=100, eps=EPS, loss=loss, n_restarts=1, seed=0, device="cpu")
    official = still_correct(model, official_attack.perturb(x, y), y)
    clean = still_correct(model, x, y).float().mean().item()
    assert clean > 0.8 and official.float().mean().item() < clean - 0.2  # the attack has work to do
    b, c = discordant(ours, official)
    assert within_sampling_error(abs(b - c), b, c), (ours.float().mean(), official.float().mean(), b, c)


@pytest.mark.slow
def test_our_square_is_at_least_as_strong_as_the_official_square(trained_mlp) -> None:
    # One-sided: ours redraws a window whose new signs change nothing (as the Square Attack paper's code does;
    # AutoAttack's copy spends the query), so at the same budget it may break more, never clearly fewer.
    model, x, y = trained_mlp
    queries = 300
    ours = still_correct(model, create_attack("square", eps=EPS, n_queries=queries, seed=0)(model, x, y), y)
    # resc_schedule: the window schedule rescaled to the budget, as ours does.
    official_attack = SquareAttack(
        model, n_queries=queries, eps=EPS, p_init=0.8, seed=0, device="cpu", resc_schedule=True
    )
    official = still_correct(model, official_attack.perturb(x, y), y)
    assert official.float().mean().item() < still_correct(model, x, y).float().mean().item() - 0.2
    b, c = discordant(ours, official)
    assert within_sampling_error(b - c, b, c), (ours.float().mean(), official.float().mean(), b, c)


# -- the autoattack attack -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lyadeq_mnist() -> nn.Module:
    """The shipped pretrained LyaDEQ on MNIST (a few ms per forward on 16 digits)."""
    return lz.create_model("lyadeq_mnist", pretrained=True).eval()


@pytest.mark.parametrize("grad_mode", [None, "unroll"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_autoattack_on_a_deq_keeps_the_contract(lyadeq_mnist: nn.Module, grad_mode, training: bool) -> None:
    x, y = _mnist("test")
    x, y = x[:16], y[:16]
    model = lyadeq_mnist.train(training)
    eps = 8 / 255
    try:
        first_name, first = next(iter(model.named_parameters()))
        existing = first.grad = torch.ones_like(first)  # a caller's gradient: FAB's backward must not add to it
        modes = [m.training for m in model.modules()]
        rng_before = torch.random.get_rng_state()
        attack = create_attack("autoattack", eps=eps, seed=0, grad_mode=grad_mode, **FAST)
        x_adv = attack(model, x, y)
        assert [m.training for m in model.modules()] == modes
        assert torch.equal(torch.random.get_rng_state(), rng_before)  # AutoAttack's manual_seed calls are undone
        for name, p in model.named_parameters():
            assert p.requires_grad
            assert p.grad is (existing if name == first_name else None), name
        assert torch.equal(existing, torch.ones_like(existing))
    finally:
        for p in model.parameters():
            p.grad = None
        model.eval()
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    assert still_correct(model, x_adv, y).sum() < still_correct(model, x, y).sum()  # it breaks some digits
    info = attack.run_info()
    assert info["autoattack_flags"] == []
    assert info["autoattack_settings"]["attacks"] == FAST["attacks_to_run"]
    assert info["autoattack_settings"]["apgd_iterations"] == 5 and info["autoattack_settings"]["square_queries"] == 20


def test_standard_version_settings_and_deterministic_seed(trained_mlp) -> None:
    model, x, y = trained_mlp
    attack = create_attack("autoattack", eps=EPS, seed=3, n_iter=3, n_queries=5, n_target_classes=1)
    first = attack(model, x[:20], y[:20])
    assert torch.equal(first, attack(model, x[:20], y[:20]))
    settings = attack.run_info()["autoattack_settings"]
    assert settings["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]  # standard: RobustBench's four
    assert (settings["apgd_restarts"], settings["target_classes"], settings["fab_iterations"]) == (1, 1, 3)
    assert settings["package"] == "pyautoattack 0.2.0"


class Probabilities(nn.Module):
    """``softmax(model(x))``: a model that hides its logits (AutoAttack's 'probability output' flag)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(1)


class CallsAutograd(nn.Module):
    """The model, plus ``torch.autograd.grad`` inside the forward (AutoAttack's 'dynamic defense' flag); the
    gradient is added times 0, so the logits are the model's."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.model(probe).sum(), probe)
        return self.model(x) + 0 * grad.flatten(1).sum(1, keepdim=True)


def _flag_names(attack: AutoAttack) -> list[str]:
    return [f["flag"] for f in attack.flags]


def test_flags_are_captured_and_do_not_leak_between_models(trained_mlp) -> None:
    model, x, y = trained_mlp
    x, y = x[:16], y[:16]
    options = {"version": "custom", "attacks_to_run": ["apgd-ce"], "n_iter": 2, "seed": 0}
    softmax = create_attack("autoattack", eps=EPS, **options)
    softmax(Probabilities(model), x, y)
    assert _flag_names(softmax) == ["probability_output"] and softmax.flags[0]["level"] == "warning"
    dynamic = create_attack("autoattack", eps=EPS, **options)
    dynamic(CallsAutograd(model), x, y)
    dynamic(CallsAutograd(model), x, y)
    assert dynamic.flags == [
        {"flag": "dynamic", "level": "info", "count": 2, "message": dynamic.flags[0]["message"]}
    ]
    # AutoAttack counts autograd calls in a dict it never resets; the next model must not inherit the flag.
    clean = create_attack("autoattack", eps=EPS, **options)
    clean(model, x, y)
    assert clean.flags == []
    dropout = nn.Sequential(nn.Dropout(0.5), model).train()  # a randomized model
    randomized = create_attack("autoattack", eps=EPS, **options)
    randomized(dropout, x, y)
    assert "randomized" in _flag_names(randomized)


def test_the_callers_tracer_survives_the_dynamic_defense_check(trained_mlp) -> None:
    model, x, y = trained_mlp
    calls = []

    def tracer(frame, event, arg):  # noqa: ANN001, ANN202
        calls.append(event)

    sys.settrace(tracer)
    try:
        attack = create_attack("autoattack", eps=EPS, version="custom", attacks_to_run=["apgd-ce"], n_iter=1)
        attack(model, x[:4], y[:4])
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
    assert calls  # it was tracing before the attack replaced it


def test_too_many_target_classes_are_lowered_with_a_note(trained_mlp) -> None:
    model, x, y = trained_mlp
    five = nn.Sequential(model, nn.Linear(10, 5))  # 5 classes: at most 4 targets
    with torch.no_grad():
        y5 = five(x).argmax(1)  # its own predictions: every digit is attacked
    attack = create_attack("autoattack", eps=EPS, seed=0, n_iter=2, n_queries=5)
    attack(five, x[:8], y5[:8])
    assert attack.run_info()["autoattack_settings"]["target_classes"] == 4
    assert _flag_names(attack) == ["target_classes"] and attack.flags[0]["level"] == "info"


def test_dlr_attacks_need_four_classes() -> None:
    class ThreeClasses(nn.Linear):
        num_classes = 3

    with pytest.raises(AttackNotApplicable, match="at least 4 classes"):
        create_attack("autoattack").check_model(ThreeClasses(4, 3))
    create_attack("autoattack", version="custom", attacks_to_run=["apgd-ce", "square"]).check_model(ThreeClasses(4, 3))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"version": "fast"}, "one of '?standard"),
        ({"attacks_to_run": ["apgd-ce"]}, "only used with version: custom"),
        ({"version": "custom"}, "needs attacks_to_run"),
        ({"version": "custom", "attacks_to_run": ["apgd-ce", "pgd"]}, "unknown 'pgd'"),
        ({"version": "custom", "attacks_to_run": ["square", "square"]}, "twice"),
        ({"n_queries": 0}, "n_queries must be a whole number >= 1"),
        ({"grad_mode": "backprop"}, None),
    ],
)
def test_bad_options(options: dict, message: str | None) -> None:
    if message is None:  # an unknown backward is reported when the attack meets a model
        create_attack("autoattack", **options)
        return
    with pytest.raises(ValueError, match=message):
        create_attack("autoattack", **options)
    with pytest.raises(ConfigError, match=message):
        load_suite([{"type": "autoattack", "eps": ["8/255"], **options}], "mnist")


def test_grad_mode_needs_a_deq(trained_mlp) -> None:
    model, _, _ = trained_mlp
    with pytest.raises(AttackNotApplicable, match="DEQ layers"):
        create_attack("autoattack", grad_mode="unroll").check_model(model)


# -- in an evaluation ----------------------------------------------------------------------------------------------
def test_evaluate_carries_the_flags_into_the_result_and_the_checks(trained_mlp) -> None:
    model, x, y = trained_mlp
    spec = {"type": "autoattack", "version": "custom", "attacks_to_run": ["apgd-ce"], "n_iter": 3, "eps": [EPS]}
    result = lz.evaluate(Probabilities(model), [(x[:30], y[:30])], [spec], progress=False, dataset="mnist")
    (item,) = result["attacks"][0]["results"]
    assert result["attacks"][0]["threat"] == "ensemble"
    assert [f["flag"] for f in item["info"]["autoattack_flags"]] == ["probability_output"]
    assert tuple(c["name"] for c in result["checks"]) == (*CHECK_NAMES, "autoattack_flags")  # no paper PGD here
    assert OPTIONAL_CHECK_NAMES == ("paper_budget", "autoattack_flags")
    flags = result["checks"][-1]
    assert flags["passed"] is False and flags["level"] == "warning" and "probability distribution" in flags["detail"]
    assert "[FLAG] autoattack_flags: AutoAttack's own checks" in format_table(result)
    plain = lz.evaluate(model, [(x[:30], y[:30])], [{"type": "fgsm", "eps": [EPS]}], progress=False, dataset="mnist")
    assert tuple(c["name"] for c in plain["checks"]) == CHECK_NAMES  # no autoattack run: no new check, no info
    assert "info" not in plain["attacks"][0]["results"][0]


# -- suites and the extra ------------------------------------------------------------------------------------------
def test_the_autoattack_suite_and_the_strong_suites() -> None:
    suite = load_suite("autoattack", "mnist")
    assert [(a["type"], a["options"].get("grad_mode"), a["subset"]) for a in suite["attacks"]] == [
        ("autoattack", None, "all"),  # the model's own gradient: IFT for the zoo's DEQs, and runs on baselines
        ("autoattack", "unroll", "remaining"),
    ]
    for attack in suite["attacks"]:
        assert attack["options"]["version"] == "standard"
        assert [round(e * 255, 6) for e in attack["eps"]] == [2, 4, 6, 8, 76.5]  # 76.5/255 = 0.3, MNIST's sanity eps
    assert load_suite("autoattack", "cifar10")["attacks"][0]["eps"][-1] == pytest.approx(32 / 255)
    strong = load_suite("strong", "mnist")["attacks"]
    (full,) = [a for a in strong if a["type"] == "autoattack"]
    assert full["options"] == {"version": "standard"} and full["subset"] == "all"
    for dataset, eps in (("cifar10", 8 / 255), ("mnist", 0.3), ("svhn", 8 / 255)):  # RobustBench's eps only
        rb = load_suite("robustbench", dataset)["attacks"]
        assert [(a["name"], a["eps"]) for a in rb] == [("AutoAttack", [eps]), ("AutoAttack-unrolled", [eps])]
        assert [a["options"] for a in rb] == [a["options"] for a in suite["attacks"]]
    cpu = [a for a in load_suite("strong_cpu", "mnist")["attacks"] if a["type"] == "autoattack"]
    assert len(cpu) == 1 and cpu[0]["subset"] == "remaining" and cpu[0]["options"]["n_queries"] == 1000


@pytest.mark.slow
def test_a_missing_package_names_the_install_command() -> None:
    code = (
        "import sys; sys.modules['pyautoattack'] = None\n"
        "import lyadeq_zoo as lz\n"  # importing the library needs no pyautoattack
        "assert 'autoattack' in lz.list_components('attack')\n"
        "try:\n"
        "    lz.create_attack('autoattack', eps='8/255')\n"
        "except ModuleNotFoundError as err:\n"
        "    print(err)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'install it with: pip install "lyadeq-zoo[autoattack]"' in result.stdout
