"""Typed configs from YAML files and ``key=value`` overrides; an unknown key is an error with a suggestion."""

from __future__ import annotations

import ast
import dataclasses
from difflib import get_close_matches
from pathlib import Path
from typing import Any, TypeVar

import yaml

from yoloslim.errors import UserError
from yoloslim.safe_parse import load_yaml_file, yaml_error_reason

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``UserError`` naming the closest key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{source}: unknown key '{key}'{hint}")
    kwargs = {}
    for key, value in data.items():
        default = getattr(cls(), key) if _has_defaults(cls) else None
        if isinstance(default, bool) and not isinstance(value, bool):
            raise UserError(f"{source}: '{key}' must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise UserError(f"{source}: '{key}' must be a number, got {value!r}")
            value = type(default)(value) if isinstance(default, float) else value
        kwargs[key] = value
    return cls(**kwargs)


def load_yaml_config(cls: type[T], path: str | Path | None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults of ``cls``, updated from a YAML file, then from ``overrides``."""
    data = read_yaml_mapping(path, "config")
    data.update(overrides or {})
    return from_dict(cls, data, source=str(path) if path else "config")


def read_yaml_mapping(path: str | Path | None, what: str) -> dict[str, Any]:
    """The ``key: value`` mapping of a YAML file (empty for no file); ``what`` names it in errors."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such {what} file")
    try:
        loaded = load_yaml_file(p) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({yaml_error_reason(e)})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{p}: expected a mapping of key: value")
    return loaded


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr0=0.02", "mosaic=0"]`` -> ``{"lr0": 0.02, "mosaic": 0}`` (values via ``ast.literal_eval``)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()
    return out


def _has_defaults(cls: type) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(cls))
