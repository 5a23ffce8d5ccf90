"""Section ``suite_speed``: a whole attack suite's images/s on ``lyadeq_cifar10``, now against the previous
implementation, in the same run, on the same images, and whether each image's outcomes are the same.

"Previous implementation" is the same suite with ``early_stop: false`` given to every attack that has the
option (also to a transfer attack's inner attack): each iterative attack then steps every sample for its whole
budget, as before the option existed. With ``early_stop`` (the default) an attack stops stepping a sample once
the model misclassifies it, the model runs on the other samples only, and the loop ends when none is left. The
per-image outcome of every (attack, eps) run and of the worst case is compared between the two: with a model
that treats samples independently (eval mode: eval-mode BatchNorm, per-sample solver stopping) they agree up to
floating-point differences between batch sizes, which is what ``outcomes_differ`` counts.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Mapping
from typing import Any

import torch

from ..config import accepted_keys
from ..evaluation.runner import Tally, collect_batches, run_attacks
from ..evaluation.suites import load_suite
from ..registry import get_component
from .common import sample_batch, sync, zoo_model

MODEL = "lyadeq_cifar10"


def previous_suite(suite: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the resolved ``suite`` with ``early_stop: false`` on every attack (or inner attack) that takes it."""
    old = copy.deepcopy(dict(suite))
    for spec in old["attacks"]:
        options = spec["options"]
        if _takes_early_stop(spec["type"]):
            options["early_stop"] = False
        inner = options.get("attack")
        if isinstance(inner, dict) and _takes_early_stop(inner["type"]):
            options["attack"] = {**inner, "early_stop": False}
    return old


def _takes_early_stop(attack_type: str) -> bool:
    return "early_stop" in accepted_keys(get_component("attack", attack_type))[0]


def compare_outcomes(old: Tally, new: Tally) -> dict[str, Any]:
    """Per-image agreement of two tallies of the same suite on the same images: runs and worst case."""
    runs_differ = sum(int((a["outcome"] != b["outcome"]).sum()) for a, b in zip(old.runs, new.runs, strict=True))
    worst_differ = {f"{key * 255:g}/255": int((old.robust[key] != new.robust[key]).sum()) for key in old.robust}
    return {
        "run_outcomes_compared": sum(int(r["outcome"].numel()) for r in old.runs),
        "run_outcomes_differ": runs_differ,
        "worst_case_differ": worst_differ,
        "robust_old": {f"{k * 255:g}/255": int(v.sum()) for k, v in old.robust.items()},
        "robust_new": {f"{k * 255:g}/255": int(v.sum()) for k, v in new.robust.items()},
    }


def _per_attack_seconds(old: Tally, new: Tally) -> dict[str, list[float]]:
    """Attack name -> [previous, now] seconds, summed over its eps."""
    seconds: dict[str, list[float]] = {}
    for a, b in zip(old.runs, new.runs, strict=True):
        pair = seconds.setdefault(a["spec"]["name"], [0.0, 0.0])
        pair[0] += a["seconds"]
        pair[1] += b["seconds"]
    return {name: [round(t, 3) for t in pair] for name, pair in seconds.items()}


def _timed_tally(model: torch.nn.Module, batches: list, suite: Mapping[str, Any], device: torch.device) -> tuple:
    sync(device)
    start = time.perf_counter()
    tally = run_attacks(model, batches, suite, device, seed=0, progress=False)
    sync(device)
    return tally, time.perf_counter() - start


def bench_suite_speed(
    device: torch.device, quick: bool, suite_name: str = "strong_cpu", n: int = 40
) -> dict[str, Any]:
    """Images/s of ``suite_name`` on ``n`` sample images of ``lyadeq_cifar10`` (one batch), previous vs now;
    ``quick``: the ``paper`` suite on 4 images."""
    if quick:
        n, suite_name = 4, "paper"
    images, labels = sample_batch("cifar10", n, device, stride=37)
    model, weights = zoo_model(MODEL, device)
    model.eval()
    suite = load_suite(suite_name, "cifar10")
    batches = collect_batches(model, torch.utils.data.TensorDataset(images.cpu(), labels.cpu()), None, n)
    with torch.nn.utils.parametrize.cached():
        old, old_seconds = _timed_tally(model, batches, previous_suite(suite), device)
        new, new_seconds = _timed_tally(model, batches, suite, device)
    out = {
        "model": MODEL,
        "weights": weights,
        "suite": suite_name,
        "n": n,
        "batch_size": n,
        "clean_correct": int(old.clean_correct.sum()),
        "previous_seconds": old_seconds,
        "seconds": new_seconds,
        "previous_images_per_s": n / old_seconds,
        "images_per_s": n / new_seconds,
        "speedup": old_seconds / new_seconds,
        "per_attack_seconds": _per_attack_seconds(old, new),
        **compare_outcomes(old, new),
    }
    print(
        f"[benchmark] suite_speed: {suite_name} on {n} images {out['previous_images_per_s']:.2f} -> "
        f"{out['images_per_s']:.2f} img/s ({out['speedup']:.2f}x), {out['run_outcomes_differ']} of "
        f"{out['run_outcomes_compared']} run outcomes differ",
        file=sys.stderr,
    )
    return out
