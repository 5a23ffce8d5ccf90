"""Option values against the annotations of their parameters: the value-type checker of configs.

:func:`check_value` raises a :class:`~lyadeq_zoo.errors.ConfigError` that names the key path, the expected
type in words (:func:`describe_type`) and the value, when a value does not fit its annotation
(:func:`matches`): ``int`` refuses ``true`` and ``"thirty"``, a ``Literal`` lists its choices, and so on; an
option whose annotation is missing, ``Any`` or cannot be resolved is not checked. :func:`check_options`
checks every option of a component spec (:func:`option_annotations` gives the annotations), descending
into nested component specs (:func:`nested_kind`).
"""

from __future__ import annotations

import collections.abc
import inspect
import numbers
import os
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from .errors import ConfigError, UnknownComponentError, closest_match
from .registry import KINDS, get_component

NESTED_ATTRIBUTE = "__lyadeq_zoo_nested__"  # extra {key: kind} for nested specs not named after a kind

_NONE_TYPE = type(None)
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_UNIONS = (Union, types.UnionType)
_SCALARS = (bool, int, float, str)
_REPR_LIMIT = 80


# -- annotations of a component's options ------------------------------------------------------------
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


def nested_kind(component: Any, key: str) -> str | None:
    """The component kind expected under ``key`` of ``component``'s spec, if any."""
    extra = getattr(component, NESTED_ATTRIBUTE, {}) or {}
    if key in extra:
        return extra[key]
    return key if key in KINDS else None


# -- annotation forms --------------------------------------------------------------------------------
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


def _is_fixed_tuple(annotation: Any) -> bool:
    """``tuple[int, str]`` (one annotation per item), not ``tuple[int, ...]`` nor a bare ``tuple``."""
    args = typing.get_args(annotation)
    return _container(annotation) is tuple and bool(args) and not (len(args) == 2 and args[1] is Ellipsis)


def _item_types(annotation: Any, length: int) -> list[Any] | None:
    """The annotation of each of ``length`` items of a sequence type, or None if the length is wrong."""
    args = typing.get_args(annotation)
    if _is_fixed_tuple(annotation):
        if args == ((),):  # tuple[()]
            args = ()
        return list(args) if len(args) == length else None
    return [args[0] if args else Any] * length


def _key_value_types(annotation: Any) -> tuple[Any, Any]:
    """``(key annotation, value annotation)`` of a mapping type (``Any`` for a bare ``dict``)."""
    key_type, value_type = (typing.get_args(annotation) or (Any, Any))[:2]
    return key_type, value_type


# -- does a value fit ----------------------------------------------------------------------------------
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
    if any(annotation is scalar for scalar in _SCALARS):
        return _matches_scalar(value, annotation)
    if _is_sequence_type(annotation):
        return _matches_sequence(value, annotation)
    if _is_mapping_type(annotation):
        return _matches_mapping(value, annotation)
    if _container(annotation) is collections.abc.Callable:
        return callable(value)
    return _matches_class(value, annotation)


def _matches_scalar(value: Any, annotation: type) -> bool:
    """``bool``, ``int``, ``float`` or ``str``: a ``bool`` is none of the numbers; an ``int`` is a ``float``."""
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, str)


def _matches_sequence(value: Any, annotation: Any) -> bool:
    """A list or tuple (not a string) whose items fit their annotations."""
    if not isinstance(value, (list, tuple)):
        return False
    items = _item_types(annotation, len(value))
    return items is not None and all(matches(v, a) for v, a in zip(value, items, strict=True))


def _matches_mapping(value: Any, annotation: Any) -> bool:
    if not isinstance(value, Mapping):
        return False
    key_type, value_type = _key_value_types(annotation)
    return all(matches(k, key_type) and matches(v, value_type) for k, v in value.items())


def _matches_class(value: Any, annotation: Any) -> bool:
    """A class or a generic alias of one (``frozenset[int]``: only the container is checked)."""
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


# -- types and values in words -------------------------------------------------------------------------
def describe_type(annotation: Any) -> str:
    """``annotation`` in words: ``int``, ``one of 'ce', 'cw', 'dlr'``, ``list of float``, ``int or null``."""
    annotation = _strip(annotation)
    if annotation in (Any, object, inspect.Parameter.empty):
        return "any value"
    if annotation is None or annotation is _NONE_TYPE:
        return "null"
    arms = _union_arms(annotation)
    if arms is not None:
        return _describe_union(arms)
    if typing.get_origin(annotation) is Literal:
        choices = ", ".join("null" if c is None else repr(c) for c in typing.get_args(annotation))
        return f"one of {choices}" if len(typing.get_args(annotation)) > 1 else choices
    if _is_sequence_type(annotation):
        return _describe_sequence(annotation)
    if _is_mapping_type(annotation):
        key_type, value_type = _key_value_types(annotation)  # Any, Any for a bare dict
        if _strip(value_type) in (Any, object) and _strip(key_type) in (str, Any):
            return "mapping"
        return f"mapping of {_nested_words(key_type)} to {_nested_words(value_type)}"
    if _container(annotation) is collections.abc.Callable:
        return "callable"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _describe_union(arms: tuple[Any, ...]) -> str:
    """``'a' or 'b' or int or null``: the ``Literal`` arms merged into one list of choices, ``null`` last."""
    real = [_strip(arm) for arm in arms if arm is not _NONE_TYPE]
    literals = [arm for arm in real if typing.get_origin(arm) is Literal]
    others = [describe_type(arm) for arm in real if typing.get_origin(arm) is not Literal]
    if literals:
        choices = [choice for arm in literals for choice in typing.get_args(arm)]
        others.insert(0, describe_type(Literal[tuple(choices)]))
    words = " or ".join(others)
    return f"{words} or null" if len(real) < len(arms) else words


def _describe_sequence(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if not args:
        return "list"
    if _is_fixed_tuple(annotation):
        if len(set(args)) == 1:
            return f"list of {len(args)} {_nested_words(args[0])}"
        return f"list [{', '.join(describe_type(a) for a in args)}]"
    return f"list of {_nested_words(args[0])}"


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


# -- checking, with the message ------------------------------------------------------------------------
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
            key_type, value_type = _key_value_types(mappings[0])
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
    against that component's annotations. Keys are not checked here
    (see :func:`lyadeq_zoo.config.validate_component`).
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
