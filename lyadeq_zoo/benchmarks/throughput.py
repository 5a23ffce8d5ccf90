"""Section ``model`` and its yardstick ``gemm``: train-step and eval throughput of the zoo's models, their
FLOPs, and measured time over the FLOP floor.

* ``gemm``: the machine's measured float32 matmul throughput (best of a few large square GEMMs).
* ``model``: train-step (Adam, cross-entropy) and eval (no grad) throughput in images/s of ``deq_<ds>``,
  ``lyadeq_<ds>``, ``deq_orth_<ds>``, ``lyadeq_no_orth_<ds>`` and a plain baseline without DEQ (CIFAR-10: the
  ``resnet20`` backbone + linear head; MNIST: the ``fc`` backbone + linear head), all built from the same
  seed (same backbone and cell weights). Ratios LyaDEQ/DEQ (what the Lyapunov module costs) and DEQ/plain.
  Also FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``: backbone, solver steps, Lyapunov
  module, backward) and measured time over the floor ``FLOPs / measured GEMM FLOP/s``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

import lyadeq_zoo as lz

from .common import clock, interleaved, ratio, sample_batch, zoo_model


def bench_gemm(device: torch.device, quick: bool) -> dict[str, Any]:
    """Best float32 FLOP/s of an ``n x n`` matmul (2 n³ FLOPs)."""
    n = (512 if quick else 1024) if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = min(clock(lambda: a @ b, device) for _ in range(3 if quick else 8))
    return {"n": n, "dtype": "float32", "seconds": best, "flops_per_s": 2 * n**3 / best}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matmuls/convolutions ``fn`` runs (forward and backward), by ``FlopCounterMode``'s registry.

    Only the global total is kept: ``FlopCounterMode``'s per-module tracker installs backward hooks that
    break ``autograd.grad`` calls nested inside a backward hook (the ``ift`` adjoint solve), so its dispatch
    mode is entered without the tracker.
    """
    counter = FlopCounterMode(display=False)
    counter.flop_counts.clear()
    with _FlopCounterMode(counter):
        fn()
    return int(counter.get_total_flops())


