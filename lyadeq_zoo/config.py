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
(:func:`check_value`): ``int`` refuses ``true`` and ``"thirty"``, a ``Literal`` lists its choices, and so
on; an option whose annotation is missing, ``Any`` or cannot be resolved is not checked.
"""

from __future__ import annotations

import collections.abc
import copy
import inspect
import numbers
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from .errors import ConfigError, UnknownComponentError, closest_match
from .registry import KINDS, get_component

BASE_KEY = "_base_"
FREE_SECTIONS = {"meta"}
_SECTION_SCHEMAS: dict[str, Callable[[], Iterable[str] | Mapping[str, Any]]] = {}
_COMPONENT_SECTIONS = {"model": "model", "data": "dataset"}
SUPPLIED_ATTRIBUTE = "__lyadeq_zoo_supplied__"  # constructor args the parent passes, not the config
NESTED_ATTRIBUTE = "__lyadeq_zoo_nested__"  # extra {key: kind} for nested specs not named after a kind

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


# -- option values against annotations --------------------------------------------------------------
_NONE_TYPE = type(None)
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_UNIONS = (Union, types.UnionType)
_REPR_LIMIT = 80


def option_annotations(component: Any) -> dict[str, Any]:
    """``{parameter: annotation}`` of a component's options: its ``__init__`` (a class) or itself (a function).

    String annotations (``from __future__ import annotations``) are resolved with ``typing.get_type_hints``
    in the defining module. When that fails, each annotation is resolved on its own and the ones that still
    fail are left out, so they are not checked.
    """
    target = component.__init__ if inspect.isclass(component) else component
    if target is object.__init__:
        return {}
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - any failure to resolve means "check what can be resolved"
        hints = _resolve_one_by_one(target)
    hints.pop("return", None)
    return hints


def _resolve_one_by_one(target: Any) -> dict[str, Any]:
    raw = getattr(target, "__annotations__", None)
    if not isinstance(raw, Mapping):
        return {}
    namespace = getattr(inspect.unwrap(target), "__globals__", {})
    hints = {}
    for name, annotation in raw.items():
        holder = types.SimpleNamespace(__annotations__={name: annotation})
        try:
            hints.update(typing.get_type_hints(holder, globalns=namespace, include_extras=True))
        except Exception:  # noqa: BLE001 - unresolvable: this option is not checked
            continue
    return hints


def _strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, typing.NewType):
        return _strip(annotation.__supertype__)
    return annotation


def _union_arms(annotation: Any) -> tuple[Any, ...] | None:
    return typing.get_args(annotation) if typing.get_origin(annotation) in _UNIONS else None


def _container(annotation: Any) -> Any:
    """``list``, ``dict``, ``collections.abc.Sequence`` ... for ``list[int]`` and for bare ``list`` alike."""
    return typing.get_origin(annotation) or annotation


def _is_sequence_type(annotation: Any) -> bool:
    return _container(annotation) in _SEQUENCES


def _is_mapping_type(annotation: Any) -> bool:
    return _container(annotation) in _MAPPINGS


def _item_types(annotation: Any, length: int) -> list[Any] | None:
    """The annotation of each of ``length`` items of a sequence type, or None if the length is wrong."""
    args = typing.get_args(annotation)
    if _container(annotation) is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if args == ((),):  # tuple[()]
            args = ()
        return list(args) if len(args) == length else None
    return [args[0] if args else Any] * length


def matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits ``annotation`` (see :func:`check_value` for the rules)."""
    annotation = _strip(annotation)
    if annotation in (Any, object, inspect.Parameter.empty):
        return True
    if isinstance(annotation, (typing.TypeVar, typing.ForwardRef, str)):  # generic or unresolved: no check
        return True
    if annotation is None or annotation is _NONE_TYPE:
        return value is None
    arms = _union_arms(annotation)
    if arms is not None:
        return any(matches(value, arm) for arm in arms)
    if typing.get_origin(annotation) is Literal:
        return any(value == choice and type(value) is type(choice) for choice in typing.get_args(annotation))
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if _is_sequence_type(annotation):
        if not isinstance(value, (list, tuple)):
            return False
        items = _item_types(annotation, len(value))
        return items is not None and all(matches(v, a) for v, a in zip(value, items, strict=True))
    if _is_mapping_type(annotation):
        if not isinstance(value, Mapping):
            return False
        key_type, value_type = (typing.get_args(annotation) or (Any, Any))[:2]
        return all(matches(k, key_type) and matches(v, value_type) for k, v in value.items())
    if _container(annotation) is collections.abc.Callable:
        return callable(value)
    if isinstance(annotation, type):
        if issubclass(annotation, os.PathLike) and isinstance(value, str):
            return True  # a path option accepts the path as a string (how YAML writes it)
        try:
            return isinstance(value, annotation)
        except TypeError:  # e.g. a protocol that is not runtime-checkable
            return True
    origin = typing.get_origin(annotation)
    if isinstance(origin, type):
        try:
            return isinstance(value, origin)
        except TypeError:
            return True
    return True  # an annotation form we do not know: no check


