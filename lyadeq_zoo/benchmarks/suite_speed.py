"""Section ``suite_speed``: a whole attack suite's images/s on ``lyadeq_cifar10``, now against the previous
implementation, in the same run, on the same images, and whether each image's outcomes are the same.

"Previous implementation" is the evaluation as it was before the suite-speed work:

* ``early_stop: false`` on every attack that has the option (also on a transfer attack's inner attack): each
  iterative attack steps every sample for its whole budget. With ``early_stop`` (the default) an attack stops
  stepping a sample once the model misclassifies it, and its loop ends when none is left.
* each eps on its own (``run_attacks(..., nested_eps=False)``): a ``remaining`` attack at 8/255 re-attacks an image
  that some attack already broke at 2/255. Now an example found at a smaller eps counts at every larger one (the
  l_inf balls are nested), so ``remaining`` attacks skip those images.
* transfer attacks on every clean-correct sample (``subset: all``), as ``strong_cpu`` ran them; it now runs them
  on the ``remaining`` samples, which gives the same worst case.

The per-image outcome of every (attack, eps) run and of the worst case is compared between the two. Outcomes that
both measured agree up to floating-point differences between batch sizes (with a model that treats samples
independently: eval-mode BatchNorm, per-sample solver stopping), which ``run_outcomes_differ`` counts; outcomes
that only the previous implementation measured (images the new one skips as broken already) are counted apart.
The worst case can only lose robust images (an example found at a smaller eps now counts at the larger one):
``worst_case_weaker_now`` counts images robust now that were broken before, which must be 0.
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
BATCH_SIZE = 100  # an evaluation job's default batch


def previous_suite(suite: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the resolved ``suite`` as the previous implementation ran it: ``early_stop: false`` on every
    attack (or inner attack) that takes it, transfer attacks on every sample (``subset: all``)."""
    old = copy.deepcopy(dict(suite))
    for spec in old["attacks"]:
        options = spec["options"]
        if _takes_early_stop(spec["type"]):
            options["early_stop"] = False
        inner = options.get("attack")
        if isinstance(inner, dict) and _takes_early_stop(inner["type"]):
            options["attack"] = {**inner, "early_stop": False}
        if spec["type"] == "transfer":
            spec["subset"] = "all"
    return old


def _takes_early_stop(attack_type: str) -> bool:
    return "early_stop" in accepted_keys(get_component("attack", attack_type))[0]


def compare_outcomes(old: Tally, new: Tally) -> dict[str, Any]:
    """Per-image agreement of two tallies of the same suite on the same images: runs and worst case (see the
    module docstring)."""
    compared = differ = not_run_now = 0
    for a, b in zip(old.runs, new.runs, strict=True):
        both = (a["outcome"] >= 0) & (b["outcome"] >= 0)
        compared += int(both.sum())
        differ += int((both & (a["outcome"] != b["outcome"])).sum())
        not_run_now += int(((a["outcome"] >= 0) & (b["outcome"] < 0)).sum())

    def per_eps(counts: Mapping[float, torch.Tensor]) -> dict[str, int]:
        return {f"{key * 255:g}/255": int(value.sum()) for key, value in counts.items()}

    return {
        "run_outcomes_compared": compared,
        "run_outcomes_differ": differ,
        "run_outcomes_not_run_now": not_run_now,
        "worst_case_differ": per_eps({k: old.robust[k] != new.robust[k] for k in old.robust}),
        "worst_case_weaker_now": per_eps({k: new.robust[k] & ~old.robust[k] for k in old.robust}),
        "robust_old": per_eps(old.robust),
        "robust_new": per_eps(new.robust),
    }


def _per_attack_seconds(old: Tally, new: Tally) -> dict[str, list[float]]:
    """Attack name -> [previous, now] seconds, summed over its eps."""
    seconds: dict[str, list[float]] = {}
    for a, b in zip(old.runs, new.runs, strict=True):
        pair = seconds.setdefault(a["spec"]["name"], [0.0, 0.0])
        pair[0] += a["seconds"]
        pair[1] += b["seconds"]
    return {name: [round(t, 3) for t in pair] for name, pair in seconds.items()}


def _timed_tally(
    model: torch.nn.Module, batches: list, suite: Mapping[str, Any], device: torch.device, nested_eps: bool
) -> tuple:
    sync(device)
    start = time.perf_counter()
    tally = run_attacks(model, batches, suite, device, seed=0, progress=False, nested_eps=nested_eps)
    sync(device)
    return tally, time.perf_counter() - start


def bench_suite_speed(
    device: torch.device, quick: bool, suite_name: str = "strong_cpu", n: int = 40
) -> dict[str, Any]:
    """Images/s of ``suite_name`` on ``n`` sample images of ``lyadeq_cifar10`` (in batches of up to 100, as an
    evaluation job runs them), previous vs now; ``quick``: the ``paper`` suite on 4 images."""
    if quick:
        n, suite_name = 4, "paper"
    images, labels = sample_batch("cifar10", n, device, stride=37)
    model, weights = zoo_model(MODEL, device)
    model.eval()
    suite = load_suite(suite_name, "cifar10")
    batch_size = min(n, BATCH_SIZE)
    batches = collect_batches(model, torch.utils.data.TensorDataset(images.cpu(), labels.cpu()), None, batch_size)
    with torch.nn.utils.parametrize.cached():
        old, old_seconds = _timed_tally(model, batches, previous_suite(suite), device, nested_eps=False)
        new, new_seconds = _timed_tally(model, batches, suite, device, nested_eps=True)
    out = {
        "model": MODEL,
        "weights": weights,
        "suite": suite_name,
        "n": n,
        "batch_size": batch_size,
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
        f"{out['run_outcomes_compared']} run outcomes differ, worst case weaker now: {out['worst_case_weaker_now']}",
        file=sys.stderr,
    )
    return out
