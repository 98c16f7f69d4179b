"""The observables gnflow ships, their registry and the documentation of their variables.

Adding an observable: one :class:`~gnflow.observables.Observable` subclass here (or in a module of
its own), one entry in :data:`OBSERVABLES`, and its variables in ``_VARIABLE_DOCS``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr

from gnflow.config import ObserveConfig, register_observable
from gnflow.dataset import VariableInfo, register_variable
from gnflow.observables._measures import (
    centered_kernel_alignment,
    feature_distance,
    loss,
    refit_output_layer,
    regime_label,
)
from gnflow.observables._observable import Observable, ObservableOutput, time_series
from gnflow.observables._trajectory import SavedState, Trajectory
from gnflow.transport import wasserstein2

logger = logging.getLogger(__name__)


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

    def update(self, state: SavedState) -> None:
        values = state.eigenvalues
        lam_min, lam_max = float(values[0]), float(values[-1])
        self.condition[state.index] = lam_max / lam_min if lam_min > 0 else np.inf
        if state.index in self.spectrum_indices:
            self.spectra.append(values.flip(0).cpu().numpy())

    def result(self, ds: xr.Dataset) -> ObservableOutput:
        variables = {"gram_condition_number": time_series(self.condition)}
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
        return ObservableOutput(variables, {})


class WeightMovement(Observable):
    """Relative change of all weights, of the hidden part (u, b) and of the output part v."""

    name = "weight_movement"
    variables = ("weight_movement", "hidden_weight_movement", "output_weight_movement")

    def result(self, ds: xr.Dataset) -> ObservableOutput:
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
        return ObservableOutput(
            {
                "weight_movement": time_series(overall, normalization=overall_norm),
                "hidden_weight_movement": time_series(hidden, normalization=hidden_norm),
                "output_weight_movement": time_series(output, normalization=output_norm),
            },
            {},
        )


class ParticleDistance(Observable):
    """Quantiles over particles of the distance travelled ||w_i(t) - w_i(0)||."""

    name = "particle_distance"
    variables = ("particle_distance_quantile", "quantile")

    def result(self, ds: xr.Dataset) -> ObservableOutput:
        w = self.trajectory.weights
        distance = torch.linalg.vector_norm(w - w[0], dim=2).cpu().numpy()  # (t, particle)
        levels = np.asarray(self.options.quantiles, dtype=np.float64)
        values = np.quantile(distance, levels, axis=1).T  # linear interpolation between order statistics
        return ObservableOutput(
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

    def update(self, state: SavedState) -> None:
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

    def result(self, ds: xr.Dataset) -> ObservableOutput:
        return ObservableOutput(
            {
                "kernel_movement": time_series(self.alignment_loss),
                "kernel_relative_change": time_series(self.relative_change),
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

    def update(self, state: SavedState) -> None:
        features = state.weights[:, : self.trajectory.input_dim]
        self.to_teacher[state.index] = feature_distance(features, self.teacher_features)
        self.to_initial[state.index] = feature_distance(features, self.initial_features)

    def result(self, ds: xr.Dataset) -> ObservableOutput:
        return ObservableOutput(
            {
                "teacher_feature_distance": time_series(self.to_teacher),
                "initial_feature_distance": time_series(self.to_initial),
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

    def update(self, state: SavedState) -> None:
        traj = self.trajectory
        refit = refit_output_layer(
            traj.model,
            state.weights,
            traj.x_train,
            traj.y_train,
            ridge=self.options.refit_ridge,
            rcond=self.options.refit_rcond,
            linearization=state.linearization,
        )
        self.train[state.index] = loss(traj.model, refit, traj.x_train, traj.y_train)
        if traj.x_test is not None and traj.y_test is not None:
            self.test[state.index] = loss(traj.model, refit, traj.x_test, traj.y_test)

    def result(self, ds: xr.Dataset) -> ObservableOutput:
        options = self.options
        method = (
            f"ridge regression, lambda = {options.refit_ridge:g}"
            if options.refit_ridge > 0
            else f"minimum-norm least squares, rcond = {options.refit_rcond:g}"
        )
        return ObservableOutput(
            {
                "refit_train_loss": time_series(self.train, method=method),
                "refit_test_loss": time_series(self.test, method=method),
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

    def update(self, state: SavedState) -> None:
        particles = state.weights.cpu().numpy()
        self.to_initial[state.index] = self._distance(particles, self.initial, "initial")
        if self.teacher is not None:
            self.to_teacher[state.index] = self._distance(particles, self.teacher, "teacher")

    def result(self, ds: xr.Dataset) -> ObservableOutput:
        variables = {"wasserstein_initial": time_series(self.to_initial, method=self.methods["initial"])}
        if self.teacher is not None:
            variables["wasserstein_teacher"] = time_series(self.to_teacher, method=self.methods["teacher"])
        else:
            logger.info("wasserstein: no teacher in the dataset; only the distance to the initial measure")
        return ObservableOutput(variables, {})


class ResidualTopK(Observable):
    """Fraction of ||r_t||^2 in the k leading eigendirections of A_t."""

    name = "residual_topk"
    variables = ("residual_top_fraction", "top_k")
    needs_eigenvectors = True

    def __init__(self, trajectory: Trajectory, options: ObserveConfig) -> None:
        super().__init__(trajectory, options)
        self.top_k = np.asarray(options.top_k, dtype=np.int32)
        self.fraction = np.full((self.n_times, len(self.top_k)), np.nan)

    def update(self, state: SavedState) -> None:
        vectors = state.eigenvectors
        # coefficients of r on the eigenvectors, largest eigenvalue first
        energy = ((vectors.T @ state.residual.double()) ** 2).flip(0)
        total = float(energy.sum())
        if total == 0.0:
            return
        cumulative = torch.cumsum(energy, 0).cpu().numpy() / total
        n = cumulative.shape[0]
        self.fraction[state.index] = cumulative[np.minimum(self.top_k, n) - 1]

    def result(self, ds: xr.Dataset) -> ObservableOutput:
        return ObservableOutput(
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

    def result(self, ds: xr.Dataset) -> ObservableOutput:
        w = self.trajectory.weights
        d = self.trajectory.input_dim
        hidden = torch.linalg.vector_norm(w[:, :, : d + 1], dim=2).cpu().numpy()
        output = w[:, :, d + 1].abs().cpu().numpy()
        return ObservableOutput(
            {**self._histogram(hidden, "hidden_norm"), **self._histogram(output, "output_norm")}, {}
        )


class Regime(Observable):
    """The kernel/feature label from the final weight and kernel movement (global attributes)."""

    name = "regime"
    variables = ()
    requires = ("weight_movement", "kernel_movement")

    def result(self, ds: xr.Dataset) -> ObservableOutput:
        options = self.options
        weight = float(ds["hidden_weight_movement"].values[-1])
        kernel = float(ds["kernel_movement"].values[-1])
        label = regime_label(weight, kernel, options)
        return ObservableOutput(
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
