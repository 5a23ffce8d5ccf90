"""A model card's numbers under RobustBench's field names, plus what a DEQ adds (its solver, and the gradient the
attacks used), so that a zoo entry reads like a RobustBench model-info entry.

RobustBench (Croce et al., 2021) reports, per model and threat model, ``clean_acc`` and ``autoattack_acc`` (the
official AutoAttack, standard version, at the benchmark eps: 8/255 on CIFAR-10, 0.3 on MNIST) in percent, and
``additional_data``, ``number_forward_passes`` and ``unreliable`` (set when an adaptive attack broke the model
below its AutoAttack number). :func:`robustbench_fields` fills them from ``lz.evaluate`` results:

* ``clean_acc``: the clean accuracy of the paper-suite result (the full test set), else of the first result.
* ``autoattack_acc``: the own accuracy of the ``autoattack`` type attack with ``version: standard`` at the
  benchmark eps, from the ``autoattack`` suite result, else from the ``strong`` result; None when neither ran it.
* ``unreliable``: True when, in a result that ran both (the ``strong`` result, else the ``autoattack`` one, whose
  second entry attacks through the unrolled solver), the worst case over every attack at the benchmark eps lies
  more than the masking checks' tolerance below AutoAttack's own accuracy on the same images (AutoAttack alone
  overstates the robustness); False when it does not; None when no such result exists. ``worst_case_acc``,
  ``worst_case_n`` and ``worst_case_suite`` say which worst case it was.
* DEQ fields (None for models without a solver): ``solver``, ``max_iter``, ``tol`` from the config,
  ``mean_solver_steps`` (the forward solver's mean steps at the clean inputs of the paper-suite result, where
  the result has them; ``mean_solver_steps_on`` says on what), and
  ``attack_grad_modes``: what the attacks differentiated (:func:`gradient_path`: ``model`` = the model's own
  backward, e.g. the IFT; ``unroll``; ``intermediate_states``; ``transfer``; ``none`` for score-based
  attacks). The solver's behaviour under attack is in each ``worst_case`` entry (``solver_converged``,
  ``lyapunov_certified``, residuals).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..attacks import create_attack
from .suites import ROBUSTBENCH_EPS

EPS_MATCH = 1e-6


def robustbench_fields(
    results: Mapping[str, Mapping[str, Any]], config: Mapping[str, Any], dataset: str
) -> dict[str, Any]:
    """RobustBench-style fields of one model from its results by slot (``paper``, ``strong``, ``autoattack``,
    ...) and its model config; accuracies in percent (two decimals), ``n`` per number stated."""
    eps = ROBUSTBENCH_EPS.get(dataset, ROBUSTBENCH_EPS["default"])
    first = next(iter(results.values()), None)
    clean_source = results.get("paper") or first
    fields: dict[str, Any] = {
        "dataset": dataset,
        "threat_model": "Linf",
        "eps": eps,
        "clean_acc": _percent(clean_source["clean"]["accuracy"]) if clean_source else None,
        "clean_n": clean_source["n"] if clean_source else None,
        "autoattack_acc": None,
        "autoattack_n": None,
        "additional_data": False,
        "number_forward_passes": 1,
        "unreliable": None,
    }
    point = autoattack_point(results, dataset)
    if point is not None:
        fields["autoattack_acc"], fields["autoattack_n"] = point[0], point[1]
    for slot in ("strong", "autoattack"):  # the widest worst case that ran the standard AutoAttack too
        result = results.get(slot)
        own, worst = _autoattack_accuracy(result, eps), _worst_case(result, eps)
        if own is None or worst is None:
            continue
        tolerance = max(0.02, 3.0 / max(int(result["n"]), 1))
        fields["unreliable"] = bool(worst < own - tolerance)
        fields["worst_case_acc"], fields["worst_case_n"] = _percent(worst), result["n"]
        fields["worst_case_suite"] = result.get("suite")
        break
    fields.update(deq_fields(config, results))
    if fields["solver"] is not None:
        fields.update(_mean_solver_steps(results))
    return fields


def _mean_solver_steps(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``mean_solver_steps`` (and what it was measured on) from the clean solver statistics of the paper-suite
    result, else of the first result that has them; empty when none has (results from before they existed)."""
    for slot in ("paper", *results):
        result = results.get(slot) or {}
        solver = (result.get("clean") or {}).get("solver") or {}
        if solver.get("mean_steps") is not None:
            return {
                "mean_solver_steps": round(float(solver["mean_steps"]), 2),
                "mean_solver_steps_on": f"the {result['n']} clean test images of the `{result.get('suite')}` result",
            }
    return {}


