"""The trajectory dataset of an integrated run: saved states measured, CF variables and attributes.

The schema itself (variable names, long names, units) is :data:`gnflow.dataset.VARIABLES`; this
module measures the saved states of a :class:`~gnflow.solve.Solution` and fills it in. The built-in
variables and the observables of ``[observe] names`` are measured in one pass
(:func:`gnflow.observables.measure`): each saved state is linearized once, and its Gram matrix
decomposed at most once, for all of them. A run on two CPU threads measures the built-in variables
while it integrates (:func:`measuring_alongside`), and this pass takes the states left.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
import torch
import xarray as xr

from gnflow.config import config_to_json
from gnflow.dataset import apply_variable_attrs, cf_attributes
from gnflow.experiment import Experiment
from gnflow.flows import Flow
from gnflow.observables import (
    OBSERVABLES,
    Measurement,
    MeasuringAlongside,
    Observable,
    SavedState,
    Trajectory,
    add_observables,
    make_observables,
    measure,
    select_observables,
    trajectory_from_dataset,
)
from gnflow.solve import Solution
from gnflow.status import RunResult, interruption_reason

__all__ = ["MeasuringWorker", "measures_eigenvectors", "measuring_alongside", "trajectory_dataset"]

logger = logging.getLogger(__name__)


class _BuiltinVariables(Measurement):
    """train_loss, test_loss, gram_eigmin, gram_eigmax and damping at every saved state.

    The damping is the flow's eps(w) from the state's Gram matrix and eigenvalues (NaN for a
    flow without damping). The arrays grow with the time indices measured (NaN where none was).
    """

    NAMES = ("train_loss", "test_loss", "gram_eigmin", "gram_eigmax", "damping")

    def __init__(self, flow: Flow, n_times: int = 0) -> None:
        self.flow = flow
        self.values = {name: np.full(n_times, np.nan) for name in self.NAMES}
        self.unmeasured: list[int] = []
        self.error = ""

    def _set(self, name: str, index: int, value: float) -> None:
        array = self.values[name]
        if index >= len(array):
            array = self.values[name] = np.concatenate(
                [array, np.full(max(index + 1, 2 * len(array)) - len(array), np.nan)]
            )
        array[index] = value

    def column(self, name: str, n_times: int) -> np.ndarray:
        """The variable ``name`` at time indices 0 to ``n_times`` - 1."""
        array = self.values[name][:n_times]
        return np.concatenate([array, np.full(n_times - len(array), np.nan)])

    def update(self, state: SavedState) -> None:
        k = state.index
        self._set("train_loss", k, state.train_loss)
        self._set("test_loss", k, state.test_loss)
        try:  # a non-finite or overflowing Gram matrix has no spectrum: NaN there, and a reason
            eigenvalues = state.eigenvalues
            self._set("gram_eigmin", k, float(eigenvalues[0]))
            self._set("gram_eigmax", k, float(eigenvalues[-1]))
            self._set("damping", k, self.flow.epsilon(state.gram, eigenvalues))
        except (RuntimeError, ValueError, ArithmeticError) as exc:
            self.unmeasured.append(k)
            self.error = self.error or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


class _From(Measurement):
    """``measurement`` at the time indices from ``start`` on (the earlier ones are measured already)."""

    def __init__(self, measurement: Measurement, start: int) -> None:
        self.measurement = measurement
        self.start = start
        self.needs_eigenvectors = measurement.needs_eigenvectors  # type: ignore[misc]

    def update(self, state: SavedState) -> None:
        if state.index >= self.start:
            self.measurement.update(state)


def _run_dtype_trajectory(experiment: Experiment, solution: Solution | None) -> Trajectory:
    """The saved states in the run's dtype, on the data the flow integrated (None: no states yet)."""
    data = experiment.data
    has_test = data.n_test > 0
    weights0 = experiment.weights0
    return Trajectory(
        model=experiment.model,
        t=np.asarray(solution.t if solution is not None else [], dtype=np.float64),
        weights=solution.weights if solution is not None else weights0.new_empty((0, *weights0.shape)),
        x_train=experiment.flow.x,
        y_train=experiment.flow.y,
        x_test=experiment.tensor(data.x_test) if has_test else None,
        y_test=experiment.tensor(data.y_test) if has_test else None,
        teacher_weights=None,
    )


