"""One component registry: YAML ``type:`` names → classes (the PaddleSeg ``ComponentManager`` idea).

Each kind has its own manager (``MODELS``, ``DATASETS`` …) so that listings and errors stay
readable, but names are unique across all of them: a nested ``{type: X, ...}`` dict anywhere in a
config is looked up in every manager, which is what lets a model config nest an encoder, a head
and a loss without saying which registry each one lives in.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterable


class ConfigError(ValueError):
    """A config is wrong; the message names the YAML file/path and the problem."""


class ComponentManager:
    """A named table of classes (or factory functions) that YAML can refer to by ``type``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._components: dict[str, Callable] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._components

    def __getitem__(self, name: str) -> Callable:
        return self._components[name]

    def __len__(self) -> int:
        return len(self._components)

    @property
    def names(self) -> list[str]:
        return sorted(self._components)

    def add_component(self, component: Callable | None = None, *, name: str | None = None):
        """Register ``component``; usable as ``@MANAGER.add_component`` or with ``name=``."""

        def register(obj: Callable) -> Callable:
            key = name or obj.__name__
            for manager in _ALL_MANAGERS:
                if key in manager._components and manager._components[key] is not obj:
                    raise KeyError(f"component name {key!r} is already registered in {manager.kind}")
            self._components[key] = obj
            return obj

        if component is None:
            return register
        return register(component)

    def __repr__(self) -> str:
        return f"ComponentManager({self.kind!r}, {self.names})"


_ALL_MANAGERS: list[ComponentManager] = []


def _manager(kind: str) -> ComponentManager:
    manager = ComponentManager(kind)
    _ALL_MANAGERS.append(manager)
    return manager


MODELS = _manager("models")
ENCODERS = _manager("encoders")
HEADS = _manager("heads")
DATASETS = _manager("datasets")
TRANSFORMS = _manager("transforms")
LOSSES = _manager("losses")
METRICS = _manager("metrics")
OPTIMIZERS = _manager("optimizers")
SCHEDULERS = _manager("schedulers")


def lookup(name: str, managers: Iterable[ComponentManager] | None = None, where: str = "") -> Callable:
    """Find ``name`` in ``managers`` (default: all); unknown names list close matches."""
    _import_components()
    managers = list(managers) if managers is not None else _ALL_MANAGERS
    for manager in managers:
        if name in manager:
            return manager[name]
    known = sorted({n for m in managers for n in m.names})
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    kinds = "/".join(m.kind for m in managers)
    raise ConfigError(f"{where or '<config>'}: unknown {kinds} type {name!r}{hint}")


def _check_signature(factory: Callable, kwargs: dict[str, Any], where: str) -> None:
    """Report unexpected or missing keywords before calling, with the YAML path."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    params = sig.parameters
    takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unexpected = sorted(set(kwargs) - accepted)
    if unexpected and not takes_var_kw:
        hints = []
        for key in unexpected:
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"{where}: unexpected keyword(s) {', '.join(hints)} for {factory.__name__}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )
    missing = [
        n
        for n, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is p.empty
        and n not in kwargs
        and n != "self"
    ]
    if missing:
        raise ConfigError(f"{where}: missing required keyword(s) {', '.join(map(repr, missing))} for {factory.__name__}")


def build(cfg: Any, managers: Iterable[ComponentManager] | ComponentManager | None = None, where: str = "", **extra: Any) -> Any:
    """Build a component from a config value.

    A dict with ``type`` becomes ``Class(**rest)``; nested dicts with ``type`` and lists of them
    are built first (depth first). Other values come back unchanged, except a dict without
    ``type`` when ``managers`` are given: the caller wants a component, so that is an error.
    ``extra`` keyword arguments are passed to the top-level call only (for run-time objects such
    as a model's parameters).
    """
    if isinstance(managers, ComponentManager):
        managers = [managers]
    if isinstance(cfg, list):
        return [build(item, None, f"{where}[{i}]") for i, item in enumerate(cfg)]
    if not isinstance(cfg, dict):
        return cfg
    if "type" not in cfg:
        if managers is not None:
            _missing_type(managers, where)
        return {k: build(v, None, f"{where}.{k}" if where else k) for k, v in cfg.items()}
    cfg = dict(cfg)
    name = cfg.pop("type")
    factory = lookup(name, managers, where)
    kwargs = {k: build(v, None, f"{where}.{k}" if where else k) for k, v in cfg.items()}
    kwargs.update(extra)
    _check_signature(factory, kwargs, where or name)
    return factory(**kwargs)


def _missing_type(managers: list[ComponentManager], where: str) -> None:
    """Typically a ``-o key={...}`` override, which replaces the whole dict: say so, rather than
    let a plain dict fail further on as the wrong kind of object."""
    _import_components()
    known = ", ".join(sorted({n for m in managers for n in m.names}))
    key = where.rsplit(": ", 1)[-1] or "<key>"
    raise ConfigError(f"{where or '<config>'} has no 'type' (e.g. {known}); note that -o {key}={{...}} replaces the "
                      f"whole dict, so give every key there or set single keys with -o {key}.<key>=<value>")


_IMPORTED = False


def _import_components() -> None:
    """Import the modules that register components, once, so that YAML can name any of them."""
    global _IMPORTED
    if _IMPORTED:
        return
    _IMPORTED = True
    import importlib

    for module in _COMPONENT_MODULES:
        importlib.import_module(module)


# Modules whose import registers components. Kept here so that the registry is the one place
# that knows where components live.
_COMPONENT_MODULES: list[str] = [
    "medseg.models",
    "medseg.data.dataset",
    "medseg.data.embeddings",
    "medseg.data.transforms",
    "medseg.data.robust_transforms",
    "medseg.engine.losses",
    "medseg.engine.metrics",
    "medseg.engine.optim",
    "medseg.data.mixing",
    "medseg.semi.dataset",
    "medseg.semi.noise",
]
