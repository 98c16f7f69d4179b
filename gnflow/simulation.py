"""One run from a :class:`~gnflow.config.RunConfig` to a trajectory dataset and its file.

``simulate(config)`` builds the experiment, integrates its flow and measures the saved states;
``run(config)`` also writes the NetCDF file (with checkpoints and resume). This is what
``gnflow run`` calls.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import torch
import xarray as xr

from gnflow.checkpoint import Checkpointer, CheckpointError, checkpoint_path, load_checkpoint
from gnflow.config import EXPONENTIAL_METHODS, RunConfig, config_hash
from gnflow.data import run_seeds
from gnflow.dataset import (
    OutputExistsError,
    check_writable,
    dataset_result,
    run_config_of,
    utc_now,
    write_dataset,
)
from gnflow.experiment import build_experiment
from gnflow.measuring_process import MeasuringProcess, worth_a_process
from gnflow.observables import SwitchingAlongside, validate_observable_names
from gnflow.solve import Callback, CheckpointHook, integrate
from gnflow.solve._loop import auto_choice
from gnflow.status import SignalInterrupt
from gnflow.threads import resolve_threads, torch_threads
from gnflow.trajectory import measuring_alongside, trajectory_dataset

__all__ = ["MEASURE_ALONGSIDE_AFTER", "MEASURE_IN_PROCESS", "run", "simulate"]

logger = logging.getLogger(__name__)

MEASURE_ALONGSIDE_AFTER = 16
"""Saved states waiting to be measured at which a run on two CPU threads goes from integrating at
both to integrating at one and measuring at the other (``studies/performance/schedules.py``: on
the paper-size GN run the fastest of the schedules measured with 186 states, within 7% of the
fastest with 20)."""

MEASURE_IN_PROCESS = False
"""Whether runs with much to measure (:func:`gnflow.measuring_process.worth_a_process`) on two CPU
threads measure their saved states in a second process (:mod:`gnflow.measuring_process`) instead
of a worker thread. ``gnflow run``, started as the ``gnflow`` command or ``python -m gnflow``,
sets it for the run. A spawned process imports the caller's main module again, so the Python API
leaves it off: a script that guards its work with ``if __name__ == "__main__":`` may set it."""


def simulate(
    config: RunConfig,
    *,
    progress: bool | None = None,
    checkpoint: CheckpointHook | None = None,
    resume: dict[str, object] | None = None,
    callback: Callback | None = None,
) -> xr.Dataset:
    """Run ``config`` and return its trajectory dataset (no dataset is written).

    ``checkpoint``, ``resume`` and ``callback`` (called after every accepted step with a
    :class:`~gnflow.solve.StepInfo`; a true return value stops the run) are passed to
    :func:`gnflow.solve.integrate`. The observables of
    ``config.observe.names`` are measured after integration in the same pass as the built-in
    variables, giving the numbers ``gnflow observe`` computes on the saved file.

    The run uses ``config.compute.threads`` torch threads (0: the free cores, see
    :mod:`gnflow.threads`); torch's setting is restored afterwards, and the number used is the
    dataset's ``gnflow_threads``. With two threads on the CPU (not resumed) it integrates at both
    until ``MEASURE_ALONGSIDE_AFTER`` saved states wait to be measured, then at one while the other
    measures them (:class:`gnflow.observables.SwitchingAlongside`); the states left are measured
    after, two at a time. The values agree with a run at ``compute.threads = 1`` to rounding.
    """
    with torch_threads(resolve_threads(config.compute.threads)) as threads:
        ds = _simulate(config, progress=progress, checkpoint=checkpoint, resume=resume, callback=callback)
    ds.attrs["gnflow_threads"] = threads
    return ds


def _simulate(
    config: RunConfig,
    *,
    progress: bool | None,
    checkpoint: CheckpointHook | None,
    resume: dict[str, object] | None,
    callback: Callback | None,
) -> xr.Dataset:
    experiment = build_experiment(config)
    validate_observable_names(config.observe.names, has_teacher=experiment.data.teacher_weights is not None)
    flow = experiment.flow
    schedule = flow.schedule(config.flow, experiment.data.n_train, run_seeds(config).batches)
    # a flow that runs as a step schedule (GGN) is integrated by Euler steps on it
    solver = config.solver if schedule is None else dataclasses.replace(config.solver, method="euler")
    chosen_by_auto = ""
    if solver.method == "auto":
        method, why = auto_choice(flow, experiment.weights0, solver)
        logger.info("solver.method = auto: %s (%s)", method, why)
        solver, chosen_by_auto = dataclasses.replace(solver, method=method), why
    elif solver.method in EXPONENTIAL_METHODS and auto_choice(flow, experiment.weights0, solver)[0] == "dopri5":
        logger.warning(
            "solver.method = %s will likely be slower than dopri5 here (%s); solver.method = 'auto' chooses by "
            "the measured crossovers (docs/kernel_exponential.md)",
            solver.method,
            auto_choice(flow, experiment.weights0, solver)[1],
        )
    description = flow.describe(dataclasses.replace(config, solver=solver), experiment.data.n_train)
    logger.info(
        "%s; %s; N=%d, M=%d, d=%d on %s (%s)",
        description.flow,
        description.solver,
        experiment.data.n_train,
        config.model.width,
        experiment.data.input_dim,
        experiment.device,
        config.dtype,
    )
    # two threads on the CPU: a run with much to measure integrates at one while a second process
    # measures its saved states (MeasuringProcess); others integrate at both until
    # MEASURE_ALONGSIDE_AFTER saved states wait, then at one while a thread measures them
    overlap = torch.get_num_threads() == 2 and experiment.device.type == "cpu" and resume is None
    sink: MeasuringProcess | SwitchingAlongside | None = None
    if overlap and MEASURE_IN_PROCESS and worth_a_process(experiment):
        sink = MeasuringProcess(experiment)
    elif overlap:
        sink = SwitchingAlongside(lambda: measuring_alongside(experiment), MEASURE_ALONGSIDE_AFTER)
    with torch_threads(torch.get_num_threads()):  # restores the count the sink lowers
        if isinstance(sink, MeasuringProcess):
            torch.set_num_threads(1)  # the other core measures from the first saved state on
        try:
            solution = integrate(
                flow,
                experiment.weights0,
                solver,
                progress=progress,
                schedule=schedule,
                checkpoint=checkpoint,
                resume=resume,
                callback=callback,
                on_save=sink,
            )
        finally:  # the worker stops with the integration, whatever ended it
            if isinstance(sink, MeasuringProcess):
                sink.stop()
            elif sink is not None:
                sink.finish()
    alongside = sink.worker if isinstance(sink, SwitchingAlongside) else sink
    # the command line prints its own summary of the run: at INFO this line would repeat it
    logger.debug(
        "%s at t=%.6g after %.2f s: %d evaluations, %d steps (%d rejected)",
        solution.status,
        solution.t[-1],
        solution.wall_time_s,
        solution.nfe[-1],
        solution.n_accepted[-1],
        solution.n_rejected[-1],
    )
    stats = flow.solve_stats
    if stats is not None and stats.calls:
        logger.debug(
            "damped Gram solves: %d solves, %d Cholesky factorizations, %d Lanczos steps, %d CG steps, "
            "%d eigvalsh fallbacks",
            stats.calls,
            stats.factorizations,
            stats.lanczos_steps,
            stats.cg_steps,
            stats.eigvalsh_fallbacks,
        )
    try:
        ds = trajectory_dataset(experiment, solution, progress=progress, alongside=alongside)
    finally:
        if isinstance(sink, MeasuringProcess):
            sink.close()
    if chosen_by_auto:
        ds.attrs["gnflow_solver"] = f"{description.solver}, chosen by solver.method = auto: {chosen_by_auto}"
    return ds


class _Interruptions:
    """SIGINT and SIGTERM alike interrupt the computation of a run (main thread only).

    While :meth:`computing`, SIGTERM raises :class:`~gnflow.status.SignalInterrupt` (and SIGINT
    a KeyboardInterrupt, as Python's own handler does), so that the loop writes the partial
    trajectory; while the file is written the signal is only remembered, so that the write
    finishes. The previous handlers are restored afterwards.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.writing = False
        self.received: int | None = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.writing:
            self.received = self.received or signum
            logger.warning("%s received: finishing the write first", signal.Signals(signum).name)
            return
        self.received = signum
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SignalInterrupt(signum)

    @contextmanager
    def installed(self) -> Iterator[_Interruptions]:
        """Install the handlers (a no-op outside the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.getsignal(signum) for signum in self.SIGNALS}
        for signum in self.SIGNALS:
            # a SIGINT handler of the caller's own (not Python's default) stays in place
            if signum != signal.SIGINT or previous[signum] is signal.default_int_handler:
                signal.signal(signum, self._handler)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _replaceable(target: Path, config: RunConfig, *, overwrite: bool, resume: bool, fresh_name: bool) -> bool:
    """Whether the run may replace ``target``; raises when an existing file must be kept."""
    if overwrite or not os.path.lexists(target):
        return overwrite
    if fresh_name:
        return False
    if not resume:
        message = f"{target} exists; pass --overwrite (overwrite=True) to replace it or choose another output"
        raise OutputExistsError(message)
    try:
        with xr.open_dataset(target, engine="netcdf4") as stored:
            stored_hash = config_hash(run_config_of(stored))
    except Exception as exc:  # a foreign or damaged file: never replaced by a resume
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OutputExistsError(f"{target} exists and is not a gnflow run file ({message}); not replaced") from None
    if stored_hash != config_hash(config):
        raise CheckpointError(
            f"{target} holds a run of another config (hash {stored_hash}, this run {config_hash(config)}); "
            "resume does not replace it: choose another output or pass --overwrite"
        )
    return True


def run(
    config: RunConfig,
    *,
    path: str | Path | None = None,
    progress: bool | None = None,
    resume: bool = False,
    callback: Callback | None = None,
    overwrite: bool = False,
    fresh_name: bool = False,
    history: str | None = None,
) -> tuple[xr.Dataset, Path]:
    """Run ``config`` and write its dataset to ``path`` (default ``config.output.path``).

    With ``output.checkpoint_every_s`` or ``output.checkpoint_every_steps`` set, the solver
    position is written to ``NAME.checkpoint.pt`` beside the output every so often; with
    ``resume=True`` an existing checkpoint of the same config is continued (the result equals
    the uninterrupted run). The checkpoint is deleted once a completed or converged run is
    written; a failed run keeps it.

    An existing file is never replaced unless ``overwrite``: the run refuses to start, and the
    name is claimed with no-replace semantics at the end (a file written meanwhile by another
    process is kept). With ``fresh_name`` the result goes to the first free ``NAME-K.nc`` instead.
    ``resume`` replaces the file of an earlier attempt of the same config only. The output folder
    is checked to be writable before the computation starts.

    In the main thread SIGTERM interrupts the run like Ctrl-C: the partial trajectory is written
    with ``failed: interrupted (signal SIGTERM)`` (Ctrl-C: ``failed: interrupted by the user``)
    and the checkpoint is kept.

    ``history`` is the command that made the file (``gnflow run CONFIG --set ...``), recorded with
    the time in the file's ``history`` attribute (default: what :func:`simulate` records).

    ``callback`` is passed to :func:`simulate`. Returns the dataset and the path written. A failed
    integration is still written, with ``gnflow_status = "failed: <reason>"``.

    Raises
    ------
    gnflow.dataset.OutputExistsError
        The output exists and ``overwrite`` is False (before the computation, or at the end when
        another process wrote it meanwhile).
    gnflow.checkpoint.CheckpointError
        ``resume=True`` and the checkpoint or the existing output belongs to another config, or
        the checkpoint cannot be read.
    OSError
        The output folder is not writable (before the computation) or the write failed (the path
        and the OS error, e.g. ENOSPC).
    """
    target = Path(path if path is not None else config.output.path)
    replace = _replaceable(target, config, overwrite=overwrite, resume=resume, fresh_name=fresh_name)
    check_writable(target.parent)
    ckpt_file = checkpoint_path(target)
    position = None
    if resume and ckpt_file.is_file():
        position = load_checkpoint(ckpt_file, config)
        logger.info("resuming from %s at t=%.6g", ckpt_file, position["recorder"]["t"][-1])
    elif resume:
        logger.info("no checkpoint %s; starting at t=0", ckpt_file)
    elif ckpt_file.is_file():
        logger.info("not resuming from the existing checkpoint %s (pass resume to continue it)", ckpt_file)
    hook = Checkpointer.for_output(target, config)
    interruptions = _Interruptions()
    with interruptions.installed():
        ds = simulate(config, progress=progress, checkpoint=hook, resume=position, callback=callback)
        if history is not None:
            ds.attrs["history"] = f"{utc_now()} {history}"
        interruptions.writing = True
        written = write_dataset(ds, target, overwrite=replace, fresh_name=fresh_name)
    if written != target:
        logger.info("%s was taken meanwhile; wrote %s", target, written)
    if not dataset_result(ds).failed:
        ckpt_file.unlink(missing_ok=True)
    return ds, written
