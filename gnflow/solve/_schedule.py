"""Where a run saves states (:func:`save_times`) and the steps of fixed-step runs (:class:`StepSchedule`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gnflow.config import SolverConfig

__all__ = ["StepSchedule", "save_times"]


def save_times(config: SolverConfig) -> np.ndarray:
    """The flow times at which states are saved, always starting at t = 0.

    ``config.save_times`` when given (with 0 and t_end added if absent); otherwise ``n_save`` times,
    linearly spaced on [0, t_end] or t = 0 followed by log-spaced times over ``save_decades``
    decades ending at t_end.
    """
    if config.save_times is not None:
        times = np.asarray(config.save_times, dtype=np.float64)
        if times[0] != 0.0:
            times = np.concatenate([[0.0], times])
        if times[-1] != config.t_end:
            times = np.concatenate([times, [config.t_end]])
        return times
    if config.save_spacing == "linear":
        return np.linspace(0.0, config.t_end, config.n_save)
    t_min = config.t_end * 10.0 ** (-config.save_decades)
    if config.n_save == 2:  # geomspace of one point is t_min: the run must still end at t_end
        return np.array([0.0, config.t_end])
    return np.concatenate([[0.0], np.geomspace(t_min, config.t_end, config.n_save - 1)])


@dataclass(frozen=True, eq=False)
class StepSchedule:
    """The steps of a fixed-step integration, one entry per step.

    Attributes
    ----------
    step_sizes:
        h_k, flow time advanced by step k, shape (step,), all > 0.
    save:
        Whether the state after step k is saved, shape (step,) bool.
    batches:
        None: every step uses all training samples. Otherwise one integer index array per step:
        step k integrates the vector field restricted to the samples ``batches[k]``.
    n_samples:
        N, the number of training samples, to count epochs (samples used / N); None when unknown.
    """

    step_sizes: np.ndarray
    save: np.ndarray
    batches: tuple[np.ndarray, ...] | None = None
    n_samples: int | None = None

    def __post_init__(self) -> None:
        h = np.asarray(self.step_sizes, dtype=np.float64)
        if h.ndim != 1 or h.size == 0 or not np.all(np.isfinite(h)) or np.any(h <= 0):
            raise ValueError("step sizes must be a non-empty 1-d array of finite numbers > 0")
        if np.shape(self.save) != h.shape:
            raise ValueError(f"save must have one flag per step ({h.size}), got shape {np.shape(self.save)}")
        if self.batches is not None:
            if len(self.batches) != h.size:
                raise ValueError(f"batches must hold one index array per step ({h.size}), got {len(self.batches)}")
            if any(np.asarray(b).ndim != 1 or len(b) == 0 for b in self.batches):
                raise ValueError("every batch must be a non-empty 1-d index array")
        if self.n_samples is not None and self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")

    @classmethod
    def uniform(cls, step_size: float, times: np.ndarray) -> StepSchedule:
        """Steps of size h on all samples up to times[-1], saving at the grid points t = k h
        nearest to ``times``."""
        n_total = math.floor(times[-1] / step_size + 1e-9)
        if n_total < 1:
            raise ValueError(f"solver.step_size = {step_size} is larger than the horizon {times[-1]}")
        save = np.zeros(n_total, dtype=bool)
        save_steps = np.clip(np.rint(np.asarray(times) / step_size).astype(np.int64), 0, n_total)
        save[save_steps[save_steps >= 1] - 1] = True
        return cls(step_sizes=np.full(n_total, float(step_size)), save=save)

    @property
    def n_steps(self) -> int:
        """The number of steps."""
        return int(np.size(self.step_sizes))

    def times(self) -> np.ndarray:
        """Flow times before the first and after every step, shape (step + 1,).

        Equal steps give t_k = k h exactly; otherwise t_k is the running sum of the h's.
        """
        h = np.asarray(self.step_sizes, dtype=np.float64)
        if np.all(h == h[0]):
            return h[0] * np.arange(h.size + 1, dtype=np.float64)
        return np.concatenate([[0.0], np.cumsum(h)])

    def epochs(self) -> np.ndarray:
        """Passes over the training set completed before the first and after every step (samples
        used / N), shape (step + 1,); NaN when N is unknown."""
        if self.n_samples is None:
            return np.full(self.n_steps + 1, np.nan)
        if self.batches is None:
            return np.arange(self.n_steps + 1, dtype=np.float64)
        used = np.cumsum([len(b) for b in self.batches])
        return np.concatenate([[0.0], used / self.n_samples])

    def saved_times(self) -> np.ndarray:
        """t = 0 and the flow times after the saved steps, shape (saved,): where a run saves states."""
        return np.concatenate([[0.0], self.times()[1:][np.asarray(self.save, dtype=bool)]])
