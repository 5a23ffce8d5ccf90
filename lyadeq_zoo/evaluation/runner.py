"""The evaluation loop behind :func:`lyadeq_zoo.evaluate`: batches, one seeded run per (attack, eps,
batch), the threat-model check on every adversarial batch, the solver's statistics at the adversarial inputs
(:mod:`.under_attack`), then the result and the masking checks."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, Dataset

from ..attacks import create_attack
from ..errors import AttackNotApplicable, InputError
from ..inputs import check_batch, parameter_dtype
from .checks import masking_checks
from .inputs import dataset_name
from .result import AttackRun, assemble_result, eps_key
from .suites import load_suite
from .under_attack import CleanSolverStats, WorstCaseStability, last_forward_stats


def evaluate(
    model: nn.Module,
    loader: Iterable[Any] | Dataset,
    attacks: str | Path | Sequence[Mapping[str, Any]] | Mapping[str, Any] = "paper",
    *,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    limit: int | None = None,
    dataset: str | None = None,
    batch_size: int = 100,
    checks: bool = True,
) -> dict[str, Any]:
    """Clean and robust accuracy of ``model`` on ``loader`` under an attack suite (JSON-serialisable).

    ``model``: images (N, C, H, W) in [0, 1] -> logits (N, K); it is moved to ``device`` (default: where
    its parameters are), run in eval mode, and its mode is restored afterwards. ``loader``: an iterable
    of ``(images, labels)`` batches, or a Dataset (batched by ``batch_size``): float images in [0, 1] and
    integer labels, every batch checked before the first attack runs (uint8 images, numpy arrays, values
    outside [0, 1], NaN/inf or shapes that do not fit the model raise :class:`~lyadeq_zoo.errors.InputError`
    naming the batch; see :mod:`lyadeq_zoo.inputs`); empty batches are skipped. ``attacks``: a suite
    name/path/mapping or a list of specs (see :func:`load_suite`). ``limit``: evaluate the first
    ``limit`` samples. ``dataset``: data set name for ``{dataset}``/``large`` in suites (default: from
    ``model.config``). Deterministic for a given ``seed``: each (batch, attack, eps) run gets its
    own RNG seed derived from it (attacks with their own ``seed`` option use that instead).

    See :mod:`lyadeq_zoo.evaluation` for which number is computed on which subset, and
    :mod:`lyadeq_zoo.evaluation.result` for the result's keys.
    """
    start = time.perf_counter()
    dataset = dataset or dataset_name(model)
    suite = load_suite(attacks, dataset)
    device = _device_for(model, device)
    model.to(device)
    was_training = model.training
    model.eval()
    try:
        # The parameters do not change while evaluating: parametrized weights (the orthogonal head's matrix_exp)
        # are computed once for the whole evaluation instead of at every forward pass of every attack step.
        with parametrize.cached():
            batches = collect_batches(model, loader, limit, batch_size)
            tally = run_attacks(model, batches, suite, device, seed, progress)
            result = assemble_result(
                suite, tally.runs, tally.clean_correct, tally.robust,
                seed=seed, device=device, dataset=dataset, stability=tally.stability, clean_solver=tally.clean_solver,
            )
            if checks:
                result["checks"] = masking_checks(model, batches[0], tally.runs, tally.clean_correct, suite, device)
            result["timing"] = _timing(tally, start)
            return result
    finally:
        model.train(was_training)


def _device_for(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device``, or where the model's parameters are (CPU for a model without parameters)."""
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    return torch.device(device)


def _timing(tally: Tally, start: float) -> dict[str, float]:
    """The result's ``timing``: total, clean pass and (when measured) solver statistics, in seconds."""
    timing = {
        "total_seconds": round(time.perf_counter() - start, 3),
        "clean_seconds": round(tally.clean_seconds, 4),
    }
    if tally.stability is not None:
        timing["stability_seconds"] = round(tally.stability_seconds, 4)
    return timing


