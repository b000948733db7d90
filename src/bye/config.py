"""``params.yaml``: one section per stage; every knob of the library has a key there."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``3e-4`` as the number YAML 1.2 (and DVC, through ruamel.yaml) reads,
    not as the string YAML 1.1 makes of an exponent without a dot."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def parse_yaml(text: str) -> Any:
    """YAML text as data (safe loading; ``3e-4`` is a float)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_params(path: str | Path | None = None) -> dict:
    """The parsed params file, or ``{}`` when none is given and none is in the working folder."""
    candidate = Path(path) if path else DEFAULT_PARAMS
    if not candidate.exists():
        if path:
            raise FileNotFoundError(f"params file {candidate} not found")
        return {}
    data = parse_yaml(candidate.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{candidate}: expected a mapping of sections")
    return data


def build(cls, values: dict | None, **overrides):
    """A dataclass from a params section plus non-None overrides; unknown keys are an error."""
    values = dict(values or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown keys for {cls.__name__}: {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; other values are kept as they are."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
