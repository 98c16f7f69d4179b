"""Clocks, budgets and the progress bar shared by the integration loop and the training loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gnflow._progress import progress_bar
from gnflow.config import SolverConfig

__all__ = ["Budget", "ProgressBar", "StopWatch"]


class StopWatch:
    """Wall-clock and processor time summed over the intervals between :meth:`start` and :meth:`stop`.

    Parameters
    ----------
    wall_s, cpu_s:
        Time already spent (a resumed run continues its clocks).
    excluded_cpu_s:
        Processor seconds spent so far by work beside the timed one in other threads of this
        process (a monotone reading); the processor time leaves them out.
    """

    def __init__(
        self, wall_s: float = 0.0, cpu_s: float = 0.0, *, excluded_cpu_s: Callable[[], float] | None = None
    ) -> None:
        self._wall = wall_s
        self._cpu = cpu_s
        self._excluded = excluded_cpu_s
        self._started: tuple[float, float] | None = None

    def _process_cpu_s(self) -> float:
        return time.process_time() - (self._excluded() if self._excluded is not None else 0.0)

    def start(self) -> StopWatch:
        """Start an interval (the watch itself, to chain)."""
        self._started = (time.perf_counter(), self._process_cpu_s())
        return self

    def stop(self) -> None:
        """End the current interval and add it."""
        if self._started is None:
            raise RuntimeError("the stop watch is not running")
        wall0, cpu0 = self._started
        self._wall += time.perf_counter() - wall0
        self._cpu += self._process_cpu_s() - cpu0
        self._started = None

    @property
    def wall_s(self) -> float:
        """Wall-clock seconds, the running interval included."""
        if self._started is None:
            return self._wall
        return self._wall + time.perf_counter() - self._started[0]

    @property
    def cpu_s(self) -> float:
        """Processor seconds of this process (all threads but the excluded work), the running interval
        included."""
        if self._started is None:
            return self._cpu
        return self._cpu + self._process_cpu_s() - self._started[1]


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Limits of one run: steps (in total) and wall-clock and processor time (of one call).

    Attributes
    ----------
    max_steps:
        Steps attempted (accepted and rejected), over the whole run including resumed parts.
    max_wall_time_s, max_cpu_time_s:
        Seconds of this call (0 = unlimited).
    key_prefix:
        Written before the limit's name in a failure reason (``solver.`` for the config keys).
    """

    max_steps: int
    max_wall_time_s: float = 0.0
    max_cpu_time_s: float = 0.0
    key_prefix: str = "solver."

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        for key in ("max_wall_time_s", "max_cpu_time_s"):
            value = getattr(self, key)
            if not (value >= 0 and value < float("inf")):
                raise ValueError(f"{key} must be a finite number of seconds >= 0 (0 = unlimited), got {value}")

    @classmethod
    def of(cls, config: SolverConfig) -> Budget:
        """The budget set by ``solver.max_steps``, ``solver.max_wall_time_s`` and ``solver.max_cpu_time_s``."""
        return cls(
            max_steps=config.max_steps, max_wall_time_s=config.max_wall_time_s, max_cpu_time_s=config.max_cpu_time_s
        )

    def exhausted(self, n_steps: int, clock: StopWatch) -> str | None:
        """Why no further step may be taken after ``n_steps`` steps and the time on ``clock``; None if one may."""
        key = self.key_prefix
        if n_steps >= self.max_steps:
            return f"more than {key}max_steps = {self.max_steps} steps"
        if self.max_wall_time_s > 0 and clock.wall_s >= self.max_wall_time_s:
            return f"wall-clock budget of {key}max_wall_time_s = {self.max_wall_time_s:g} s spent"
        if self.max_cpu_time_s > 0 and clock.cpu_s >= self.max_cpu_time_s:
            return f"CPU-time budget of {key}max_cpu_time_s = {self.max_cpu_time_s:g} s spent"
        return None


class ProgressBar:
    """A progress bar on stderr over flow time (or steps), with a short status text.

    Parameters
    ----------
    total:
        The end of the run (flow time t_end, or a number of steps).
    name:
        Label in front of the bar.
    enabled:
        True, False, or None (when stderr is a terminal or in a notebook: :mod:`gnflow._progress`).
    label:
        Name of the position shown (``t`` for flow time).
    """

    def __init__(self, total: float, name: str, enabled: bool | None, *, label: str = "t") -> None:
        self.bar = progress_bar(
            total=total,
            enabled=enabled,
            desc=name,
            unit="",
            bar_format=f"{{desc}}: {{percentage:3.0f}}%|{{bar}}| {label}={{n:.4g}}/{{total:.4g}} "
            "[{elapsed}<{remaining}{postfix}]",
            leave=False,
        )
        self.position = 0.0

    def update(self, position: float, text: str) -> None:
        """Move to ``position`` and show ``text``."""
        if self.bar.disable:
            return
        position = min(position, self.bar.total)
        self.bar.update(max(0.0, position - self.position))
        self.position = position
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        """Remove the bar."""
        self.bar.close()