def collect_batches(
    model: nn.Module, loader: Iterable[Any] | Dataset, limit: int | None, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``limit`` samples of ``loader`` as (images, labels) batches, all held at once.

    Every batch is checked before any attack runs (:func:`~lyadeq_zoo.inputs.check_batch`: against the model's
    C, H, W and ``num_classes``), images are cast to the model's parameter dtype, labels to int64; empty batches
    are skipped.
    """
    if isinstance(loader, Dataset) and not isinstance(loader, DataLoader):
        loader = DataLoader(loader, batch_size=batch_size, shuffle=False)
    dtype = parameter_dtype(model)
    out, total = [], 0
    for index, batch in enumerate(loader):
        x, y = check_batch(batch[0], batch[1], model, dtype=dtype, images=f"evaluate batch {index} images",
                           labels=f"evaluate batch {index} labels")
        if limit is not None:
            x, y = x[: limit - total], y[: limit - total]
        if x.shape[0] == 0:
            continue
        out.append((x, y))
        total += x.shape[0]
        if limit is not None and total >= limit:
            break
    if not out:
        raise InputError("the loader yielded no samples (every batch was empty)")
    return out


def plan_runs(model: nn.Module, suite: Mapping[str, Any], n: int) -> list[AttackRun]:
    """One run per (attack spec, eps), in suite order; attacks that do not apply to ``model`` are marked
    skipped with the reason."""
    runs: list[AttackRun] = []
    for a_index, spec in enumerate(suite["attacks"]):
        for eps in spec["eps"]:
            attack = create_attack(spec["type"], eps=eps, **spec["options"])
            skipped = None
            try:
                attack.check_model(model)
            except AttackNotApplicable as err:
                skipped = str(err)
            runs.append(
                {
                    "spec": spec,
                    "index": a_index,
                    "eps": eps,
                    "attack": attack,
                    "skipped": skipped,
                    "outcome": torch.full((n,), -1, dtype=torch.int8),
                    "seconds": 0.0,
                    "solver_not_converged": None,
                }
            )
    return runs


@dataclasses.dataclass
class Tally:
    """What the attack loop accumulates over the batches, per image (``n`` of them) and per eps key.

    ``runs``: the attack runs (their ``outcome`` per image); ``clean_correct`` (n,) bool; ``robust``: eps key ->
    (n,) bool, robust to every attack so far at that eps; ``stability``: eps key -> the solver statistics at each
    image's worst-case input so far, and ``clean_solver`` those at the clean inputs (both None for a model without
    solver diagnostics); seconds spent on clean predictions and on the statistics.
    """

    runs: list[AttackRun]
    clean_correct: torch.Tensor
    robust: dict[float, torch.Tensor]
    stability: dict[float, WorstCaseStability] | None = None
    clean_solver: CleanSolverStats | None = None
    clean_seconds: float = 0.0
    stability_seconds: float = 0.0

    def predict(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """``model``'s predicted classes (N,) at ``x`` (N, C, H, W), on the CPU, and the solver statistics of that
        same forward pass (:func:`.under_attack.last_forward_stats`; their extraction timed into
        ``stability_seconds``)."""
        with torch.no_grad():
            predicted = model(x).argmax(1).cpu()
        t0 = time.perf_counter()
        stats = last_forward_stats(model)
        self.stability_seconds += time.perf_counter() - t0
        return predicted, stats


def run_attacks(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    suite: Mapping[str, Any],
    device: torch.device,
    seed: int,
    progress: bool,
    batch_offset: int = 0,
    nested_eps: bool = True,
) -> Tally:
    """Run every attack of ``suite`` on every batch, in suite order per batch; see :class:`Tally`.

    Batch ``b`` of ``batches`` is seeded as batch ``batch_offset + b`` of the whole evaluation, so a job that
    evaluates the images in pieces (:mod:`.job`) draws the same random numbers as one :func:`evaluate` call.

    ``nested_eps``: an image broken at one eps counts as broken at every larger eps at once (its example lies in
    the larger ball), so ``remaining`` attacks there skip it and the worst case is
    :func:`~.result.worst_case_robust` of the outcomes. False (each eps on its own, as before) is kept for the
    benchmark's comparison with the previous implementation.
    """
    from tqdm.auto import tqdm  # a progress bar only; not imported with the package

    n = sum(int(x.shape[0]) for x, _ in batches)
    runs = plan_runs(model, suite, n)
    tally = Tally(runs=runs, clean_correct=torch.zeros(n, dtype=torch.bool), robust={})
    robust = tally.robust
    total_steps = len(batches) * sum(r["skipped"] is None for r in runs)
    bar = tqdm(total=total_steps, disable=not progress, desc="evaluate", unit="run", leave=False)
    offset = 0
    for b, (x, y) in enumerate(batches):
        x, y = x.to(device), y.to(device)
        sl = slice(offset, offset + x.shape[0])
        t0 = time.perf_counter()
        predicted, stats = tally.predict(model, x)
        correct = predicted == y.cpu()
        tally.clean_seconds += time.perf_counter() - t0
        tally.clean_correct[sl] = correct
        for run in runs:
            robust.setdefault(eps_key(run["eps"]), torch.zeros(n, dtype=torch.bool))[sl] = correct
        _record_clean_stability(tally, stats, correct, offset)
        for r_index, run in enumerate(runs):
            if run["skipped"] is not None:
                continue
            with _seeded(seed, batch_offset + b, r_index, device):
                _run_on_batch(model, tally, run, x, y, correct, offset, nested_eps)
            bar.update(1)
        offset += x.shape[0]
    bar.close()
    return tally


def _run_on_batch(
    model: nn.Module,
    tally: Tally,
    run: AttackRun,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    offset: int,
    nested_eps: bool,
) -> None:
    """``run`` on the images of the batch ``x`` (B, C, H, W), ``y`` (B,) that it targets (every clean-correct one
    for ``all``, the still-robust ones for ``remaining``), images ``offset .. offset + B - 1`` of the evaluation:
    their outcomes, the worst case at the eps keys the examples reach, and the solver's statistics there."""
    sl = slice(offset, offset + x.shape[0])
    robust = tally.robust
    targets = correct.clone() if run["spec"]["subset"] == "all" else robust[eps_key(run["eps"])][sl].clone()
    outcome = run["outcome"][sl]
    outcome[~correct] = 0
    idx = targets.nonzero().squeeze(1)
    if idx.numel() == 0:
        return
    t0 = time.perf_counter()
    x_in, y_in = x[idx.to(x.device)], y[idx.to(x.device)]
    x_adv = run["attack"](model, x_in, y_in)
    _check_threat_model(x_adv, x_in, run["eps"], run["spec"]["name"])
    predicted, stats = tally.predict(model, x_adv)
    still = predicted == y_in.cpu()
    outcome[idx] = still.to(torch.int8)
    for key in _keys_reached(robust, run["eps"], nested_eps):
        robust[key][sl][idx] &= still
    run["seconds"] += time.perf_counter() - t0
    _record_attack_stability(tally, run, stats, idx + offset, ~still, nested_eps)


