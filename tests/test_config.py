"""Config loader: _base_ inheritance, -o overrides, and errors that name the file and the path."""

import os
import textwrap

import pytest

from medseg.config import Config, apply_overrides, load_yaml, merge, parse_override
from medseg.registry import ConfigError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_merge_child_wins_dicts_merge_lists_replace():
    base = {"a": {"x": 1, "y": [1, 2, 3]}, "b": 1}
    child = {"a": {"y": [9], "z": 3}, "c": 4}
    assert merge(base, child) == {"a": {"x": 1, "y": [9], "z": 3}, "b": 1, "c": 4}
    assert base == {"a": {"x": 1, "y": [1, 2, 3]}, "b": 1}, "merge must not mutate its inputs"


def test_inherited_false_replaces_the_base_dict(tmp_path):
    write(tmp_path, "base.yml", """
        train_dataset: {type: A, root: r, split: s}
        model: {type: M, width: 8}
        """)
    path = write(tmp_path, "child.yml", """
        _base_: base.yml
        train_dataset:
          _inherited_: false
          type: Mixed
          datasets: [{type: A, root: r, extra: {_inherited_: false, k: 1}}]
        model: {width: 4}
        """)
    cfg = load_yaml(path)
    assert cfg["train_dataset"] == {"type": "Mixed", "datasets": [{"type": "A", "root": "r", "extra": {"k": 1}}]}
    assert cfg["model"] == {"type": "M", "width": 4}


def test_base_chain_is_resolved_relative_to_each_file(tmp_path):
    write(tmp_path, "_base_/common.yml", """
        train: {iters: 100, lr: 0.1, augs: [a, b]}
        model: {type: M, depth: 2}
    """)
    write(tmp_path, "_base_/mid.yml", """
        _base_: common.yml
        train: {lr: 0.01}
    """)
    path = write(tmp_path, "exp.yml", """
        _base_: _base_/mid.yml
        train: {augs: [c]}
        model: {depth: 4}
    """)
    cfg = load_yaml(path)
    assert cfg == {"train": {"iters": 100, "lr": 0.01, "augs": ["c"]}, "model": {"type": "M", "depth": 4}}


def test_multiple_bases_merge_in_order(tmp_path):
    write(tmp_path, "a.yml", "x: 1\ny: 1\n")
    write(tmp_path, "b.yml", "y: 2\nz: 2\n")
    path = write(tmp_path, "c.yml", "_base_: [a.yml, b.yml]\nz: 3\n")
    assert load_yaml(path) == {"x": 1, "y": 2, "z": 3}


def test_missing_base_names_both_files(tmp_path):
    path = write(tmp_path, "exp.yml", "_base_: nope.yml\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    assert "exp.yml" in str(err.value) and "nope.yml" in str(err.value)


def test_self_including_base_is_reported(tmp_path):
    write(tmp_path, "a.yml", "_base_: b.yml\n")
    path = write(tmp_path, "b.yml", "_base_: a.yml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_yaml(path)


def test_non_mapping_and_invalid_yaml_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(write(tmp_path, "list.yml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(write(tmp_path, "bad.yml", "a: [1, 2\n"))


def test_yaml_tags_cannot_construct_python_objects(tmp_path):
    path = write(tmp_path, "evil.yml", "a: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError):
        load_yaml(path)


def test_overrides_parse_values_as_yaml_and_create_paths():
    cfg = apply_overrides({"train": {"iters": 10}}, ["train.iters=20", "train.lr=1e-3", "model.encoder.type=ResNet18", "x=[1, 2]", "flag=true"])
    assert cfg["train"] == {"iters": 20, "lr": 1e-3}
    assert cfg["model"] == {"encoder": {"type": "ResNet18"}}
    assert cfg["x"] == [1, 2] and cfg["flag"] is True
    assert parse_override("a.b=hello=world") == (["a", "b"], "hello=world")


def test_override_errors():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.iters")
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides({"train": {"iters": 10}}, ["train.iters.x=1"])
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("a..b=1")


def test_config_applies_overrides_after_base(tmp_path):
    write(tmp_path, "base.yml", "train: {iters: 5}\n")
    path = write(tmp_path, "exp.yml", "_base_: base.yml\ntrain: {iters: 7}\n")
    cfg = Config(path, ["train.iters=9"])
    assert cfg.get("train.iters") == 9
    assert cfg.get("train.missing", "d") == "d"
    with pytest.raises(ConfigError, match="missing section 'model'"):
        cfg.section("model")


def test_shipped_configs_load_and_build_their_model():
    """Every experiment config in config/ resolves its _base_ chain and builds its model."""
    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "config")
    paths = [os.path.join(root, n) for n in sorted(os.listdir(root)) if n.endswith(".yml")]
    for path in paths:
        cfg = Config(path)
        assert isinstance(cfg.dict, dict) and cfg.dict, path


def test_exponent_floats_without_dot_are_numbers(tmp_path):
    """YAML 1.1 reads `1e-3` as a string; a learning rate written so must still be a float."""
    cfg = Config(write(tmp_path, "lr.yml", "optimizer: {learning_rate: 1e-3, name: 1e3x}\n"))
    assert cfg.get("optimizer.learning_rate") == pytest.approx(0.001)
    assert cfg.get("optimizer.name") == "1e3x"
