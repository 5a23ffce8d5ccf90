"""The result of :func:`lyadeq_zoo.evaluate`: its JSON schema, its assembly from the attack runs, reading
and writing result files, and readers of the numbers in it.

A result (format ``lyadeq-zoo-eval/1``) is ``{"format", "suite", "dataset", "n", "seed", "device",
"clean": {"accuracy", "correct", "n"}, "eps": [float], "attacks": [{"name", "type", "threat", "subset",
"options", "skipped", "results": [{"eps", "eps_255", "accuracy", "robust", "attacked",
"cumulative_accuracy", "seconds"[, "info"]}]}], "worst_case": [{"eps", "eps_255", "accuracy", "robust",
"attacks"}], "checks": [{"name", "passed", "level", "detail"}], "notes": [str], "timing": {"total_seconds",
"clean_seconds"}}``; ``tools/eval.py`` adds ``model`` and ``data`` (:func:`attach_provenance`).
Accuracies are fractions of ``n`` in [0, 1]; ``eps`` is in input units, ``eps_255`` the same times 255.
``info`` is present only for attacks that report something about their runs (:func:`run_info`; e.g. the
``autoattack`` attack's ``autoattack_flags`` and ``autoattack_settings``).
For models with solver diagnostics (DEQs) each attack result also has ``solver_not_converged`` (how many of its
adversarial inputs left the forward solve unconverged), each ``worst_case`` entry ``solver_converged``,
``residual_median``, ``residual_max`` and, for Lyapunov models, ``lyapunov_certified``: the solver's statistics
at each image's worst-case input (:mod:`.under_attack`), read from the forward pass that judged the input, and
``timing`` has ``stability_seconds``, the time spent reading them;
``clean`` has ``solver``: ``{"mean_steps", "max_steps", "converged"[, "lyapunov_certified"]}`` at the n clean
inputs (steps in ``f`` evaluations, the others fractions of n).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import torch

from ..attacks import Attack, eps_in_255
from ..data.datasets import DATASET_INFO
from ..errors import DataFormatError
from ..fileio import write_text_atomic
from ..hub.card import worst_case_row
from .under_attack import STABILITY_NOTE, CleanSolverStats, WorstCaseStability

RESULT_FORMAT = "lyadeq-zoo-eval/1"
RESULT_FORMAT_PREFIX = "lyadeq-zoo-eval/"  # any version of the format
# suites a model card stores, the first present one at the top
RESULT_SLOTS = ("paper", "strong", "curve", "autoattack")
NOTES = [
    "Every accuracy divides by n (all evaluated samples); clean-misclassified samples count as "
    "non-robust and are not attacked.",
    "accuracy: the attack's own robust accuracy (attacks with subset 'all' run on every "
    "clean-correct sample); null for subset 'remaining', which runs only on samples every earlier "
    "attack failed on at that eps and every smaller one.",
    "The eps balls are nested: an example that breaks a sample at one eps breaks it at every larger eps, so a "
    "sample broken at a smaller eps counts as broken at the larger ones too. cumulative_accuracy: robust to this "
    "and all earlier attacks at that eps and every smaller one; worst_case: robust to every attack run at that "
    "eps or a smaller one.",
]


class AttackRun(TypedDict):
    """One attack of the suite at one eps, as the run loop fills it and the masking checks read it."""

    spec: dict[str, Any]  # the resolved suite entry (see load_suite)
    index: int  # position of the spec in the suite
    eps: float
    attack: Attack
    skipped: str | None  # why the attack does not apply to the model, or None
    outcome: torch.Tensor  # (n,) int8: -1 not attacked (yet), 0 broken or clean-wrong, 1 still correct
    seconds: float
    solver_not_converged: int | None  # adversarial inputs at which the solve did not converge (None: not measured)


def eps_key(eps: float) -> float:
    """The eps value results are grouped by (rounded to 9 digits, so 8/255 from two sources is one key)."""
    return round(eps, 9)


def worst_case_robust(runs: list[AttackRun], clean_correct: torch.Tensor) -> dict[float, torch.Tensor]:
    """eps key -> (n,) bool: clean-correct and broken by no run at that eps or a smaller one (the l_inf balls are
    nested, so an example found at a smaller eps lies in every larger ball). Skipped runs count for their eps key
    (a key with only skipped runs is still a key) but break nothing."""
    broken: dict[float, torch.Tensor] = {}
    for run in runs:
        hit = broken.setdefault(eps_key(run["eps"]), torch.zeros_like(clean_correct))
        if run["skipped"] is None:
            hit |= run["outcome"] == 0
    robust, so_far = {}, ~clean_correct
    for key in sorted(broken):
        so_far = so_far | broken[key]
        robust[key] = ~so_far
    return robust


def assemble_result(
    suite: Mapping[str, Any],
    runs: list[AttackRun],
    clean_correct: torch.Tensor,
    robust: Mapping[float, torch.Tensor],
    *,
    seed: int,
    device: torch.device,
    dataset: str | None,
    stability: Mapping[float, WorstCaseStability] | None = None,
    clean_solver: CleanSolverStats | None = None,
) -> dict[str, Any]:
    """The result dict (``checks`` empty, no ``timing`` yet) from the finished runs.

    ``clean_correct``: (n,) bool; ``robust``: eps key -> (n,) bool, samples robust to every attack run at
    that eps; ``stability``: eps key -> the solver statistics at the worst-case inputs (None: not measured);
    ``clean_solver``: those at the clean inputs, summarised as ``clean.solver`` (omitted when None).
    """
    n = clean_correct.numel()
    attacks_out = []
    by_index: dict[int, dict[str, Any]] = {}
    for r_index, run in enumerate(runs):
        entry = by_index.get(run["index"])
        if entry is None:
            entry = by_index[run["index"]] = _attack_entry(run)
            attacks_out.append(entry)
        if run["skipped"] is not None:
            entry["skipped"] = run["skipped"]
        robust_so_far = worst_case_robust(runs[: r_index + 1], clean_correct)  # R runs: R small passes over n
        entry["results"].append(
            _run_item(run, clean_correct, robust_so_far, measured_stability=stability is not None)
        )
    clean: dict[str, Any] = {"accuracy": float(clean_correct.sum()) / n, "correct": int(clean_correct.sum()), "n": n}
    if clean_solver is not None:
        clean["solver"] = clean_solver.summary()
    return {
        "format": RESULT_FORMAT,
        "suite": suite["name"],
        "dataset": dataset,
        "n": n,
        "seed": seed,
        "device": str(device),
        "clean": clean,
        "eps": sorted({eps_key(r["eps"]) for r in runs}),
        "attacks": attacks_out,
        "worst_case": _worst_case(runs, robust, n, stability),
        "checks": [],
        "notes": [*NOTES, *([STABILITY_NOTE] if stability is not None else [])],
    }


def _attack_entry(run: AttackRun) -> dict[str, Any]:
    """The result's entry of one suite attack, before its per-eps results are appended."""
    spec = run["spec"]
    return {
        "name": spec["name"],
        "type": spec["type"],
        "threat": run["attack"].threat,
        "subset": spec["subset"],
        "options": json_options(spec["options"]),
        "skipped": None,
        "results": [],
    }