def _record_clean_stability(
    tally: Tally, stats: dict[str, torch.Tensor] | None, correct: torch.Tensor, offset: int
) -> None:
    """Start the statistics on the first batch (when the model has solver diagnostics), record the solver's
    statistics ``stats`` at the clean inputs of the batch (images ``offset`` on, ``correct`` (B,) bool) and, for its
    clean-misclassified images, record the clean input as their worst-case input at every eps."""
    if stats is None or (tally.stability is None and offset > 0):
        return  # no diagnostics, or the first batch showed that the model has none
    if tally.stability is None:
        n, lyapunov = tally.clean_correct.numel(), "certified" in stats
        tally.stability = {key: WorstCaseStability.empty(n, lyapunov) for key in tally.robust}
        tally.clean_solver = CleanSolverStats.empty(n, lyapunov)
    tally.clean_solver.record(slice(offset, offset + correct.numel()), stats)
    wrong = (~correct).nonzero().squeeze(1)
    if wrong.numel() == 0:
        return
    wrong_stats = {key: value[wrong] for key, value in stats.items()}
    for store in tally.stability.values():
        store.record(wrong + offset, wrong_stats, settle=torch.ones(wrong.numel(), dtype=torch.bool))


def _keys_reached(robust: Mapping[float, torch.Tensor], eps: float, nested_eps: bool) -> list[float]:
    """The eps keys at which an example found at ``eps`` counts: ``eps``'s own and, nested, every larger one."""
    key = eps_key(eps)
    return [k for k in robust if k >= key] if nested_eps else [key]


def _record_attack_stability(
    tally: Tally,
    run: AttackRun,
    stats: dict[str, torch.Tensor] | None,
    images: torch.Tensor,
    broken: torch.Tensor,
    nested_eps: bool,
) -> None:
    """The solver statistics ``stats`` at the adversarial inputs of ``run`` for ``images`` (indices into the n):
    counted into the run's ``solver_not_converged`` and recorded as the images' worst-case inputs so far at the
    run's eps (final for the ``broken`` ones); with ``nested_eps`` the ``broken`` ones' inputs are also the
    worst-case inputs at every larger eps where no earlier example broke them."""
    if tally.stability is None or stats is None:
        return
    run["solver_not_converged"] = (run["solver_not_converged"] or 0) + int((~stats["converged"]).sum())
    key = eps_key(run["eps"])
    tally.stability[key].record(images, stats, settle=broken)
    larger = [k for k in _keys_reached(tally.stability, run["eps"], nested_eps) if k != key]
    if larger and bool(broken.any()):
        hit = broken.nonzero().squeeze(1)
        hit_stats = {name: value[hit] for name, value in stats.items()}
        for k in larger:
            tally.stability[k].record(images[hit], hit_stats, settle=torch.ones(hit.numel(), dtype=torch.bool))


@contextlib.contextmanager
def _seeded(seed: int, batch: int, run: int, device: torch.device) -> Iterator[None]:
    """Fork the RNG (CPU and ``device``) with a seed derived from (seed, batch index, run index)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((int(seed) * 1_000_003 + batch * 10_007 + run * 101) % (2**63 - 1))
        yield


def _check_threat_model(x_adv: torch.Tensor, x: torch.Tensor, eps: float, name: str) -> None:
    """Raise if an attack returned another shape, left the l_inf ball of radius ``eps`` or [0, 1]."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"attack {name!r} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    excess = ((x_adv - x).abs().max().item() if x.numel() else 0.0) - eps
    if excess > 1e-5 or x_adv.min() < 0 or x_adv.max() > 1:
        raise RuntimeError(
            f"attack {name!r} left the threat model (l_inf excess {excess:.3g}, range "
            f"[{x_adv.min().item():.3g}, {x_adv.max().item():.3g}]); this is a bug in the attack"
        )
