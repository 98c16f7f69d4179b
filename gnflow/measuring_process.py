"""Saved states measured in a second process while the run integrates.

On two CPU cores a run can integrate at one torch thread and measure its saved states at the
other. Two threads of one process slow each other down: beside the integration's evaluations a
paper-size state's measurements took 178 ms against 155.5 ms alone, and 156 ms when they ran in a
separate process (``studies/performance/parts.py --only contention``). :class:`MeasuringProcess`
is that separate process: it is started (``spawn``) when the run starts, builds the run's
experiment from its config, and measures the built-in variables of every saved state it is sent,
in time order, at one torch thread. When the integration ends, the states left are split: the
process measures the first half, the calling process the second, at the same time.

On the paper-size GN run with SPEC's 201 saved times (186 states) the measurements add 0.21-0.23
of the integration's wall time this way (``studies/performance/saved_states.py --alongside``),
against 0.34 with the thread schedule; the prototype of ``studies/performance/process_worker.py
--process-after 1`` gave 0.16 against 0.27 in the same rounds. Starting the process costs about
2.5 s of a core (importing gnflow, building the experiment), so
:func:`gnflow.simulation.simulate` uses it only for runs with much to measure
(:data:`MIN_WORK`), and only where :data:`gnflow.simulation.MEASURE_IN_PROCESS` is set (by
``gnflow run``): a spawned process imports the caller's main module again, which is safe only
where that module guards its work with ``if __name__ == "__main__":``.

The values are those of the same measurements in the calling process at one torch thread (the
same code on the same states): bit for bit on one machine. Nothing is lost when the process fails:
:meth:`MeasuringProcess.finish` then returns the prefix it has received (0 when none), and the pass
after the integration measures the rest.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from gnflow.config import config_from_json, config_to_json
from gnflow.experiment import Experiment, build_experiment
from gnflow.observables._trajectory import SavedState
from gnflow.trajectory import _BuiltinVariables, _run_dtype_trajectory, measures_eigenvectors

__all__ = ["MIN_WORK", "STALL_S", "MeasuringProcess", "worth_a_process"]

logger = logging.getLogger(__name__)

MIN_WORK = 2e8
"""Runs with at least this many (training point x particle x saved time) entries are measured in a
process. The paper-size run (500 x 5000 x 201 = 5.0e8) is; the reduced size of the studies
(200 x 2000 x 201 = 8.0e7) and runs with 21 saved times are not: there the process's start is a
visible part, and the thread schedule was measured as fast or faster (``docs/performance.md``)."""

STALL_S = 600.0
"""A measuring process that measures no state for this long is stopped (its states are measured here)."""

_NO_LIMIT = 1 << 30
_RESULT_TIMEOUT_S = 1.0


def worth_a_process(experiment: Experiment) -> bool:
    """Whether the run's saved states are many and large enough for :class:`MeasuringProcess`."""
    config = experiment.config
    work = float(experiment.data.n_train) * config.model.width * config.solver.n_save
    return work >= MIN_WORK


def _measure_in_turn(
    trajectory: Any,
    builtins: _BuiltinVariables,
    states: Iterable[tuple[int, torch.Tensor]],
    eigenvectors: bool,
    *,
    start: int,
    progress: Any = None,
) -> tuple[int, str]:
    """Update ``builtins`` on ``states`` while their indices run start, start + 1, ...; the number
    updated and, if a measurement raised, its error (the caller's pass meets it again and raises it)."""
    count = 0
    with torch.no_grad():
        for index, weights in states:
            if index != start + count:  # out of turn
                break
            try:
                builtins.update(SavedState(trajectory, index, weights=weights, eigenvectors=eigenvectors))
            except Exception as exc:
                return count, f"{type(exc).__name__}: {exc}"
            count += 1
            if progress is not None:
                progress.value = count
    return count, ""


