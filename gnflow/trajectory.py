"""The trajectory dataset of an integrated run: saved states measured, CF variables and attributes.

The schema itself (variable names, long names, units) is :data:`gnflow.dataset.VARIABLES`; this
module measures the saved states of a :class:`~gnflow.solve.Solution` and fills it in.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from gnflow.config import config_to_json
from gnflow.dataset import apply_variable_attrs, cf_attributes
from gnflow.experiment import Experiment
from gnflow.flows import GaussNewtonFlow, StateDiagnostics
from gnflow.ggn import ggn_step_size
from gnflow.solve import Solution

__all__ = ["trajectory_dataset"]


def _measure_saved_states(
    experiment: Experiment, weights: torch.Tensor, progress: bool | None
) -> tuple[list[StateDiagnostics], np.ndarray]:
    """Diagnostics and test loss at each saved state (test loss NaN when there is no test set)."""
    data = experiment.data
    x_test = experiment.tensor(data.x_test)
    y_test = experiment.tensor(data.y_test)
    diagnostics: list[StateDiagnostics] = []
    test_loss = np.full(weights.shape[0], np.nan)
    states = tqdm(
        weights,
        desc="measuring saved states",
        unit="state",
        leave=False,
        disable=None if progress is None else not progress,
    )
    for k, w in enumerate(states):
        diagnostics.append(experiment.flow.diagnostics(w))
        if data.n_test > 0:
            r = (experiment.model.predict(w, x_test) - y_test).double()
            test_loss[k] = float(r @ r) / (2 * data.n_test)
    return diagnostics, test_loss


def trajectory_dataset(experiment: Experiment, solution: Solution, *, progress: bool | None = False) -> xr.Dataset:
    """The CF-1.8 trajectory dataset of an integrated run (variables: ``gnflow.dataset.VARIABLES``).

    The train loss, Gram spectrum extremes, damping and test loss are measured at every saved
    state (``progress``: show a bar while doing so; None = only on a terminal).
    """
    config = experiment.config
    flow = experiment.flow
    data = experiment.data
    n_saved = len(solution.t)
    diagnostics, test_loss = _measure_saved_states(experiment, solution.weights, progress)
    time_dims = ("t",)
    variables: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        "weights": (("t", "particle", "component"), solution.weights.detach().cpu().double().numpy()),
        "train_loss": (time_dims, np.asarray([d.train_loss for d in diagnostics])),
        "test_loss": (time_dims, test_loss),
        "gram_eigmin": (time_dims, np.asarray([d.gram_eigmin for d in diagnostics])),
        "gram_eigmax": (time_dims, np.asarray([d.gram_eigmax for d in diagnostics])),
        # int32: CF-1.8 has no 64-bit integers
        "nfe": (time_dims, solution.nfe.astype(np.int32)),
        "n_steps": (time_dims, solution.n_accepted.astype(np.int32)),
        "n_rejected": (time_dims, solution.n_rejected.astype(np.int32)),
        "x_train": (("sample", "input_dim"), data.x_train),
        "y_train": (("sample",), data.y_train),
    }
    if isinstance(flow, GaussNewtonFlow):
        variables["damping"] = (time_dims, np.asarray([d.damping for d in diagnostics]))
    if config.flow.kind == "ggn" and solution.epoch is not None:
        variables["iteration"] = (time_dims, solution.n_accepted.astype(np.int32))  # CF 1.8 has no int64
        variables["epoch"] = (time_dims, solution.epoch)
    if config.output.save_test and data.n_test > 0:
        variables["x_test"] = (("test_sample", "input_dim"), data.x_test)
        variables["y_test"] = (("test_sample",), data.y_test)
    if data.teacher_weights is not None:
        variables["teacher_weights"] = (("teacher_particle", "component"), data.teacher_weights)
    coords = {
        "t": ("t", solution.t[:n_saved]),
        "particle": ("particle", np.arange(config.model.width, dtype=np.int32)),
        "component_name": ("component", np.asarray(experiment.model.component_names, dtype=object)),
    }
    ds = xr.Dataset(variables, coords=coords)
    if "iteration" in ds:
        ds = ds.set_coords(["iteration", "epoch"])
    solver = config.solver
    solver_text = (
        f"{solver.method} (rtol={solver.rtol:g}, atol={solver.atol:g})"
        if solver.adaptive
        else f"{solver.method} (step_size={solver.step_size:g})"
    )
    flow_text = (
        flow.name
        if flow.name == "gradient"
        else f"{flow.name} ({config.flow.damping} damping, epsilon={config.flow.epsilon:g})"
    )
    if config.flow.kind == "ggn":
        fc = config.flow
        b = min(fc.batch_size, data.n_train)
        solver_text = f"euler (step_size = b / lam = {ggn_step_size(b, fc.lam):g} per full batch of b = {b})"
        flow_text = (
            f"ggn (lam={fc.lam:g}, alpha={fc.alpha:g}, batch_size={b}, batch_order={fc.batch_order}): Euler steps "
            "of size b/lam of the gauss_newton flow on each batch with constant damping "
            f"alpha/lam = {fc.alpha / fc.lam:g}"
        )
    ds.attrs = cf_attributes(
        f"gnflow {config.flow.kind} {'steps' if config.flow.kind == 'ggn' else 'flow'} of a two-layer network "
        f"of {config.model.width} particles",
        f"gnflow run ({experiment.data.name})",
        gnflow_config=config_to_json(config),
        gnflow_flow=flow_text,
        gnflow_solver=solver_text,
        gnflow_status=solution.status,
        gnflow_wall_time_s=float(solution.wall_time_s),
        gnflow_nfe=int(solution.nfe[-1]),
        gnflow_steps=int(solution.n_accepted[-1]),
        gnflow_rejected_steps=int(solution.n_rejected[-1]),
        gnflow_device=str(experiment.device),
        gnflow_dtype=config.dtype,
        gnflow_data=data.name,
    )
    return apply_variable_attrs(ds)
