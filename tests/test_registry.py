"""Registry behaviour: registration, lookup, listing with patterns, errors with the closest match."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import lyadeq_zoo as lz
from lyadeq_zoo.errors import UnknownComponentError, closest_match
from lyadeq_zoo.registry import Registry


def fresh_registry() -> Registry:
    # A group no distribution declares, so discovery finds nothing.
    return Registry("solver", "lyadeq_zoo.tests_nothing_here")


def test_register_get_and_list_with_fnmatch_patterns() -> None:
    reg = fresh_registry()

    @reg.register("alpha_one")
    def alpha_one() -> int:
        return 1

    reg.register("alpha_two", lambda: 2)
    reg.register("beta", lambda: 3)
    assert reg.get("alpha_one") is alpha_one
    assert reg.names() == ["alpha_one", "alpha_two", "beta"]
    assert reg.names("alpha_*") == ["alpha_one", "alpha_two"]
    assert reg.names("*_t?o") == ["alpha_two"]
    assert reg.origin("alpha_one") == "user"  # defined outside the lyadeq_zoo package


def test_unknown_name_lists_registered_names_and_closest_match() -> None:
    reg = fresh_registry()
    for name in ("anderson", "broyden", "naive"):
        reg.register(name, lambda: None)
    with pytest.raises(UnknownComponentError) as info:
        reg.get("andersen")
    message = str(info.value)
    assert "unknown solver 'andersen'" in message
    assert "anderson, broyden, naive" in message
    assert "Did you mean 'anderson'?" in message
    assert isinstance(info.value, KeyError)


def test_unknown_name_without_close_match_has_no_guess() -> None:
    reg = fresh_registry()
    reg.register("anderson", lambda: None)
    with pytest.raises(UnknownComponentError) as info:
        reg.get("zzzzzz")
    assert "Did you mean" not in str(info.value)
    assert "Registered: anderson." in str(info.value)


def test_duplicate_registration_needs_override() -> None:
    reg = fresh_registry()
    reg.register("x", lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x", lambda: 2)
    replacement = reg.register("x", lambda: 3, override=True)
    assert reg.get("x") is replacement


def test_unknown_kind_lists_kinds_with_closest_match() -> None:
    with pytest.raises(UnknownComponentError) as info:
        lz.list_components("solvr")
    assert "Did you mean 'solver'?" in str(info.value)
    for kind in lz.KINDS:
        assert kind in str(info.value)


def test_every_kind_has_a_registry_and_builtins_are_marked() -> None:
    assert set(lz.KINDS) == {
        "backbone", "cell", "solver", "backward", "lyapunov", "head", "attack", "objective", "dataset", "model",
    }
    for kind in lz.KINDS:
        names = lz.list_components(kind)
        assert names == sorted(names)
    for name in lz.list_components("dataset"):
        assert lz.registry.registry("dataset").origin(name) == "builtin"


def test_build_component_refuses_keys_the_parent_supplies(restore_registries: Callable[[], None]) -> None:
    reg_name = "test_builder_width"

    @lz.register("cell", reg_name, override=True)
    def builder(width: int, gain: float = 1.0) -> tuple[int, float]:
        return width, gain

    assert lz.build_component("cell", {"type": reg_name, "gain": 2.0}, width=8) == (8, 2.0)
    with pytest.raises(ValueError, match="set by the enclosing model"):
        lz.build_component("cell", {"type": reg_name, "width": 4}, width=8)


def test_closest_match_uses_substrings_for_short_prefixes() -> None:
    assert closest_match("anders", ["anderson", "broyden"]) == "anderson"
    assert closest_match("qqq", ["anderson", "broyden"]) is None


def test_restore_registries_undoes_registrations_in_every_kind(restore_registries: Callable[[], None]) -> None:
    before = {kind: lz.list_components(kind) for kind in lz.KINDS}
    for kind in lz.KINDS:
        lz.register(kind, f"restore_test_{kind}")(lambda: None)
    lz.registry.registry("solver")._discovered = False  # as if plugins were never looked up
    restore_registries()
    assert {kind: lz.list_components(kind) for kind in lz.KINDS} == before
    assert lz.registry.registry("solver")._discovered