def _child(config_json: str, eigenvectors: bool, states: Any, results: Any, progress: Any, limit: Any) -> None:
    """The measuring process: the built-in variables of the states it is sent, in time order,
    below ``limit``; sends (states measured, values, unmeasured indices, error) when it stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run's process handles Ctrl-C
    torch.set_num_threads(1)
    from gnflow import _blas

    _blas.hold_blas_at_one_thread()
    experiment = build_experiment(config_from_json(config_json))
    trajectory = _run_dtype_trajectory(experiment, None)
    builtins = _BuiltinVariables(experiment.flow)

    def received() -> Iterator[tuple[int, torch.Tensor]]:
        while (item := states.get()) is not None and item[0] < limit.value:  # not the other half
            yield item[0], torch.from_numpy(item[1])

    measured, error = _measure_in_turn(trajectory, builtins, received(), eigenvectors, start=0, progress=progress)
    values = {name: column[:measured] for name, column in builtins.values.items()}
    results.put((measured, values, builtins.unmeasured, builtins.error, error))


class MeasuringProcess:
    """A :class:`gnflow.solve.StateSink` that measures the built-in variables in a second process.

    The interface of :class:`gnflow.observables.MeasuringAlongside` as
    :func:`gnflow.trajectory.trajectory_dataset` reads it: :meth:`put`, :attr:`cpu_s`,
    :meth:`finish` and ``measurements[0]`` (the built-in variables, measured for time indices 0
    to k - 1 once :meth:`finish` has returned k). Integrate with torch at one thread.
    """

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.measurements = [_BuiltinVariables(experiment.flow)]
        self._eigenvectors = measures_eigenvectors(experiment)
        context = multiprocessing.get_context("spawn")
        self._states = context.Queue()
        self._results = context.Queue()
        self._progress = context.Value("i", 0, lock=False)
        self._limit = context.Value("i", _NO_LIMIT, lock=False)
        self._sent: list[tuple[int, torch.Tensor]] = []
        self._stopped_at: int | None = None
        self._k: int | None = None
        self._process = context.Process(
            target=_child,
            args=(
                config_to_json(experiment.config),
                self._eigenvectors,
                self._states,
                self._results,
                self._progress,
                self._limit,
            ),
            name="gnflow-measure",
            daemon=True,
        )
        self._process.start()

    cpu_s = 0.0
    """Processor seconds of this process spent on measurements during the integration (none: the
    measurements run in the other process)."""

    def put(self, index: int, weights: torch.Tensor) -> None:
        """Send the state saved at time index ``index`` (``weights``: the stored copy, not modified)."""
        if self._stopped_at is None:
            self._sent.append((index, weights))
            self._states.put((index, weights.detach().cpu().numpy()))

    def stop(self) -> None:
        """The integration has ended: the process measures up to the middle of the states left, and
        :meth:`finish` measures the rest here. Returns at once."""
        if self._stopped_at is not None:
            return
        done = self._progress.value  # the process may be measuring state `done` now: it keeps it
        n = len(self._sent)
        self._stopped_at = min(n, done + 1 + max(0, n - done - 1) // 2)
        self._limit.value = self._stopped_at
        self._states.put(None)

    def finish(self) -> int:
        """Measure this process's half, collect the other's; the number k of states measured (0 to k - 1)."""
        if self._k is not None:
            return self._k
        self.stop()
        assert self._stopped_at is not None
        split, builtins = self._stopped_at, self.measurements[0]
        mine = self._measure_here(split)
        measured = self._collect(builtins)
        self._k = measured
        if measured == split and mine == len(self._sent) - split:
            self._k = len(self._sent)
        elif mine:  # a gap before this process's states: the pass after measures them again
            logger.debug("measuring process stopped at saved state %d of %d", measured, split)
        self._states.cancel_join_thread()
        self._process.join(timeout=_RESULT_TIMEOUT_S)
        logger.debug("measured %d saved states in a second process and here", self._k)
        return self._k

    def _measure_here(self, split: int) -> int:
        """The states from ``split`` on, here at one torch thread; how many in order."""
        trajectory = _run_dtype_trajectory(self.experiment, None)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            count, _ = _measure_in_turn(
                trajectory, self.measurements[0], self._sent[split:], self._eigenvectors, start=split
            )
        finally:
            torch.set_num_threads(threads)
        return count

    def _collect(self, builtins: _BuiltinVariables) -> int:
        """The other process's values merged into ``builtins``; the states it measured (0 if it failed)."""
        last, since = self._progress.value, time.monotonic()
        while True:
            try:
                measured, values, unmeasured, spectrum_error, error = self._results.get(timeout=_RESULT_TIMEOUT_S)
                break
            except queue.Empty:
                if self._progress.value != last:
                    last, since = self._progress.value, time.monotonic()
                elif time.monotonic() - since > STALL_S:
                    logger.warning(
                        "the measuring process measured nothing for %.0f s; measuring its states here", STALL_S
                    )
                    self.close()
                    return 0
                if not self._process.is_alive():
                    logger.warning(
                        "the measuring process ended (exit code %s) without its results; measuring its states here",
                        self._process.exitcode,
                    )
                    return 0
        if error:
            logger.debug("the measuring process stopped at saved state %d: %s", measured, error)
        for name, column in values.items():
            for index, value in enumerate(column):
                builtins._set(name, index, float(value))
        builtins.unmeasured = sorted({*unmeasured, *builtins.unmeasured})
        builtins.error = spectrum_error or builtins.error
        return int(measured)

    def close(self) -> None:
        """Stop the process if it still runs (an interrupted run)."""
        if self._process.is_alive():
            self._process.kill()  # SIGKILL: also ends a stopped process
            self._process.join(timeout=_RESULT_TIMEOUT_S)
