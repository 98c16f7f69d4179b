"""Registries: the names a config key accepts, each mapped to what implements it.

Every choice a run config makes by name has one registry here: ``flow.kind`` (:data:`FLOW_KINDS`,
filled by :func:`gnflow.flows.register_flow`), ``flow.damping`` (:data:`DAMPING_RULES`, filled by
:func:`gnflow.damping.register_damping`), ``data.kind`` (:data:`DATA_KINDS`) and ``observe.names``
(:data:`OBSERVABLE_NAMES`). The modules that implement a choice fill its registry when they are
imported (``import gnflow`` imports them all); :mod:`gnflow.config` reads the names when it validates
a config, and the generated config reference lists them. Adding a flow or a damping rule is then one
decorated class: no union type, ``if`` chain or ``isinstance`` branch elsewhere names it.

This module imports nothing from gnflow at run time, so the registries cannot form an import cycle.

Examples
--------
>>> from gnflow.registry import Registry
>>> colours = Registry("paint.colour", "colour")
>>> @colours.register("red")
... def red() -> str:
...     return "#f00"
>>> colours.names()
('red',)
>>> colours.get("blue")
Traceback (most recent call last):
    ...
gnflow.registry.RegistryError: unknown colour 'blue'; allowed: red
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from gnflow.damping import Damping
    from gnflow.flows import Flow

__all__ = [
    "DAMPING_RULES",
    "DATA_KINDS",
    "FLOW_KINDS",
    "OBSERVABLE_NAMES",
    "Registry",
    "RegistryError",
]

T = TypeVar("T")


class RegistryError(ValueError):
    """A name is not registered, or a second entry claims a registered name.

    The message is one line that names the value and the registered names.
    """


class Registry(Generic[T]):
    """Names in registration order, each mapped to one entry.

    Parameters
    ----------
    key:
        The config key whose values the names are (e.g. ``"flow.kind"``); for messages.
    what:
        What one entry is, as a noun (e.g. ``"damping"``): ``get`` fails with
        ``unknown <what> 'x'; allowed: a, b``.
    """

    def __init__(self, key: str, what: str) -> None:
        self.key = key
        self.what = what
        self._entries: dict[str, T] = {}

    def __repr__(self) -> str:
        return f"Registry({self.key!r}: {', '.join(self._entries) or 'empty'})"

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name`` and return it.

        Registering the same entry again (a module imported twice) changes nothing.

        Raises
        ------
        RegistryError
            If ``name`` is empty or another entry holds it already.
        """
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.key}: a registered name must be a non-empty string, got {name!r}")
        held = self._entries.get(name)
        if held is not None and held is not entry and _qualified_name(held) != _qualified_name(entry):
            raise RegistryError(f"{self.key}: {name!r} is registered already, by {_qualified_name(held)}")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that registers what it decorates under ``name`` (see :meth:`add`)."""

        def decorate(entry: T) -> T:
            return self.add(name, entry)

        return decorate

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plug-ins that register temporarily).

        Raises
        ------
        RegistryError
            If ``name`` is not registered.
        """
        self.get(name)
        del self._entries[name]

    def get(self, name: str) -> T:
        """The entry registered under ``name``.

        Raises
        ------
        RegistryError
            ``unknown <what> 'name'; allowed: ...`` when ``name`` is not registered.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise RegistryError(f"unknown {self.what} {name!r}; allowed: {self.allowed()}") from None

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def allowed(self) -> str:
        """The registered names as one comma-separated string (``"none registered"`` if empty)."""
        return ", ".join(self._entries) or "none registered"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


def _qualified_name(entry: object) -> str:
    module = getattr(entry, "__module__", None)
    name = getattr(entry, "__qualname__", None)
    return f"{module}.{name}" if module and name else repr(entry)


#: ``flow.kind``: :class:`~gnflow.flows.Flow` subclasses, filled by :func:`gnflow.flows.register_flow`.
FLOW_KINDS: Registry[type[Flow]] = Registry("flow.kind", "flow")

#: ``flow.damping``: damping rule classes, built as ``Rule(flow.epsilon)``; filled by
#: :func:`gnflow.damping.register_damping`.
DAMPING_RULES: Registry[Callable[[float], Damping]] = Registry("flow.damping", "damping")

#: ``data.kind``: the names of the data sources (``"teacher"``, ``"file"`` and the named real data
#: sets of :mod:`gnflow.realdata`); :func:`gnflow.data.register_dataset` adds to it.
DATA_KINDS: Registry[str] = Registry("data.kind", "data kind")

#: ``observe.names``: the names of :data:`gnflow.observables.OBSERVABLES`.
OBSERVABLE_NAMES: Registry[str] = Registry("observe.names", "observable")
