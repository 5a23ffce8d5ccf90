"""Declarative YAML configs: ``_base_`` inheritance, deep merge, ``a.b.c=value`` overrides, validation.

A config is a mapping with these top-level sections (all optional except where a tool needs one):

``model``   a component spec of kind ``model`` (``type:`` names a registered architecture); nested
            component specs sit under keys named after their kind (``backbone:``, ``cell:``,
            ``solver:``, ``backward:``, ``lyapunov:``, ``head:``), each with its own ``type:``.
``data``    a component spec of kind ``dataset``.
``train``, ``eval``  sections whose keys are checked against a schema that the owning module registers
            with :func:`register_section`.
``meta``    free-form notes (name, paper numbers, description).

Validation checks every key of every component spec against the signature of the registered
component, so a typo is reported with its key path, the file that set it, the allowed keys and the
closest match, before anything is built. Every value is checked against the annotation of its parameter
(:func:`lyadeq_zoo.option_types.check_value`): ``int`` refuses ``true`` and ``"thirty"``, a ``Literal`` lists
its choices, and so on; an option whose annotation is missing, ``Any`` or cannot be resolved is not checked.
The type checker lives in :mod:`lyadeq_zoo.option_types`; its public names are re-exported here.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, UnknownComponentError, closest_match
from .option_types import (
    NESTED_ATTRIBUTE,
    check_options,
    check_value,
    describe_type,
    matches,
    nested_kind,
    option_annotations,
)
from .registry import KINDS, get_component

__all__ = [
    "BASE_KEY",
    "FREE_SECTIONS",
    "NESTED_ATTRIBUTE",
    "SUPPLIED_ATTRIBUTE",
    "ConfigError",
    "accepted_keys",
    "allowed_sections",
    "apply_overrides",
    "check_options",
    "check_value",
    "describe_type",
    "load_config",
    "matches",
    "merge_configs",
    "nested_kind",
    "option_annotations",
    "parse_number",
    "parse_yaml",
    "register_section",
    "validate_component",
    "validate_config",
]

BASE_KEY = "_base_"
FREE_SECTIONS = {"meta"}
_SECTION_SCHEMAS: dict[str, Callable[[], Iterable[str] | Mapping[str, Any]]] = {}
_COMPONENT_SECTIONS = {"model": "model", "data": "dataset"}
SUPPLIED_ATTRIBUTE = "__lyadeq_zoo_supplied__"  # constructor args the parent passes, not the config

Path_t = tuple[str, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 would make it a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text safely (no Python objects), reading ``1e-4`` as a float."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


def register_section(name: str, allowed_keys: Callable[[], Iterable[str] | Mapping[str, Any]]) -> None:
    """Declare a top-level config section and how to get its allowed keys (checked on load).

    When ``allowed_keys()`` returns a mapping ``{key: annotation}``, each value of the section is also
    checked against its annotation, like a component option; a key named after a component kind
    (``objective:``) holds a component spec and is validated as one.
    """
    _SECTION_SCHEMAS[name] = allowed_keys


def allowed_sections() -> list[str]:
    return sorted({*_COMPONENT_SECTIONS, *_SECTION_SCHEMAS, *FREE_SECTIONS})


# -- loading and merging ----------------------------------------------------------------------------
def load_config(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Load a YAML config with its ``_base_`` chain, apply ``a.b.c=value`` overrides, validate it.

    Returns the resolved plain dict (JSON-serialisable when the YAML is). Raises ConfigError.
    """
    provenance: dict[Path_t, str] = {}
    config = _load_with_bases(Path(path), provenance, chain=())
    config = apply_overrides(config, overrides, provenance)
    validate_config(config, provenance)
    return config


def _load_with_bases(path: Path, provenance: dict[Path_t, str], chain: tuple[Path, ...]) -> dict:
    path = path.expanduser()
    if not path.is_file():
        where = f" (a _base_ of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file {str(path)!r}{where} does not exist")
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"_base_ inheritance loops: {cycle}")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping at top level, got {type(raw).__name__}")
    bases = raw.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a path or a list of paths, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        base_cfg = _load_with_bases(path.parent / base, provenance, (*chain, resolved))
        merged = merge_configs(merged, base_cfg)
    _record(raw, (), str(path), provenance)
    return merge_configs(merged, raw)


def _record(tree: Any, prefix: Path_t, source: str, provenance: dict[Path_t, str]) -> None:
    provenance[prefix] = source
    if isinstance(tree, dict):
        for key, value in tree.items():
            _record(value, (*prefix, str(key)), source, provenance)


