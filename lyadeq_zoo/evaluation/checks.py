"""Gradient-masking checks: signs that the white-box numbers overstate robustness (Carlini et al. 2019;
Athalye et al. 2018). One function per check; :func:`masking_checks` runs them all, in the order below.

Each returns ``{"name", "passed", "level", "detail"}``; ``passed`` is ``None`` when the suite lacks what
the check needs. ``tol = max(checks.tolerance, 3/n)`` is the fraction of samples treated as noise.
"Breaks beyond" means samples that attack B makes misclassified while every attack of set A that ran on
them failed.

* ``input_gradients``: the input gradient of the margin loss is zero or non-finite on > 1% of
  clean-correct samples of the first batch (the gradient carries no signal; e.g. a detached or
  quantised input, or a DEQ whose backward attaches nothing in eval mode).
* ``large_eps``: at the suite's largest eps (when it reaches the data set's sanity eps, 0.3 for
  MNIST, 32/255 otherwise), every gradient attack and the worst case must push accuracy below
  ``large_eps_max_accuracy``; an attack that cannot, with that much room, is not following a
  useful gradient.
* ``monotone_eps``: an attack's accuracy must not rise (beyond tol) as eps grows.
* ``flat_curve``: a gradient attack whose accuracy barely moves (< tol) between the smallest eps
  and the largest eps <= 16/255 while staying above 10% (the pattern the paper's Table 1 shows).
* ``more_iterations``: between runs of the same attack (type, loss, gradient mode) with a larger
  steps x restarts budget, the stronger must not leave accuracy higher (beyond tol), and must not
  break more than tol more samples (else the weaker budget had not converged). A PGD / I-FGSM on the paper's
  schedule (no ``steps`` given: a few steps from eps) is never the weaker run here: that it breaks less than
  a long PGD is known and is what ``paper_budget`` reports; this check asks whether the suite's own budgets
  converged.
* ``single_step``: FGSM breaks beyond the multi-step gradient attacks.
* ``score_based``: a gradient-free attack (Square) breaks beyond every white-box attack.
* ``transfer``: a transfer attack breaks beyond every white-box attack.
* ``alternative_backward``: an attack through another DEQ backward (e.g. unrolled) breaks beyond
  the attacks using the model's own gradient: the default backward's gradient is misleading.
* ``dynamic_defense``: the forward pass calls autograd (AutoAttack's flag; informational). Detected by
  profiling Python calls into ``torch.autograd`` during one forward; LyaDEQ models fire it only with the
  Lyapunov option ``grad_method: autograd``.

Reported after these, only when the suite runs the ``autoattack`` attack (results without one keep exactly the
checks above):

* ``paper_budget`` (level ``info``; when the suite runs a paper-schedule PGD / I-FGSM and a larger budget of
  the same attack): how many more samples the largest budget breaks than the paper's schedule, i.e. how much
  the paper's protocol overstates robustness. Not a masking sign of the evaluation, a finding about the
  protocol.
* ``autoattack_flags``: the official AutoAttack's own checks (randomized defense, probability outputs,
  dynamic defense, zero gradients, Square beating its gradient attacks, too many target classes), collected
  over its runs. A warning flag fails the check; notes only (dynamic defense, target classes) leave it passed
  at level ``info``. AutoAttack (threat ``ensemble``) is no reference or challenger of the run-based checks
  above: its own Square would hide what ``score_based`` looks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..attacks import Attack, AutoAttack, eps_in_255
from .probes import autograd_calls_in_forward, clean_correct_inputs, useless_gradient_fraction
from .result import AttackRun, eps_key

CHECK_NAMES = (  # the order masking_checks reports them in
    "input_gradients",
    "large_eps",
    "monotone_eps",
    "flat_curve",
    "more_iterations",
    "single_step",
    "score_based",
    "transfer",
    "alternative_backward",
    "dynamic_defense",
)
OPTIONAL_CHECK_NAMES = ("paper_budget", "autoattack_flags")  # after CHECK_NAMES, only when the suite has what
# they read
FLAT_CURVE_MAX_EPS = 16 / 255  # the flat-curve check looks at eps up to this radius
FLAT_CURVE_MIN_ACCURACY = 0.10  # ... and only at curves that stay above this accuracy


def check(name: str, passed: bool | None, level: str, detail: str) -> dict[str, Any]:
    """One check's verdict: ``level`` is ``warning`` (a flag) or ``info`` (a note)."""
    return {"name": name, "passed": passed, "level": level, "detail": detail}


