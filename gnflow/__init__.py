"""gnflow: Gauss-Newton and gradient flows of two-layer networks as particle ODEs.

The public API is what this module exports; implementation modules are documented in the API
reference.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gnflow")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from gnflow import realdata  # noqa: F401  (registers data.kind "diabetes" and "concrete")
from gnflow.config import (
    ComputeConfig,
    ConfigError,
    DataConfig,
    FlowConfig,
    ModelConfig,
    ObserveConfig,
    OutputConfig,
    RunConfig,
    SolverConfig,
    config_from_dict,
    config_to_dict,
    load_config,
)
from gnflow.damping import (
    ConstantDamping,
    DampedGramSolver,
    EigminDamping,
    RelativeDamping,
    solve_damped,
)
from gnflow.data import DataError, RegressionData, load_data_file, make_data, teacher_student
from gnflow.dataset import read_dataset, write_dataset
from gnflow.experiment import build_experiment
from gnflow.flows import Flow, FlowError, GaussNewtonFlow, GradientFlow
from gnflow.ggn import GGN, RegressionBatch, ggn_damping, ggn_flow, ggn_schedule, ggn_step_size
from gnflow.model import Linearization, ParticleModel
from gnflow.observables import ObservableError, observe
from gnflow.simulation import run, simulate
from gnflow.solve import Solution, StepSchedule, integrate, save_times
from gnflow.training import history_dataset, train_module

__all__ = [
    "GGN",
    "ComputeConfig",
    "ConfigError",
    "ConstantDamping",
    "DampedGramSolver",
    "DataConfig",
    "DataError",
    "EigminDamping",
    "Flow",
    "FlowConfig",
    "FlowError",
    "GaussNewtonFlow",
    "GradientFlow",
    "Linearization",
    "ModelConfig",
    "ObservableError",
    "ObserveConfig",
    "OutputConfig",
    "ParticleModel",
    "RegressionBatch",
    "RegressionData",
    "RelativeDamping",
    "RunConfig",
    "Solution",
    "SolverConfig",
    "StepSchedule",
    "__version__",
    "build_experiment",
    "config_from_dict",
    "config_to_dict",
    "ggn_damping",
    "ggn_flow",
    "ggn_schedule",
    "ggn_step_size",
    "history_dataset",
    "integrate",
    "load_config",
    "load_data_file",
    "make_data",
    "observe",
    "read_dataset",
    "run",
    "save_times",
    "simulate",
    "solve_damped",
    "teacher_student",
    "train_module",
    "write_dataset",
]