def merge_configs(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: ``update`` wins; nested mappings merge key by key.

    A nested mapping whose ``type`` differs from the base's replaces it whole, so options of the old
    component do not leak into the new one.
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        old = out.get(key)
        if (
            isinstance(old, dict)
            and isinstance(value, dict)
            and ("type" not in value or value.get("type") == old.get("type"))
        ):
            out[key] = merge_configs(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(
    config: dict[str, Any], overrides: Iterable[str], provenance: dict[Path_t, str] | None = None
) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings; values are parsed as YAML scalars (``1e-3``, ``true``, ``[1, 2]``)."""
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like a.b.c=value")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        if not all(keys):
            raise ConfigError(f"override {item!r} has an empty key in {dotted!r}")
        try:
            value = parse_yaml(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from err
        node = config
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"override {item!r}: {where} is {child!r}, not a mapping")
            node = child
        leaf = keys[-1]
        if isinstance(node.get(leaf), dict) and isinstance(value, dict):
            node[leaf] = merge_configs(node[leaf], value)
        else:
            node[leaf] = value
        if provenance is not None:
            _record(value, tuple(keys), f"override {item!r}", provenance)
    return config


# -- validation -------------------------------------------------------------------------------------
def _source(provenance: Mapping[Path_t, str], path: Path_t) -> str:
    for end in range(len(path), -1, -1):
        if path[:end] in provenance:
            return provenance[path[:end]]
    return "<dict>"


def accepted_keys(component: Any) -> tuple[list[str], bool]:
    """(config keys a component accepts, whether it also takes ``**kwargs``)."""
    try:
        signature = inspect.signature(component)
    except (TypeError, ValueError):
        return [], True
    supplied = set(getattr(component, SUPPLIED_ATTRIBUTE, ()))
    names, var_kw = [], False
    for param in signature.parameters.values():
        if param.kind is param.VAR_KEYWORD:
            var_kw = True
        elif param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and param.name not in supplied:
            names.append(param.name)
    return names, var_kw


def validate_component(kind: str, spec: Any, path: Path_t, provenance: Mapping[Path_t, str] | None = None) -> None:
    """Check one component spec (and its nested specs) against the registered signatures.

    Each key must be a parameter of the component, and each value must fit that parameter's annotation
    (:func:`check_value`); messages name the key path and the file or override it came from.
    """
    provenance = provenance or {}
    component = _spec_component(kind, spec, path, provenance)
    allowed, var_kw = accepted_keys(component)
    hints = option_annotations(component)
    for key, value in spec.items():
        if key == "type":
            continue
        key_path = (*path, key)
        if not var_kw and key not in allowed:
            raise _unknown_key_error(kind, spec, component, key_path, allowed, provenance)
        sub_kind = nested_kind(component, key)
        if sub_kind is not None and value is not None:
            validate_component(sub_kind, value, key_path, provenance)
        elif key in hints:
            check_value(value, hints[key], ".".join(key_path), _source(provenance, key_path))


def _spec_component(kind: str, spec: Any, path: Path_t, provenance: Mapping[Path_t, str]) -> Any:
    """The registered component a spec's ``type`` names; ConfigError if the spec is not a mapping with one."""
    where = ".".join(path) or "<root>"
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where} (from {_source(provenance, path)}) must be a mapping with a 'type' key naming a "
            f"{kind}, got {spec!r}"
        )
    if "type" not in spec:
        raise ConfigError(
            f"{where} (from {_source(provenance, path)}) has no 'type' key; it must name a registered {kind}"
        )
    try:
        return get_component(kind, spec["type"])
    except UnknownComponentError as err:
        raise ConfigError(f"{where}.type (from {_source(provenance, (*path, 'type'))}): {err}") from None


def _unknown_key_error(
    kind: str,
    spec: Mapping[str, Any],
    component: Any,
    key_path: Path_t,
    allowed: list[str],
    provenance: Mapping[Path_t, str],
) -> ConfigError:
    """The error for a key the component does not accept: the allowed keys and the fix."""
    key = key_path[-1]
    msg = (
        f"{'.'.join(key_path)} (from {_source(provenance, key_path)}): {kind} {spec['type']!r} "
        f"accepts no key {key!r}. Allowed keys: {', '.join(['type', *allowed])}."
    )
    hint = closest_match(key, allowed)
    if key in getattr(component, SUPPLIED_ATTRIBUTE, ()):
        msg += f" {key!r} is set by the enclosing model; remove it from the config."
    elif hint:
        msg += f" Did you mean {hint!r}?"
    return ConfigError(msg)


def validate_config(config: Mapping[str, Any], provenance: Mapping[Path_t, str] | None = None) -> None:
    """Validate a resolved config: known sections, and every component spec against its signature."""
    provenance = provenance or {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"a config must be a mapping, got {type(config).__name__}")
    sections = allowed_sections()
    for section, value in config.items():
        if section not in sections:
            hint = closest_match(str(section), sections)
            msg = (
                f"top-level key {section!r} (from {_source(provenance, (str(section),))}) is not a config "
                f"section. Allowed: {', '.join(sections)}."
            )
            raise ConfigError(msg + (f" Did you mean {hint!r}?" if hint else ""))
        if value is None:
            continue
        if section in _COMPONENT_SECTIONS:
            validate_component(_COMPONENT_SECTIONS[section], value, (section,), provenance)
        elif section in _SECTION_SCHEMAS:
            _validate_section(section, value, _SECTION_SCHEMAS[section](), provenance)


def _validate_section(
    section: str, value: Any, schema: Iterable[str] | Mapping[str, Any], provenance: Mapping[Path_t, str]
) -> None:
    annotations = schema if isinstance(schema, Mapping) else {}
    allowed = sorted(schema)
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"section {section!r} (from {_source(provenance, (section,))}) must be a mapping, got {value!r}"
        )
    for key, item in value.items():
        key_path = (section, str(key))
        if key not in allowed:
            hint = closest_match(str(key), allowed)
            msg = (
                f"{section}.{key} (from {_source(provenance, key_path)}) is not a "
                f"{section} option. Allowed keys: {', '.join(allowed)}."
            )
            raise ConfigError(msg + (f" Did you mean {hint!r}?" if hint else ""))
        if key in KINDS and item is not None:
            validate_component(key, item, key_path, provenance)
        elif key in annotations:
            check_value(item, annotations[key], ".".join(key_path), _source(provenance, key_path))


def parse_number(value: float | int | str) -> float:
    """A float from a number or a fraction string such as ``"8/255"`` (how papers write eps)."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)
