"""Dotted keys (``section.key``) of ``--set`` and sweep grids, and reading a TOML run file."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gnflow.config._parse import config_from_dict
from gnflow.config._sections import SECTIONS, RunConfig
from gnflow.config._values import ConfigError

__all__ = ["apply_overrides", "flatten_dotted", "get_dotted", "load_config", "read_toml", "set_dotted", "split_key"]


def _parse_override_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string: --set model.activation=tanh


def split_key(key: str, where: str) -> tuple[str, ...]:
    """``"model.width"`` -> ``("model", "width")``, ``"seed"`` -> ``("seed",)``.

    Raises
    ------
    ConfigError
        When ``key`` is not ``key`` or ``section.key`` with a known section (``where`` names the
        place it came from, e.g. ``--set 'x=1'``).
    """
    parts = tuple(key.strip().split("."))
    if not key.strip() or any(not p for p in parts) or len(parts) > 2:
        raise ConfigError(f"{where}: KEY must be 'key' or 'section.key', e.g. model.init_scale")
    if len(parts) == 2 and parts[0] not in SECTIONS:
        raise ConfigError(f"{where}: unknown section {parts[0]!r}; allowed: {', '.join(SECTIONS)}")
    return parts


def set_dotted(values: dict[str, Any], key: str, value: Any, *, where: str = "") -> None:
    """Set the dotted ``key`` of the nested mapping ``values`` (in place) to ``value``."""
    parts = split_key(key, where or key)
    target = values
    if len(parts) == 2:
        section = target.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"{parts[0]}: expected a table [{parts[0]}], got {section!r}")
        target = section
    target[parts[-1]] = value


def get_dotted(values: Mapping[str, Any], key: str) -> Any:
    """The value of the dotted ``key`` in the nested mapping ``values`` (None when absent)."""
    target: Any = values
    for part in key.split("."):
        target = target.get(part) if isinstance(target, Mapping) else None
    return target


def flatten_dotted(table: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """Nested tables -> ``{dotted key: value}`` (lists and scalars are values), keys checked."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_dotted(value, where, f"{full}."))
        else:
            flat[full] = value
    if not prefix:
        for key in flat:
            split_key(key, f"{where}: key {key!r}")
    return flat


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values in TOML syntax; bare words are strings)."""
    result: dict[str, Any] = json.loads(json.dumps(values))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. model.width=1000")
        key, text = item.split("=", 1)
        set_dotted(result, key.strip(), _parse_override_value(text.strip()), where=f"--set {item!r}")
    return result


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML run config (or the defaults when ``path`` is None) and apply overrides."""
    values = read_toml(path, "config file") if path is not None else {}
    return config_from_dict(apply_overrides(values, overrides))


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The tables of the TOML file ``path`` (``what`` says what it is, e.g. ``config file``).

    Raises
    ------
    ConfigError
        One line naming the file: it does not exist, is a directory, is not UTF-8 text (TOML
        files are) or is not valid TOML.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a directory, not a TOML file")
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "TOML files are UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path}: invalid TOML: {exc}") from None
