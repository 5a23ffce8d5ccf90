"""Attack suites: the shipped ones (``configs/eval/*.yaml``) and their validation into runnable specs.

A suite is ``{"name", "description", "attacks": [spec, ...], "checks": {...}, "large_eps": {...}}``; each
attack spec names a registered attack (``type``), its eps list and its own options. :func:`load_suite`
resolves one (eps fractions, ``large``, ``robustbench``, ``{dataset}``) and builds every attack once, so that a
typo fails before an evaluation starts rather than in the middle of it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..attacks import create_attack, parse_eps
from ..config import accepted_keys, check_options, parse_yaml
from ..errors import ConfigError, UnknownComponentError, closest_match
from ..factory import configs_dir
from ..registry import get_component

SUITE_KEYS = ("name", "description", "attacks", "checks", "large_eps")
SPEC_KEYS = ("name", "type", "eps", "subset")  # keys of an attack spec that are not attack options
CHECK_OPTIONS = {"tolerance": 0.02, "large_eps_max_accuracy": 0.10}
DEFAULT_LARGE_EPS = {"mnist": 0.3, "default": 32 / 255}
#: ``robustbench`` in an eps list: RobustBench's l_inf eps for the data set (0.3 on MNIST, 8/255 elsewhere).
ROBUSTBENCH_EPS = {"mnist": 0.3, "default": 8 / 255}


def suites_dir() -> Path:
    """The folder of named suites (``configs/eval``)."""
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
    list of numbers or fraction strings, ``large``: the suite's sanity eps for ``dataset``, or ``robustbench``:
    RobustBench's eps for ``dataset``, 0.3 on MNIST and 8/255 elsewhere),
    optional ``name`` (display name, default ``type``), ``subset`` (``all`` | ``remaining``) and the
    attack's own options. String options may contain ``{dataset}``.

    Returns ``{"name", "description", "attacks": [{"name", "type", "eps": [float], "subset",
    "options"}], "checks": {...}, "large_eps": float}``. Raises :class:`ConfigError` naming the
    offending key and the fix.
    """
    raw, where = _read_suite(suite)
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


def _read_suite(suite: Any) -> tuple[dict[str, Any], str]:
    """The raw suite mapping (a copy) and how error messages name it."""
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
        return raw, where
    if isinstance(suite, Mapping):
        return copy.deepcopy(dict(suite)), "suite"
    if isinstance(suite, Sequence):
        return {"name": "custom", "attacks": copy.deepcopy(list(suite))}, "suite"
    raise ConfigError(f"a suite must be a name, a path, a mapping or a list of specs, got {suite!r}")


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
    check_options(cls, options, where)
    eps_list = spec.get("eps")
    if eps_list is None:
        raise ConfigError(f"{where}: give 'eps', a list such as [2/255, 4/255, 8/255]")
    if not isinstance(eps_list, list):
        eps_list = [eps_list]
    values = []
    named = {"large": large_eps, "robustbench": ROBUSTBENCH_EPS.get(dataset or "default", ROBUSTBENCH_EPS["default"])}
    for item in eps_list:
        try:
            values.append(named[item] if isinstance(item, str) and item in named else parse_eps(item))
        except ValueError as err:
            raise ConfigError(
                f"{where}.eps: {item!r} is not a number, a fraction like 8/255, 'large' or 'robustbench'"
            ) from err
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
    """``value`` with ``{dataset}`` replaced in strings (recursing into mappings)."""
    if isinstance(value, str) and "{dataset}" in value:
        if dataset is None:
            raise ConfigError(f"{where} uses {{dataset}} but the data set is unknown; pass dataset=...")
        return value.replace("{dataset}", dataset)
    if isinstance(value, dict):
        return {k: _substitute(v, dataset, f"{where}.{k}") for k, v in value.items()}
    return value