@dataclass(frozen=True)
class Evidence:
    """What the run-based checks read: the runs that ran (not skipped), grouped by what they can reveal."""

    clean_correct: torch.Tensor  # (n,) bool
    tol: float  # fraction of samples treated as noise
    large_eps: float  # the data set's sanity eps
    large_eps_max_accuracy: float
    active: list[AttackRun]  # in suite order
    white: list[AttackRun]  # white-box
    own_grad: list[AttackRun]  # white-box through the model's own backward
    multi: list[AttackRun]  # ... multi-step
    single: list[AttackRun]  # ... single-step (FGSM)
    alt: list[AttackRun]  # white-box through another backward (grad_mode)
    score: list[AttackRun]  # score-based (gradient-free)
    transfer: list[AttackRun]
    keys: list[float]  # eps keys of the active runs, ascending

    @property
    def n(self) -> int:
        return self.clean_correct.numel()

    def accuracy(self, run: AttackRun) -> float | None:
        """The run's own robust accuracy (None for a ``remaining``-subset attack)."""
        return float((run["outcome"] == 1).sum()) / self.n if run["spec"]["subset"] == "all" else None

    def broken_beyond(self, reference: Sequence[AttackRun], run: AttackRun) -> int:
        """Samples ``run`` breaks that every run of ``reference`` failed on."""
        mask = self.clean_correct & (run["outcome"] == 0)
        for ref in reference:
            mask &= ref["outcome"] == 1
        return int(mask.sum())


def gather_evidence(runs: Sequence[AttackRun], clean_correct: torch.Tensor, suite: dict[str, Any]) -> Evidence:
    """The :class:`Evidence` of finished ``runs`` on samples with clean correctness ``clean_correct``."""
    n = clean_correct.numel()
    active = [r for r in runs if r["skipped"] is None]
    white = [r for r in active if r["attack"].threat == "white-box"]
    own_grad = [r for r in white if r["attack"].grad_mode is None]
    return Evidence(
        clean_correct=clean_correct,
        tol=max(suite["checks"]["tolerance"], 3.0 / max(n, 1)),
        large_eps=suite["large_eps"],
        large_eps_max_accuracy=suite["checks"]["large_eps_max_accuracy"],
        active=active,
        white=white,
        own_grad=own_grad,
        multi=[r for r in own_grad if not r["attack"].single_step],
        single=[r for r in own_grad if r["attack"].single_step],
        alt=[r for r in white if r["attack"].grad_mode is not None],
        score=[r for r in active if r["attack"].threat == "score-based"],
        transfer=[r for r in active if r["attack"].threat == "transfer"],
        keys=sorted({eps_key(r["eps"]) for r in active}),
    )


def masking_checks(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    runs: list[AttackRun],
    clean_correct: torch.Tensor,
    suite: dict[str, Any],
    device: torch.device,
) -> list[dict[str, Any]]:
    """Every masking check (see the module docstring), in order: ``batch`` is the first evaluated batch
    (images (N, C, H, W), labels (N,)), ``runs`` the finished attack runs, ``clean_correct`` (n,) bool."""
    evidence = gather_evidence(runs, clean_correct, suite)
    verdicts = [
        input_gradients(model, batch, device),
        large_eps(evidence),
        monotone_eps(evidence),
        flat_curve(evidence),
        more_iterations(evidence),
        single_step(evidence),
        score_based(evidence),
        transfer(evidence),
        alternative_backward(evidence),
        dynamic_defense(model, batch, device),
    ]
    if paper_budget_pairs(evidence):
        verdicts.append(paper_budget(evidence))
    if any(isinstance(r["attack"], AutoAttack) for r in runs):
        verdicts.append(autoattack_flags(evidence))
    return verdicts


