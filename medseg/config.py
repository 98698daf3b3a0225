"""The one config loader: YAML (``yaml.safe_load`` only) with ``_base_`` inheritance and
``-o key=value`` overrides. Nothing else in the package parses YAML."""

from __future__ import annotations

import copy
import os
import re
from typing import Any, Iterable

import yaml

from medseg.data.neighbours import resolve_config as resolve_neighbours
from medseg.registry import ConfigError, build

BASE_KEY = "_base_"

# PyYAML follows YAML 1.1, where `1e-3` (no dot) is a string; users write learning rates that way.
_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$")


def _safe_load(text: str):
    """``yaml.safe_load`` plus YAML 1.2 floats such as ``1e-3``."""
    return _coerce_floats(yaml.safe_load(text))


def _coerce_floats(node):
    if isinstance(node, dict):
        return {k: _coerce_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_coerce_floats(v) for v in node]
    if isinstance(node, str) and _FLOAT_WITHOUT_DOT.match(node):
        return float(node)
    return node


NO_INHERIT = "_inherited_"


def merge(base: dict, child: dict) -> dict:
    """Recursive merge: dicts merge key by key, the child wins, lists and scalars are replaced.

    A child dict with ``_inherited_: false`` replaces the base's dict instead (as in PaddleSeg):
    e.g. a ``train_dataset`` of another ``type`` whose keywords the base's must not leak into.
    """
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and value.get(NO_INHERIT) is False:
            out[key] = strip_no_inherit(value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = strip_no_inherit(value)
    return out


def strip_no_inherit(node):
    """A deep copy of ``node`` without ``_inherited_`` markers (they mean nothing once merged)."""
    if isinstance(node, dict):
        return {k: strip_no_inherit(v) for k, v in node.items() if k != NO_INHERIT}
    if isinstance(node, list):
        return [strip_no_inherit(v) for v in node]
    return copy.deepcopy(node)


def load_yaml(path: str, _chain: tuple[str, ...] = ()) -> dict:
    """Load ``path`` and resolve its ``_base_`` chain (a path or a list, relative to the file)."""
    path = os.path.abspath(path)
    if path in _chain:
        cycle = " -> ".join(os.path.relpath(p) for p in (*_chain, path))
        raise ConfigError(f"{_chain[-1]}: _base_ includes itself ({cycle})")
    if not os.path.isfile(path):
        origin = f"{_chain[-1]}: _base_ " if _chain else ""
        raise ConfigError(f"{origin}config file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        try:
            data = _safe_load(fh.read()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        merged = merge(merged, load_yaml(base_path, (*_chain, path)))
    return merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"-o {text!r}: expected key=value (for example -o train.iters=100)")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".")]
    if not all(keys):
        raise ConfigError(f"-o {text!r}: empty key segment in {key!r}")
    try:
        value = _safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"-o {text!r}: value is not valid YAML: {err}") from err
    return keys, value


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply ``-o`` overrides in order; intermediate mappings are created as needed."""
    cfg = copy.deepcopy(cfg)
    for text in overrides or ():
        keys, value = parse_override(text)
        node = cfg
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"-o {text!r}: {where} is a {type(child).__name__}, not a mapping")
            node = child
        node[keys[-1]] = value
    return cfg


class Config:
    """A resolved experiment: the merged dict plus where it came from (for error messages)."""

    def __init__(self, path: str | None = None, overrides: Iterable[str] = (), data: dict | None = None):
        self.path = path
        self.overrides = list(overrides or ())
        base = load_yaml(path) if path else {}
        if data:
            base = merge(base, data)
        self.dict = apply_overrides(base, self.overrides)
        resolve_neighbours(self.dict, path or "<config>")  # the one ``neighbours: k`` reaches every dataset and encoder

    def __getitem__(self, key: str) -> Any:
        return self.dict[key]

    def __contains__(self, key: str) -> bool:
        return key in self.dict

    def get(self, dotted: str, default: Any = None) -> Any:
        """``cfg.get("train.iters", 100)``: a dotted lookup with a default."""
        node: Any = self.dict
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    def section(self, dotted: str, required: bool = True) -> Any:
        value = self.get(dotted, None)
        if value is None and required:
            raise ConfigError(f"{self.path or '<config>'}: missing section {dotted!r}")
        return value

    def build(self, dotted: str, managers=None, **extra: Any) -> Any:
        """Build the component at ``dotted`` (errors name the file and the YAML path)."""
        where = f"{self.path or '<config>'}: {dotted}"
        return build(copy.deepcopy(self.section(dotted)), managers, where, **extra)

    def dump(self) -> str:
        return yaml.safe_dump(self.dict, sort_keys=False)

    def __repr__(self) -> str:
        return f"Config({self.path!r})\n{self.dump()}"
