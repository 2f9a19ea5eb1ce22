"""The generic decorator registry (mmembed._registry)."""
from __future__ import annotations

import pytest

from mmembed._registry import Registry, UnknownNameError


def _make():
    reg = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        pass

    @reg.register()
    class Beta:
        name = "beta"

    return reg, Alpha, Beta


def test_register_and_get_by_name_or_class_attribute():
    reg, alpha, beta = _make()
    assert reg.get("alpha") is alpha
    assert reg.get("beta") is beta
    assert reg.names() == ["alpha", "beta"]
    assert list(reg) == ["alpha", "beta"]
    assert "alpha" in reg and "gamma" not in reg
    assert len(reg) == 2


def test_unknown_name_lists_known_names_and_nearest_match():
    reg, _, _ = _make()
    with pytest.raises(UnknownNameError, match=r"unknown widget 'alpah'\. Did you mean 'alpha'\? Known widgets: alpha, beta"):
        reg.get("alpah")
    # far from everything: no suggestion, still the list
    with pytest.raises(ValueError, match=r"unknown widget 'zzzzzz'\. Known widgets: alpha, beta$"):
        reg.get("zzzzzz")


def test_empty_registry_message():
    with pytest.raises(UnknownNameError, match=r"Known things: \(none registered\)"):
        Registry("thing").get("x")


def test_name_must_be_a_string():
    reg, _, _ = _make()
    with pytest.raises(TypeError, match="widget name must be a str, got int: 3"):
        reg.get(3)


def test_duplicate_name_rejected_but_same_class_reregistration_allowed():
    reg, alpha, _ = _make()
    assert reg.register("alpha")(alpha) is alpha  # same object again: fine (module reload)
    with pytest.raises(ValueError, match="widget name 'alpha' is already registered"):
        @reg.register("alpha")
        class Other:
            pass


def test_class_without_name_rejected():
    reg = Registry("widget")
    with pytest.raises(ValueError, match="give a non-empty name"):
        @reg.register()
        class Nameless:
            pass
