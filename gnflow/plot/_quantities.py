"""Quantities the figures plot, computed from stored arrays: weight movement, teacher plane, config keys."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def weight_movement(weights: np.ndarray, components: slice | Sequence[int] = slice(None)) -> np.ndarray:
    """Relative weight movement ||W(t) - W(0)||_F / ||W(0)||_F at every saved time, the definition of
    the ``weight_movement`` observable (one definition for the figures and the files).

    Parameters
    ----------
    weights:
        Particle positions, shape (t, particle, component).
    components:
        The components to include (default all), e.g. ``slice(0, d + 1)`` for the hidden layer.

    Returns
    -------
    numpy.ndarray
        Shape (t,), dimensionless; 0 at t = 0. The change of the ``components`` is divided by
        their norm at t = 0; when that is zero (output weights that start at 0) by the norm of all
        of W(0) instead (:func:`movement_normalization` says which), and NaN when W(0) = 0.
    """
    whole = np.asarray(weights, dtype=np.float64)
    w = whole[:, :, components]
    if w.ndim != 3:
        raise ValueError(f"weights must have shape (t, particle, component), got {w.shape}")
    change = np.sqrt(((w - w[:1]) ** 2).sum(axis=(1, 2)))
    norm0 = float(np.sqrt((w[0] ** 2).sum()))
    if norm0 > 0:
        return change / norm0
    total0 = float(np.sqrt((whole[0] ** 2).sum()))
    return change / total0 if total0 > 0 else np.full(change.shape, math.nan)


def movement_normalization(weights: np.ndarray, components: slice | Sequence[int], part: str) -> str:
    """What :func:`weight_movement` divided by: ``"‖part(0)‖"``, or ``"‖W(0)‖"`` when the part is 0."""
    w0 = np.asarray(weights, dtype=np.float64)[0]
    return f"‖{part}(0)‖" if np.any(w0[:, components]) else "‖W(0)‖ (v(0) = 0)"


def teacher_plane(directions: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the plane spanned by the first two directions.

    Parameters
    ----------
    directions:
        Vectors in R^d, shape (k, d) with k >= 1; the first two that are linearly independent
        span the plane (Gram--Schmidt).

    Returns
    -------
    numpy.ndarray
        Shape (2, d) with orthonormal rows. When d = 1 or all directions are parallel the second
        row is the zero vector.
    """
    vectors = np.asarray(directions, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] < 1:
        raise ValueError(f"directions must have shape (k, d) with k >= 1, got {vectors.shape}")
    basis: list[np.ndarray] = []
    for vector in vectors:
        residual = vector - sum((vector @ q) * q for q in basis)
        norm = float(np.linalg.norm(residual))
        if norm > 1e-12 * max(1.0, float(np.linalg.norm(vector))):
            basis.append(residual / norm)
        if len(basis) == 2:
            break
    while len(basis) < 2:
        basis.append(np.zeros(vectors.shape[1]))
    return np.stack(basis)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dictionary as ``{"section.key": value}`` (lists become tuples)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def differing_config_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The flattened config keys whose values are not the same in all ``configs``.

    ``output.*`` keys (where a run was written) are left out: they differ between any two files
    and say nothing about the runs. Keys are returned in the order they first appear.
    """
    flats = [flatten_config(c) for c in configs]
    keys: list[str] = []
    for flat in flats:
        keys.extend(k for k in flat if k not in keys and not k.startswith("output."))
    missing = object()
    return [k for k in keys if len({json.dumps(f.get(k, missing), default=str) for f in flats}) > 1]
