"""The base class of observables: state-by-state accumulation, then dataset variables."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import xarray as xr

from gnflow.config import ObserveConfig
from gnflow.observables._trajectory import Measurement, SavedState, Trajectory


@dataclass(frozen=True)
class ObservableOutput:
    """What an observable adds to a dataset.

    Attributes
    ----------
    variables:
        New variables by name (their long names and units come from the variable registry).
    attrs:
        New global attributes.
    """

    variables: dict[str, xr.DataArray]
    attrs: dict[str, str | int | float]


class Observable(Measurement, ABC):
    """Measurements accumulated over the saved times of one trajectory.

    A subclass may ``update`` at each saved state (called in time order by the measurement pass,
    :func:`~gnflow.observables.measure`) and returns its variables from ``result``.

    Attributes
    ----------
    name:
        The key of ``observe.names`` and of :data:`~gnflow.observables.OBSERVABLES`.
    variables:
        The variables it writes, coordinates included (replaced when observed again).
    requires:
        Observables whose variables ``result`` reads from the dataset (computed first).
    needs_teacher, needs_test:
        Whether it needs ``teacher_weights`` (teacher--student data) or a test set.
    needs_eigenvectors:
        Whether ``update`` reads :attr:`SavedState.eigenvectors
        <gnflow.observables.SavedState.eigenvectors>` (the pass then computes eigh).
    """

    name: ClassVar[str]
    variables: ClassVar[tuple[str, ...]]
    requires: ClassVar[tuple[str, ...]] = ()
    needs_teacher: ClassVar[bool] = False
    needs_test: ClassVar[bool] = False

    def __init__(self, trajectory: Trajectory, options: ObserveConfig) -> None:
        self.trajectory = trajectory
        self.options = options
        self.n_times = trajectory.n_times

    def update(self, state: SavedState) -> None:
        """Measure one saved state (called in time order)."""

    @abstractmethod
    def result(self, ds: xr.Dataset) -> ObservableOutput:
        """The new variables and global attributes (``ds`` holds the variables of ``requires``)."""

    def _series(self) -> np.ndarray:
        return np.full(self.n_times, np.nan)


def time_series(values: np.ndarray, **attrs: str) -> xr.DataArray:
    """A (t,) variable with attributes ``attrs``."""
    return xr.DataArray(values, dims=("t",), attrs=attrs)