def describe_type(annotation: Any) -> str:
    """``annotation`` in words: ``int``, ``one of 'ce', 'cw', 'dlr'``, ``list of float``, ``int or null``."""
    annotation = _strip(annotation)
    if annotation in (Any, object, inspect.Parameter.empty):
        return "any value"
    if annotation is None or annotation is _NONE_TYPE:
        return "null"
    arms = _union_arms(annotation)
    if arms is not None:
        real = [_strip(arm) for arm in arms if arm is not _NONE_TYPE]
        literals = [arm for arm in real if typing.get_origin(arm) is Literal]
        others = [describe_type(arm) for arm in real if typing.get_origin(arm) is not Literal]
        if literals:
            choices = [choice for arm in literals for choice in typing.get_args(arm)]
            others.insert(0, describe_type(Literal[tuple(choices)]))
        words = " or ".join(others)
        return f"{words} or null" if len(real) < len(arms) else words
    if typing.get_origin(annotation) is Literal:
        choices = ", ".join("null" if c is None else repr(c) for c in typing.get_args(annotation))
        return f"one of {choices}" if len(typing.get_args(annotation)) > 1 else choices
    if _is_sequence_type(annotation):
        args = typing.get_args(annotation)
        if not args:
            return "list"
        if _container(annotation) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(set(args)) == 1:
                return f"list of {len(args)} {_nested_words(args[0])}"
            return f"list [{', '.join(describe_type(a) for a in args)}]"
        return f"list of {_nested_words(args[0])}"
    if _is_mapping_type(annotation):
        args = typing.get_args(annotation)
        if not args or (_strip(args[1]) in (Any, object) and _strip(args[0]) in (str, Any)):
            return "mapping"
        return f"mapping of {_nested_words(args[0])} to {_nested_words(args[1])}"
    if _container(annotation) is collections.abc.Callable:
        return "callable"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _nested_words(annotation: Any) -> str:
    words = describe_type(annotation)
    return f"({words})" if " or " in words or words.startswith("one of") else words


