"""Generic parsing of the run config: TOML values coerced to the section dataclasses and back.

Parsing follows the fields of the dataclasses (their annotations, ``Literal`` choices and registry
metadata), so the allowed values in error messages and in the generated reference are the ones the
code checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args, get_origin

from gnflow.config._sections import SECTIONS, RunConfig
from gnflow.config._values import ConfigError, registry_of
from gnflow.registry import Registry

__all__ = [
    "LOCATION_KEYS",
    "config_fields",
    "config_from_dict",
    "config_from_json",
    "config_hash",
    "config_to_dict",
    "config_to_json",
]


def _type_name(tp: Any, registry: Registry[Any] | None = None) -> str:
    """What a value of the annotated type ``tp`` may be, in words (``registry``: its names)."""
    origin = get_origin(tp)
    if registry is not None:
        names = ", ".join(repr(name) for name in registry.names()) or "(none registered)"
        return f"a list of names, each one of {names}" if origin is tuple else f"one of {names}"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return "a list of " + _type_name(get_args(tp)[0])
    if tp is type(None):
        return "absent"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a TOML value to the annotated type, or raise ConfigError naming the key."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: unknown value {value!r}; allowed: {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        item_type = get_args(tp)[0]
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r}")  # pragma: no cover - programming error


def _section_from_dict(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names or (key in SECTIONS and not prefix):
            allowed = [n for n in names if not (not prefix and n in SECTIONS)]
            raise ConfigError(
                f"unknown key {full!r}; allowed in {prefix.rstrip('.') or 'the top level'}: {', '.join(allowed)}"
            )
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def config_from_dict(values: Mapping[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a nested mapping (as read from TOML)."""
    top: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: expected a table [{key}], got {value!r}")
            sections[key] = _section_from_dict(SECTIONS[key], value, f"{key}.")
        else:
            top[key] = value
    run = _section_from_dict(RunConfig, top, "")
    return dataclasses.replace(run, **sections) if sections else run


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The config as a nested plain dictionary (tuples as lists, None values left out)."""

    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if v is not None}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return obj

    result: dict[str, Any] = clean(dataclasses.asdict(config))
    return result


def config_to_json(config: RunConfig) -> str:
    """The resolved config as a JSON string (stored in the ``gnflow_config`` attribute)."""
    return json.dumps(config_to_dict(config), sort_keys=True)


# Keys that say where and how often files are written, and how long this machine may compute,
# not what is computed: a run resumed with another time budget continues the same trajectory.
LOCATION_KEYS: tuple[str, ...] = (
    "output.path",
    "output.checkpoint_every_s",
    "output.checkpoint_every_steps",
    "solver.max_wall_time_s",
    "solver.max_cpu_time_s",
    "compute.threads",
)

# Keys added after runs were first written, left out of the hash while at this value (their
# default, which computes what runs without the key computed): runs written before the key existed
# keep their ids, and sweeps still find them.
LATER_KEYS: dict[str, Any] = {
    "model.init_from": "",
    "flow.epsilon_scaling": "absolute",
}


def config_hash(config: RunConfig, length: int = 16) -> str:
    """A stable identifier of what ``config`` computes: the first ``length`` hex digits of the
    SHA-256 of :func:`config_to_json` with the :data:`LOCATION_KEYS` left out, and the
    :data:`LATER_KEYS` while at their default.

    Two configs with the same hash give the same trajectory wherever their files go.
    """
    values = config_to_dict(config)
    for key in LOCATION_KEYS:
        section, name = key.split(".")
        values.get(section, {}).pop(name, None)
    for key, default in LATER_KEYS.items():
        section, name = key.split(".")
        if values.get(section, {}).get(name, default) == default:
            values.get(section, {}).pop(name, None)
    text = json.dumps(values, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def config_from_json(text: str) -> RunConfig:
    """Inverse of :func:`config_to_json`."""
    return config_from_dict(json.loads(text))


def config_fields() -> list[tuple[str, str, Any, str]]:
    """(key, type description, default, section) for every config key, for documentation.

    Keys that take registered names (``flow.kind``, ``flow.damping``, ``data.kind``,
    ``observe.names``) list the names registered when it is called.
    """
    rows: list[tuple[str, str, Any, str]] = []
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if f.name in SECTIONS:
            continue
        rows.append((f.name, _type_name(hints[f.name], registry_of(RunConfig, f.name)), f.default, ""))
    for section, cls in SECTIONS.items():
        section_hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            type_name = _type_name(section_hints[f.name], registry_of(cls, f.name))
            rows.append((f"{section}.{f.name}", type_name, default, section))
    return rows