def _run_item(
    run: AttackRun,
    clean_correct: torch.Tensor,
    robust_so_far: Mapping[float, torch.Tensor],
    *,
    measured_stability: bool,
) -> dict[str, Any]:
    """One attack's numbers at one eps; ``robust_so_far``: :func:`worst_case_robust` of the runs up to this one in
    suite order, whose entry at the run's eps is its cumulative accuracy."""
    n = clean_correct.numel()
    item: dict[str, Any] = {"eps": run["eps"], "eps_255": round(eps_in_255(run["eps"]), 4)}
    if run["skipped"] is not None:
        item.update(accuracy=None, robust=None, attacked=0, cumulative_accuracy=None, seconds=0.0)
        return item
    outcome = run["outcome"]
    alive = robust_so_far[eps_key(run["eps"])]
    own = run["spec"]["subset"] == "all"
    item.update(
        accuracy=float((outcome == 1).sum()) / n if own else None,
        robust=int((outcome == 1).sum()) if own else None,
        attacked=int((outcome >= 0).sum() - (~clean_correct).sum()),
        cumulative_accuracy=float(alive.sum()) / n,
        seconds=round(run["seconds"], 4),
    )
    if measured_stability:  # measured for every run of the evaluation (0 for a run that attacked nothing)
        item["solver_not_converged"] = int(run.get("solver_not_converged") or 0)
    info = run_info(run["attack"])
    if info:
        item["info"] = info
    return item


def _worst_case(
    runs: list[AttackRun],
    robust: Mapping[float, torch.Tensor],
    n: int,
    stability: Mapping[float, WorstCaseStability] | None,
) -> list[dict[str, Any]]:
    """Per eps that some attack ran at: the images robust to every attack there, and the solver statistics."""
    worst = []
    for key in sorted(robust):
        names = [r["spec"]["name"] for r in runs if r["skipped"] is None and eps_key(r["eps"]) == key]
        if not names:
            continue
        worst.append(
            {
                "eps": key,
                "eps_255": round(eps_in_255(key), 4),
                "accuracy": float(robust[key].sum()) / n,
                "robust": int(robust[key].sum()),
                "attacks": names,
                **(stability[key].summary() if stability is not None and key in stability else {}),
            }
        )
    return worst


def run_info(attack: Attack) -> dict[str, Any]:
    """What an attack reports about its runs beyond the accuracies (its ``run_info()``, JSON; e.g. AutoAttack's
    flags), or {} for attacks that report nothing: results of those keep exactly their old keys."""
    report = getattr(attack, "run_info", None)
    return dict(report()) if callable(report) else {}


