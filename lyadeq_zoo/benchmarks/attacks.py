"""Section ``attacks``: images/s of PGD-10 on ``lyadeq_cifar10`` and ``deq_cifar10``, and of a whole suite
(``strong``; ``paper`` with ``--quick``) through ``lyadeq_zoo.evaluate`` on a few images.

Misclassified images are never attacked and ``subset: remaining`` attacks only see survivors, so suite
throughput depends on the weights (random init when the zoo has no pretrained ones: recorded).
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any

import torch

import lyadeq_zoo as lz

from .common import interleaved, ratio, sample_batch, sync, zoo_model

PGD_MODELS = ("lyadeq_cifar10", "deq_cifar10")


def bench_attacks(device: torch.device, quick: bool) -> dict[str, Any]:
    """PGD-10 and whole-suite attack throughput on CIFAR-10 sample images (see the module docstring)."""
    n_pgd = 2 if quick else 32
    n_suite = 2 if quick else 20
    suite = "paper" if quick else "strong"
    # A stride through the class-balanced sample, so that the few images cover every class.
    images, labels = sample_batch("cifar10", max(n_pgd, n_suite), device, stride=37)
    pgd = lz.create_attack("pgd", eps=8 / 255, alpha=2 / 255, steps=10)
    out: dict[str, Any] = {"pgd10": {}, "suite": {}}
    models = {}
    x, y = images[:n_pgd], labels[:n_pgd]
    for name in PGD_MODELS:
        models[name], weights = zoo_model(name, device)
        models[name].eval()
        seconds = interleaved({name: functools.partial(pgd, models[name], x, y)}, device, 1 if quick else 3)[name]
        out["pgd10"][name] = {"n": n_pgd, "weights": weights, "seconds": seconds, "images_per_s": n_pgd / seconds}
    out["pgd10"]["lyadeq_over_deq_time"] = ratio(
        out["pgd10"]["lyadeq_cifar10"]["seconds"], out["pgd10"]["deq_cifar10"]["seconds"]
    )
    data = torch.utils.data.TensorDataset(images[:n_suite].cpu(), labels[:n_suite].cpu())
    model = models["lyadeq_cifar10"]
    start = time.perf_counter()
    result = lz.evaluate(model, data, suite, device=device, progress=False, batch_size=n_suite, dataset="cifar10")
    sync(device)
    seconds = time.perf_counter() - start
    clean = result.get("clean", {})
    out["suite"] = {
        "model": "lyadeq_cifar10",
        "suite": suite,
        "n": n_suite,
        "seconds": seconds,
        "images_per_s": n_suite / seconds,
        "clean_accuracy": clean.get("accuracy"),
        "note": "only clean-correct images are attacked; 'remaining' attacks only see survivors",
    }
    print(
        f"[benchmark] attacks: pgd10 {out['pgd10']['lyadeq_cifar10']['images_per_s']:.1f} img/s, "
        f"{suite} suite {out['suite']['images_per_s']:.2f} img/s",
        file=sys.stderr,
    )
    return out
