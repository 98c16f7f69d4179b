"""Observables of trajectories: kernel/feature regime and mean-field measurements.

Each observable reads the saved states of a trajectory dataset and adds documented variables to
it. The same code runs during ``gnflow run`` (``[observe] names = [...]``) and afterwards on any
saved file (``gnflow observe FILE.nc [NAMES ...]`` or :func:`observe`): the data and model are
always rebuilt from the dataset (``x_train``, ``y_train``, ``x_test``, ``y_test``,
``teacher_weights`` and the stored ``gnflow_config``), so both give identical numbers.

Notation: M particles w_i = (u_i, b_i, v_i), N training points, A_t = J J^T the Gram matrix
(empirical NTK) of the trained components at saved time t, r_t = f(X) - y. Observables:

- ``spectrum``: condition number lambda_max / lambda_min of A_t; full spectrum at a few times.
- ``weight_movement``: ||W_t - W_0|| / ||W_0|| overall, hidden (u, b) and output (v) parts.
- ``particle_distance``: quantiles over particles of ||w_i(t) - w_i(0)||.
- ``kernel_movement``: 1 - CKA(A_t, A_0) and ||A_t - A_0||_F / ||A_0||_F.
- ``teacher_alignment``: ||u_i||^2-weighted cosine distance of the hidden features to the nearest
  teacher feature and to the nearest initial feature.
- ``refit``: train and test loss of the output layer refit on the hidden features at t
  (and on the initial features: the random-features baseline).
- ``wasserstein``: W2 between the particle measures at t and at 0, and to the teacher measure.
- ``residual_topk``: fraction of ||r_t||^2 in the top-k eigendirections of A_t.
- ``norm_histogram``: histograms over particles of ||(u_i, b_i)|| and abs(v_i) at every saved time.
- ``regime``: ``"kernel"`` or ``"feature"`` from thresholds on weight and kernel movement.

The definitions, units and costs are in docs/observables.md.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import torch
import xarray as xr

from gnflow.config import (
    ConfigError,
    ObserveConfig,
    RunConfig,
    register_observable,
)
from gnflow.data import RegressionData, make_run_data
from gnflow.dataset import VariableInfo, apply_variable_attrs, register_variable, run_config_of
from gnflow.model import Linearization, ParticleModel
from gnflow.transport import wasserstein2

__all__ = [
    "OBSERVABLES",
    "Observable",
    "ObservableError",
    "Trajectory",
    "append_history",
    "centered_kernel_alignment",
    "feature_distance",
    "observe",
    "refit_output_layer",
    "regime_label",
    "trajectory_from_dataset",
    "validate_observable_names",
]

logger = logging.getLogger(__name__)


class ObservableError(ValueError):
    """An observable cannot be computed on this dataset (one-line message)."""


# --- inputs: the trajectory rebuilt from a dataset ---------------------------------------------


@dataclass(frozen=True, eq=False)
class Trajectory:
    """What the observables read: model, data and saved states, all float64 on one device.

    Attributes
    ----------
    model:
        The particle model of the run (activation, scaling, trained parts).
    t:
        Saved flow times, shape (t,).
    weights:
        Particles at the saved times, shape (t, particle, component).
    x_train, y_train:
        Training inputs (sample, input_dim) and labels (sample,).
    x_test, y_test:
        Test inputs and labels, or None when the dataset has no test set.
    teacher_weights:
        Teacher particles (teacher_particle, component), or None.
    """

    model: ParticleModel
    t: np.ndarray
    weights: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    teacher_weights: torch.Tensor | None

    @property
    def n_times(self) -> int:
        """Number of saved times."""
        return int(self.weights.shape[0])

    @property
    def width(self) -> int:
        """M, the number of particles."""
        return int(self.weights.shape[1])

    @property
    def input_dim(self) -> int:
        """d, the input dimension."""
        return self.model.input_dim


def _run_config(ds: xr.Dataset) -> RunConfig:
    try:
        return run_config_of(ds)
    except ValueError as exc:
        raise ObservableError(str(exc)) from None


def _rebuilt_test_data(config: RunConfig, x_train: np.ndarray) -> RegressionData | None:
    """The run's data drawn again from its config, when the file left the test set out."""
    try:
        data = make_run_data(config)
    except (OSError, ValueError) as exc:
        logger.warning("the dataset has no test set and the run's data cannot be rebuilt (%s)", exc)
        return None
    if data.x_train.shape != x_train.shape or not np.array_equal(data.x_train, x_train):
        logger.warning("the dataset has no test set and the rebuilt data do not match its x_train")
        return None
    return data


