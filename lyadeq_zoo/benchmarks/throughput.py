"""Section ``model`` and its yardstick ``gemm``: train-step and eval throughput of the zoo's models, their
FLOPs, and measured time over the FLOP floor.

* ``gemm``: the machine's measured float32 matmul throughput (best of a few large square GEMMs).
* ``model``: train-step (Adam, cross-entropy) and eval (no grad) throughput in images/s of ``deq_<ds>``,
  ``lyadeq_<ds>``, ``deq_orth_<ds>``, ``lyadeq_no_orth_<ds>`` and a plain baseline without DEQ (CIFAR-10: the
  ``resnet20`` backbone + linear head; MNIST: the ``fc`` backbone + linear head), all built from the same
  seed (same backbone and cell weights). Ratios LyaDEQ/DEQ (what the Lyapunov module costs) and DEQ/plain.
  Also FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``: backbone, solver steps, Lyapunov
  module, backward) and measured time over the floor ``FLOPs / measured GEMM FLOP/s``.
* ``model.precision``: one ``lyadeq_cifar10`` train step (forward, backward, Adam) in float32, with
  ``train.channels_last``, and with ``channels_last`` + ``train.amp`` (bf16 autocast around the backbone only;
  :func:`lyadeq_zoo.training.model_setup.backbone_autocast`), side by side: images/s, forward f-evals, and the
  operator calls of its forward and backward: all, those that compute (on a GPU about one kernel launch each,
  the floor of a small model's step there) and those that read a value to the host (a device sync on a GPU).
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
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

import lyadeq_zoo as lz

from ..training.model_setup import backbone_autocast
from .common import clock, interleaved, ratio, sample_batch, zoo_model

# The train-step variants of the precision case: (name, train.channels_last, train.amp).
PRECISION_VARIANTS = (("fp32", False, False), ("channels_last", True, False), ("channels_last_bf16", True, True))


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


class _OperatorCounter(TorchDispatchMode):
    """Counts the ATen operator calls made inside it: all, those that compute (not views: on a GPU each is
    about one kernel launch), and those that read a value to the host (``.item()``, ``bool(t)``: a device sync)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = self.computing = self.host_reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        self.computing += not getattr(func, "is_view", False)
        self.host_reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def count_operators(fn: Callable[[], Any]) -> dict[str, int]:
    """``{"calls", "computing", "host_reads"}``: the ATen operator calls ``fn`` makes, forward and backward
    (autograd's engine dispatches the backward's operators through the same mode); see :class:`_OperatorCounter`."""
    counter = _OperatorCounter()
    with counter:
        fn()
    return {"calls": counter.calls, "computing": counter.computing, "host_reads": counter.host_reads}


