"""Everything a run needs before integration, built from its config: data, model, flow, state.

:func:`build_experiment` draws the data and the initial particles from the run's seed streams
(:func:`gnflow.data.run_seeds`) and builds the vector field of the ``[flow]`` section.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gnflow.config import ConfigError, FlowConfig, RunConfig
from gnflow.data import RegressionData, make_run_data, run_seeds
from gnflow.dataset import file_sha256, read_dataset
from gnflow.flows import Flow, flow_kind
from gnflow.model import ParticleModel

__all__ = ["Experiment", "StartState", "build_experiment", "load_start_state", "make_flow", "resolve_device"]


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

    It is the flow class registered as ``config.kind`` (:func:`gnflow.flows.flow_kind`), built by
    its :meth:`~gnflow.flows.Flow.from_config`. For ``kind = "ggn"`` it is the Gauss--Newton flow
    with constant damping alpha / lam, whose Euler steps on mini-batches are the GGN steps (see
    :mod:`gnflow.ggn`). Second-order flows warn for relu, whose kinks make them only piecewise smooth.
    """
    kind = flow_kind(config.kind)
    if kind.second_order and model.activation == "relu":
        warnings.warn(
            "relu is not differentiable at 0: the Gauss-Newton flow is then only piecewise smooth, "
            "and adaptive solvers may take many small steps near the kinks",
            UserWarning,
            stacklevel=2,
        )
    return kind.from_config(config, model, x, y, allow_tf32=allow_tf32)


@dataclass(frozen=True)
class StartState:
    """Where the initial state of a run started from a file came from (``model.init_from``).

    Attributes
    ----------
    source:
        The file's path as given.
    t:
        The flow time of the state in that file.
    sha256:
        The file's SHA-256 digest when the run started.
    """

    source: str
    t: float
    sha256: str


def load_start_state(
    spec: str, data: RegressionData, width: int, *, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, StartState]:
    """The saved state named by ``model.init_from`` (``"PATH"`` or ``"PATH@T"``), checked against
    this run: ``width`` particles of the data's input dimension, trained on the same data.

    Returns the weights, shape (particle, component), and their :class:`StartState`.

    Raises
    ------
    ConfigError
        One line naming the file and what does not fit.
    """
    path_text, at = spec.rsplit("@", 1) if "@" in spec else (spec, "")
    path = Path(path_text)
    where = f"model.init_from: {path}"
    if not path.is_file():
        raise ConfigError(f"{where} is {'a directory' if path.is_dir() else 'not a file'} (allowed: a gnflow run file)")
    try:
        ds = read_dataset(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{where} cannot be read as a gnflow run file: {str(exc).splitlines()[0]}") from None
    if "weights" not in ds or "t" not in ds.coords or ds.sizes.get("t", 0) == 0:
        raise ConfigError(f"{where} holds no saved states (variable weights over t)")
    times = np.asarray(ds["t"].values, dtype=np.float64)
    if at:
        target = float(at)
        hits = np.nonzero(np.isclose(times, target, rtol=1e-9, atol=0.0))[0]
        if hits.size == 0:
            raise ConfigError(
                f"{where} has no saved state at t = {target:g}; its {times.size} saved times run from "
                f"{times[0]:g} to {times[-1]:g} (gnflow info {path} lists them)"
            )
        index = int(hits[0])
    else:
        index = times.size - 1
    weights = np.asarray(ds["weights"].values[index], dtype=np.float64)
    expected = (width, data.input_dim + 2)
    if weights.shape != expected:
        raise ConfigError(
            f"{where} holds {weights.shape[0]} particles of {weights.shape[1]} components; this run has "
            f"model.width = {width} particles of {expected[1]} (input dimension {data.input_dim} + 2)"
        )
    if not np.all(np.isfinite(weights)):
        raise ConfigError(f"{where}: the state at t = {times[index]:g} is not finite")
    for name, ours in (("x_train", data.x_train), ("y_train", data.y_train)):
        if name not in ds:
            raise ConfigError(f"{where} does not store its training data ({name}), so it cannot be checked")
        theirs = np.asarray(ds[name].values, dtype=np.float64)
        if theirs.shape != np.shape(ours) or not np.array_equal(theirs, np.asarray(ours, dtype=np.float64)):
            raise ConfigError(
                f"{where} was trained on other data ({name} differs): use the file's [data] section and seed"
            )
    start = StartState(source=path_text, t=float(times[index]), sha256=file_sha256(path))
    return torch.as_tensor(weights, dtype=dtype, device=device), start


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
    start: StartState | None = None  # the file of model.init_from, when the state came from one

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
    start = None
    if config.model.init_from:
        weights0, start = load_start_state(config.model.init_from, data, config.model.width, dtype=dtype, device=device)
    else:
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
    flow_config = config.flow
    if flow_config.epsilon_scaling == "per_particle":  # eps0 / M: the damping follows A ~ 1/M
        flow_config = dataclasses.replace(flow_config, epsilon=flow_config.epsilon / config.model.width)
    flow = make_flow(flow_config, model, x, y, allow_tf32=config.compute.allow_tf32)
    return Experiment(
        config=config, data=data, model=model, flow=flow, weights0=weights0, device=device, dtype=dtype, start=start
    )