def trajectory_from_dataset(
    ds: xr.Dataset,
    *,
    data: RegressionData | None = None,
    device: torch.device | str = "cpu",
    need_test: bool = True,
) -> Trajectory:
    """Rebuild model, data and states from a trajectory dataset written by gnflow.

    Parameters
    ----------
    ds:
        A dataset with ``weights``, ``x_train``, ``y_train`` and ``gnflow_config``.
    data:
        The run's data, used only for the test set when ``ds`` does not hold it (during a run
        with ``output.save_test = false``). Without it the test set is drawn again from the
        stored config when ``need_test`` is true.
    device:
        Torch device of the computations (float64 everywhere).
    need_test:
        Whether a missing test set should be rebuilt.
    """
    for name in ("weights", "x_train", "y_train"):
        if name not in ds:
            raise ObservableError(f"the dataset has no {name!r} variable: not a gnflow trajectory")
    config = _run_config(ds)
    x_train = np.asarray(ds["x_train"].values, dtype=np.float64)
    model = ParticleModel.from_config(config, x_train.shape[1])

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float64), device=device)

    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    if "x_test" in ds and "y_test" in ds:
        x_test, y_test = ds["x_test"].values, ds["y_test"].values
    elif need_test:
        source = data if data is not None else _rebuilt_test_data(config, x_train)
        if source is not None and source.n_test > 0:
            x_test, y_test = source.x_test, source.y_test
    teacher = ds["teacher_weights"].values if "teacher_weights" in ds else None
    return Trajectory(
        model=model,
        t=np.asarray(ds["t"].values, dtype=np.float64),
        weights=tensor(ds["weights"].transpose("t", "particle", "component").values),
        x_train=tensor(x_train),
        y_train=tensor(ds["y_train"].values),
        x_test=None if x_test is None else tensor(x_test),
        y_test=None if y_test is None else tensor(y_test),
        teacher_weights=None if teacher is None else tensor(teacher),
    )


class _SavedState:
    """One saved state with its derived quantities computed once, on first use."""

    def __init__(self, trajectory: Trajectory, index: int) -> None:
        self.trajectory = trajectory
        self.index = index
        self.weights = trajectory.weights[index]

    @cached_property
    def linearization(self) -> Linearization:
        return self.trajectory.model.linearize(self.weights, self.trajectory.x_train)

    @cached_property
    def residual(self) -> torch.Tensor:
        """r = f(X) - y, shape (sample,)."""
        return self.linearization.predict() - self.trajectory.y_train

    @cached_property
    def gram(self) -> torch.Tensor:
        """A = J J^T of the trained components, (sample, sample)."""
        return self.linearization.gram()

    @cached_property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of A in ascending order."""
        return torch.linalg.eigvalsh(self.gram)

    @cached_property
    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (ascending) and orthonormal eigenvectors (columns) of A."""
        values, vectors = torch.linalg.eigh(self.gram)
        return values, vectors


# --- the mathematics, as plain functions ---------------------------------------------------------


def centered_kernel_alignment(a: torch.Tensor, b: torch.Tensor) -> float:
    """CKA(a, b) = <HaH, HbH>_F / (||HaH||_F ||HbH||_F) with H = I - 11^T / N.

    a, b: symmetric (sample, sample) kernel matrices. NaN when either centered kernel is 0.
    """

    def center(k: torch.Tensor) -> torch.Tensor:
        return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()

    ca, cb = center(a.double()), center(b.double())
    denominator = float(torch.linalg.norm(ca) * torch.linalg.norm(cb))
    if denominator == 0.0:
        return float("nan")
    return float((ca * cb).sum()) / denominator


