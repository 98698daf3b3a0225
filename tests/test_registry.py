"""Registry: build by `type`, nested builds, and errors that name the YAML path."""

import pytest

from medseg import registry
from medseg.config import Config
from medseg.registry import ComponentManager, ConfigError, build

TOY = ComponentManager("toy")  # the test's own kind: its components stay out of the real managers


@pytest.fixture(autouse=True)
def toy_manager():
    registry._ALL_MANAGERS.append(TOY)  # found by builds that name no manager, as the real ones are
    yield
    registry._ALL_MANAGERS.remove(TOY)


@TOY.add_component(name="_ToyLeaf")
class ToyLeaf:
    def __init__(self, value: int, scale: float = 1.0):
        self.value = value * scale


@TOY.add_component(name="_ToyTree")
class ToyTree:
    def __init__(self, left, right=None, leaves=()):
        self.left, self.right, self.leaves = left, right, list(leaves)


def test_build_passes_remaining_keys_as_kwargs():
    leaf = build({"type": "_ToyLeaf", "value": 3, "scale": 2.0})
    assert isinstance(leaf, ToyLeaf) and leaf.value == 6.0


def test_nested_dicts_and_lists_are_built_depth_first():
    tree = build({
        "type": "_ToyTree",
        "left": {"type": "_ToyLeaf", "value": 1},
        "right": {"plain": {"type": "_ToyLeaf", "value": 2}},
        "leaves": [{"type": "_ToyLeaf", "value": 3}, 4],
    })
    assert isinstance(tree.left, ToyLeaf) and tree.left.value == 1
    assert isinstance(tree.right["plain"], ToyLeaf) and tree.right["plain"].value == 2
    assert isinstance(tree.leaves[0], ToyLeaf) and tree.leaves[1] == 4


def test_unknown_type_lists_close_matches_and_names_the_path():
    with pytest.raises(ConfigError) as err:
        build({"type": "_ToyTree", "left": {"type": "_ToyLeef", "value": 1}}, where="exp.yml: model")
    message = str(err.value)
    assert "exp.yml: model.left" in message and "_ToyLeef" in message and "_ToyLeaf" in message


def test_unexpected_and_missing_keywords_are_reported():
    with pytest.raises(ConfigError) as err:
        build({"type": "_ToyLeaf", "value": 1, "scal": 2}, where="exp.yml: x")
    assert "unexpected" in str(err.value) and "'scal'" in str(err.value) and "'scale'" in str(err.value)
    with pytest.raises(ConfigError, match="missing required keyword.*'value'"):
        build({"type": "_ToyLeaf"}, where="exp.yml: x")


def test_lookup_restricted_to_one_manager():
    with pytest.raises(ConfigError, match="unknown models type"):
        build({"type": "_ToyLeaf", "value": 1}, registry.MODELS)
    assert isinstance(build({"type": "_ToyLeaf", "value": 1}, TOY), ToyLeaf)


def test_names_are_unique_across_managers():
    other = ComponentManager("scratch")
    registry._ALL_MANAGERS.append(other)
    try:
        with pytest.raises(KeyError, match="already registered"):
            registry.MODELS.add_component(lambda: None, name="_ToyLeaf")
    finally:
        registry._ALL_MANAGERS.remove(other)


def test_config_build_names_the_file(tmp_path):
    path = tmp_path / "exp.yml"
    path.write_text("thing: {type: _ToyLeaf, value: 2, bogus: 1}\n")
    with pytest.raises(ConfigError) as err:
        Config(str(path)).build("thing")
    assert str(path) in str(err.value) and "thing" in str(err.value)
    path.write_text("thing: {type: _ToyLeaf, value: 2}\n")
    assert Config(str(path)).build("thing").value == 2