# -- checks on the model ------------------------------------------------------------------------------
def input_gradients(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> dict:
    """The margin-loss input gradient is non-zero and finite on >= 99% of the clean-correct first-batch samples."""
    x, y = clean_correct_inputs(model, batch, device)
    if not len(y):
        return check("input_gradients", None, "warning", "not run: no clean-correct sample in the first batch")
    bad = {loss: useless_gradient_fraction(model, x, y, loss) for loss in ("cw", "ce")}
    passed = bad["cw"] <= 0.01
    detail = (
        f"zero or non-finite input gradient on {bad['cw']:.1%} (margin loss) and {bad['ce']:.1%} "
        f"(cross-entropy) of {len(y)} clean-correct samples"
    )
    if not passed:
        detail += (
            ": the attacks get no gradient signal (input detached, quantised, or a DEQ backward "
            "that attaches nothing in eval mode)"
        )
    elif bad["ce"] > 0.1:
        detail += ": cross-entropy saturates; use loss cw or dlr for gradient attacks"
    return check("input_gradients", passed, "warning", detail)


def dynamic_defense(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> dict:
    """Whether one forward pass on two samples calls autograd (informational)."""
    calls = autograd_calls_in_forward(model, batch[0][:2].to(device).float())
    if not calls:
        return check("dynamic_defense", True, "info", "the forward pass does not call autograd")
    return check(
        "dynamic_defense",
        False,
        "info",
        "the forward pass calls autograd (" + "; ".join(calls) + "). AutoAttack flags such models as "
        "'dynamic defenses'. A Lyapunov-stable DEQ does this when its stability module is built with "
        "grad_method: autograd (it then takes grad V(z) with torch.autograd.grad inside the forward pass to "
        "project the dynamics; the default grad_method: analytic computes the same gradient with explicit "
        "tensor operations and does not trigger this note). Such a model is sound only if that gradient is "
        "built with create_graph=True, so that attacks differentiate through it; if it is detached, "
        "white-box attacks see a partial gradient. Trust the worst case over the gradient-free and "
        "transfer attacks (--suite strong), not the white-box numbers alone.",
    )


# -- checks on the attack runs ------------------------------------------------------------------------
def _label(run: AttackRun) -> str:
    return f"{run['spec']['name']} @ {eps_in_255(run['eps']):g}/255"


def _at(runs: Sequence[AttackRun], key: float) -> list[AttackRun]:
    return [r for r in runs if eps_key(r["eps"]) == key]


def _budget(attack: Attack) -> int:
    return int(getattr(attack, "steps", 1)) * int(attack.restarts)


def large_eps(ev: Evidence) -> dict:
    """At the sanity eps, every gradient attack and the worst case stay at or below the accuracy limit."""
    if not ev.keys or ev.keys[-1] < ev.large_eps - 1e-9:
        top = f"{eps_in_255(ev.keys[-1]):g}/255" if ev.keys else "none"
        return check(
            "large_eps",
            None,
            "warning",
            f"not run: the largest eps in the suite ({top}) is below the sanity eps "
            f"{eps_in_255(ev.large_eps):g}/255 for this data set; use --suite strong",
        )
    key = ev.keys[-1]
    limit = ev.large_eps_max_accuracy
    failing = [
        f"{_label(r)}: {ev.accuracy(r):.1%}"
        for r in _at(ev.white, key)
        if ev.accuracy(r) is not None and ev.accuracy(r) > limit
    ]
    worst = ev.clean_correct.clone()
    for r in _at(ev.active, key):
        worst &= r["outcome"] != 0
    worst_acc = float(worst.sum()) / ev.n
    passed = not failing and worst_acc <= limit
    detail = f"at eps {eps_in_255(key):g}/255 worst-case accuracy is {worst_acc:.1%} (limit {limit:.0%})"
    if failing:
        detail += "; gradient attacks that stay above the limit (their gradient is uninformative): "
        detail += ", ".join(failing)
    if worst_acc > limit:
        detail += "; no attack breaks the model even with this much room: gradient masking is likely"
    return check("large_eps", passed, "warning", detail)


def monotone_eps(ev: Evidence) -> dict:
    """No attack's own accuracy rises by more than tol from one eps to the next larger one."""
    acc = ev.accuracy
    bumps = []
    for index in sorted({r["index"] for r in ev.active}):
        series = sorted((r for r in ev.active if r["index"] == index and acc(r) is not None), key=lambda r: r["eps"])
        for lo, hi in zip(series, series[1:], strict=False):
            if acc(hi) > acc(lo) + ev.tol:
                bumps.append(
                    f"{lo['spec']['name']}: {acc(lo):.1%} at {eps_in_255(lo['eps']):g}/255 -> "
                    f"{acc(hi):.1%} at {eps_in_255(hi['eps']):g}/255"
                )
    return check(
        "monotone_eps",
        not bumps,
        "warning",
        "accuracy never rises with eps"
        if not bumps
        else "accuracy rises with eps (a larger ball contains the smaller one, so a working attack "
        "cannot do worse): " + "; ".join(bumps),
    )


def flat_curve(ev: Evidence) -> dict:
    """No gradient attack stays above 10% with a drop below tol from its smallest eps to its largest <= 16/255."""
    acc = ev.accuracy
    flats, examined = [], 0
    for index in sorted({r["index"] for r in ev.white}):
        series = sorted(
            (
                r
                for r in ev.white
                if r["index"] == index and acc(r) is not None and 0 < r["eps"] <= FLAT_CURVE_MAX_EPS + 1e-9
            ),
            key=lambda r: r["eps"],
        )
        if len(series) < 2 or series[-1]["eps"] < 2 * series[0]["eps"]:
            continue
        examined += 1
        lo, hi = series[0], series[-1]
        if acc(lo) - acc(hi) < ev.tol and acc(hi) > FLAT_CURVE_MIN_ACCURACY:
            flats.append(
                f"{lo['spec']['name']}: {acc(lo):.1%} at {eps_in_255(lo['eps']):g}/255, "
                f"{acc(hi):.1%} at {eps_in_255(hi['eps']):g}/255"
            )
    if not examined:
        return check("flat_curve", None, "warning", "not run: no gradient attack at two eps <= 16/255")
    return check(
        "flat_curve",
        not flats,
        "warning",
        "accuracy falls as eps grows"
        if not flats
        else "accuracy is flat in eps, the signature of a gradient that stops helping the attack "
        "(gradient masking), not of robustness: " + "; ".join(flats),
    )


def paper_schedule(run: AttackRun) -> bool:
    """Whether ``run`` is a PGD / I-FGSM on the paper's schedule (no ``steps`` given: steps and step from eps)."""
    return run["spec"]["type"] in ("pgd", "ifgsm") and "steps" not in run["spec"]["options"]


def budget_groups(ev: Evidence) -> list[list[AttackRun]]:
    """White-box runs grouped by (type, loss, gradient mode, eps), each group by increasing steps x restarts."""
    groups: dict[tuple, list[AttackRun]] = {}
    for r in ev.white:
        a = r["attack"]
        groups.setdefault((r["spec"]["type"], a.loss, str(a.grad_mode), eps_key(r["eps"])), []).append(r)
    return [sorted(members, key=lambda r: _budget(r["attack"])) for members in groups.values()]


def paper_budget_pairs(ev: Evidence) -> list[tuple[AttackRun, list[AttackRun]]]:
    """(paper-schedule run, the larger budgets of the same attack at its eps) for every group that has both."""
    pairs = []
    for members in budget_groups(ev):
        paper = [r for r in members if paper_schedule(r)]
        if not paper:
            continue
        larger = [r for r in members if _budget(r["attack"]) > _budget(paper[0]["attack"]) and not paper_schedule(r)]
        if larger:
            pairs.append((paper[0], larger))
    return pairs


def paper_budget(ev: Evidence) -> dict:
    """How many more samples the larger budgets of the same attack break than the paper's schedule (info)."""
    found = []
    for weak, larger in paper_budget_pairs(ev):
        broken = torch.zeros_like(ev.clean_correct)
        for r in larger:  # a 'remaining' run only sees what the earlier ones left: count their union
            broken |= r["outcome"] == 0
        extra = int((ev.clean_correct & (weak["outcome"] == 1) & broken).sum()) / ev.n
        if extra > ev.tol:
            names = ", ".join(r["spec"]["name"] for r in larger)
            where = f"{eps_in_255(weak['eps']):g}/255"
            found.append(f"{names} @ {where} break {extra:.1%} more than {weak['spec']['name']}")
    if not found:
        return check("paper_budget", True, "info", "the paper's schedule breaks as much as the larger budgets "
                     f"(within {ev.tol:.1%})")
    return check(
        "paper_budget",
        False,
        "info",
        "the paper's short schedule overstates robustness (a finding about the protocol, not a masking sign): "
        + "; ".join(found),
    )


def more_iterations(ev: Evidence) -> dict:
    """A larger steps x restarts budget of the same attack neither raises accuracy nor breaks > tol more (the
    paper's schedule is never the weaker run: see :func:`paper_budget`)."""
    acc, tol = ev.accuracy, ev.tol
    raised, unconverged, compared = [], [], 0
    for members in budget_groups(ev):
        for weak, strong in zip(members, members[1:], strict=False):
            if _budget(strong["attack"]) <= _budget(weak["attack"]) or paper_schedule(weak):
                continue
            compared += 1
            if acc(weak) is not None and acc(strong) is not None and acc(strong) > acc(weak) + tol:
                raised.append(f"{_label(weak)} {acc(weak):.1%} -> {_label(strong)} {acc(strong):.1%}")
            extra = ev.broken_beyond([weak], strong) / ev.n
            if extra > tol:
                unconverged.append(f"{_label(strong)} breaks {extra:.1%} more than {weak['spec']['name']}")
    if not compared:
        return check(
            "more_iterations",
            None,
            "warning",
            "not run: no attack appears with two budgets (steps x restarts) beyond the paper's schedule; use "
            "--suite strong",
        )
    problems = []
    if raised:
        problems.append("more steps/restarts RAISED accuracy (noisy or stochastic gradient): " + "; ".join(raised))
    if unconverged:
        problems.append(
            "more steps/restarts break clearly more samples, so the smaller budget "
            "overstates robustness: " + "; ".join(unconverged)
        )
    return check(
        "more_iterations",
        not problems,
        "warning",
        "; ".join(problems) or f"{compared} budget comparison(s) agree within {tol:.1%}",
    )


def _breaks_beyond_reference(
    ev: Evidence,
    name: str,
    challengers: Sequence[AttackRun],
    reference: Sequence[AttackRun],
    missing: str,
    what: str,
) -> dict:
    """Whether any ``challengers`` run breaks more than tol of the samples every ``reference`` run at its
    eps failed on; ``missing`` says what the suite lacks when either set is empty, ``what`` what a
    failure means."""
    if not challengers or not reference:
        return check(name, None, "warning", f"not run: {missing}")
    found = []
    for r in challengers:
        ref = _at(reference, eps_key(r["eps"]))
        if not ref:
            continue
        extra = ev.broken_beyond(ref, r) / ev.n
        if extra > ev.tol:
            found.append(f"{_label(r)} breaks {extra:.1%} of samples that every reference attack failed on")
    return check(
        name,
        not found,
        "warning",
        (what + ": " + "; ".join(found))
        if found
        else f"{len(challengers)} run(s) break no more than {ev.tol:.1%} beyond the reference attacks",
    )


def single_step(ev: Evidence) -> dict:
    """FGSM breaks no more than tol beyond the multi-step own-gradient attacks."""
    return _breaks_beyond_reference(
        ev,
        "single_step",
        ev.single,
        ev.multi,
        "needs fgsm and a multi-step gradient attack",
        "a single step beats many steps, so the multi-step attack is misled by the local gradient",
    )


def score_based(ev: Evidence) -> dict:
    """A gradient-free attack breaks no more than tol beyond the white-box attacks."""
    return _breaks_beyond_reference(
        ev,
        "score_based",
        ev.score,
        ev.white,
        "needs a gradient-free attack (square) and a white-box attack",
        "a gradient-free attack beats the gradient attacks: the white-box numbers are inflated by gradient masking",
    )


def transfer(ev: Evidence) -> dict:
    """A transfer attack breaks no more than tol beyond the white-box attacks."""
    return _breaks_beyond_reference(
        ev,
        "transfer",
        ev.transfer,
        ev.white,
        "needs a transfer attack with a trained source model",
        "examples crafted on another model beat white-box attacks on this one: its own gradient misleads the attacks",
    )


def alternative_backward(ev: Evidence) -> dict:
    """An attack through another DEQ backward breaks no more than tol beyond the own-gradient attacks."""
    return _breaks_beyond_reference(
        ev,
        "alternative_backward",
        ev.alt,
        ev.own_grad,
        "needs a gradient attack with grad_mode (e.g. unroll) on a DEQ",
        "attacking through another backward is much stronger: the model's default backward gives a "
        "misleading gradient (forward/backward solver mismatch)",
    )


def autoattack_flags(ev: Evidence) -> dict:
    """The official AutoAttack raised none of its own warning flags in any of its runs."""
    runs = [r for r in ev.active if isinstance(r["attack"], AutoAttack)]
    if not runs:
        return check("autoattack_flags", None, "warning", "not run: every autoattack run was skipped")
    raised = []
    for r in runs:
        for flag in r["attack"].flags:
            count = f" ({flag['count']} times)" if flag["count"] > 1 else ""
            raised.append((flag["level"], f"{_label(r)}: {flag['flag']}{count}: {flag['message']}"))
    if not raised:
        return check("autoattack_flags", True, "warning", f"AutoAttack raised no flag in {len(runs)} run(s)")
    warned = [text for level, text in raised if level == "warning"]
    if warned:
        detail = "AutoAttack's own checks flag this evaluation as possibly unreliable: " + "; ".join(warned)
    else:
        detail = "AutoAttack's notes: " + "; ".join(text for _, text in raised)
    return check("autoattack_flags", not warned, "warning" if warned else "info", detail)