def json_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Attack options as JSON values; anything else (e.g. a source ``nn.Module``) as its repr."""
    out = {}
    for key, value in options.items():
        out[key] = value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else repr(value)
    return out


def attach_provenance(result: dict[str, Any], *, model: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """Record what was evaluated: ``model = {"name", "source", "weights"}`` (see
    :func:`lyadeq_zoo.model_source.resolve_model`) and ``data = {"dataset", "split", "root", "limit"}``."""
    result["model"] = dict(model)
    result["data"] = dict(data)
    return result


# -- files ----------------------------------------------------------------------------------------------
def write_result(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``result`` as indented JSON (atomically; parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(result, indent=2) + "\n")


def read_result(path: str | Path) -> dict[str, Any]:
    """A result JSON written by :func:`write_result` (``tools/eval.py --json``).

    Raises :class:`DataFormatError` if the file cannot be read, is not JSON, or is not an ``lz.evaluate``
    result (no ``format`` ``lyadeq-zoo-eval/*``).
    """
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataFormatError(f"not readable JSON ({err})") from err
    if not is_result(result):
        raise DataFormatError(f"not an lz.evaluate result (no format {RESULT_FORMAT_PREFIX}*)")
    return result


def is_result(value: Any) -> bool:
    """Whether ``value`` is an ``lz.evaluate`` result (a mapping with ``format`` ``lyadeq-zoo-eval/*``)."""
    return isinstance(value, dict) and str(value.get("format", "")).startswith(RESULT_FORMAT_PREFIX)


def merge_results(
    results: Mapping[str, Mapping[str, Any]], previous: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One metrics dict for a model card from its results by suite slot (``paper``, ``strong``, ``curve``).

    The first slot present (in :data:`RESULT_SLOTS` order) is the top level; the others nest under their
    slot name; when the top is not ``strong``, the strong suite's worst case is added as top-level rows
    (in %). The training metrics of ``previous`` (the card's metrics: a result with ``training`` nested, or
    the plain training metrics of a card never evaluated) are kept under ``training``. Inputs are copied.
    """
    order = [s for s in RESULT_SLOTS if s in results]
    if not order:
        raise ValueError(f"no result to merge: give at least one of the slots {', '.join(RESULT_SLOTS)}")
    primary = order[0]
    metrics = copy.deepcopy(results[primary])
    for slot in order[1:]:
        metrics[slot] = copy.deepcopy(results[slot])
    strong = results.get("strong")
    if strong is not None and primary != "strong":
        for eps, value in sorted(worst_curve(strong).items()):
            metrics[worst_case_row(eps, strong.get("suite"), strong.get("n"))] = value
    old = previous or {}
    training = old.get("training") if str(old.get("format", "")).startswith(RESULT_FORMAT_PREFIX) else old
    if training:
        metrics["training"] = copy.deepcopy(training)
    return metrics


# -- readers --------------------------------------------------------------------------------------------
def eps_255_key(eps_255: float) -> float:
    """The key of the curve readers below: eps x 255 rounded to 3 digits."""
    return round(float(eps_255), 3)


def attack_curve(result: Mapping[str, Any] | None, name: str) -> dict[float, float]:
    """eps (x 1/255) -> the attack's own accuracy in %, for attack ``name`` of ``result`` ({} if absent)."""
    if not result:
        return {}
    for attack in result.get("attacks") or []:
        if attack.get("name") == name and attack.get("subset") == "all" and not attack.get("skipped"):
            return {
                eps_255_key(i["eps_255"]): 100.0 * i["accuracy"]
                for i in attack["results"]
                if i.get("accuracy") is not None
            }
    return {}


def worst_curve(result: Mapping[str, Any] | None) -> dict[float, float]:
    """eps (x 1/255) -> worst-case accuracy in % over every attack of ``result`` at that eps."""
    if not result:
        return {}
    return {eps_255_key(i["eps_255"]): 100.0 * i["accuracy"] for i in result.get("worst_case") or []}


def stability_curve(result: Mapping[str, Any] | None, key: str) -> dict[float, float]:
    """eps (x 1/255) -> ``key`` of the worst-case entries in % (``solver_converged``, ``lyapunov_certified``);
    {} when the result has none (results of models without a DEQ, or from before the key existed)."""
    if not result:
        return {}
    return {
        eps_255_key(i["eps_255"]): 100.0 * i[key]
        for i in result.get("worst_case") or []
        if isinstance(i.get(key), (int, float))
    }


def clean_pct(result: Mapping[str, Any] | None) -> float | None:
    """Clean accuracy in %, or None without a result."""
    if not result:
        return None
    return 100.0 * result["clean"]["accuracy"]


def sample_note(result: Mapping[str, Any]) -> str:
    """How many samples a result is on, and from where (full test set, first N, shipped sample)."""
    data = result.get("data") or {}
    n = result.get("n")
    if str(data.get("root")) == "sample":
        return f"n={n}, shipped sample"
    if data.get("limit") and not _covers_test_split(result, int(data["limit"])):
        return f"n={n}, first {data['limit']} test images"
    if data:
        return f"n={n}, full test set"
    return f"n={n}"


def _covers_test_split(result: Mapping[str, Any], limit: int) -> bool:
    """Whether ``--limit limit`` took every image of the result's data set's official test split."""
    info = DATASET_INFO.get(str(result.get("dataset")))
    return info is not None and "test" in info.splits and limit >= info.splits["test"]