class MeasuringWorker(Protocol):
    """What :func:`trajectory_dataset` reads of the sink a run was integrated with
    (:class:`~gnflow.observables.MeasuringAlongside`, :class:`gnflow.measuring_process.MeasuringProcess`):
    the built-in variables as ``measurements[0]``, measured at time indices 0 to k - 1 once
    :meth:`finish` has returned k."""

    measurements: list[Any]

    def finish(self) -> int:
        """Stop measuring; the number k of states measured."""


def measuring_alongside(experiment: Experiment) -> MeasuringAlongside:
    """A sink for ``integrate(on_save=...)`` that measures the built-in variables of the run's saved
    states in a worker thread while it integrates; pass it to :func:`trajectory_dataset`.

    Create it, and integrate, with torch at one thread (see
    :class:`~gnflow.observables.MeasuringAlongside`). In a float64 run whose observables read
    eigenvectors, the built-in variables read the eigenvalues of ``eigh``, as in their joint pass.
    """
    return MeasuringAlongside(
        _run_dtype_trajectory(experiment, None),
        [_BuiltinVariables(experiment.flow)],
        eigenvectors=measures_eigenvectors(experiment),
    )


def measures_eigenvectors(experiment: Experiment) -> bool:
    """Whether the built-in variables of a run measured apart from its observables read the
    eigenvalues of ``eigh``, as in their joint pass (a float64 run whose observables read
    eigenvectors) rather than ``eigvalsh``'s."""
    names = select_observables(experiment.config.observe.names, has_teacher=experiment.data.teacher_weights is not None)
    return experiment.dtype == torch.float64 and any(OBSERVABLES[name].needs_eigenvectors for name in names)


def _measure(
    experiment: Experiment,
    solution: Solution,
    inputs: xr.Dataset,
    builtins: _BuiltinVariables,
    progress: bool | None,
    start: int,
) -> list[Observable]:
    """The built-in variables from time index ``start`` on and the observables of ``[observe]
    names``, measured.

    The observables always read the float64 trajectory rebuilt from ``inputs`` (what ``gnflow
    observe`` reads from the file), so both give the same numbers; in a float64 run the built-in
    variables join their pass. Otherwise (a float32 run, or no observables) the built-in variables
    are measured on the solution's states in the run's dtype.
    """
    config = experiment.config
    names = select_observables(config.observe.names, has_teacher=experiment.data.teacher_weights is not None)
    if not names:
        measure(_run_dtype_trajectory(experiment, solution), [builtins], progress=progress, start=start)
        return []
    trajectory = trajectory_from_dataset(inputs, data=experiment.data, device=experiment.device)
    observables = make_observables(names, trajectory, config.observe)
    if experiment.dtype == torch.float64:
        measure(trajectory, [_From(builtins, start) if start else builtins, *observables], progress=progress)
    else:
        measure(_run_dtype_trajectory(experiment, solution), [builtins], progress=progress, start=start)
        measure(trajectory, observables, progress=progress)
    return observables


