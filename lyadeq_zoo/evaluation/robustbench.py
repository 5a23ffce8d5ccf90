"""A model card's numbers under RobustBench's field names, plus what a DEQ adds (its solver, and the gradient the
attacks used), so that a zoo entry reads like a RobustBench model-info entry.

RobustBench (Croce et al., 2021) reports, per model and threat model, ``clean_acc`` and ``autoattack_acc`` (the
official AutoAttack, standard version, at the benchmark eps: 8/255 on CIFAR-10, 0.3 on MNIST) in percent, and
``additional_data``, ``number_forward_passes`` and ``unreliable`` (set when an adaptive attack broke the model
below its AutoAttack number). :func:`robustbench_fields` fills them from ``lz.evaluate`` results:

* ``clean_acc``: the clean accuracy of the paper-suite result (the full test set), else of the first result.
* ``autoattack_acc``: the own accuracy of the ``autoattack`` type attack with ``version: standard`` at the
  benchmark eps, from the ``autoattack`` suite result, else from the ``strong`` result; None when neither ran it.
* ``unreliable``: True when, in a result that ran both, the worst case over every attack at the benchmark eps lies
  more than the masking checks' tolerance below AutoAttack's own accuracy on the same images (AutoAttack alone
  overstates the robustness); False when it does not; None when no such result exists.
* DEQ fields (None for models without a solver): ``solver``, ``max_iter``, ``tol`` from the config, and
  ``attack_grad_modes``: the backwards the attacks' gradients went through (``model`` = the model's own, e.g. the
  IFT; ``unroll``; ``path`` for the intermediate-state attack). The solver's behaviour under attack is in each
  ``worst_case`` entry (``solver_converged``, ``lyapunov_certified``, residuals).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: RobustBench's l_inf eps per data set.
BENCHMARK_EPS = {"mnist": 0.3, "cifar10": 8 / 255, "cifar100": 8 / 255, "svhn": 8 / 255}
EPS_MATCH = 1e-6


def robustbench_fields(
    results: Mapping[str, Mapping[str, Any]], config: Mapping[str, Any], dataset: str
) -> dict[str, Any]:
    """RobustBench-style fields of one model from its results by slot (``paper``, ``strong``, ``autoattack``,
    ...) and its model config; accuracies in percent (two decimals), ``n`` per number stated."""
    eps = BENCHMARK_EPS.get(dataset)
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
    for slot in ("autoattack", "strong"):
        own = _autoattack_accuracy(results.get(slot), eps)
        if own is not None and fields["autoattack_acc"] is None:
            fields["autoattack_acc"], fields["autoattack_n"] = _percent(own), results[slot]["n"]
    strong = results.get("strong")
    own_in_strong = _autoattack_accuracy(strong, eps)
    worst = _worst_case(strong, eps)
    if own_in_strong is not None and worst is not None:
        tolerance = max(0.02, 3.0 / max(int(strong["n"]), 1))
        fields["unreliable"] = bool(worst < own_in_strong - tolerance)
        fields["worst_case_acc"], fields["worst_case_n"] = _percent(worst), strong["n"]
    fields.update(deq_fields(config, results))
    return fields


def deq_fields(config: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``solver``, ``max_iter``, ``tol`` (the forward solver of the config) and ``attack_grad_modes`` (the backward
    each attack differentiated through: ``model`` for the model's own); all None for a model without a solver."""
    model = config.get("model") or {}
    solver = model.get("solver") or {}
    if not solver or not model.get("cell"):
        return {"solver": None, "max_iter": None, "tol": None, "attack_grad_modes": None}
    modes = set()
    for result in results.values():
        for attack in result.get("attacks") or []:
            if attack.get("skipped"):
                continue
            grad_mode = (attack.get("options") or {}).get("grad_mode")
            if isinstance(grad_mode, Mapping):
                grad_mode = grad_mode.get("type")
            modes.add("model" if grad_mode is None else str(grad_mode))
    return {
        "solver": solver.get("type"),
        "max_iter": solver.get("max_iter"),
        "tol": solver.get("tol"),
        "attack_grad_modes": sorted(modes) or None,
    }


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
