"""Section ``memory``: peak memory of a forward + backward pass with ``ift`` vs ``unroll`` backward.

The forward solver is forced to run 10 / 30 / 100 iterations (``override_solver(model, max_iter=k, tol=0.0)``),
for the DEQ layer of ``lyadeq_cifar10`` alone (batch 1024) and for the whole model's train step (batch 128).
Method: on CUDA, ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the pass. On CPU
(PyTorch keeps no CPU allocator statistics), each setting runs in a fresh subprocess
(``python -m lyadeq_zoo.benchmarks.memory SETTING_JSON``) that builds the model, warms up with a tiny no-grad
pass, and reports the growth of the process's peak resident set size over the pass (Linux: ``VmHWM`` after resetting
it through ``/proc/self/clear_refs``; elsewhere ``resource.getrusage(RUSAGE_SELF).ru_maxrss``): the extra
memory the pass needed, with about a MiB of allocator noise.
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lyadeq_zoo.deq.layer import override_backward, override_solver

from .common import ratio, sample_batch, zoo_model

MEMORY_ITERS = (10, 30, 100)
MEMORY_MODEL = "lyadeq_cifar10"
# A child runs this module with ``python -m`` from the folder that holds lyadeq_zoo (importable there even when
# it is neither installed nor on PYTHONPATH).
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def proc_status(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes (Linux), None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_pass(setting: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Build, warm up, then one forward + backward pass under ``setting``; returns the pass's extra peak memory.

    ``setting``: ``{"scope": "layer"|"model", "mode": "ift"|"unroll", "iters": k, "batch": B, "threads": T}``.
    Returns ``setting`` plus ``peak_extra_bytes`` and the ``method`` that measured it.
    """
    torch.set_num_threads(int(setting.get("threads", 1)))
    model, _ = zoo_model(MEMORY_MODEL, device)
    model.train()
    images, labels = sample_batch("cifar10", int(setting["batch"]), device)
    with torch.no_grad():  # in chunks, so that making the injection sets no high peak of its own
        u = torch.cat([model.backbone((chunk - model.mean) / model.std) for chunk in images.split(64)])

    def run() -> None:
        if setting["scope"] == "layer":
            x = u.detach().requires_grad_()
            z_star, _ = model.deq(x)
            z_star.square().sum().backward()
        else:
            F.cross_entropy(model(images), labels).backward()

    with torch.no_grad(), override_solver(model, max_iter=2, tol=0.0):  # warm-up: kernels, thread pools
        model.deq(u[:2])
    model.zero_grad(set_to_none=True)
    gc.collect()
    with (
        override_solver(model, max_iter=int(setting["iters"]), tol=0.0),
        override_backward(model, {"type": setting["mode"]}),
    ):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            run()
            torch.cuda.synchronize(device)
            extra = torch.cuda.max_memory_allocated(device) - base
            method = "torch.cuda.max_memory_allocated - memory_allocated before the pass"
        elif proc_status("VmHWM") is not None and reset_peak_rss():
            # Linux: reset the peak-RSS mark to the current RSS, then read the peak after the pass.
            base = proc_status("VmRSS")
            run()
            extra = proc_status("VmHWM") - base
            method = "peak RSS (VmHWM, reset via /proc/self/clear_refs) minus RSS before the pass, fresh subprocess"
        else:
            # ru_maxrss also counts the parent's RSS at fork time, hence a small launcher is best here.
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            run()
            extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * (
                1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux, bytes on macOS
            )
            method = "growth of ru_maxrss over the pass, in a fresh subprocess"
    return {**setting, "peak_extra_bytes": int(extra), "method": method}


def memory_pass_in_subprocess(setting: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`memory_pass` on CPU in a fresh interpreter, so that the peak RSS belongs to this pass alone."""
    cmd = [sys.executable, "-m", f"{__package__}.memory", json.dumps(dict(setting))]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=PACKAGE_PARENT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess {dict(setting)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_memory(device: torch.device, quick: bool, threads: int) -> dict[str, Any]:
    """``ift`` vs ``unroll`` peak memory per scope and forced iteration count (see the module docstring)."""
    iters = (20,) if quick else MEMORY_ITERS
    scopes = {"layer": 1024} if quick else {"layer": 1024, "model": 128}
    rows = []
    for scope, batch in scopes.items():
        for k in iters:
            for mode in ("ift", "unroll"):
                setting = {"scope": scope, "mode": mode, "iters": k, "batch": batch, "threads": threads}
                if device.type == "cuda":
                    gc.collect()
                    torch.cuda.empty_cache()
                    rows.append(memory_pass(setting, device))
                else:
                    rows.append(memory_pass_in_subprocess(setting))
    summary = {}
    for scope in scopes:
        for k in iters:
            by_mode = {r["mode"]: r["peak_extra_bytes"] for r in rows if r["scope"] == scope and r["iters"] == k}
            summary[f"{scope}_iters{k}_unroll_over_ift"] = ratio(by_mode["unroll"], max(by_mode["ift"], 1))
    print(f"[benchmark] memory: {json.dumps(summary)}", file=sys.stderr)
    return {"model": MEMORY_MODEL, "iters": list(iters), "rows": rows, "ratios": summary}


def main(argv: list[str]) -> int:
    """Child process: one CPU measurement, its row printed as the last line of stdout (JSON)."""
    if len(argv) != 1:
        raise SystemExit(
            "usage: python -m lyadeq_zoo.benchmarks.memory SETTING_JSON (run by bench_memory, one per setting)"
        )
    print(json.dumps(memory_pass(json.loads(argv[0]), torch.device("cpu"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