def trajectory_dataset(
    experiment: Experiment,
    solution: Solution,
    *,
    progress: bool | None = False,
    alongside: MeasuringWorker | None = None,
) -> xr.Dataset:
    """The CF-1.8 trajectory dataset of an integrated run (variables: ``gnflow.dataset.VARIABLES``).

    The train loss, Gram spectrum extremes, damping and test loss are measured at every saved
    state, together with the observables of the run's ``[observe] names`` (``progress``: show a
    bar while doing so; None = only on a terminal). ``alongside``, the :func:`measuring_alongside`
    sink the run was integrated with, is finished here and its states are not measured again.

    Measurements never lose the integration: a state whose Gram spectrum cannot be computed
    (non-finite or overflowing) gets NaN there and the run fails with that reason; an interruption
    (Ctrl-C, SIGTERM) while measuring keeps the states measured so far (NaN for the rest, no
    observables) and fails the run as interrupted.
    """
    config = experiment.config
    flow = experiment.flow
    data = experiment.data
    n_saved = len(solution.t)
    weights = solution.weights.detach().cpu().double().numpy()
    coords = {
        "t": ("t", solution.t[:n_saved]),
        "particle": ("particle", np.arange(config.model.width, dtype=np.int32)),
        "component": ("component", np.asarray(experiment.model.component_names, dtype=object)),
        "component_name": ("component", np.asarray(experiment.model.component_names, dtype=object)),
    }
    stored: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        "weights": (("t", "particle", "component"), weights),
        "x_train": (("sample", "input_dim"), data.x_train),
        "y_train": (("sample",), data.y_train),
    }
    if config.output.save_test and data.n_test > 0:
        stored["x_test"] = (("test_sample", "input_dim"), data.x_test)
        stored["y_test"] = (("test_sample",), data.y_test)
    if data.teacher_weights is not None:
        stored["teacher_weights"] = (("teacher_particle", "component"), data.teacher_weights)
    result = solution.result
    if alongside is not None:
        builtins = alongside.measurements[0]
        assert isinstance(builtins, _BuiltinVariables)
    else:
        builtins = _BuiltinVariables(experiment.flow, n_saved)
    try:
        # finishing may measure (a measuring process leaves half of the last states here)
        start = alongside.finish() if alongside is not None else 0
        inputs = xr.Dataset(stored, coords=coords, attrs={"gnflow_config": config_to_json(config)})
        observables = _measure(experiment, solution, inputs, builtins, progress, min(start, n_saved))
    except KeyboardInterrupt as exc:  # keep the finished integration: states measured so far, NaN for the rest
        observables = []
        reason = f"{interruption_reason(exc)} while measuring saved states (integration: {solution.status})"
        result = RunResult.failure(reason)
        logger.warning("%s; writing the states measured so far", reason)
    if builtins.unmeasured:
        note = f"Gram spectrum not computable at {len(builtins.unmeasured)} saved states ({builtins.error})"
        logger.warning("%s: NaN there", note)
        result = RunResult.failure(f"{result.reason}; {note}" if result.failed else note)
    time_dims = ("t",)
    variables: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        "weights": stored["weights"],
        "train_loss": (time_dims, builtins.column("train_loss", n_saved)),
        "test_loss": (time_dims, builtins.column("test_loss", n_saved)),
        "gram_eigmin": (time_dims, builtins.column("gram_eigmin", n_saved)),
        "gram_eigmax": (time_dims, builtins.column("gram_eigmax", n_saved)),
        # int32: CF-1.8 has no 64-bit integers
        "nfe": (time_dims, solution.nfe.astype(np.int32)),
        "n_steps": (time_dims, solution.n_accepted.astype(np.int32)),
        "n_rejected": (time_dims, solution.n_rejected.astype(np.int32)),
        "x_train": stored["x_train"],
        "y_train": stored["y_train"],
    }
    if flow.damping is not None:
        variables["damping"] = (time_dims, builtins.column("damping", n_saved))
    if solution.epoch is not None:  # a step schedule over mini-batches (GGN)
        variables["iteration"] = (time_dims, solution.n_accepted.astype(np.int32))  # CF 1.8 has no int64
        variables["epoch"] = (time_dims, solution.epoch)
    variables.update({name: stored[name] for name in ("x_test", "y_test", "teacher_weights") if name in stored})
    ds = xr.Dataset(variables, coords=coords)
    if "iteration" in ds:
        ds = ds.set_coords(["iteration", "epoch"])
    description = flow.describe(config, data.n_train)
    ds.attrs = cf_attributes(
        description.title,
        f"gnflow run ({experiment.data.name})",
        gnflow_config=config_to_json(config),
        gnflow_flow=description.flow,
        gnflow_solver=description.solver,
        gnflow_status=str(result),
        gnflow_wall_time_s=float(solution.wall_time_s),
        gnflow_cpu_time_s=float(solution.stats["cpu_time_s"]),
        gnflow_nfe=int(solution.nfe[-1]),
        gnflow_steps=int(solution.n_accepted[-1]),
        gnflow_rejected_steps=int(solution.n_rejected[-1]),
        gnflow_device=str(experiment.device),
        gnflow_dtype=config.dtype,
        gnflow_data=data.name,
    )
    if experiment.start is not None:
        ds.attrs.update(
            gnflow_init_from=experiment.start.source,
            gnflow_init_from_t=experiment.start.t,
            gnflow_init_from_sha256=experiment.start.sha256,
        )
    ds = apply_variable_attrs(ds)
    return add_observables(ds, observables, config.observe) if observables else ds