def autoattack_point(results: Mapping[str, Mapping[str, Any]], dataset: str) -> tuple[float, int, float] | None:
    """(accuracy in %, n, eps) of the standard AutoAttack at RobustBench's eps for ``dataset``, from the
    ``autoattack`` result, else the ``strong`` one (as ``autoattack_acc``); None when neither ran it."""
    eps = ROBUSTBENCH_EPS.get(dataset, ROBUSTBENCH_EPS["default"])
    for slot in ("autoattack", "strong"):
        own = _autoattack_accuracy(results.get(slot), eps)
        if own is not None:
            return _percent(own), int(results[slot]["n"]), float(eps)
    return None


def deq_fields(config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``solver``, ``max_iter``, ``tol`` (the forward solver of the config) and ``attack_grad_modes`` (the backward
    each attack differentiated through: ``model`` for the model's own); all None for a model without a solver."""
    model = config.get("model") or {}
    solver = model.get("solver") or {}
    if not solver or not model.get("cell"):
        return {"solver": None, "max_iter": None, "tol": None, "attack_grad_modes": None}
    modes = {
        gradient_path(attack["type"], attack.get("options") or {})
        for result in results.values()
        for attack in result.get("attacks") or []
        if not attack.get("skipped")
    }
    return {
        "solver": solver.get("type"),
        "max_iter": solver.get("max_iter"),
        "tol": solver.get("tol"),
        "attack_grad_modes": sorted(modes) or None,
    }


def gradient_path(attack_type: str, options: Mapping[str, Any]) -> str:
    """What an attack of ``attack_type`` built with ``options`` differentiates: ``model`` (the model's own
    backward), another backward's type (``unroll`` ...; ``intermediate_states`` for the intermediate-state attack),
    ``transfer``
    (a source model's gradient) or ``none`` (score-based)."""
    attack = create_attack(attack_type, **options)  # built only: a transfer attack loads its source when it runs
    if attack.threat == "score-based":
        return "none"
    if attack.threat == "transfer":
        return "transfer"
    grad_mode = attack.grad_mode
    if isinstance(grad_mode, Mapping):
        grad_mode = grad_mode.get("type")
    return "model" if grad_mode is None else str(grad_mode)


def _percent(fraction: float) -> float:
    return round(100.0 * float(fraction), 2)


def _autoattack_accuracy(result: Mapping[str, Any] | None, eps: float | None) -> float | None:
    """Own accuracy (fraction) of the standard AutoAttack at ``eps`` in ``result``, or None."""
    if not result or eps is None:
        return None
    for attack in result.get("attacks") or []:
        options = attack.get("options") or {}
        if attack.get("type") != "autoattack" or attack.get("skipped") or attack.get("subset") != "all":
            continue
        if options.get("version", "standard") != "standard":
            continue
        for row in attack.get("results") or []:
            if abs(row["eps"] - eps) < EPS_MATCH and row.get("accuracy") is not None:
                return float(row["accuracy"])
    return None


def _worst_case(result: Mapping[str, Any] | None, eps: float | None) -> float | None:
    if not result or eps is None:
        return None
    for row in result.get("worst_case") or []:
        if abs(row["eps"] - eps) < EPS_MATCH:
            return float(row["accuracy"])
    return None