class PlainClassifier(nn.Module):
    """Normalise -> backbone -> linear head: the zoo's feature extractor without the DEQ (a baseline).

    Built from a DEQ zoo model's config: same normalisation, same backbone spec, ``(N, C, H, W) -> (N, classes)``.
    """

    def __init__(self, deq_model: nn.Module) -> None:
        super().__init__()
        spec = deq_model.config["model"]
        self.register_buffer("mean", deq_model.mean.clone(), persistent=False)
        self.register_buffer("std", deq_model.std.clone(), persistent=False)
        self.backbone = lz.build_component(
            "backbone",
            spec["backbone"],
            in_chans=spec["in_chans"],
            img_size=spec["img_size"],
            out_features=spec["width"],
        )
        self.head = nn.Linear(spec["width"], spec["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone((x - self.mean) / self.std))


def models_case(dataset: str, device: torch.device, batch: int, repeat: int, gemm_flops: float) -> dict[str, Any]:
    """Train-step / eval throughput, FLOPs and time over the floor of deq, lyadeq and plain on ``dataset``;
    ``gemm_flops`` is the measured FLOP/s of the floor."""
    models: dict[str, nn.Module] = {}
    weights: dict[str, str] = {}
    # deq_orth / lyadeq_no_orth split the LyaDEQ/DEQ ratio into the orthogonal head and the Lyapunov module.
    for variant in ("deq", "lyadeq", "deq_orth", "lyadeq_no_orth"):
        models[f"{variant}_{dataset}"], weights[f"{variant}_{dataset}"] = zoo_model(f"{variant}_{dataset}", device)
    deq_model = models[f"deq_{dataset}"]
    torch.manual_seed(0)
    plain_name = f"plain_{deq_model.config['model']['backbone']['type']}_{dataset}"
    models[plain_name] = PlainClassifier(deq_model).to(device)
    weights[plain_name] = "random-init"
    images, labels = sample_batch(dataset, batch, device)
    optims = {name: torch.optim.Adam(model.parameters(), lr=1e-3) for name, model in models.items()}

    def train_step(name: str) -> None:
        model, opt = models[name], optims[name]
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        opt.step()

    def eval_step(name: str) -> None:
        model = models[name]
        model.eval()
        with torch.no_grad():
            model(images)

    train_t = interleaved({n: functools.partial(train_step, n) for n in models}, device, repeat)
    eval_t = interleaved({n: functools.partial(eval_step, n) for n in models}, device, repeat)
    rows = {}
    for name, model in models.items():
        row: dict[str, Any] = {
            "weights": weights[name],
            "train_step_s": train_t[name],
            "train_images_per_s": batch / train_t[name],
            "eval_s": eval_t[name],
            "eval_images_per_s": batch / eval_t[name],
        }
        deq_layer = getattr(model, "deq", None)
        if deq_layer is not None:
            eval_step(name)
            row["eval_f_evals"] = int(deq_layer.last_info["n_f_evals"])
            train_step(name)
            row["train_f_evals"] = int(deq_layer.last_info["n_f_evals"])
        # FLOPs of what was timed (eval: forward; train: forward + backward), per image.
        row["eval_flops_per_image"] = count_flops(functools.partial(eval_step, name)) / batch
        row["train_flops_per_image"] = count_flops(functools.partial(train_step, name)) / batch
        row["eval_over_floor"] = ratio(eval_t[name], row["eval_flops_per_image"] * batch / gemm_flops)
        row["train_over_floor"] = ratio(train_t[name], row["train_flops_per_image"] * batch / gemm_flops)
        rows[name] = row
    with torch.no_grad():
        deq_model.eval()
        normed = (images - deq_model.mean) / deq_model.std
        u = deq_model.backbone(normed)
        backbone_flops = count_flops(lambda: deq_model.backbone(normed))
        cell_flops = count_flops(lambda: deq_model.deq.cell(u, u))
    deq, lya, orth, no_orth = (f"{v}_{dataset}" for v in ("deq", "lyadeq", "deq_orth", "lyadeq_no_orth"))
    return {
        "models": rows,
        "flops_breakdown_per_image": {"backbone": backbone_flops / batch, "cell_per_f_eval": cell_flops / batch},
        "ratios": {
            "lyadeq_over_deq_train_step": ratio(train_t[lya], train_t[deq]),
            "lyadeq_over_deq_eval": ratio(eval_t[lya], eval_t[deq]),
            # the Lyapunov module alone (both with a linear head) and the orthogonal head alone (both plain DEQ)
            "lyadeq_no_orth_over_deq_train_step": ratio(train_t[no_orth], train_t[deq]),
            "deq_orth_over_deq_train_step": ratio(train_t[orth], train_t[deq]),
            "deq_over_plain_train_step": ratio(train_t[deq], train_t[plain_name]),
            "deq_over_plain_eval": ratio(eval_t[deq], eval_t[plain_name]),
        },
    }


def bench_models(device: torch.device, quick: bool, gemm_flops: float) -> dict[str, Any]:
    """Model throughput and FLOP floor per data set (see the module docstring)."""
    batch = 16 if quick else 128
    repeat = 2 if quick else 9
    datasets = ("mnist",) if quick else ("mnist", "cifar10")
    out: dict[str, Any] = {"batch": batch, "repeat": repeat, "optimizer": "Adam lr 1e-3", "datasets": {}}
    for dataset in datasets:
        out["datasets"][dataset] = models_case(dataset, device, batch, repeat, gemm_flops)
        print(f"[benchmark] models {dataset}: " + json.dumps(out["datasets"][dataset]["ratios"]), file=sys.stderr)
    return out
