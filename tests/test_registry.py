"""The generic decorator registry (ctr_eval.registry)."""
from __future__ import annotations

import pytest

from ctr_eval.registry import Registry, UnknownNameError


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


class _Base:
    pass


def _typed():
    reg = Registry("gadget", base=_Base)

    @reg.register("plain", flavour="sweet")
    class Plain(_Base):
        def __init__(self, size: int = 1, colour: str = "red"):
            self.size, self.colour = size, colour

    @reg.register("free")
    class Free(_Base):
        def __init__(self, **options):
            self.options = options

    return reg, Plain, Free


def test_register_sets_name_and_attributes():
    reg, plain, free = _typed()
    assert plain.name == "plain" and plain.flavour == "sweet" and free.name == "free"


def test_register_refuses_a_class_outside_the_base():
    reg, _, _ = _typed()
    with pytest.raises(TypeError, match="a gadget must be a subclass of _Base"):
        @reg.register("stray")
        class Stray:
            pass
    assert "stray" not in reg


def test_create_from_name_mapping_or_instance():
    reg, plain, free = _typed()
    made = reg.create({"name": "plain", "size": 3}, colour="blue")
    assert isinstance(made, plain) and (made.size, made.colour) == (3, "blue")
    assert reg.create("plain").size == 1
    assert reg.create(made) is made
    assert reg.create("free", anything=2).options == {"anything": 2}  # **options: the class checks


def test_create_refusals_name_what_is_valid():
    reg, plain, _ = _typed()
    with pytest.raises(TypeError, match=r"gadget 'plain' got unknown parameter\(s\) \['sise'\]; "
                                        r"valid parameters: \['size', 'colour'\]"):
        reg.create("plain", sise=2)
    with pytest.raises(ValueError, match=r"has no 'name'.*one of \['free', 'plain'\]"):
        reg.create({"size": 2})
    with pytest.raises(TypeError, match="gadget spec must be a name, a mapping with 'name' or an instance of _Base"):
        reg.create(3)
    with pytest.raises(TypeError, match=r"cannot apply parameters \['size'\]"):
        reg.create(plain(), size=2)
    with pytest.raises(UnknownNameError, match="Did you mean 'plain'"):
        reg.create("plian")
