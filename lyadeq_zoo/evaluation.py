"""Robustness evaluation: clean accuracy, accuracy per attack and eps, worst case, gradient-masking checks.

>>> result = evaluate(model, loader, "paper")        # doctest: +SKIP
>>> result["worst_case"][-1]["accuracy"]            # doctest: +SKIP

Which numbers are on which samples (``n`` = all evaluated samples; every accuracy divides by ``n``):

* ``clean.accuracy``: plain predictions. Misclassified clean samples count as non-robust everywhere
  and are never attacked.
* An attack with ``subset: all`` (default) runs on every clean-correct sample, so its ``accuracy`` is
  its own robust accuracy, comparable across attacks and models (the paper's Table 1 numbers).
* An attack with ``subset: remaining`` runs only on samples that every earlier attack in the suite
  failed on at the same eps (AutoAttack's way to save time); its own accuracy is unknown (``null``)
  and only its ``cumulative_accuracy`` is reported.
* ``cumulative_accuracy`` of attack ``i``: samples robust to attacks ``0..i`` at that eps.
* ``worst_case``: samples robust to every attack that ran at that eps (RobustBench's number).

Masking checks (list ``checks``; each ``{"name", "passed", "level", "detail"}``, ``passed`` is
``None`` when the suite lacks what the check needs) are described in :func:`masking_checks`.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, Dataset

from .attacks.base import (
    Attack,
    AttackNotApplicable,
    attack_loss,
    create_attack,
    eps_in_255,
    parse_eps,
)
from .config import ConfigError, accepted_keys, parse_yaml
from .errors import UnknownComponentError, closest_match
from .registry import get_component

RESULT_FORMAT = "lyadeq-zoo-eval/1"
SUITE_KEYS = ("name", "description", "attacks", "checks", "large_eps")
SPEC_KEYS = ("name", "type", "eps", "subset")  # keys of an attack spec that are not attack options
CHECK_OPTIONS = {"tolerance": 0.02, "large_eps_max_accuracy": 0.10}
DEFAULT_LARGE_EPS = {"mnist": 0.3, "default": 32 / 255}


# -- models -----------------------------------------------------------------------------------------
def _has_pretrained(name: str) -> bool:
    try:
        from . import hub
    except ImportError:
        return False
    checker = getattr(hub, "has_pretrained", None)
    return bool(checker(name)) if checker is not None else False


def load_model(
    name: str | Path | nn.Module, pretrained: bool | None = None, require_weights: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """A model to evaluate or attack from a zoo name, ``hf-hub:``/``local-dir:`` id or config path.

    ``pretrained=None`` loads the zoo weights when the entry has them and otherwise warns loudly and
    builds a randomly initialised model (numbers on it mean nothing). ``require_weights=True`` raises
    ``ValueError`` instead of falling back to random weights. Returns ``(model, info)`` where
    ``info = {"source": str, "weights": "pretrained" | "checkpoint" | "random" | "given"}``.
    """
    from .factory import build_model, create_model

    if isinstance(name, nn.Module):
        return name, {"source": type(name).__name__, "weights": "given"}
    text = str(name)
    info: dict[str, Any] = {"source": text}
    if text.startswith(("hf-hub:", "local-dir:")):
        return create_model(text), {**info, "weights": "checkpoint"}
    path = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if require_weights:
            raise ValueError(f"{text} is a config file: it gives random weights; pass a checkpoint instead")
        _warn_random(text)
        return build_model(path), {**info, "weights": "random"}
    get_component("model", text)  # unknown names raise with the list of models and the closest one
    available = _has_pretrained(text)
    if pretrained is None:
        pretrained = available
    if pretrained:
        if not available:
            raise ValueError(f"zoo model {text!r} has no pretrained weights yet; pass pretrained=False")
        return create_model(text, pretrained=True), {**info, "weights": "pretrained"}
    if require_weights:
        raise ValueError(f"zoo model {text!r} has no pretrained weights, and a random model transfers nothing")
    _warn_random(text)
    return create_model(text), {**info, "weights": "random"}


def _warn_random(what: str) -> None:
    warnings.warn(
        f"{what}: no trained weights; evaluating a RANDOMLY INITIALISED model. Its accuracy numbers are "
        "meaningless; train it first (tools/train.py) or pass a checkpoint (local-dir:PATH).",
        stacklevel=3,
    )


def dataset_name(model: nn.Module) -> str | None:
    """The data set type named in ``model.config["data"]`` (zoo models), or None."""
    config = getattr(model, "config", None)
    if isinstance(config, Mapping) and isinstance(config.get("data"), Mapping):
        value = config["data"].get("type")
        return str(value) if value is not None else None
    return None


# -- suites -----------------------------------------------------------------------------------------
def suites_dir() -> Path:
    """The folder of named suites (``configs/eval``)."""
    from .factory import configs_dir

    return configs_dir() / "eval"


def list_suites() -> list[str]:
    """Names of the shipped evaluation suites (``paper``, ``strong`` ...)."""
    folder = suites_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_suite(
    suite: str | Path | Sequence[Mapping[str, Any]] | Mapping[str, Any], dataset: str | None = None
) -> dict[str, Any]:
    """Resolve and validate an attack suite.

    ``suite``: a shipped suite name (``"paper"``, ``"strong"``), a YAML path, a suite mapping, or a
    bare list of attack specs. Each spec is a mapping with ``type`` (registered attack), ``eps`` (a
    list of numbers or fraction strings, or ``large``: the suite's sanity eps for ``dataset``),
    optional ``name`` (display name, default ``type``), ``subset`` (``all`` | ``remaining``) and the
    attack's own options. String options may contain ``{dataset}``.

    Returns ``{"name", "description", "attacks": [{"name", "type", "eps": [float], "subset",
    "options"}], "checks": {...}, "large_eps": float}``. Raises :class:`ConfigError` naming the
    offending key and the fix.
    """
    where = "suite"
    if isinstance(suite, (str, Path)):
        path = Path(suite).expanduser()
        if not path.is_file() and not str(suite).endswith((".yaml", ".yml")):
            path = suites_dir() / f"{suite}.yaml"
            if not path.is_file():
                names = list_suites()
                hint = closest_match(str(suite), names)
                raise ConfigError(
                    f"unknown evaluation suite {str(suite)!r}: not a file, and no configs/eval/{suite}.yaml. "
                    f"Shipped suites: {', '.join(names)}." + (f" Did you mean {hint!r}?" if hint else "")
                )
        if not path.is_file():
            raise ConfigError(f"suite file {str(path)!r} does not exist")
        where = str(path)
        raw = parse_yaml(path.read_text(encoding="utf-8"))
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: a suite must be a mapping with an 'attacks' list")
        raw.setdefault("name", path.stem)
    elif isinstance(suite, Mapping):
        raw = copy.deepcopy(dict(suite))
    elif isinstance(suite, Sequence):
        raw = {"name": "custom", "attacks": copy.deepcopy(list(suite))}
    else:
        raise ConfigError(f"a suite must be a name, a path, a mapping or a list of specs, got {suite!r}")
    for key in raw:
        if key not in SUITE_KEYS:
            hint = closest_match(str(key), list(SUITE_KEYS))
            raise ConfigError(
                f"{where}: unknown suite key {key!r}. Allowed: {', '.join(SUITE_KEYS)}."
                + (f" Did you mean {hint!r}?" if hint else "")
            )
    checks = dict(CHECK_OPTIONS)
    for key, value in (raw.get("checks") or {}).items():
        if key not in CHECK_OPTIONS:
            raise ConfigError(f"{where}: checks.{key} is not a check option. Allowed: {', '.join(CHECK_OPTIONS)}")
        checks[key] = float(parse_eps(value))
    large_table = {**DEFAULT_LARGE_EPS, **(raw.get("large_eps") or {})}
    large_eps = parse_eps(large_table.get(dataset or "default", large_table["default"]))
    specs = raw.get("attacks")
    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"{where}: 'attacks' must be a non-empty list of attack specs")
    attacks, seen = [], set()
    for i, spec in enumerate(specs):
        attacks.append(_resolve_spec(spec, f"{where}: attacks[{i}]", dataset, large_eps))
        name = attacks[-1]["name"]
        if name in seen:
            raise ConfigError(f"{where}: attacks[{i}]: the name {name!r} is used twice; give each a unique name")
        seen.add(name)
    return {
        "name": str(raw.get("name", "custom")),
        "description": str(raw.get("description", "")),
        "attacks": attacks,
        "checks": checks,
        "large_eps": large_eps,
    }


def _resolve_spec(spec: Any, where: str, dataset: str | None, large_eps: float) -> dict[str, Any]:
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(f"{where} must be a mapping with a 'type' key naming an attack, got {spec!r}")
    try:
        cls = get_component("attack", spec["type"])
    except UnknownComponentError as err:
        raise ConfigError(f"{where}.type: {err}") from None
    allowed, _ = accepted_keys(cls)
    options = {}
    for key, value in spec.items():
        if key in SPEC_KEYS:
            continue
        if key not in allowed or key == "eps":
            hint = closest_match(str(key), allowed + list(SPEC_KEYS))
            raise ConfigError(
                f"{where}: attack {spec['type']!r} has no option {key!r}. Options: "
                f"{', '.join(a for a in allowed if a != 'eps')}; spec keys: {', '.join(SPEC_KEYS)}."
                + (f" Did you mean {hint!r}?" if hint else "")
            )
        options[key] = _substitute(value, dataset, f"{where}.{key}")
    eps_list = spec.get("eps")
    if eps_list is None:
        raise ConfigError(f"{where}: give 'eps', a list such as [2/255, 4/255, 8/255]")
    if not isinstance(eps_list, list):
        eps_list = [eps_list]
    values = []
    for item in eps_list:
        try:
            values.append(large_eps if item == "large" else parse_eps(item))
        except ValueError as err:
            raise ConfigError(f"{where}.eps: {item!r} is not a number, a fraction like 8/255, or 'large'") from err
    subset = spec.get("subset", "all")
    if subset not in ("all", "remaining"):
        raise ConfigError(f"{where}.subset must be 'all' or 'remaining', got {subset!r}")
    name = str(spec.get("name") or spec["type"])
    try:  # build once to surface bad option values now, not in the middle of an evaluation
        create_attack(spec["type"], eps=values[0] if values else 0.0, **options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where} ({name}): {err}") from err
    return {"name": name, "type": spec["type"], "eps": sorted(set(values)), "subset": subset, "options": options}


def _substitute(value: Any, dataset: str | None, where: str) -> Any:
    if isinstance(value, str) and "{dataset}" in value:
        if dataset is None:
            raise ConfigError(f"{where} uses {{dataset}} but the data set is unknown; pass dataset=...")
        return value.replace("{dataset}", dataset)
    if isinstance(value, dict):
        return {k: _substitute(v, dataset, f"{where}.{k}") for k, v in value.items()}
    return value


# -- dynamic-defense detection ----------------------------------------------------------------------
_AUTOGRAD_NAMES = {"grad", "backward", "vjp", "jvp", "jacobian", "hessian", "jacrev", "jacfwd", "vmap_grad"}
_AUTOGRAD_FILES = ("torch/autograd/", "torch/_tensor.py", "torch/_functorch/", "torch/func/")


def autograd_calls_in_forward(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Autograd entry points (``torch.autograd.grad``, ``Tensor.backward`` ...) that one forward pass of
    ``model`` on ``x`` calls, as ``"torch.autograd.grad from file.py:line"`` strings (empty if none)."""
    found: dict[str, None] = {}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        if code.co_name in _AUTOGRAD_NAMES and any(p in code.co_filename.replace("\\", "/") for p in _AUTOGRAD_FILES):
            caller = frame.f_back
            while caller is not None and "torch/" in caller.f_code.co_filename.replace("\\", "/"):
                caller = caller.f_back
            origin = f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}" if caller else "?"
            found[f"torch {code.co_name} from {origin}"] = None

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        with torch.enable_grad():
            model(x)
    finally:
        sys.setprofile(previous)
    return list(found)