def feature_distance(features: torch.Tensor, reference: torch.Tensor, *, chunk: int = 1024) -> float:
    """Weighted cosine distance of features to their nearest reference feature.

    D = sum_i ||u_i||^2 min_j sqrt(2 (1 - cos(u_i, r_j))) / sum_i ||u_i||^2, the metric of
    Arbel et al.'s code (the bias is not part of the feature). sqrt(2 (1 - cos)) is the
    Euclidean distance between the unit vectors, in [0, 2].

    Parameters
    ----------
    features:
        u_i, shape (particle, input_dim).
    reference:
        r_j, shape (reference_particle, input_dim); a zero vector has cos = 0 with everything.
    chunk:
        Rows of ``features`` per block, to bound the (chunk, reference_particle) work array.

    Returns
    -------
    float
        D in [0, 2] (dimensionless); NaN when every u_i is 0.
    """
    u = features.double()
    ref = reference.double()
    weight = (u * u).sum(1)
    total = float(weight.sum())
    if total == 0.0:
        return float("nan")
    tiny = torch.finfo(torch.float64).tiny
    unit_ref = ref / ref.norm(dim=1, keepdim=True).clamp_min(tiny)
    nearest = torch.empty(u.shape[0], dtype=torch.float64, device=u.device)
    for start in range(0, u.shape[0], chunk):
        block = u[start : start + chunk]
        unit = block / block.norm(dim=1, keepdim=True).clamp_min(tiny)
        best = (unit @ unit_ref.T).argmax(dim=1)
        # ||unit - unit_ref|| = sqrt(2 (1 - cos)) without the cancellation of 1 - cos near cos = 1
        nearest[start : start + chunk] = torch.linalg.vector_norm(unit - unit_ref[best], dim=1)
    return float((weight * nearest).sum()) / total


def refit_output_layer(
    model: ParticleModel,
    weights: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    ridge: float = 0.0,
    rcond: float = 1e-10,
) -> torch.Tensor:
    """Particles with the hidden part of ``weights`` and the output weights refit on (x, y).

    With the feature matrix Phi = c(M) sigma(X U^T + b) (sample, particle) = U S V^T (thin SVD,
    float64), the refit output weights are v = V diag(g(s)) U^T y with g(s) = s / (s^2 + ridge),
    which minimizes ||Phi v - y||^2 + ridge ||v||^2; for ridge = 0, g(s) = 1/s for
    s > rcond * s_max and 0 otherwise: the minimum-norm least-squares solution.

    Parameters
    ----------
    model:
        The particle model (its scaling c(M) and activation define Phi).
    weights:
        Particles (particle, component); only u and b are read.
    x, y:
        Inputs (sample, input_dim) and labels (sample,).
    ridge, rcond:
        Ridge penalty (units of Phi Phi^T, i.e. of the Gram matrix) and relative singular-value
        cutoff of the least-squares solution.

    Returns
    -------
    torch.Tensor
        (particle, component): u and b of ``weights``, v refit.
    """
    lin = model.linearize(weights, x)
    phi = lin.scale * lin.s.double()
    left, singular, right_t = torch.linalg.svd(phi, full_matrices=False)
    if ridge > 0:
        gain = singular / (singular * singular + ridge)
    else:
        keep = singular > rcond * singular[0]
        gain = torch.zeros_like(singular)
        gain[keep] = 1.0 / singular[keep]
    v = right_t.T @ (gain * (left.T @ y.double()))
    refit = weights.clone()
    refit[:, -1] = v.to(weights.dtype)
    return refit


