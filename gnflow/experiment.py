"""Everything a run needs before integration, built from its config: data, model, flow, state.

:func:`build_experiment` draws the data and the initial particles from the run's seed streams
(:func:`gnflow.data.run_seeds`) and builds the vector field of the ``[flow]`` section.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from gnflow.config import ConfigError, FlowConfig, RunConfig
from gnflow.data import RegressionData, make_run_data, run_seeds
from gnflow.flows import Flow, flow_kind
from gnflow.model import ParticleModel

__all__ = ["Experiment", "build_experiment", "make_flow", "resolve_device"]


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
