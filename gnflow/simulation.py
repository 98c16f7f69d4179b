"""One run from a :class:`~gnflow.config.RunConfig` to a trajectory dataset and its file.

``simulate(config)`` builds the experiment, integrates its flow and measures the saved states;
``run(config)`` also writes the NetCDF file (with checkpoints and resume). This is what
``gnflow run`` calls.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import xarray as xr

from gnflow.checkpoint import Checkpointer, checkpoint_path, load_checkpoint
from gnflow.config import RunConfig
from gnflow.data import run_seeds
from gnflow.dataset import dataset_result, write_dataset
from gnflow.experiment import build_experiment
from gnflow.observables import validate_observable_names
from gnflow.solve import Callback, CheckpointHook, integrate
from gnflow.trajectory import trajectory_dataset

__all__ = ["run", "simulate"]

logger = logging.getLogger(__name__)


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
    """
    experiment = build_experiment(config)
    validate_observable_names(config.observe.names, has_teacher=experiment.data.teacher_weights is not None)
    logger.info(
        "%s flow, N=%d, M=%d, d=%d, %s on %s (%s)",
        experiment.flow.name,
        experiment.data.n_train,
        config.model.width,
        experiment.data.input_dim,
        config.solver.method,
        experiment.device,
        config.dtype,
    )
    flow = experiment.flow
    schedule = flow.schedule(config.flow, experiment.data.n_train, run_seeds(config).batches)
    # a flow that runs as a step schedule (GGN) is integrated by Euler steps on it
    solver = config.solver if schedule is None else dataclasses.replace(config.solver, method="euler")
    solution = integrate(
        flow,
        experiment.weights0,
        solver,
        progress=progress,
        schedule=schedule,
        checkpoint=checkpoint,
        resume=resume,
        callback=callback,
    )
    logger.info(
        "%s at t=%.6g after %.2f s: %d evaluations, %d steps (%d rejected)",
        solution.status,
        solution.t[-1],
        solution.wall_time_s,
        solution.nfe[-1],
        solution.n_accepted[-1],
        solution.n_rejected[-1],
    )
    if flow.solve_stats is not None:
        logger.info("damped Gram solves: %s", flow.solve_stats)
    return trajectory_dataset(experiment, solution, progress=progress)


def run(
    config: RunConfig,
    *,
    path: str | Path | None = None,
    progress: bool | None = None,
    resume: bool = False,
    callback: Callback | None = None,
) -> tuple[xr.Dataset, Path]:
    """Run ``config`` and write its dataset to ``path`` (default ``config.output.path``).

    With ``output.checkpoint_every_s`` or ``output.checkpoint_every_steps`` set, the solver
    position is written to ``NAME.checkpoint.pt`` beside the output every so often; with
    ``resume=True`` an existing checkpoint of the same config is continued (the result equals
    the uninterrupted run). The checkpoint is deleted once a completed or converged run is
    written; a failed run keeps it.

    ``callback`` is passed to :func:`simulate`. Returns the dataset and the path written. A failed
    integration is still written, with ``gnflow_status = "failed: <reason>"``.

    Raises
    ------
    gnflow.checkpoint.CheckpointError
        ``resume=True`` and the checkpoint belongs to another config or cannot be read.
    """
    target = Path(path if path is not None else config.output.path)
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
    ds = simulate(config, progress=progress, checkpoint=hook, resume=position, callback=callback)
    write_dataset(ds, target)
    if not dataset_result(ds).failed:
        ckpt_file.unlink(missing_ok=True)
    return ds, target