def precision_case(device: torch.device, batch: int, repeat: int, name: str = "lyadeq_cifar10") -> dict[str, Any]:
    """Train-step throughput of zoo model ``name`` in each of :data:`PRECISION_VARIANTS`.

    Every variant starts from the same weights and steps Adam with lr 0 (its full cost, weights unchanged), so each
    timed step solves the same fixed-point problem and the f-evals are comparable. Times in seconds per step.
    """
    images, labels = sample_batch(name.rsplit("_", 1)[-1], batch, device)
    steps: dict[str, Callable[[], None]] = {}
    models: dict[str, nn.Module] = {}
    weights = "random-init"
    for variant, channels_last, amp in PRECISION_VARIANTS:
        model, weights = zoo_model(name, device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=0.0)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt, amp: bool = amp,
                 channels_last: bool = channels_last, optimizer: bool = True) -> None:
            opt.zero_grad(set_to_none=True)
            with backbone_autocast(model, amp, channels_last):
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
            if optimizer:
                opt.step()

        steps[variant], models[variant] = step, model
    times = interleaved(steps, device, repeat)
    rows: dict[str, Any] = {}
    for variant, channels_last, amp in PRECISION_VARIANTS:
        # Counted without Adam's step: its per-parameter .item() reads a CPU step counter, which on a GPU is
        # no device sync, and its foreach kernels are a few launches for all parameters.
        ops = count_operators(functools.partial(steps[variant], optimizer=False))
        rows[variant] = {
            "channels_last": channels_last,
            "amp": amp,
            "train_step_s": times[variant],
            "train_images_per_s": batch / times[variant],
            "f_evals": int(models[variant].deq.last_info["n_f_evals"]),
            "operators_forward_backward": ops,
        }
    return {
        "model": name,
        "weights": weights,
        "batch": batch,
        "repeat": repeat,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "optimizer": "Adam lr 0 (full step cost, weights unchanged)",
        "rows": rows,
        "speedup_over_fp32": {v: ratio(times["fp32"], times[v]) for v, _, _ in PRECISION_VARIANTS},
    }


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
    rows = {
        name: _model_row(model, weights[name], train_t[name], eval_t[name], batch, gemm_flops,
                         functools.partial(train_step, name), functools.partial(eval_step, name))
        for name, model in models.items()
    }
    deq, lya, orth, no_orth = (f"{v}_{dataset}" for v in ("deq", "lyadeq", "deq_orth", "lyadeq_no_orth"))
    return {
        "models": rows,
        "flops_breakdown_per_image": _flops_breakdown(deq_model, images),
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


def _model_row(
    model: nn.Module, weights: str, train_s: float, eval_s: float, batch: int, gemm_flops: float,
    train_step: Any, eval_step: Any,
) -> dict[str, Any]:
    """One model's measured times, solver f-evals (DEQ models), FLOPs per image and time over the floor."""
    row: dict[str, Any] = {
        "weights": weights,
        "train_step_s": train_s,
        "train_images_per_s": batch / train_s,
        "eval_s": eval_s,
        "eval_images_per_s": batch / eval_s,
    }
    deq_layer = getattr(model, "deq", None)
    if deq_layer is not None:
        eval_step()
        row["eval_f_evals"] = int(deq_layer.last_info["n_f_evals"])
        train_step()
        row["train_f_evals"] = int(deq_layer.last_info["n_f_evals"])
    # FLOPs of what was timed (eval: forward; train: forward + backward), per image.
    row["eval_flops_per_image"] = count_flops(eval_step) / batch
    row["train_flops_per_image"] = count_flops(train_step) / batch
    row["eval_over_floor"] = ratio(eval_s, row["eval_flops_per_image"] * batch / gemm_flops)
    row["train_over_floor"] = ratio(train_s, row["train_flops_per_image"] * batch / gemm_flops)
    return row


def _flops_breakdown(deq_model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """FLOPs per image of the backbone and of one cell evaluation (the solver's unit of work)."""
    batch = len(images)
    with torch.no_grad():
        deq_model.eval()
        normed = (images - deq_model.mean) / deq_model.std
        u = deq_model.backbone(normed)
        backbone_flops = count_flops(lambda: deq_model.backbone(normed))
        cell_flops = count_flops(lambda: deq_model.deq.cell(u, u))
    return {"backbone": backbone_flops / batch, "cell_per_f_eval": cell_flops / batch}


def bench_models(device: torch.device, quick: bool, gemm_flops: float) -> dict[str, Any]:
    """Model throughput and FLOP floor per data set (see the module docstring)."""
    batch = 16 if quick else 128
    repeat = 2 if quick else 9
    datasets = ("mnist",) if quick else ("mnist", "cifar10")
    out: dict[str, Any] = {"batch": batch, "repeat": repeat, "optimizer": "Adam lr 1e-3", "datasets": {}}
    for dataset in datasets:
        out["datasets"][dataset] = models_case(dataset, device, batch, repeat, gemm_flops)
        print(f"[benchmark] models {dataset}: " + json.dumps(out["datasets"][dataset]["ratios"]), file=sys.stderr)
    out["precision"] = precision_case(device, batch, repeat)
    speedups = {k: round(v, 2) for k, v in out["precision"]["speedup_over_fp32"].items()}
    print(f"[benchmark] precision lyadeq_cifar10 speed-up over fp32: {json.dumps(speedups)}", file=sys.stderr)
    return out
