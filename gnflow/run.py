"""One run from a :class:`~gnflow.config.RunConfig` to a trajectory dataset.

``simulate(config)`` draws the data and the initial particles, builds the flow, integrates it and
measures the saved states; ``run(config)`` also writes the NetCDF file. This is what
``gnflow run`` calls.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from gnflow.checkpoint import Checkpointer, checkpoint_path, load_checkpoint
from gnflow.config import ConfigError, FlowConfig, RunConfig, config_to_json
from gnflow.damping import make_damping
from gnflow.data import RegressionData, make_run_data, run_seeds
from gnflow.dataset import apply_variable_attrs, cf_attributes, dataset_result, write_dataset
from gnflow.flows import Flow, GaussNewtonFlow, GradientFlow, StateDiagnostics
from gnflow.ggn import check_batch_size, ggn_flow, ggn_schedule, ggn_step_size
from gnflow.model import ParticleModel
from gnflow.observables import observe, validate_observable_names
from gnflow.solve import CheckpointHook, Solution, integrate

__all__ = [
    "Experiment",
    "build_experiment",
    "make_flow",
    "make_run_data",
    "resolve_device",
    "run",
    "simulate",
    "trajectory_dataset",
]

logger = logging.getLogger(__name__)



def resolve_device(name: str) -> torch.device:
    """The torch device for ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:K"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f'device: {name!r} requested but CUDA is not available; use "auto" or "cpu"')
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device: {name!r} does not exist; {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device(name)


def make_flow(
    config: FlowConfig, model: ParticleModel, x: torch.Tensor, y: torch.Tensor, *, allow_tf32: bool = False
) -> Flow:
    """The vector field described by the ``[flow]`` section (``allow_tf32``: see ``[compute]``).

    For ``kind = "ggn"`` it is the Gauss--Newton flow with constant damping alpha / lam, whose
    Euler steps on mini-batches are the GGN steps (see :mod:`gnflow.ggn`).
    """
    if config.kind == "gradient":
        return GradientFlow(model, x, y, allow_tf32=allow_tf32)
    if model.activation == "relu":
        warnings.warn(
            "relu is not differentiable at 0: the Gauss-Newton flow is then only piecewise smooth, "
            "and adaptive solvers may take many small steps near the kinks",
            UserWarning,
            stacklevel=2,
        )
    if config.kind == "ggn":
        check_batch_size(config.batch_size, int(x.shape[0]))
        return ggn_flow(model, x, y, lam=config.lam, alpha=config.alpha, allow_tf32=allow_tf32)
    return GaussNewtonFlow(model, x, y, make_damping(config.damping, config.epsilon), allow_tf32=allow_tf32)


@dataclass(frozen=True, eq=False)
class Experiment:
    """Everything a run needs before integration: data, model, flow and initial state."""

    config: RunConfig
    data: RegressionData
    model: ParticleModel
    flow: Flow
    weights0: torch.Tensor  # (particle, component)
    device: torch.device
    dtype: torch.dtype

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        """A NumPy array as a tensor of the run's dtype and device."""
        return torch.as_tensor(array, dtype=self.dtype, device=self.device)


def build_experiment(config: RunConfig) -> Experiment:
    """Draw the data and initial particles (seeded) and build the flow of ``config``."""
    device = resolve_device(config.device)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    init_seed = run_seeds(config).init
    data = make_run_data(config)
    model = ParticleModel.from_config(config, data.input_dim)
    weights0 = model.initial_weights(
        config.model.width,
        init_scale=config.model.init_scale,
        output_init=config.model.output_init,
        seed=init_seed,
        dtype=dtype,
        device=device,
    )
    x = torch.as_tensor(data.x_train, dtype=dtype, device=device)
    y = torch.as_tensor(data.y_train, dtype=dtype, device=device)
    flow = make_flow(config.flow, model, x, y, allow_tf32=config.compute.allow_tf32)
    return Experiment(config=config, data=data, model=model, flow=flow, weights0=weights0, device=device, dtype=dtype)


def simulate(
    config: RunConfig,
    *,
    progress: bool | None = None,
    checkpoint: CheckpointHook | None = None,
    resume: dict[str, object] | None = None,
) -> xr.Dataset:
    """Run ``config`` and return its trajectory dataset (no dataset is written).

    ``checkpoint`` and ``resume`` are passed to :func:`gnflow.solve.integrate`. The observables of
    ``config.observe.names`` are computed from the dataset after integration, exactly as
    ``gnflow observe`` computes them on the saved file.
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
    if config.flow.kind == "ggn":
        schedule = ggn_schedule(config.flow, experiment.data.n_train, run_seeds(config).batches)
        euler = dataclasses.replace(config.solver, method="euler")
        solution = integrate(
            experiment.flow,
            experiment.weights0,
            euler,
            progress=progress,
            schedule=schedule,
            checkpoint=checkpoint,
            resume=resume,
        )
    else:
        solution = integrate(
            experiment.flow, experiment.weights0, config.solver, progress=progress, checkpoint=checkpoint, resume=resume
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
    if isinstance(experiment.flow, GaussNewtonFlow):
        logger.info("damped Gram solves: %s", experiment.flow.solver.stats)
    ds = trajectory_dataset(experiment, solution, progress=progress)
    if config.observe.names:
        ds = observe(ds, config.observe.names, options=config.observe, data=experiment.data, device=experiment.device)
    return ds


def run(
    config: RunConfig,
    *,
    path: str | Path | None = None,
    progress: bool | None = None,
    resume: bool = False,
) -> tuple[xr.Dataset, Path]:
    """Run ``config`` and write its dataset to ``path`` (default ``config.output.path``).

    With ``output.checkpoint_every_s`` or ``output.checkpoint_every_steps`` set, the solver
    position is written to ``NAME.checkpoint.pt`` beside the output every so often; with
    ``resume=True`` an existing checkpoint of the same config is continued (the result equals
    the uninterrupted run). The checkpoint is deleted once a completed or converged run is
    written; a failed run keeps it.

    Returns the dataset and the path written. A failed integration is still written, with
    ``gnflow_status = "failed: <reason>"``.

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
    ds = simulate(config, progress=progress, checkpoint=hook, resume=position)
    write_dataset(ds, target)
    if not dataset_result(ds).failed:
        ckpt_file.unlink(missing_ok=True)
    return ds, target


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
