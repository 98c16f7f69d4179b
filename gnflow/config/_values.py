"""Registered names as config values, and the one-line error of every invalid value.

Keys that name an implementation (``data.kind``, ``flow.kind``, ``flow.damping``,
``observe.names``) carry their registry of :mod:`gnflow.registry` in the field metadata
(:func:`registered`); their values are checked when a section is built, against the names
registered at that time.
"""

import dataclasses
from typing import Any

from gnflow.registry import DATA_KINDS, OBSERVABLE_NAMES, Registry

__all__ = [
    "ConfigError",
    "data_kinds",
    "observable_names",
    "register_data_kind",
    "register_observable",
    "registered",
    "registry_of",
]


class ConfigError(ValueError):
    """A configuration key is unknown, of the wrong type, or out of range.

    The message is one line that names the key and what is allowed.
    """


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _check_init_from(text: str) -> None:
    """``model.init_from``: empty, ``"PATH"`` or ``"PATH@T"`` with a flow time T >= 0."""
    if not text:
        return
    path, _, at = text.rpartition("@") if "@" in text else (text, "", "")
    _require(bool(path), "model.init_from", f'must be "PATH" or "PATH@T", got {text!r}')
    if at:
        try:
            t = float(at)
        except ValueError:
            t = float("nan")
        _require(
            t == t and t >= 0 and t != float("inf"),
            "model.init_from",
            f'the time after "@" must be a flow time >= 0, got {at!r} (allowed: "PATH" or "PATH@T")',
        )


def _require_registered(value: str, registry: Registry[Any]) -> None:
    _require(value in registry, registry.key, f"unknown value {value!r}; allowed: {registry.allowed()}")


def registered(registry: Registry[Any], default: Any) -> Any:
    """A dataclass field with ``default`` whose values are names from ``registry``."""
    return dataclasses.field(default=default, metadata={"registry": registry})


def registry_of(cls: type, name: str) -> Registry[Any] | None:
    """The registry whose names the field ``name`` of the section ``cls`` takes (None: not a name)."""
    registry: Registry[Any] | None = getattr(cls, "__dataclass_fields__")[name].metadata.get("registry")  # noqa: B009
    return registry


# --- registries filled by other modules (data kinds, observables) -------------------------------

# implemented by gnflow.data itself; named real data sets register themselves
DATA_KINDS.add("teacher", "teacher")
DATA_KINDS.add("file", "file")


def data_kinds() -> tuple[str, ...]:
    """Names accepted by ``data.kind``."""
    return DATA_KINDS.names()


def observable_names() -> tuple[str, ...]:
    """Names accepted by ``observe.names``."""
    return OBSERVABLE_NAMES.names()


def register_data_kind(name: str) -> None:
    """Allow ``data.kind = name`` (used by modules that provide named data sets)."""
    DATA_KINDS.add(name, name)


def register_observable(name: str) -> None:
    """Allow ``name`` in ``observe.names``."""
    OBSERVABLE_NAMES.add(name, name)
