"""How a subpackage presents the public objects of its private modules."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["present_under"]


def present_under(package: str, namespace: Mapping[str, Any], names: Iterable[str]) -> None:
    """Let the public classes and functions ``names`` of ``namespace`` say they live in ``package``.

    A subpackage (``gnflow.solve``, ``gnflow.config``, ...) implements its concept in private
    modules and re-exports the public objects; documentation, tracebacks and pickles then name them
    where users import them. Objects defined outside the package's private modules are left alone.
    """
    for name in names:
        obj = namespace[name]
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__.startswith(f"{package}._"):
            obj.__module__ = package
