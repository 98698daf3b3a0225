"""``export.json``: what a consumer of an exported model needs besides the graphs."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from medseg.utils.atomic import atomic_write_json

EXPORT_META = "export.json"
FORMAT = "medseg-paddle-inference"
FORMAT_VERSION = 1
# Graph name → file prefix inside the export folder (``<prefix>.json`` + ``<prefix>.pdiparams``).
GRAPHS = {"series": "model", "encoder": "encoder", "head": "head"}


class ExportError(ValueError):
    """An export folder is missing, incomplete or does not fit; the message names the path."""


@dataclass(frozen=True)
class ExportMeta:
    channels: int
    height: int | None  # None: the transforms keep the crop size (no Resize)
    width: int | None
    feature_dim: int
    labels: list[str]
    windows: str  # CENTRE/WIDTH,... as prepare's --windows
    transforms: list[dict[str, Any]]  # the eval transforms the model was exported with
    sequential: bool
    chunk_size: int | None
    checkpoint: str
    config: str | None
    paddle_version: str
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


def write_meta(folder: str, meta: ExportMeta) -> None:
    atomic_write_json(os.path.join(folder, EXPORT_META), asdict(meta))


def is_export_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, EXPORT_META))


def graph_files(folder: str, name: str) -> tuple[str, str]:
    """``(program file, params file)`` of one graph; PIR saves ``.json``, the legacy IR ``.pdmodel``."""
    prefix = os.path.join(folder, GRAPHS[name])
    for program in (f"{prefix}.json", f"{prefix}.pdmodel"):
        if os.path.isfile(program):
            params = f"{prefix}.pdiparams"
            if not os.path.isfile(params):
                raise ExportError(f"{params}: parameters of the {name} graph are missing")
            return program, params
    raise ExportError(f"{prefix}.json: the {name} graph is missing (incomplete export?)")


def read_meta(folder: str) -> ExportMeta:
    path = os.path.join(folder, EXPORT_META)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ExportError(f"{path}: not found (not an exported model folder)") from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable ({exc})") from None
    if data.get("format") != FORMAT or int(data.get("format_version", -1)) > FORMAT_VERSION:
        raise ExportError(f"{path}: format {data.get('format')!r} v{data.get('format_version')} is not {FORMAT} v<={FORMAT_VERSION}")
    try:
        return ExportMeta(**data)
    except TypeError as exc:
        raise ExportError(f"{path}: unexpected content ({exc})") from None
