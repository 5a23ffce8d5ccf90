"""Component registries: one :class:`Registry` per kind, filled by our modules and by plugins.

A plugin is any installed distribution that declares an entry point in the group of a kind
(``lyadeq_zoo.solvers``, ``lyadeq_zoo.heads``, ... see :data:`ENTRY_POINT_GROUPS`). The entry point's
name is the registered name and its value the object to register. Discovery is lazy (on the first
lookup or listing of that kind) and happens once per process, so a plugin works without any import
by the user.

Clashes: a built-in (or user-registered) name wins over a plugin of the same name, unless the plugin
object sets ``__lyadeq_zoo_override__ = True``. A plugin that fails to import is left out of listings
with a warning, and asking for it by name raises :class:`PluginLoadError` chained to its cause.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from .errors import PluginLoadError, UnknownComponentError, unknown_name_message

KINDS: tuple[str, ...] = (
    "backbone",
    "cell",
    "solver",
    "backward",
    "lyapunov",
    "head",
    "attack",
    "objective",
    "dataset",
    "model",
)

# The public group names (docs/api.md): "lyapunov" stays singular, the others take an "s" ("backwards" too).
ENTRY_POINT_GROUPS: dict[str, str] = {
    kind: f"lyadeq_zoo.{kind if kind == 'lyapunov' else kind + 's'}" for kind in KINDS
}

OVERRIDE_ATTRIBUTE = "__lyadeq_zoo_override__"


@dataclass(frozen=True)
class _BrokenPlugin:
    name: str
    value: str
    distribution: str
    error: BaseException


class Registry:
    """Names -> components of one kind (solvers, heads, ...), with lazy entry-point plugins."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, Any] = {}
        self._origin: dict[str, str] = {}  # name -> "builtin" / "user" / "plugin:<dist>"
        self._broken: dict[str, _BrokenPlugin] = {}
        self._discovered = False

    # -- registration -------------------------------------------------------------------------
    def register(
        self, name: str | None = None, obj: Any = None, *, override: bool = False
    ) -> Callable[[Any], Any] | Any:
        """Register ``obj`` under ``name``; without ``obj`` this returns a decorator.

        Registering a name twice is an error unless ``override=True``.
        """

        def add(target: Any) -> Any:
            key = name or getattr(target, "__name__", None)
            if not key:
                raise ValueError(f"cannot infer a {self.kind} name for {target!r}; pass name=...")
            if key in self._entries and not override and self._entries[key] is not target:
                raise ValueError(
                    f"{self.kind} {key!r} is already registered (by {self._origin[key]}); "
                    "pass override=True to replace it"
                )
            self._entries[key] = target
            self._origin[key] = "builtin" if _is_builtin(target) else "user"
            return target

        return add if obj is None else add(obj)

    # -- plugins ------------------------------------------------------------------------------
    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for ep in metadata.entry_points(group=self.group):
            dist = ep.dist.name if getattr(ep, "dist", None) is not None else "unknown distribution"
            try:
                target = ep.load()
            except Exception as err:  # noqa: BLE001 - any failure of third-party code is reported
                self._broken[ep.name] = _BrokenPlugin(ep.name, ep.value, dist, err)
                continue
            if ep.name in self._entries and not getattr(target, OVERRIDE_ATTRIBUTE, False):
                if self._entries[ep.name] is not target:
                    warnings.warn(
                        f"plugin {self.kind} {ep.name!r} from {dist!r} is ignored: the name is taken by "
                        f"{self._origin[ep.name]}. Set {OVERRIDE_ATTRIBUTE} = True on the plugin object "
                        "to replace it.",
                        stacklevel=3,
                    )
                continue
            self._entries[ep.name] = target
            self._origin[ep.name] = f"plugin:{dist}"

    def _warn_broken(self) -> None:
        for broken in self._broken.values():
            warnings.warn(
                f"{self.kind} plugin {broken.name!r} ({broken.value}) from {broken.distribution!r} failed "
                f"to load and is not listed: {type(broken.error).__name__}: {broken.error}",
                stacklevel=3,
            )

    # -- lookup -------------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        """The component registered as ``name``; unknown names list the registered ones."""
        self._discover()
        if name in self._entries:
            return self._entries[name]
        if name in self._broken:
            broken = self._broken[name]
            raise PluginLoadError(
                f"{self.kind} {name!r} comes from plugin {broken.value!r} of distribution "
                f"{broken.distribution!r}, which failed to load: "
                f"{type(broken.error).__name__}: {broken.error}"
            ) from broken.error
        raise UnknownComponentError(unknown_name_message(self.kind, name, sorted(self._entries)))

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching the fnmatch ``pattern``."""
        self._discover()
        self._warn_broken()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def origin(self, name: str) -> str:
        """Where ``name`` came from: ``builtin``, ``user`` or ``plugin:<distribution>``."""
        self.get(name)
        return self._origin[name]

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry(kind={self.kind!r}, group={self.group!r}, n={len(self._entries)})"


def _is_builtin(obj: Any) -> bool:
    module = getattr(obj, "__module__", "") or ""
    return module == "lyadeq_zoo" or module.startswith("lyadeq_zoo.")


REGISTRIES: dict[str, Registry] = {kind: Registry(kind, ENTRY_POINT_GROUPS[kind]) for kind in KINDS}


def registry(kind: str) -> Registry:
    """The registry of ``kind``; an unknown kind lists the valid ones."""
    try:
        return REGISTRIES[kind]
    except KeyError:
        raise UnknownComponentError(unknown_name_message("component kind", kind, list(KINDS))) from None


def register(kind: str, name: str | None = None, *, override: bool = False) -> Callable[[Any], Any]:
    """Decorator: ``@lz.register("solver", "my_solver")`` registers a function or class."""
    return registry(kind).register(name, override=override)


def get_component(kind: str, name: str) -> Any:
    """The registered component ``name`` of ``kind`` (plugins included)."""
    return registry(kind).get(name)


def list_components(kind: str, pattern: str = "*") -> list[str]:
    """Sorted names of ``kind`` that match the fnmatch ``pattern`` (plugins included)."""
    return registry(kind).names(pattern)


def build_component(kind: str, spec: dict[str, Any], **extra: Any) -> Any:
    """Call the component named by ``spec["type"]`` with the rest of ``spec`` plus ``extra``.

    ``extra`` holds values the parent supplies (e.g. the feature width); a key given both in the
    config and by the parent is an error, since one of the two would be silently ignored.
    """
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"a {kind} spec must be a mapping with a 'type' key, got {spec!r}")
    options = {k: v for k, v in spec.items() if k != "type"}
    clash = sorted(set(options) & set(extra))
    if clash:
        raise ValueError(
            f"{kind} {spec['type']!r}: key(s) {clash} are set by the enclosing model and must not "
            "appear in the config"
        )
    return get_component(kind, spec["type"])(**options, **extra)


def _make_kind_decorator(kind: str) -> Callable[..., Callable[[Any], Any]]:
    def decorator(name: str | None = None, *, override: bool = False) -> Callable[[Any], Any]:
        return register(kind, name, override=override)

    decorator.__name__ = f"register_{kind}"
    decorator.__doc__ = f'Decorator: ``@register_{kind}("name")`` registers a {kind}.'
    return decorator


register_backbone = _make_kind_decorator("backbone")
register_cell = _make_kind_decorator("cell")
register_solver = _make_kind_decorator("solver")
register_backward = _make_kind_decorator("backward")
register_lyapunov = _make_kind_decorator("lyapunov")
register_head = _make_kind_decorator("head")
register_attack = _make_kind_decorator("attack")
register_objective = _make_kind_decorator("objective")
register_dataset = _make_kind_decorator("dataset")
register_model = _make_kind_decorator("model")
