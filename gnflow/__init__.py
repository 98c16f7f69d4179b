"""gnflow: Gauss-Newton and gradient flows of two-layer networks as particle ODEs.

The top-level namespace holds the verbs and the objects a user holds: reading a config,
running it, integrating a flow, observing and reading trajectories, and the typed results. The
rest lives in the module of its concept (``gnflow.config`` for the section dataclasses,
``gnflow.damping``, ``gnflow.ggn``, ``gnflow.solve``, ...); docs/architecture.md maps them.

Names that were top-level before the namespace was curated (``gnflow.SolverConfig``,
``gnflow.save_times``, ...) still resolve, as aliases of their module's object: see
:data:`COMPATIBILITY_ALIASES`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gnflow")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

import importlib as _importlib

from gnflow import accessor, realdata  # noqa: F401  (the ds.gnflow accessor; data.kind "diabetes" and "concrete")
from gnflow.config import ConfigError, RunConfig, load_config
from gnflow.damping import ConstantDamping, EigminDamping, RelativeDamping
from gnflow.data import RegressionData, make_data
from gnflow.dataset import read_dataset, write_dataset
from gnflow.experiment import Experiment, build_experiment
from gnflow.flows import Flow, GaussNewtonFlow, GradientFlow
from gnflow.ggn import GGN
from gnflow.model import ParticleModel
from gnflow.observables import observe
from gnflow.runs import open_runs
from gnflow.simulation import run, simulate
from gnflow.solve import Solution, StepInfo, StepSchedule, integrate
from gnflow.status import RunResult, RunStatus
from gnflow.training import train_module

__all__ = [
    "GGN",
    "ConfigError",
    "ConstantDamping",
    "EigminDamping",
    "Experiment",
    "Flow",
    "GaussNewtonFlow",
    "GradientFlow",
    "ParticleModel",
    "RegressionData",
    "RelativeDamping",
    "RunConfig",
    "RunResult",
    "RunStatus",
    "Solution",
    "StepInfo",
    "StepSchedule",
    "__version__",
    "build_experiment",
    "integrate",
    "load_config",
    "make_data",
    "observe",
    "open_runs",
    "read_dataset",
    "run",
    "simulate",
    "train_module",
    "write_dataset",
]

#: Former top-level names -> the module that defines them. ``gnflow.<name>`` resolves to that
#: module's object, so scripts written against the wider namespace keep working.
COMPATIBILITY_ALIASES: dict[str, str] = {
    "ComputeConfig": "gnflow.config",
    "DataConfig": "gnflow.config",
    "FlowConfig": "gnflow.config",
    "ModelConfig": "gnflow.config",
    "ObserveConfig": "gnflow.config",
    "OutputConfig": "gnflow.config",
    "SolverConfig": "gnflow.config",
    "config_from_dict": "gnflow.config",
    "config_to_dict": "gnflow.config",
    "DampedGramSolver": "gnflow.damping",
    "solve_damped": "gnflow.damping",
    "DataError": "gnflow.data",
    "load_data_file": "gnflow.data",
    "teacher_student": "gnflow.data",
    "FlowError": "gnflow.flows",
    "RegressionBatch": "gnflow.ggn",
    "ggn_damping": "gnflow.ggn",
    "ggn_flow": "gnflow.ggn",
    "ggn_schedule": "gnflow.ggn",
    "ggn_step_size": "gnflow.ggn",
    "Linearization": "gnflow.model",
    "ObservableError": "gnflow.observables",
    "save_times": "gnflow.solve",
    "history_dataset": "gnflow.training",
}


def __getattr__(name: str) -> object:
    module = COMPATIBILITY_ALIASES.get(name)
    if module is None:
        raise AttributeError(f"module 'gnflow' has no attribute {name!r}")
    return getattr(_importlib.import_module(module), name)