def _describe_value(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return f"{text} ({type(value).__name__})"


def _innermost_mismatch(value: Any, annotation: Any, where: str) -> tuple[Any, Any, str]:
    """``(value, annotation, where)`` of the item to blame: ``widths[1]`` rather than the whole list."""
    annotation = _strip(annotation)
    arms = _union_arms(annotation)
    candidates = [_strip(a) for a in arms] if arms is not None else [annotation]
    if isinstance(value, (list, tuple)):
        sequences = [a for a in candidates if _is_sequence_type(a)]
        if len(sequences) == 1:
            items = _item_types(sequences[0], len(value))
            if items is not None:
                for i, (item, item_type) in enumerate(zip(value, items, strict=True)):
                    if not matches(item, item_type):
                        return _innermost_mismatch(item, item_type, f"{where}[{i}]")
    elif isinstance(value, Mapping):
        mappings = [a for a in candidates if _is_mapping_type(a)]
        if len(mappings) == 1:
            key_type, value_type = (typing.get_args(mappings[0]) or (Any, Any))[:2]
            for key, item in value.items():
                if not matches(key, key_type):
                    return key, key_type, f"{where} (key {key!r})"
                if not matches(item, value_type):
                    return _innermost_mismatch(item, value_type, f"{where}.{key}")
    return value, annotation, where


def check_value(value: Any, annotation: Any, where: str, source: str | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` fits the type ``annotation``.

    ``where`` is the key path for the message (``model.solver.max_iter``), ``source`` the file or
    override that set it. Rules: ``bool`` is not an ``int`` nor a ``float``; an ``int`` is a ``float``;
    a list or tuple is a sequence (``list[int]``, ``tuple[float, float]``, ``Sequence[int]``; a string
    is not); ``Literal`` compares value and type; unions and ``X | None`` take any arm; a mapping is a
    ``dict``/``Mapping``; ``Any``, a missing annotation or an unknown form accepts everything.
    Message: ``model.solver.max_iter: expected int, got True (bool) (from override 'model.solver.max_iter=true')``.
    """
    if matches(value, annotation):
        return
    value, annotation, where = _innermost_mismatch(value, annotation, where)
    message = f"{where}: expected {describe_type(annotation)}, got {_describe_value(value)}"
    if source:
        message += f" (from {source})"
    choices = _literal_strings(annotation)
    if isinstance(value, str) and choices:
        hint = closest_match(value, choices)
        if hint:
            message += f". Did you mean {hint!r}?"
    raise ConfigError(message)


def _literal_strings(annotation: Any) -> list[str]:
    annotation = _strip(annotation)
    arms = _union_arms(annotation) or (annotation,)
    return [
        choice
        for arm in arms
        if typing.get_origin(_strip(arm)) is Literal
        for choice in typing.get_args(_strip(arm))
        if isinstance(choice, str)
    ]


def check_options(component: Any, options: Mapping[str, Any], where: str, source: str | None = None) -> None:
    """Check each option value of ``component`` against its parameter annotation (nested specs too).

    ``options`` are the spec's keys other than ``type``; ``where`` prefixes the key paths in messages.
    A key holding a nested component spec (``solver:``, a transfer attack's ``attack:``) is checked
    against that component's annotations. Keys are not checked here (see :func:`validate_component`).
    """
    hints = option_annotations(component)
    for key, value in options.items():
        if key == "type":
            continue
        key_where = f"{where}.{key}" if where else str(key)
        sub_kind = nested_kind(component, key)
        if sub_kind is not None and isinstance(value, Mapping) and "type" in value:
            try:
                sub_component = get_component(sub_kind, value["type"])
            except UnknownComponentError:
                continue  # building it reports the unknown name
            check_options(sub_component, value, key_where, source)
        elif key in hints:
            check_value(value, hints[key], key_where, source)


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


def nested_kind(component: Any, key: str) -> str | None:
    """The component kind expected under ``key`` of ``component``'s spec, if any."""
    extra = getattr(component, NESTED_ATTRIBUTE, {}) or {}
    if key in extra:
        return extra[key]
    return key if key in KINDS else None


def validate_component(
    kind: str, spec: Any, path: Path_t, provenance: Mapping[Path_t, str] | None = None
) -> None:
    """Check one component spec (and its nested specs) against the registered signatures.

    Each key must be a parameter of the component, and each value must fit that parameter's annotation
    (:func:`check_value`); messages name the key path and the file or override it came from.
    """
    provenance = provenance or {}
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
        component = get_component(kind, spec["type"])
    except UnknownComponentError as err:
        raise ConfigError(f"{where}.type (from {_source(provenance, (*path, 'type'))}): {err}") from None
    allowed, var_kw = accepted_keys(component)
    hints = option_annotations(component)
    for key, value in spec.items():
        if key == "type":
            continue
        key_path = (*path, key)
        if not var_kw and key not in allowed:
            hint = closest_match(key, allowed)
            msg = (
                f"{'.'.join(key_path)} (from {_source(provenance, key_path)}): {kind} {spec['type']!r} "
                f"accepts no key {key!r}. Allowed keys: {', '.join(['type', *allowed])}."
            )
            if key in getattr(component, SUPPLIED_ATTRIBUTE, ()):
                msg += f" {key!r} is set by the enclosing model; remove it from the config."
            elif hint:
                msg += f" Did you mean {hint!r}?"
            raise ConfigError(msg)
        sub_kind = nested_kind(component, key)
        if sub_kind is not None and value is not None:
            validate_component(sub_kind, value, key_path, provenance)
        elif key in hints:
            check_value(value, hints[key], ".".join(key_path), _source(provenance, key_path))


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