# -- evaluation -------------------------------------------------------------------------------------
def _batches(
    loader: Iterable[Any] | Dataset, limit: int | None, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(loader, Dataset) and not isinstance(loader, DataLoader):
        loader = DataLoader(loader, batch_size=batch_size, shuffle=False)
    out, total = [], 0
    for batch in loader:
        x, y = batch[0], batch[1]
        if limit is not None:
            x, y = x[: limit - total], y[: limit - total]
        if x.shape[0] == 0:
            break
        out.append((x, torch.as_tensor(y)))
        total += x.shape[0]
        if limit is not None and total >= limit:
            break
    if not out:
        raise ValueError("the loader yielded no samples")
    return out


def _eps_key(eps: float) -> float:
    return round(eps, 9)


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
    of ``(images, labels)`` batches, or a Dataset (batched by ``batch_size``). ``attacks``: a suite
    name/path/mapping or a list of specs (see :func:`load_suite`). ``limit``: evaluate the first
    ``limit`` samples. ``dataset``: data set name for ``{dataset}``/``large`` in suites (default: from
    ``model.config``). Deterministic for a given ``seed``: each (batch, attack, eps) run gets its
    own RNG seed derived from it (attacks with their own ``seed`` option use that instead).

    See the module docstring for which number is computed on which subset.
    """
    start = time.perf_counter()
    dataset = dataset or dataset_name(model)
    suite = load_suite(attacks, dataset)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    try:
        # The parameters do not change while evaluating: parametrized weights (the orthogonal head's matrix_exp)
        # are computed once for the whole evaluation instead of at every forward pass of every attack step.
        with parametrize.cached():
            return _evaluate(model, loader, suite, device, seed, progress, limit, dataset, batch_size, checks, start)
    finally:
        model.train(was_training)


def _evaluate(
    model: nn.Module,
    loader: Any,
    suite: dict[str, Any],
    device: torch.device,
    seed: int,
    progress: bool,
    limit: int | None,
    dataset: str | None,
    batch_size: int,
    run_checks: bool,
    start: float,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    batches = _batches(loader, limit, batch_size)
    n = sum(int(x.shape[0]) for x, _ in batches)
    runs: list[dict[str, Any]] = []  # one per (attack spec, eps), in suite order
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
                }
            )

    clean_correct = torch.zeros(n, dtype=torch.bool)
    robust = {}  # eps key -> samples robust to every attack run so far at that eps
    clean_seconds = 0.0
    total_steps = len(batches) * sum(r["skipped"] is None for r in runs)
    bar = tqdm(total=total_steps, disable=not progress, desc="evaluate", unit="run", leave=False)
    offset = 0
    for b, (x, y) in enumerate(batches):
        x, y = x.to(device).float(), y.to(device).long()
        sl = slice(offset, offset + x.shape[0])
        t0 = time.perf_counter()
        with torch.no_grad():
            correct = (model(x).argmax(1) == y).cpu()
        clean_seconds += time.perf_counter() - t0
        clean_correct[sl] = correct
        for run in runs:
            robust.setdefault(_eps_key(run["eps"]), torch.zeros(n, dtype=torch.bool))[sl] = correct
        for r_index, run in enumerate(runs):
            if run["skipped"] is not None:
                continue
            key = _eps_key(run["eps"])
            alive = robust[key]
            targets = correct.clone() if run["spec"]["subset"] == "all" else alive[sl].clone()
            outcome = run["outcome"][sl]
            outcome[~correct] = 0
            idx = targets.nonzero().squeeze(1)
            t0 = time.perf_counter()
            if idx.numel():
                with _seeded(seed, b, r_index, device):
                    x_adv = run["attack"](model, x[idx.to(device)], y[idx.to(device)])
                _check_threat_model(x_adv, x[idx.to(device)], run["eps"], run["spec"]["name"])
                with torch.no_grad():
                    still = (model(x_adv).argmax(1) == y[idx.to(device)]).cpu()
                outcome[idx] = still.to(torch.int8)
                alive[sl][idx] &= still
            run["seconds"] += time.perf_counter() - t0
            bar.update(1)
        offset += x.shape[0]
    bar.close()
    return _assemble(
        model, batches, suite, runs, clean_correct, robust, n, seed, device, dataset, clean_seconds, run_checks, start
    )


@contextlib.contextmanager
def _seeded(seed: int, batch: int, run: int, device: torch.device) -> Any:
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((int(seed) * 1_000_003 + batch * 10_007 + run * 101) % (2**63 - 1))
        yield


def _check_threat_model(x_adv: torch.Tensor, x: torch.Tensor, eps: float, name: str) -> None:
    if x_adv.shape != x.shape:
        raise RuntimeError(f"attack {name!r} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    excess = ((x_adv - x).abs().max().item() if x.numel() else 0.0) - eps
    if excess > 1e-5 or x_adv.min() < 0 or x_adv.max() > 1:
        raise RuntimeError(
            f"attack {name!r} left the threat model (l_inf excess {excess:.3g}, range "
            f"[{x_adv.min().item():.3g}, {x_adv.max().item():.3g}]); this is a bug in the attack"
        )


def _assemble(
    model: nn.Module,
    batches: list,
    suite: dict,
    runs: list,
    clean_correct: torch.Tensor,
    robust: dict,
    n: int,
    seed: int,
    device: torch.device,
    dataset: str | None,
    clean_seconds: float,
    run_checks: bool,
    start: float,
) -> dict[str, Any]:
    cumulative: dict[float, torch.Tensor] = {}
    attacks_out = []
    by_index: dict[int, dict[str, Any]] = {}
    for run in runs:
        spec = run["spec"]
        entry = by_index.get(run["index"])
        if entry is None:
            attack: Attack = run["attack"]
            entry = by_index[run["index"]] = {
                "name": spec["name"],
                "type": spec["type"],
                "threat": attack.threat,
                "subset": spec["subset"],
                "options": _json_options(spec["options"]),
                "skipped": None,
                "results": [],
            }
            attacks_out.append(entry)
        key = _eps_key(run["eps"])
        item = {"eps": run["eps"], "eps_255": round(eps_in_255(run["eps"]), 4)}
        if run["skipped"] is not None:
            entry["skipped"] = run["skipped"]
            item.update(accuracy=None, robust=None, attacked=0, cumulative_accuracy=None, seconds=0.0)
            entry["results"].append(item)
            continue
        outcome = run["outcome"]
        alive = cumulative.setdefault(key, clean_correct.clone())
        alive &= outcome != 0
        own = spec["subset"] == "all"
        item.update(
            accuracy=float((outcome == 1).sum()) / n if own else None,
            robust=int((outcome == 1).sum()) if own else None,
            attacked=int((outcome >= 0).sum() - (~clean_correct).sum()),
            cumulative_accuracy=float(alive.sum()) / n,
            seconds=round(run["seconds"], 4),
        )
        entry["results"].append(item)
    worst = []
    for key in sorted(robust):
        names = [r["spec"]["name"] for r in runs if r["skipped"] is None and _eps_key(r["eps"]) == key]
        if not names:
            continue
        worst.append(
            {
                "eps": key,
                "eps_255": round(eps_in_255(key), 4),
                "accuracy": float(robust[key].sum()) / n,
                "robust": int(robust[key].sum()),
                "attacks": names,
            }
        )
    result: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "suite": suite["name"],
        "dataset": dataset,
        "n": n,
        "seed": seed,
        "device": str(device),
        "clean": {"accuracy": float(clean_correct.sum()) / n, "correct": int(clean_correct.sum()), "n": n},
        "eps": sorted({_eps_key(r["eps"]) for r in runs}),
        "attacks": attacks_out,
        "worst_case": worst,
        "checks": [],
        "notes": [
            "Every accuracy divides by n (all evaluated samples); clean-misclassified samples count as "
            "non-robust and are not attacked.",
            "accuracy: the attack's own robust accuracy (attacks with subset 'all' run on every "
            "clean-correct sample); null for subset 'remaining', which runs only on samples every earlier "
            "attack failed on at that eps.",
            "cumulative_accuracy: robust to this and all earlier attacks at that eps; worst_case: robust "
            "to every attack run at that eps.",
        ],
    }
    if run_checks:
        result["checks"] = masking_checks(model, batches[0], runs, clean_correct, suite, device)
    result["timing"] = {
        "total_seconds": round(time.perf_counter() - start, 3),
        "clean_seconds": round(clean_seconds, 4),
    }
    return result


def _json_options(options: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in options.items():
        out[key] = value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else repr(value)
    return out


# -- masking checks ---------------------------------------------------------------------------------
def masking_checks(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    runs: list[dict[str, Any]],
    clean_correct: torch.Tensor,
    suite: dict[str, Any],
    device: torch.device,
) -> list[dict[str, Any]]:
    """Signs that the white-box numbers overstate robustness (Carlini et al. 2019; Athalye et al. 2018).

    Each returns ``{"name", "passed", "level", "detail"}``; ``tol = max(checks.tolerance, 3/n)`` is the
    fraction of samples treated as noise. ``"breaks beyond"`` below means samples that attack B makes
    misclassified while every attack of set A that ran on them failed.

    * ``input_gradients``: the input gradient of the margin loss is zero or non-finite on > 1% of
      clean-correct samples of the first batch (the gradient carries no signal; e.g. a detached or
      quantised input, or a DEQ whose backward attaches nothing in eval mode).
    * ``large_eps``: at the suite's largest eps (when it reaches the data set's sanity eps, 0.3 for
      MNIST, 32/255 otherwise), every gradient attack and the worst case must push accuracy below
      ``large_eps_max_accuracy``; an attack that cannot, with that much room, is not following a
      useful gradient.
    * ``monotone_eps``: an attack's accuracy must not rise (beyond tol) as eps grows.
    * ``flat_curve``: a gradient attack whose accuracy barely moves (< tol) between the smallest eps
      and the largest eps <= 16/255 while staying above 10% (the pattern the paper's Table 1 shows).
    * ``more_iterations``: between runs of the same attack (type, loss, gradient mode) with a larger
      steps x restarts budget, the stronger must not leave accuracy higher (beyond tol), and must not
      break more than tol more samples (else the weaker budget had not converged).
    * ``single_step``: FGSM breaks beyond the multi-step gradient attacks.
    * ``score_based``: a gradient-free attack (Square) breaks beyond every white-box attack.
    * ``transfer``: a transfer attack breaks beyond every white-box attack.
    * ``alternative_backward``: an attack through another DEQ backward (e.g. unrolled) breaks beyond
      the attacks using the model's own gradient: the default backward's gradient is misleading.
    * ``dynamic_defense``: the forward pass calls autograd (AutoAttack's flag; informational). Detected by
      profiling Python calls into ``torch.autograd`` during one forward; LyaDEQ models fire it only with the
      Lyapunov option ``grad_method: autograd``.
    """
    n = clean_correct.numel()
    tol = max(suite["checks"]["tolerance"], 3.0 / max(n, 1))
    active = [r for r in runs if r["skipped"] is None]
    out = [_check_gradients(model, batch, device)]

    def beyond(reference: list[dict], run: dict) -> int:
        mask = clean_correct & (run["outcome"] == 0)
        for ref in reference:
            mask &= ref["outcome"] == 1
        return int(mask.sum())

    def acc(run: dict) -> float | None:
        return float((run["outcome"] == 1).sum()) / n if run["spec"]["subset"] == "all" else None

    def label(run: dict) -> str:
        return f"{run['spec']['name']} @ {eps_in_255(run['eps']):g}/255"

    def at(runs_: list[dict], key: float) -> list[dict]:
        return [r for r in runs_ if _eps_key(r["eps"]) == key]

    white = [r for r in active if r["attack"].threat == "white-box"]
    own_grad = [r for r in white if r["attack"].grad_mode is None]
    multi = [r for r in own_grad if not r["attack"].single_step]
    single = [r for r in own_grad if r["attack"].single_step]
    alt = [r for r in white if r["attack"].grad_mode is not None]
    score = [r for r in active if r["attack"].threat == "score-based"]
    transfer = [r for r in active if r["attack"].threat == "transfer"]
    keys = sorted({_eps_key(r["eps"]) for r in active})

    # large eps
    large = suite["large_eps"]
    if not keys or keys[-1] < large - 1e-9:
        top = f"{eps_in_255(keys[-1]):g}/255" if keys else "none"
        out.append(
            _check(
                "large_eps",
                None,
                "warning",
                f"not run: the largest eps in the suite ({top}) is below the sanity eps "
                f"{eps_in_255(large):g}/255 for this data set; use --suite strong",
            )
        )
    else:
        key = keys[-1]
        limit = suite["checks"]["large_eps_max_accuracy"]
        failing = [f"{label(r)}: {acc(r):.1%}" for r in at(white, key) if acc(r) is not None and acc(r) > limit]
        worst = clean_correct.clone()
        for r in at(active, key):
            worst &= r["outcome"] != 0
        worst_acc = float(worst.sum()) / n
        passed = not failing and worst_acc <= limit
        detail = f"at eps {eps_in_255(key):g}/255 worst-case accuracy is {worst_acc:.1%} (limit {limit:.0%})"
        if failing:
            detail += "; gradient attacks that stay above the limit (their gradient is uninformative): "
            detail += ", ".join(failing)
        if worst_acc > limit:
            detail += "; no attack breaks the model even with this much room: gradient masking is likely"
        out.append(_check("large_eps", passed, "warning", detail))

    # monotone in eps
    bumps = []
    for index in sorted({r["index"] for r in active}):
        series = sorted((r for r in active if r["index"] == index and acc(r) is not None), key=lambda r: r["eps"])
        for lo, hi in zip(series, series[1:], strict=False):
            if acc(hi) > acc(lo) + tol:
                bumps.append(
                    f"{lo['spec']['name']}: {acc(lo):.1%} at {eps_in_255(lo['eps']):g}/255 -> "
                    f"{acc(hi):.1%} at {eps_in_255(hi['eps']):g}/255"
                )
    out.append(
        _check(
            "monotone_eps",
            not bumps,
            "warning",
            "accuracy never rises with eps"
            if not bumps
            else "accuracy rises with eps (a larger ball contains the smaller one, so a working attack "
            "cannot do worse): " + "; ".join(bumps),
        )
    )

    # flat curve
    flats, examined = [], 0
    for index in sorted({r["index"] for r in white}):
        series = sorted(
            (r for r in white if r["index"] == index and acc(r) is not None and 0 < r["eps"] <= 16 / 255 + 1e-9),
            key=lambda r: r["eps"],
        )
        if len(series) < 2 or series[-1]["eps"] < 2 * series[0]["eps"]:
            continue
        examined += 1
        lo, hi = series[0], series[-1]
        if acc(lo) - acc(hi) < tol and acc(hi) > 0.10:
            flats.append(
                f"{lo['spec']['name']}: {acc(lo):.1%} at {eps_in_255(lo['eps']):g}/255, "
                f"{acc(hi):.1%} at {eps_in_255(hi['eps']):g}/255"
            )
    if not examined:
        out.append(_check("flat_curve", None, "warning", "not run: no gradient attack at two eps <= 16/255"))
    else:
        out.append(
            _check(
                "flat_curve",
                not flats,
                "warning",
                "accuracy falls as eps grows"
                if not flats
                else "accuracy is flat in eps, the signature of a gradient that stops helping the attack "
                "(gradient masking), not of robustness: " + "; ".join(flats),
            )
        )

    # more iterations
    groups: dict[tuple, list[dict]] = {}
    for r in white:
        a = r["attack"]
        groups.setdefault((r["spec"]["type"], a.loss, str(a.grad_mode), _eps_key(r["eps"])), []).append(r)
    raised, unconverged, compared = [], [], 0
    for members in groups.values():
        members = sorted(members, key=lambda r: _budget(r["attack"]))
        for weak, strong in zip(members, members[1:], strict=False):
            if _budget(strong["attack"]) <= _budget(weak["attack"]):
                continue
            compared += 1
            if acc(weak) is not None and acc(strong) is not None and acc(strong) > acc(weak) + tol:
                raised.append(f"{label(weak)} {acc(weak):.1%} -> {label(strong)} {acc(strong):.1%}")
            extra = beyond([weak], strong) / n
            if extra > tol:
                unconverged.append(f"{label(strong)} breaks {extra:.1%} more than {weak['spec']['name']}")
    if not compared:
        out.append(
            _check(
                "more_iterations",
                None,
                "warning",
                "not run: no attack appears with two budgets (steps x restarts); use --suite strong",
            )
        )
    else:
        problems = []
        if raised:
            problems.append("more steps/restarts RAISED accuracy (noisy or stochastic gradient): " + "; ".join(raised))
        if unconverged:
            problems.append(
                "more steps/restarts break clearly more samples, so the smaller budget "
                "overstates robustness: " + "; ".join(unconverged)
            )
        out.append(
            _check(
                "more_iterations",
                not problems,
                "warning",
                "; ".join(problems) or f"{compared} budget comparison(s) agree within {tol:.1%}",
            )
        )

    def beats(name: str, challengers: list[dict], reference: list[dict], missing: str, what: str) -> None:
        if not challengers or not reference:
            out.append(_check(name, None, "warning", f"not run: {missing}"))
            return
        found = []
        for r in challengers:
            ref = at(reference, _eps_key(r["eps"]))
            if not ref:
                continue
            extra = beyond(ref, r) / n
            if extra > tol:
                found.append(f"{label(r)} breaks {extra:.1%} of samples that every reference attack failed on")
        out.append(
            _check(
                name,
                not found,
                "warning",
                (what + ": " + "; ".join(found))
                if found
                else f"{len(challengers)} run(s) break no more than {tol:.1%} beyond the reference attacks",
            )
        )

    beats(
        "single_step",
        single,
        multi,
        "needs fgsm and a multi-step gradient attack",
        "a single step beats many steps, so the multi-step attack is misled by the local gradient",
    )
    beats(
        "score_based",
        score,
        white,
        "needs a gradient-free attack (square) and a white-box attack",
        "a gradient-free attack beats the gradient attacks: the white-box numbers are inflated by gradient masking",
    )
    beats(
        "transfer",
        transfer,
        white,
        "needs a transfer attack with a trained source model",
        "examples crafted on another model beat white-box attacks on this one: its own gradient misleads the attacks",
    )
    beats(
        "alternative_backward",
        alt,
        own_grad,
        "needs a gradient attack with grad_mode (e.g. unroll) on a DEQ",
        "attacking through another backward is much stronger: the model's default backward gives a "
        "misleading gradient (forward/backward solver mismatch)",
    )
    out.append(_check_dynamic(model, batch, device))
    return out


def _budget(attack: Attack) -> int:
    return int(getattr(attack, "steps", 1)) * int(attack.restarts)


def _check(name: str, passed: bool | None, level: str, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": passed, "level": level, "detail": detail}


def _check_gradients(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> dict:
    x, y = batch[0][:64].to(device).float(), batch[1][:64].to(device).long()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    if not correct.any():
        return _check("input_gradients", None, "warning", "not run: no clean-correct sample in the first batch")
    x, y = x[correct], y[correct]
    bad = {}
    for loss in ("cw", "ce"):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            value = attack_loss(loss, model(xg), y)
            grad = torch.autograd.grad(value.sum(), xg, allow_unused=True)[0] if value.requires_grad else None
        if grad is None:
            bad[loss] = 1.0
            continue
        flat = grad.flatten(1)
        useless = (flat.abs().amax(1) == 0) | ~torch.isfinite(flat).all(1)
        bad[loss] = float(useless.float().mean())
    passed = bad["cw"] <= 0.01
    detail = (
        f"zero or non-finite input gradient on {bad['cw']:.1%} (margin loss) and {bad['ce']:.1%} "
        f"(cross-entropy) of {len(y)} clean-correct samples"
    )
    if not passed:
        detail += (
            ": the attacks get no gradient signal (input detached, quantised, or a DEQ backward "
            "that attaches nothing in eval mode)"
        )
    elif bad["ce"] > 0.1:
        detail += ": cross-entropy saturates; use loss cw or dlr for gradient attacks"
    return _check("input_gradients", passed, "warning", detail)


def _check_dynamic(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> dict:
    calls = autograd_calls_in_forward(model, batch[0][:2].to(device).float())
    if not calls:
        return _check("dynamic_defense", True, "info", "the forward pass does not call autograd")
    return _check(
        "dynamic_defense",
        False,
        "info",
        "the forward pass calls autograd (" + "; ".join(calls) + "). AutoAttack flags such models as "
        "'dynamic defenses'. A Lyapunov-stable DEQ does this when its stability module is built with "
        "grad_method: autograd (it then takes grad V(z) with torch.autograd.grad inside the forward pass to "
        "project the dynamics; the default grad_method: analytic computes the same gradient with explicit "
        "tensor operations and does not trigger this note). Such a model is sound only if that gradient is "
        "built with create_graph=True, so that attacks differentiate through it; if it is detached, "
        "white-box attacks see a partial gradient. Trust the worst case over the gradient-free and "
        "transfer attacks (--suite strong), not the white-box numbers alone.",
    )


# -- reporting --------------------------------------------------------------------------------------
def format_table(result: Mapping[str, Any], model_name: str = "model") -> str:
    """Markdown tables: a Table-1-style row (clean | attack at each eps | worst case), then per attack
    rows with own and cumulative accuracy, then the checks."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    eps_cols = [f"{e:g}" for e in (eps_in_255(k) for k in result["eps"])]
    head = ["model", "clean"]
    row = [model_name, pct(result["clean"]["accuracy"])]
    for attack in result["attacks"]:
        if attack["subset"] != "all" or attack["skipped"]:
            continue
        for item in attack["results"]:
            head.append(f"{attack['name']} {item['eps_255']:g}")
            row.append(pct(item["accuracy"]))
    for item in result["worst_case"]:
        head.append(f"worst {item['eps_255']:g}")
        row.append(pct(item["accuracy"]))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(row) + " |", ""]
    lines += ["| attack (eps x255) | " + " | ".join(eps_cols) + " | seconds |", "|---|" + "---|" * (len(eps_cols) + 1)]
    for attack in result["attacks"]:
        cells = {round(i["eps"], 9): i for i in attack["results"]}
        values = []
        for key in result["eps"]:
            item = cells.get(key)
            if item is None:
                values.append("")
            elif attack["skipped"]:
                values.append("skipped")
            elif item["accuracy"] is None:
                values.append(f"({pct(item['cumulative_accuracy'])})")
            else:
                values.append(pct(item["accuracy"]))
        seconds = sum(i["seconds"] or 0 for i in attack["results"])
        lines.append(f"| {attack['name']} | " + " | ".join(values) + f" | {seconds:.1f} |")
    worst = {round(i["eps"], 9): pct(i["accuracy"]) for i in result["worst_case"]}
    lines.append("| **worst case** | " + " | ".join(worst.get(k, "") for k in result["eps"]) + " | |")
    lines.append("")
    lines.append("(values in parentheses: cumulative accuracy of a 'remaining'-subset attack)")
    skipped = [f"{a['name']}: {a['skipped']}" for a in result["attacks"] if a["skipped"]]
    if skipped:
        lines.append("skipped: " + "; ".join(skipped))
    lines.append("")
    for check in result.get("checks", []):
        mark = {True: "PASS", False: "FLAG" if check["level"] == "warning" else "NOTE", None: "n/a "}[check["passed"]]
        lines.append(f"[{mark}] {check['name']}: {check['detail']}")
    return "\n".join(lines)


__all__ = [
    "autograd_calls_in_forward",
    "dataset_name",
    "evaluate",
    "format_table",
    "list_suites",
    "load_model",
    "load_suite",
    "masking_checks",
]
