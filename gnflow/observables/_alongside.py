"""Saved states measured in a worker thread while the integration still runs.

On a CPU with two threads for a run, integrating at one torch thread and measuring each saved
state on the other core as soon as it is saved hides most of the measuring time behind the
integration: the measurements of a saved state (Gram spectrum, test loss on 10^4 points) cost
about as much as two Gauss--Newton evaluations at the paper's size, and with SPEC's 201 saved
times they add up to more than the integration. (Two threads integrate faster than one, 1.5x on
that run, which pays when there are few saved states: ``docs/performance.md``.)
:class:`MeasuringAlongside` is that worker, a :class:`gnflow.solve.StateSink` for
``integrate(on_save=...)``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import torch

from gnflow import _blas
from gnflow.observables._trajectory import Measurement, SavedState, Trajectory

__all__ = ["MeasuringAlongside", "SwitchingAlongside"]

logger = logging.getLogger(__name__)


def _thread_cpu_clock(thread: threading.Thread) -> int | None:
    """The CPU-time clock of ``thread`` where the system has one (Linux, macOS)."""
    if thread.ident is None or not hasattr(time, "pthread_getcpuclockid"):
        return None
    try:
        return time.pthread_getcpuclockid(thread.ident)
    except (OSError, OverflowError):
        return None


class MeasuringAlongside:
    """Measure saved states in a worker thread, in time order, while they are being saved.

    The worker updates every measurement on each state :meth:`put` hands it, in the order they
    come, at one torch thread, and so measures a prefix of the trajectory: time indices 0 to k - 1,
    k being what :meth:`finish` returns. The measurement pass after the integration
    (:func:`gnflow.observables.measure` with ``start=k``) takes the states from k on. The prefix
    ends early, and those states are left to that pass, when a measurement raises (the pass meets
    the error again, in the caller's thread) or when a state arrives out of turn (a resumed run,
    whose first saved states were saved before the resume). The values are those of a serial pass
    at one torch thread: the worker runs the same code on the same states.

    Construct it, and integrate, with torch at one thread (``torch.set_num_threads(1)``): torch's
    thread count is one setting for the whole process, and two threads of it per core would slow
    both the integration and the measurements down.

    Parameters
    ----------
    trajectory:
        Model and data of the run; its ``t`` and ``weights`` are not read (the states come
        through :meth:`put`).
    measurements:
        Updated in this order at each state. A measurement that raises on a state may already
        have been updated by the ones before it; they are updated on that state again later.
    eigenvectors:
        Whether the states' eigenvalues come from ``eigh`` (as in a pass with a measurement that
        reads eigenvectors; they differ from ``eigvalsh``'s by rounding); default: whether one of
        ``measurements`` reads them.

    Raises
    ------
    ValueError
        If torch does not run at one thread.
    """

    def __init__(
        self, trajectory: Trajectory, measurements: Sequence[Measurement], *, eigenvectors: bool | None = None
    ) -> None:
        if torch.get_num_threads() != 1:
            raise ValueError(
                f"MeasuringAlongside needs torch at one thread (torch.set_num_threads(1)), "
                f"it runs at {torch.get_num_threads()}"
            )
        self.trajectory = trajectory
        self.measurements = list(measurements)
        self.error: BaseException | None = None
        self._eigenvectors = (
            any(m.needs_eigenvectors for m in self.measurements) if eigenvectors is None else eigenvectors
        )
        self._queue: queue.SimpleQueue[tuple[int, torch.Tensor] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._measured = 0
        self._cpu_s = 0.0
        self._finished = False
        _blas.hold_blas_at_one_thread()  # the BLAS set up here, not by two threads at once
        self._thread = threading.Thread(target=self._work, name="gnflow-measure-alongside", daemon=True)
        self._thread.start()
        self._clock = _thread_cpu_clock(self._thread)

    def put(self, index: int, weights: torch.Tensor) -> None:
        """Queue the state saved at time index ``index`` (``weights``: the stored copy, not modified)."""
        if not self._finished:
            self._queue.put((index, weights))

    @property
    def cpu_s(self) -> float:
        """Processor seconds the worker has spent so far (its thread's clock where readable, else up to
        its last finished state)."""
        if self._clock is not None and self._thread.is_alive():
            try:
                return time.clock_gettime(self._clock)
            except OSError:
                pass
        return self._cpu_s

    @property
    def measured(self) -> int:
        """States 0 to ``measured`` - 1 are measured (final once :meth:`finish` has returned)."""
        return self._measured

    def finish(self, *, wait: bool = False) -> int:
        """Stop the worker after the state it is measuring; the number k of states measured (0 to k - 1).

        States queued and not started are left to the pass after the integration, unless ``wait``:
        then the worker measures every state queued before it stops. Calling it again returns the
        same number.
        """
        if not self._finished:
            self._finished = True
            if not wait:
                self._stop.set()
            self._queue.put(None)
            self._thread.join()
            logger.debug("measured %d saved states alongside the integration", self._measured)
        return self._measured

    def _work(self) -> None:
        try:
            with torch.no_grad():
                while not self._stop.is_set():
                    item = self._queue.get()
                    if item is None or self._stop.is_set():
                        return
                    index, weights = item
                    if index != self._measured:  # out of turn: the prefix ends here
                        return
                    state = SavedState(self.trajectory, index, weights=weights, eigenvectors=self._eigenvectors)
                    try:
                        for measurement in self.measurements:
                            measurement.update(state)
                    except Exception as exc:  # measured again by the caller's pass, which raises it there
                        self.error = exc
                        logger.debug("measuring alongside stopped at saved state %d: %s", index, exc)
                        return
                    del state
                    self._measured += 1
                    self._cpu_s = time.thread_time()
        finally:
            self._cpu_s = time.thread_time()


class SwitchingAlongside:
    """Integrate at the run's threads until ``after`` saved states wait, then measure alongside.

    A :class:`gnflow.solve.StateSink` for a run on two CPU threads. It holds the states the loop
    saves while the integration runs at both threads; once ``after`` of them wait to be measured it
    sets torch to one thread (the integration goes on at one) and hands them, and every later
    state, to a :class:`MeasuringAlongside` worker from ``start()``, which measures them at the
    other. A run whose states never reach ``after`` integrates at both threads throughout and
    measures after (the worker never starts). Measured on the paper-size Gauss--Newton run with
    ``after = 16`` (``studies/performance/schedules.py``): about as fast as measuring alongside
    from the start with SPEC's 201 saved times, and 1.3x faster with 21.

    The caller restores torch's thread count after the integration (the sink may have lowered it).

    Parameters
    ----------
    start:
        Makes the worker (called with torch at one thread), e.g.
        ``lambda: gnflow.trajectory.measuring_alongside(experiment)``.
    after:
        Waiting states that start the worker, >= 1 (1: at the first saved state, t = 0, so the
        whole integration runs at one thread).
    """

    def __init__(self, start: Callable[[], MeasuringAlongside], after: int) -> None:
        if after < 1:
            raise ValueError(f"after must be >= 1, got {after}")
        self._start = start
        self.after = after
        self._waiting: list[tuple[int, torch.Tensor]] = []
        self.worker: MeasuringAlongside | None = None

    def put(self, index: int, weights: torch.Tensor) -> None:
        """Hold the state, or hand it to the worker once it runs."""
        if self.worker is not None:
            self.worker.put(index, weights)
            return
        self._waiting.append((index, weights))
        if len(self._waiting) >= self.after:
            torch.set_num_threads(1)
            self.worker = self._start()
            logger.debug("measuring alongside from saved state %d on", self._waiting[0][0])
            for item in self._waiting:
                self.worker.put(*item)
            self._waiting.clear()

    @property
    def cpu_s(self) -> float:
        """Processor seconds of the worker so far (0 before it starts)."""
        return self.worker.cpu_s if self.worker is not None else 0.0

    def finish(self) -> int:
        """Stop the worker (see :meth:`MeasuringAlongside.finish`); the states it measured, 0 without one."""
        return self.worker.finish() if self.worker is not None else 0