def _loss(model: ParticleModel, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    r = (model.predict(weights, x) - y).double()
    return float(r @ r) / (2 * x.shape[0])


def regime_label(hidden_weight_movement: float, kernel_movement: float, options: ObserveConfig) -> str:
    """``"kernel"`` when both movements lie below their thresholds, else ``"feature"``.

    A run whose kernel movement is NaN (A_0 = 0: the kernel is undefined at t = 0) is labelled
    by its weight movement alone.
    """
    lazy_weights = hidden_weight_movement < options.regime_weight_threshold
    lazy_kernel = np.isnan(kernel_movement) or kernel_movement < options.regime_kernel_threshold
    return "kernel" if lazy_weights and lazy_kernel else "feature"


# --- observables: per-time accumulation, then variables -------------------------------------------


@dataclass(frozen=True)
class _Output:
    variables: dict[str, xr.DataArray]
    attrs: dict[str, str | int | float]


class Observable(ABC):
    """Measurements accumulated over the saved times of one trajectory."""

    name: ClassVar[str]
    variables: ClassVar[tuple[str, ...]]
    requires: ClassVar[tuple[str, ...]] = ()
    needs_teacher: ClassVar[bool] = False
    needs_test: ClassVar[bool] = False

    def __init__(self, trajectory: Trajectory, options: ObserveConfig) -> None:
        self.trajectory = trajectory
        self.options = options
        self.n_times = trajectory.n_times

    def update(self, state: _SavedState) -> None:  # noqa: B027 - optional hook
        """Measure one saved state (called in time order)."""

    @abstractmethod
    def result(self, ds: xr.Dataset) -> _Output:
        """The new variables and global attributes (``ds`` holds the variables of ``requires``)."""

    def _series(self) -> np.ndarray:
        return np.full(self.n_times, np.nan)


def _time_series(values: np.ndarray, **attrs: str) -> xr.DataArray:
    return xr.DataArray(values, dims=("t",), attrs=attrs)


class Spectrum(Observable):
    """Condition number of A_t at every saved time; the full spectrum at a few."""

    name = "spectrum"
    variables = ("gram_condition_number", "gram_spectrum", "t_spectrum", "eig")

    def __init__(self, trajectory: Trajectory, options: ObserveConfig) -> None:
        super().__init__(trajectory, options)
        self.condition = self._series()
        count = min(options.spectrum_count, self.n_times)
        self.spectrum_indices = (
            np.unique(np.round(np.linspace(0, self.n_times - 1, count)).astype(int)) if count else np.zeros(0, int)
        )
        self.spectra: list[np.ndarray] = []

    def update(self, state: _SavedState) -> None:
        values = state.eigenvalues
        lam_min, lam_max = float(values[0]), float(values[-1])
        self.condition[state.index] = lam_max / lam_min if lam_min > 0 else np.inf
        if state.index in self.spectrum_indices:
            self.spectra.append(values.flip(0).cpu().numpy())

    def result(self, ds: xr.Dataset) -> _Output:
        variables = {"gram_condition_number": _time_series(self.condition)}
        if len(self.spectrum_indices):
            t = self.trajectory.t[self.spectrum_indices]
            variables["gram_spectrum"] = xr.DataArray(
                np.stack(self.spectra),
                dims=("t_spectrum", "eig"),
                coords={
                    "t_spectrum": ("t_spectrum", t),
                    "eig": ("eig", np.arange(len(self.spectra[0]), dtype=np.int32)),
                },
            )
        return _Output(variables, {})


class WeightMovement(Observable):
    """Relative change of all weights, of the hidden part (u, b) and of the output part v."""

    name = "weight_movement"
    variables = ("weight_movement", "hidden_weight_movement", "output_weight_movement")

    def result(self, ds: xr.Dataset) -> _Output:
        w = self.trajectory.weights
        delta = w - w[0]
        d = self.trajectory.input_dim
        whole0 = float(torch.linalg.norm(w[0]))

        def relative(part: slice, label: str) -> tuple[np.ndarray, str]:
            norm0 = float(torch.linalg.norm(w[0][:, part]))
            change = torch.linalg.vector_norm(delta[:, :, part], dim=(1, 2)).cpu().numpy()
            if norm0 > 0:
                return change / norm0, f"||{label}_0||"
            if whole0 > 0:
                return change / whole0, "||W_0|| (the part is 0 at t = 0)"
            return np.full(self.n_times, np.nan), "undefined: W_0 = 0"

        overall, overall_norm = relative(slice(None), "W")
        hidden, hidden_norm = relative(slice(0, d + 1), "(u, b)")
        output, output_norm = relative(slice(d + 1, d + 2), "v")
        return _Output(
            {
                "weight_movement": _time_series(overall, normalization=overall_norm),
                "hidden_weight_movement": _time_series(hidden, normalization=hidden_norm),
                "output_weight_movement": _time_series(output, normalization=output_norm),
            },
            {},
        )


class ParticleDistance(Observable):
    """Quantiles over particles of the distance travelled ||w_i(t) - w_i(0)||."""

    name = "particle_distance"
    variables = ("particle_distance_quantile", "quantile")

    def result(self, ds: xr.Dataset) -> _Output:
        w = self.trajectory.weights
        distance = torch.linalg.vector_norm(w - w[0], dim=2).cpu().numpy()  # (t, particle)
        levels = np.asarray(self.options.quantiles, dtype=np.float64)
        values = np.quantile(distance, levels, axis=1).T  # linear interpolation between order statistics
        return _Output(
            {
                "particle_distance_quantile": xr.DataArray(
                    values, dims=("t", "quantile"), coords={"quantile": ("quantile", levels)}
                )
            },
            {},
        )


class KernelMovement(Observable):
    """1 - CKA(A_t, A_0) and the relative Frobenius change of the Gram matrix."""

    name = "kernel_movement"
    variables = ("kernel_movement", "kernel_relative_change")

    def __init__(self, trajectory: Trajectory, options: ObserveConfig) -> None:
        super().__init__(trajectory, options)
        self.alignment_loss = self._series()
        self.relative_change = self._series()
        self.gram0: torch.Tensor | None = None
        self.gram0_norm = 0.0

    def update(self, state: _SavedState) -> None:
        if self.gram0 is None:
            self.gram0 = state.gram
            self.gram0_norm = float(torch.linalg.norm(state.gram))
            if self.gram0_norm == 0.0:
                logger.warning(
                    "kernel_movement: A_0 = 0 (no trained component moves f at t = 0); kernel movement is NaN"
                )
        k = state.index
        self.alignment_loss[k] = 1.0 - centered_kernel_alignment(state.gram, self.gram0)
        if self.gram0_norm > 0:
            self.relative_change[k] = float(torch.linalg.norm(state.gram - self.gram0)) / self.gram0_norm

    def result(self, ds: xr.Dataset) -> _Output:
        return _Output(
            {
                "kernel_movement": _time_series(self.alignment_loss),
                "kernel_relative_change": _time_series(self.relative_change),
            },
            {},
        )


class TeacherAlignment(Observable):
    """Weighted cosine distance of the hidden features to the teacher and initial features."""

    name = "teacher_alignment"
    variables = ("teacher_feature_distance", "initial_feature_distance")
    needs_teacher = True

    def __init__(self, trajectory: Trajectory, options: ObserveConfig) -> None:
        super().__init__(trajectory, options)
        assert trajectory.teacher_weights is not None
        d = trajectory.input_dim
        self.teacher_features = trajectory.teacher_weights[:, :d]
        self.initial_features = trajectory.weights[0][:, :d]
        self.to_teacher = self._series()
        self.to_initial = self._series()

    def update(self, state: _SavedState) -> None:
        features = state.weights[:, : self.trajectory.input_dim]
        self.to_teacher[state.index] = feature_distance(features, self.teacher_features)
        self.to_initial[state.index] = feature_distance(features, self.initial_features)

    def result(self, ds: xr.Dataset) -> _Output:
        return _Output(
            {
                "teacher_feature_distance": _time_series(self.to_teacher),
                "initial_feature_distance": _time_series(self.to_initial),
            },
            {},
        )


class Refit(Observable):
    """Losses of the output layer refit on the hidden features at t (and at t = 0)."""

    name = "refit"
    variables = (
        "refit_train_loss",
        "refit_test_loss",
        "random_features_train_loss",
        "random_features_test_loss",
    )
    needs_test = True

    def __init__(self, trajectory: Trajectory, options: ObserveConfig) -> None:
        super().__init__(trajectory, options)
        self.train = self._series()
        self.test = self._series()
        if trajectory.x_test is None:
            logger.warning("refit: the dataset has no test set; refit_test_loss is NaN")

    def update(self, state: _SavedState) -> None:
        traj = self.trajectory
        refit = refit_output_layer(
            traj.model,
            state.weights,
            traj.x_train,
            traj.y_train,
            ridge=self.options.refit_ridge,
            rcond=self.options.refit_rcond,
        )
        self.train[state.index] = _loss(traj.model, refit, traj.x_train, traj.y_train)
        if traj.x_test is not None and traj.y_test is not None:
            self.test[state.index] = _loss(traj.model, refit, traj.x_test, traj.y_test)

    def result(self, ds: xr.Dataset) -> _Output:
        options = self.options
        method = (
            f"ridge regression, lambda = {options.refit_ridge:g}"
            if options.refit_ridge > 0
            else f"minimum-norm least squares, rcond = {options.refit_rcond:g}"
        )
        return _Output(
            {
                "refit_train_loss": _time_series(self.train, method=method),
                "refit_test_loss": _time_series(self.test, method=method),
                "random_features_train_loss": xr.DataArray(self.train[0], attrs={"method": method}),
                "random_features_test_loss": xr.DataArray(self.test[0], attrs={"method": method}),
            },
            {},
        )


class Wasserstein(Observable):
    """W2 from the particle measure at t to the initial measure and to the teacher measure."""

    name = "wasserstein"
    variables = ("wasserstein_initial", "wasserstein_teacher")

    def __init__(self, trajectory: Trajectory, options: ObserveConfig) -> None:
        super().__init__(trajectory, options)
        self.initial = trajectory.weights[0].cpu().numpy()
        self.teacher = None if trajectory.teacher_weights is None else trajectory.teacher_weights.cpu().numpy()
        self.to_initial = self._series()
        self.to_teacher = self._series()
        self.methods: dict[str, str] = {}

    def _distance(self, a: np.ndarray, b: np.ndarray, key: str) -> float:
        result = wasserstein2(
            a,
            b,
            exact_max=self.options.wasserstein_exact_max,
            n_projections=self.options.wasserstein_projections,
        )
        self.methods[key] = result.description
        return result.distance

    def update(self, state: _SavedState) -> None:
        particles = state.weights.cpu().numpy()
        self.to_initial[state.index] = self._distance(particles, self.initial, "initial")
        if self.teacher is not None:
            self.to_teacher[state.index] = self._distance(particles, self.teacher, "teacher")

    def result(self, ds: xr.Dataset) -> _Output:
        variables = {"wasserstein_initial": _time_series(self.to_initial, method=self.methods["initial"])}
        if self.teacher is not None:
            variables["wasserstein_teacher"] = _time_series(self.to_teacher, method=self.methods["teacher"])
        else:
            logger.info("wasserstein: no teacher in the dataset; only the distance to the initial measure")
        return _Output(variables, {})


class ResidualTopK(Observable):
    """Fraction of ||r_t||^2 in the k leading eigendirections of A_t."""

    name = "residual_topk"
    variables = ("residual_top_fraction", "top_k")

    def __init__(self, trajectory: Trajectory, options: ObserveConfig) -> None:
        super().__init__(trajectory, options)
        self.top_k = np.asarray(options.top_k, dtype=np.int32)
        self.fraction = np.full((self.n_times, len(self.top_k)), np.nan)

    def update(self, state: _SavedState) -> None:
        _, vectors = state.eigh
        # coefficients of r on the eigenvectors, largest eigenvalue first
        energy = ((vectors.T @ state.residual.double()) ** 2).flip(0)
        total = float(energy.sum())
        if total == 0.0:
            return
        cumulative = torch.cumsum(energy, 0).cpu().numpy() / total
        n = cumulative.shape[0]
        self.fraction[state.index] = cumulative[np.minimum(self.top_k, n) - 1]

    def result(self, ds: xr.Dataset) -> _Output:
        return _Output(
            {
                "residual_top_fraction": xr.DataArray(
                    self.fraction, dims=("t", "top_k"), coords={"top_k": ("top_k", self.top_k)}
                )
            },
            {},
        )


class NormHistogram(Observable):
    """Histograms over particles of ||(u_i, b_i)|| and abs(v_i) on bins shared by all times."""

    name = "norm_histogram"
    variables = (
        "hidden_norm_histogram",
        "hidden_norm",
        "hidden_norm_edges",
        "output_norm_histogram",
        "output_norm",
        "output_norm_edges",
    )

    def _histogram(self, norms: np.ndarray, name: str) -> dict[str, xr.DataArray]:
        """Fractions of particles per bin, shape (t, bin); bins shared by all saved times."""
        bins = self.options.histogram_bins
        top = float(norms.max())
        edges = np.linspace(0.0, top if top > 0 else 1.0, bins + 1)
        counts = np.stack([np.histogram(row, bins=edges)[0] for row in norms])
        centers = 0.5 * (edges[:-1] + edges[1:])
        return {
            f"{name}_histogram": xr.DataArray(
                counts / norms.shape[1], dims=("t", name), coords={name: (name, centers)}
            ),
            f"{name}_edges": xr.DataArray(edges, dims=(f"{name}_edge",)),
        }

    def result(self, ds: xr.Dataset) -> _Output:
        w = self.trajectory.weights
        d = self.trajectory.input_dim
        hidden = torch.linalg.vector_norm(w[:, :, : d + 1], dim=2).cpu().numpy()
        output = w[:, :, d + 1].abs().cpu().numpy()
        return _Output({**self._histogram(hidden, "hidden_norm"), **self._histogram(output, "output_norm")}, {})


class Regime(Observable):
    """The kernel/feature label from the final weight and kernel movement (global attributes)."""

    name = "regime"
    variables = ()
    requires = ("weight_movement", "kernel_movement")

    def result(self, ds: xr.Dataset) -> _Output:
        options = self.options
        weight = float(ds["hidden_weight_movement"].values[-1])
        kernel = float(ds["kernel_movement"].values[-1])
        label = regime_label(weight, kernel, options)
        return _Output(
            {},
            {
                "gnflow_regime": label,
                "gnflow_regime_hidden_weight_movement": weight,
                "gnflow_regime_kernel_movement": kernel,
                "gnflow_regime_rule": (
                    "kernel if final hidden_weight_movement < "
                    f"{options.regime_weight_threshold:g} and final "
                    f"kernel_movement < {options.regime_kernel_threshold:g}, else feature"
                ),
            },
        )


OBSERVABLES: dict[str, type[Observable]] = {
    cls.name: cls
    for cls in (
        Spectrum,
        WeightMovement,
        ParticleDistance,
        KernelMovement,
        TeacherAlignment,
        Refit,
        Wasserstein,
        ResidualTopK,
        NormHistogram,
        Regime,
    )
}

for _name in OBSERVABLES:
    register_observable(_name)

_VARIABLE_DOCS: dict[str, VariableInfo] = {
    "gram_condition_number": VariableInfo(
        "condition number lambda_max(A) / lambda_min(A) of the Gram matrix A = J J^T",
        "1",
        "inf where lambda_min <= 0 in float64",
    ),
    "gram_spectrum": VariableInfo("eigenvalues of the Gram matrix A = J J^T, largest first", "1"),
    "t_spectrum": VariableInfo("flow time of a stored Gram spectrum", "1"),
    "eig": VariableInfo("eigenvalue index, 0 = largest"),
    "weight_movement": VariableInfo("relative weight change ||W_t - W_0|| / ||W_0||", "1"),
    "hidden_weight_movement": VariableInfo("relative hidden-weight change ||(U,b)_t - (U,b)_0|| / ||(U,b)_0||", "1"),
    "output_weight_movement": VariableInfo(
        "relative output-weight change ||v_t - v_0|| / ||v_0||",
        "1",
        "divided by ||W_0|| instead when v_0 = 0; the normalization attribute says which",
    ),
    "particle_distance_quantile": VariableInfo("quantile over particles of the distance ||w_i(t) - w_i(0)||", "1"),
    "quantile": VariableInfo("quantile level", "1"),
    "kernel_movement": VariableInfo("kernel movement 1 - CKA(A_t, A_0) (centered kernel alignment)", "1"),
    "kernel_relative_change": VariableInfo("relative Gram change ||A_t - A_0||_F / ||A_0||_F", "1"),
    "teacher_feature_distance": VariableInfo(
        "||u_i||^2-weighted cosine distance sqrt(2(1 - cos)) of hidden features to the nearest teacher feature",
        "1",
        "bias excluded; 0 = every feature aligned with a teacher feature",
    ),
    "initial_feature_distance": VariableInfo(
        "||u_i||^2-weighted cosine distance sqrt(2(1 - cos)) of hidden features to the nearest initial feature",
        "1",
        "bias excluded",
    ),
    "refit_train_loss": VariableInfo("training loss after refitting the output layer on the hidden features at t", "1"),
    "refit_test_loss": VariableInfo("test loss after refitting the output layer on the hidden features at t", "1"),
    "random_features_train_loss": VariableInfo(
        "training loss of the output layer refit on the initial hidden features (random features)",
        "1",
    ),
    "random_features_test_loss": VariableInfo(
        "test loss of the output layer refit on the initial hidden features (random features)", "1"
    ),
    "wasserstein_initial": VariableInfo("Wasserstein-2 distance between the particle measures at t and at t = 0", "1"),
    "wasserstein_teacher": VariableInfo(
        "Wasserstein-2 distance between the particle measure at t and the teacher measure", "1"
    ),
    "residual_top_fraction": VariableInfo("fraction of ||r||^2 in the top-k eigendirections of the Gram matrix A", "1"),
    "top_k": VariableInfo("number k of leading eigendirections of A"),
    "hidden_norm_histogram": VariableInfo(
        "fraction of particles per bin of the hidden-weight norm ||(u_i, b_i)||", "1"
    ),
    "hidden_norm": VariableInfo("hidden-weight norm ||(u_i, b_i)|| at the bin center", "1"),
    "hidden_norm_edges": VariableInfo("bin edges of the hidden-weight norm ||(u_i, b_i)||", "1"),
    "output_norm_histogram": VariableInfo("fraction of particles per bin of the output-weight magnitude |v_i|", "1"),
    "output_norm": VariableInfo("output-weight magnitude |v_i| at the bin center", "1"),
    "output_norm_edges": VariableInfo("bin edges of the output-weight magnitude |v_i|", "1"),
}
for _name, _info in _VARIABLE_DOCS.items():
    register_variable(_name, _info)


def _with_requirements(names: Iterable[str]) -> list[str]:
    """Names in registry order, with every required observable included."""
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for required in OBSERVABLES[name].requires:
                add(required)

    for name in names:
        add(name)
    return [name for name in OBSERVABLES if name in wanted]


def validate_observable_names(names: Sequence[str], *, has_teacher: bool) -> None:
    """Raise ConfigError if a name is unknown or needs teacher--student data that are absent."""
    for name in names:
        if name not in OBSERVABLES:
            raise ConfigError(f"observe.names: unknown observable {name!r}; allowed: {', '.join(OBSERVABLES)}")
        if OBSERVABLES[name].needs_teacher and not has_teacher:
            raise ConfigError(
                f'observe.names: {name!r} needs teacher-student data (data.kind = "teacher"); '
                "this run has no teacher_weights"
            )


def _applicable(has_teacher: bool) -> list[str]:
    return [name for name, cls in OBSERVABLES.items() if has_teacher or not cls.needs_teacher]


def observe(
    ds: xr.Dataset,
    names: Sequence[str] | None = None,
    *,
    options: ObserveConfig | None = None,
    data: RegressionData | None = None,
    device: torch.device | str = "cpu",
) -> xr.Dataset:
    """Add observables to a trajectory dataset (the input is not modified).

    Parameters
    ----------
    ds:
        A trajectory dataset written by gnflow (``weights``, ``x_train``, ``y_train``,
        ``gnflow_config``; ``x_test``/``y_test`` and ``teacher_weights`` when present).
    names:
        Observables to compute (see ``OBSERVABLES``); None computes every observable that applies
        to the dataset (the teacher ones only when it holds ``teacher_weights``). Observables that
        others require (``regime`` needs ``weight_movement`` and ``kernel_movement``) are added.
    options:
        Parameters of the observables; default: the ``[observe]`` section of the stored config.
    data:
        The run's data, used for the test set when ``ds`` does not hold it.
    device:
        Torch device of the computations.

    Returns
    -------
    xr.Dataset
        A copy of ``ds`` with the observables' variables (replacing earlier values of the same
        variables), global attributes ``gnflow_observe`` (JSON: names and options) and, with
        ``regime``, ``gnflow_regime`` and the numbers behind it.
    """
    if options is None:
        options = _run_config(ds).observe
    has_teacher = "teacher_weights" in ds
    requested = _applicable(has_teacher) if names is None else list(names)
    validate_observable_names(requested, has_teacher=has_teacher)
    selected = _with_requirements(requested)
    need_test = any(OBSERVABLES[n].needs_test for n in selected)
    trajectory = trajectory_from_dataset(ds, data=data, device=device, need_test=need_test)
    observables = [OBSERVABLES[name](trajectory, options) for name in selected]
    logger.info("observing %s at %d saved times", ", ".join(selected), trajectory.n_times)
    with torch.no_grad():
        for index in range(trajectory.n_times):
            state = _SavedState(trajectory, index)
            for observable in observables:
                observable.update(state)

    written = {v for name in selected for v in OBSERVABLES[name].variables}
    out = ds.drop_vars([v for v in written if v in ds.variables])
    out.attrs = dict(ds.attrs)
    for observable in observables:
        output = observable.result(out)
        out = out.assign(output.variables)
        out.attrs.update(output.attrs)
    out.attrs["gnflow_observe"] = json.dumps(
        {
            "names": selected,
            "options": {k: v for k, v in _options_dict(options).items() if k != "names"},
        },
        sort_keys=True,
    )
    return apply_variable_attrs(out)


def _options_dict(options: ObserveConfig) -> dict[str, object]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}


def append_history(ds: xr.Dataset, line: str) -> None:
    """Append a timestamped line to the CF ``history`` attribute of ``ds`` (in place)."""
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
    previous = str(ds.attrs.get("history", "")).rstrip("\n")
    ds.attrs["history"] = f"{previous}\n{now} {line}" if previous else f"{now} {line}"
