"""Observables: independent oracles, invariances, during run = afterwards, CF files, regimes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import xarray as xr
from problems import explicit_gram, explicit_jacobian

from gnflow import ConfigError, load_config, simulate, write_dataset
from gnflow.cli import main
from gnflow.dataset import read_dataset
from gnflow.experiment import build_experiment
from gnflow.model import ParticleModel
from gnflow.observables import (
    OBSERVABLES,
    SavedState,
    centered_kernel_alignment,
    feature_distance,
    observe,
    refit_output_layer,
    trajectory_from_dataset,
)
from gnflow.observables._trajectory import Measurement, measure
from gnflow.solve import integrate
from gnflow.trajectory import trajectory_dataset
from gnflow.transport import wasserstein2

ALL_NAMES = list(OBSERVABLES)


def small_config(*overrides: str):
    """A teacher-student GN run that integrates in about a second."""
    base = [
        "model.width=40",
        "data.n_train=12",
        "data.n_test=60",
        "solver.n_save=7",
        "solver.stop_loss_ratio=1e-6",
        "observe.spectrum_count=2",
        "observe.top_k=[1, 3, 12, 50]",
        "observe.histogram_bins=8",
        f"observe.names={json.dumps(ALL_NAMES)}",
    ]
    return load_config(None, [*base, *overrides])


@pytest.fixture(scope="module")
def observed_run():
    return simulate(small_config(), progress=False)


def observable_vars(ds: xr.Dataset) -> list[str]:
    names = {v for cls in OBSERVABLES.values() for v in cls.variables}
    return sorted(str(v) for v in ds.data_vars if v in names)


# --- lazy limit ----------------------------------------------------------------------------------


def lazy_run(init_scale: float) -> xr.Dataset:
    """Gradient flow, NTK scaling, horizon of 3 time constants of the fastest mode of A_0 / N."""
    overrides = [
        f"model.init_scale={init_scale}",
        "model.width=100",
        "model.scaling=ntk",
        "model.output_init=normal",
        "data.n_train=10",
        "data.n_test=20",
        "flow.kind=gradient",
        "solver.rtol=1e-9",
        "solver.atol=1e-12",
        "solver.save_spacing=linear",
        "solver.n_save=6",
        "solver.stop_loss_ratio=0",
        'observe.names=["regime"]',
    ]
    probe = simulate(load_config(None, [*overrides, "solver.t_end=1e-9", "solver.n_save=2"]), progress=False)
    traj = trajectory_from_dataset(probe, need_test=False)
    gram0 = explicit_gram(traj.model, traj.weights[0], traj.x_train)
    t_end = 3 * traj.x_train.shape[0] / np.linalg.eigvalsh(gram0)[-1]
    return simulate(load_config(None, [*overrides, f"solver.t_end={t_end}"]), progress=False)


def linearized_residual_error(ds: xr.Dataset) -> float:
    """max_t ||r(t) - expm(-t A_0 / N) r(0)|| / ||r(0)|| with A_0 from autograd."""
    traj = trajectory_from_dataset(ds, need_test=False)
    x, y = traj.x_train, traj.y_train
    n = x.shape[0]
    gram0 = explicit_gram(traj.model, traj.weights[0], x)
    r0 = (traj.model.predict(traj.weights[0], x) - y).numpy()
    errors = []
    for k, t in enumerate(traj.t):
        r = (traj.model.predict(traj.weights[k], x) - y).numpy()
        errors.append(np.linalg.norm(r - scipy.linalg.expm(-t * gram0 / n) @ r0) / np.linalg.norm(r0))
    return max(errors)


def test_lazy_limit_follows_linearized_closed_form_and_kernel_does_not_move():
    lazy = lazy_run(100.0)
    assert lazy["train_loss"].values[-1] < 0.2 * lazy["train_loss"].values[0]  # the residual did move
    assert linearized_residual_error(lazy) < 1e-4
    assert np.nanmax(lazy["kernel_movement"].values) < 1e-8
    assert lazy["hidden_weight_movement"].values[-1] < 1e-4
    assert lazy.attrs["gnflow_regime"] == "kernel"


def test_small_initialization_leaves_the_linearized_dynamics():
    # the same check must fail away from the lazy limit, or it proves nothing
    feature = lazy_run(0.1)
    assert linearized_residual_error(feature) > 1e-2
    assert feature["kernel_movement"].values[-1] > 1e-2


# --- refit ---------------------------------------------------------------------------------------


def test_refit_on_teacher_features_recovers_teacher():
    rng = np.random.default_rng(3)
    d = 4
    model = ParticleModel(input_dim=d, activation="silu", scaling="mean_field")
    teacher = torch.as_tensor(rng.standard_normal((5, d + 2)))
    x = torch.as_tensor(rng.standard_normal((30, d)))
    x_test = torch.as_tensor(rng.standard_normal((200, d)))
    y, y_test = model.predict(teacher, x), model.predict(teacher, x_test)
    scrambled = teacher.clone()
    scrambled[:, -1] = torch.as_tensor(rng.standard_normal(5))
    refit = refit_output_layer(model, scrambled, x, y)
    r_test = model.predict(refit, x_test) - y_test
    assert float(r_test @ r_test) / (2 * 200) < 1e-24
    np.testing.assert_allclose(refit[:, -1].numpy(), teacher[:, -1].numpy(), rtol=1e-9)
    np.testing.assert_array_equal(refit[:, :-1].numpy(), scrambled[:, :-1].numpy())


def test_refit_matches_numpy_least_squares_and_ridge():
    rng = np.random.default_rng(4)
    d, m, n = 3, 25, 10  # more features than samples: the minimum-norm solution is selected
    model = ParticleModel(input_dim=d, activation="tanh", scaling="ntk")
    w = torch.as_tensor(rng.standard_normal((m, d + 2)))
    x = torch.as_tensor(rng.standard_normal((n, d)))
    y = torch.as_tensor(rng.standard_normal(n))
    phi = np.tanh(x.numpy() @ w[:, :d].numpy().T + w[:, d].numpy()) / np.sqrt(m)
    v_lstsq = np.linalg.lstsq(phi, y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(refit_output_layer(model, w, x, y)[:, -1].numpy(), v_lstsq, rtol=1e-8, atol=1e-12)
    ridge = 0.3
    v_ridge = np.linalg.solve(phi.T @ phi + ridge * np.eye(m), phi.T @ y.numpy())
    np.testing.assert_allclose(
        refit_output_layer(model, w, x, y, ridge=ridge)[:, -1].numpy(),
        v_ridge,
        rtol=1e-9,
        atol=1e-12,
    )


def test_refit_variables_use_the_saved_features(observed_run):
    ds = observed_run
    traj = trajectory_from_dataset(ds)
    k = ds.sizes["t"] - 1
    refit = refit_output_layer(traj.model, traj.weights[k], traj.x_train, traj.y_train)
    r = (traj.model.predict(refit, traj.x_test) - traj.y_test).numpy()
    assert ds["refit_test_loss"].values[k] == pytest.approx(r @ r / (2 * len(r)), rel=1e-12)
    # random features: v refit by numpy's least squares on the initial features Phi = df/dv at t = 0
    # (autograd of the forward pass)
    features = replace(traj.model, train="output")
    phi, phi_test = (explicit_jacobian(features, traj.weights[0], x).numpy() for x in (traj.x_train, traj.x_test))
    v = np.linalg.lstsq(phi, traj.y_train.numpy(), rcond=None)[0]
    r_test = phi_test @ v - traj.y_test.numpy()
    assert float(ds["random_features_test_loss"]) == pytest.approx(r_test @ r_test / (2 * len(r_test)), rel=1e-8)
    assert ds["refit_train_loss"].values.max() < 1e-20  # M > N: the refit interpolates


# --- Wasserstein ---------------------------------------------------------------------------------


@pytest.mark.parametrize("exact_max", [1000, 2])
def test_wasserstein_of_a_measure_to_itself_is_zero(exact_max):
    points = np.random.default_rng(5).standard_normal((30, 4))
    result = wasserstein2(points, points[::-1].copy(), exact_max=exact_max)
    assert result.method == ("exact" if exact_max == 1000 else "sliced")
    assert result.distance == pytest.approx(0.0, abs=1e-12)


def test_wasserstein_to_a_shifted_copy_is_the_shift_norm():
    rng = np.random.default_rng(6)
    points = rng.standard_normal((40, 5))
    shift = rng.standard_normal(5)
    exact = wasserstein2(points, points + shift)
    assert exact.distance == pytest.approx(np.linalg.norm(shift), rel=1e-10)
    sliced = wasserstein2(points, points + shift, exact_max=10)
    # the sliced distance of a translation is the RMS of its projections: below the norm, above 0
    assert 0 < sliced.distance < np.linalg.norm(shift)


def test_wasserstein_in_one_dimension_matches_sorted_coupling():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((50, 1)), 2.0 + rng.standard_normal((50, 1))
    expected = np.sqrt(np.mean((np.sort(a[:, 0]) - np.sort(b[:, 0])) ** 2))
    assert wasserstein2(a, b).distance == pytest.approx(expected, rel=1e-10)


def test_wasserstein_variables_record_their_method(observed_run):
    ds = observed_run
    assert ds["wasserstein_initial"].attrs["method"].startswith("exact")
    assert ds["wasserstein_initial"].values[0] == 0.0
    teacher = trajectory_from_dataset(ds).teacher_weights.numpy()
    last = ds["weights"].values[-1]
    assert ds["wasserstein_teacher"].values[-1] == pytest.approx(wasserstein2(last, teacher).distance, rel=1e-12)
    sliced = observe(ds, ["wasserstein"], options=small_config("observe.wasserstein_exact_max=10").observe)
    assert sliced["wasserstein_initial"].attrs["method"].startswith("sliced")


# --- kernel, spectrum, alignment, residual ------------------------------------------------------


def test_kernel_alignment_against_explicit_centering():
    rng = np.random.default_rng(8)
    f, g = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    a, b = f @ f.T, g @ g.T + f @ f.T
    h = np.eye(6) - np.ones((6, 6)) / 6
    ca, cb = h @ a @ h, h @ b @ h
    expected = np.sum(ca * cb) / (np.linalg.norm(ca) * np.linalg.norm(cb))
    assert centered_kernel_alignment(torch.as_tensor(a), torch.as_tensor(b)) == pytest.approx(expected, rel=1e-12)
    assert centered_kernel_alignment(torch.as_tensor(a), torch.as_tensor(7.0 * a)) == pytest.approx(1.0, rel=1e-14)


def test_kernel_and_spectrum_against_autograd_gram(observed_run):
    ds = observed_run
    traj = trajectory_from_dataset(ds)
    gram0 = explicit_gram(traj.model, traj.weights[0], traj.x_train)
    k = ds.sizes["t"] - 1
    gram = explicit_gram(traj.model, traj.weights[k], traj.x_train)
    expected = 1 - centered_kernel_alignment(torch.as_tensor(gram), torch.as_tensor(gram0))
    assert ds["kernel_movement"].values[k] == pytest.approx(expected, rel=1e-8, abs=1e-12)
    eig = np.linalg.eigvalsh(gram)
    assert ds["gram_condition_number"].values[k] == pytest.approx(eig[-1] / eig[0], rel=1e-6)
    np.testing.assert_allclose(ds["gram_spectrum"].values[-1], eig[::-1], rtol=1e-6, atol=1e-12 * eig[-1])
    assert list(ds["t_spectrum"].values) == [ds["t"].values[0], ds["t"].values[-1]]
    residual = (traj.model.predict(traj.weights[k], traj.x_train) - traj.y_train).numpy()
    _, vectors = np.linalg.eigh(gram)
    energy = (vectors.T @ residual)[::-1] ** 2
    fractions = ds["residual_top_fraction"].sel(t=ds["t"][k]).values
    np.testing.assert_allclose(
        fractions[:3], [energy[:1].sum(), energy[:3].sum(), energy.sum()] / energy.sum(), rtol=1e-6
    )
    assert fractions[3] == pytest.approx(1.0, rel=1e-14)  # k = 50 > N


def test_feature_distance_against_brute_force():
    rng = np.random.default_rng(9)
    u, ref = rng.standard_normal((17, 3)), rng.standard_normal((4, 3))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    cos = unit(u) @ unit(ref).T
    nearest = np.sqrt(2 * (1 - cos.max(axis=1)))
    weight = (u**2).sum(1)
    expected = (weight * nearest).sum() / weight.sum()
    assert feature_distance(torch.as_tensor(u), torch.as_tensor(ref), chunk=5) == pytest.approx(expected, rel=1e-10)
    scaled = torch.as_tensor(ref[[0, 2, 1, 1]] * np.array([[3.0], [0.5], [2.0], [9.0]]))
    assert feature_distance(scaled, torch.as_tensor(ref)) == pytest.approx(0.0, abs=1e-15)


def test_movement_and_histograms(observed_run):
    ds = observed_run
    w = ds["weights"].values
    d = ds.sizes["input_dim"]
    np.testing.assert_allclose(
        ds["hidden_weight_movement"].values,
        np.linalg.norm((w - w[0])[:, :, : d + 1], axis=(1, 2)) / np.linalg.norm(w[0][:, : d + 1]),
        rtol=1e-12,
    )
    assert ds["output_weight_movement"].attrs["normalization"].startswith("||W_0||")  # v_0 = 0
    distance = np.linalg.norm(w - w[0], axis=2)
    np.testing.assert_allclose(ds["particle_distance_quantile"].sel(quantile=1.0).values, distance.max(axis=1))
    np.testing.assert_allclose(ds["hidden_norm_histogram"].sum("hidden_norm").values, 1.0, rtol=1e-14)
    assert ds["teacher_feature_distance"].values[0] > ds["teacher_feature_distance"].values[-1]
    assert ds["initial_feature_distance"].values[0] == 0.0


# --- invariances and round trips ---------------------------------------------------------------


def test_observables_invariant_to_permuting_particles(observed_run):
    ds = observed_run
    permutation = np.random.default_rng(10).permutation(ds.sizes["particle"])
    permuted = ds.copy()
    permuted["weights"] = ds["weights"].isel(particle=permutation).assign_coords(particle=ds["particle"])
    again = observe(permuted, ALL_NAMES)
    for name in observable_vars(ds):
        np.testing.assert_allclose(again[name].values, ds[name].values, rtol=1e-9, atol=1e-13, err_msg=name)
    assert again.attrs["gnflow_regime"] == ds.attrs["gnflow_regime"]


def test_observed_afterwards_equals_observed_during_run(observed_run, tmp_path):
    during = observed_run
    path = tmp_path / "run.nc"
    coords = ["t_spectrum", "eig", "quantile", "top_k", "hidden_norm", "output_norm"]
    bare = during.drop_vars([*observable_vars(during), *coords])
    write_dataset(bare, path)
    afterwards = observe(read_dataset(path), ALL_NAMES)
    for name in observable_vars(during):
        xr.testing.assert_identical(afterwards[name], during[name])
    for key in (
        "gnflow_regime",
        "gnflow_regime_hidden_weight_movement",
        "gnflow_regime_kernel_movement",
    ):
        assert afterwards.attrs[key] == during.attrs[key]

    assert main(["-q", "observe", str(path)]) == 0
    rewritten = read_dataset(path)
    for name in observable_vars(during):
        np.testing.assert_array_equal(rewritten[name].values, during[name].values, err_msg=name)
    history = rewritten.attrs["history"].splitlines()
    assert len(history) == 2 and f"gnflow -q observe {path}" in history[1]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic rewrite left no temporary file


def test_test_set_is_rebuilt_when_the_file_omits_it(tmp_path):
    config = small_config('observe.names=["refit"]', "output.save_test=false")
    during = simulate(config, progress=False)
    assert "x_test" not in during
    afterwards = observe(during.drop_vars(observable_vars(during)), ["refit"])
    np.testing.assert_array_equal(afterwards["refit_test_loss"].values, during["refit_test_loss"].values)
    assert np.all(np.isfinite(during["refit_test_loss"].values))


def cf_issues(path: Path) -> set[str]:
    """Error and warning messages of the CF-1.8 compliance checker for ``path``."""
    runner = pytest.importorskip("compliance_checker.runner")
    runner.CheckSuite.load_all_available_checkers()
    report = path.with_suffix(".json")
    runner.ComplianceChecker.run_checker(
        str(path), ["cf:1.8"], 0, "normal", output_filename=str(report), output_format="json"
    )
    result = json.loads(report.read_text())["cf:1.8"]
    return {msg for level in ("high_priorities", "medium_priorities") for item in result[level] for msg in item["msgs"]}


def test_observed_file_adds_no_cf_issues(observed_run, tmp_path):
    observed = write_dataset(observed_run, tmp_path / "observed.nc")
    bare = write_dataset(observed_run.drop_vars(observable_vars(observed_run)), tmp_path / "bare.nc")
    assert cf_issues(observed) <= cf_issues(bare)
    back = read_dataset(observed)
    xr.testing.assert_identical(back, observed_run)
    for name in observable_vars(observed_run):
        assert back[name].attrs["long_name"] and "units" in back[name].attrs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_observables_on_cuda_match_cpu(observed_run):
    on_gpu = observe(observed_run, ALL_NAMES, device="cuda")
    for name in observable_vars(observed_run):
        np.testing.assert_allclose(on_gpu[name].values, observed_run[name].values, rtol=1e-7, atol=1e-12, err_msg=name)


# --- regimes -------------------------------------------------------------------------------------


def test_gauss_newton_regime_depends_on_initial_scale():
    labels = {}
    for init_scale in (0.1, 10.0):
        ds = simulate(
            load_config(
                None,
                [
                    f"model.init_scale={init_scale}",
                    "model.width=100",
                    "data.n_train=20",
                    "data.n_test=200",
                    "solver.n_save=11",
                    'observe.names=["regime"]',
                ],
            ),
            progress=False,
        )
        assert ds.attrs["gnflow_status"] == "converged"
        labels[init_scale] = ds.attrs["gnflow_regime"]
    assert labels == {0.1: "feature", 10.0: "kernel"}


# --- errors --------------------------------------------------------------------------------------


def test_teacher_observables_need_a_teacher(tmp_path):
    rng = np.random.default_rng(11)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.standard_normal((8, 2)), y=rng.standard_normal(8))
    config = small_config(
        "data.kind=file",
        f"data.path={json.dumps(str(data))}",
        'observe.names=["teacher_alignment"]',
    )
    with pytest.raises(ConfigError, match=r"teacher_alignment.*teacher"):
        simulate(config, progress=False)


def test_unknown_names_are_rejected(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown observable 'kernel'"):
        small_config('observe.names=["kernel"]')
    path = write_dataset(simulate(small_config("observe.names=[]"), progress=False), tmp_path / "run.nc")
    assert main(["observe", str(path), "kernel"]) == 2
    assert "allowed:" in capsys.readouterr().err
    assert main(["observe", str(path), "--set", "model.width=3"]) == 2


# --- one measurement pass ------------------------------------------------------------------------


class _Counts:
    """Calls of ParticleModel.linearize, torch.linalg.eigh and torch.linalg.eigvalsh while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = {"linearize": 0, "eigh": 0, "eigvalsh": 0}
        self._install(monkeypatch, ParticleModel, "linearize")
        self._install(monkeypatch, torch.linalg, "eigh")
        self._install(monkeypatch, torch.linalg, "eigvalsh")

    def _install(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def integrated(config):
    """The experiment of ``config`` and its integrated solution (not yet measured)."""
    experiment = build_experiment(config)
    return experiment, integrate(experiment.flow, experiment.weights0, config.solver, progress=False)


EIGVALSH_ONLY = ["spectrum", "kernel_movement", "refit", "teacher_alignment", "regime"]


@pytest.mark.parametrize(
    ("names", "decomposition"),
    [([], "eigvalsh"), (EIGVALSH_ONLY, "eigvalsh"), (ALL_NAMES, "eigh"), (["residual_topk"], "eigh")],
)
def test_one_linearization_and_one_eigendecomposition_per_saved_state(monkeypatch, names, decomposition):
    config = small_config(f"observe.names={json.dumps(names)}")
    experiment, solution = integrated(config)
    counts = _Counts(monkeypatch)
    ds = trajectory_dataset(experiment, solution)
    n_saved = ds.sizes["t"]
    assert n_saved >= 2
    other = "eigh" if decomposition == "eigvalsh" else "eigvalsh"
    assert counts.calls == {"linearize": n_saved, decomposition: n_saved, other: 0}
    assert all(v in ds for name in names for v in OBSERVABLES[name].variables if v not in ("eig", "t_spectrum"))


@pytest.mark.parametrize(("names", "decomposition"), [(EIGVALSH_ONLY, "eigvalsh"), (ALL_NAMES, "eigh")])
def test_observing_a_saved_file_is_one_pass(observed_run, monkeypatch, names, decomposition):
    counts = _Counts(monkeypatch)
    observe(observed_run, names)
    n_saved = observed_run.sizes["t"]
    other = "eigh" if decomposition == "eigvalsh" else "eigvalsh"
    assert counts.calls == {"linearize": n_saved, decomposition: n_saved, other: 0}


def test_float32_built_ins_are_measured_in_float32_and_observables_in_float64(monkeypatch):
    config = small_config("dtype=float32", 'observe.names=["spectrum", "residual_topk"]')
    experiment, solution = integrated(config)
    counts = _Counts(monkeypatch)
    ds = trajectory_dataset(experiment, solution)
    n_saved = ds.sizes["t"]
    # one pass in the run's dtype (built-ins) and one in float64 (observables, as gnflow observe)
    assert counts.calls == {"linearize": 2 * n_saved, "eigvalsh": n_saved, "eigh": n_saved}
    monkeypatch.undo()
    for k, weights in enumerate(solution.weights):
        expected = experiment.flow.diagnostics(weights)
        assert ds["train_loss"].values[k] == expected.train_loss
        assert ds["gram_eigmin"].values[k] == expected.gram_eigmin
        assert ds["gram_eigmax"].values[k] == expected.gram_eigmax
        assert ds["damping"].values[k] == expected.damping
    bare = ds.drop_vars([*observable_vars(ds), "t_spectrum", "eig", "top_k"])
    afterwards = observe(bare, ["spectrum", "residual_topk"])
    for name in observable_vars(ds):
        xr.testing.assert_identical(afterwards[name], ds[name])


@pytest.mark.parametrize(
    "overrides",
    [
        [f"observe.names={json.dumps(EIGVALSH_ONLY)}"],
        ["flow.kind=gradient", "observe.names=[]"],
        ["flow.damping=relative", "flow.epsilon=1e-3", "output.save_test=false", 'observe.names=["refit"]'],
    ],
    ids=["gauss_newton", "gradient_no_observables", "relative_damping_no_saved_test_set"],
)
def test_float64_built_ins_are_the_flow_diagnostics_of_each_saved_state(overrides):
    config = small_config(*overrides)
    experiment, solution = integrated(config)
    ds = trajectory_dataset(experiment, solution)
    x_test, y_test = experiment.tensor(experiment.data.x_test), experiment.tensor(experiment.data.y_test)
    for k, weights in enumerate(solution.weights):
        expected = experiment.flow.diagnostics(weights)
        assert ds["train_loss"].values[k] == expected.train_loss
        assert ds["gram_eigmin"].values[k] == expected.gram_eigmin
        assert ds["gram_eigmax"].values[k] == expected.gram_eigmax
        if "damping" in ds:
            assert ds["damping"].values[k] == expected.damping
        r = (experiment.model.predict(weights, x_test) - y_test).double()
        assert ds["test_loss"].values[k] == float(r @ r) / (2 * experiment.data.n_test)
    assert ("damping" in ds) == (config.flow.kind != "gradient")


def test_eigenvalues_come_from_eigh_when_eigenvectors_are_measured(observed_run):
    traj = trajectory_from_dataset(observed_run)
    with_vectors = SavedState(traj, traj.n_times - 1, eigenvectors=True)
    values, vectors = torch.linalg.eigh(with_vectors.gram)
    assert torch.equal(with_vectors.eigenvalues, values) and torch.equal(with_vectors.eigenvectors, vectors)
    assert torch.equal(SavedState(traj, traj.n_times - 1).eigenvalues, torch.linalg.eigvalsh(with_vectors.gram))
    np.testing.assert_array_equal(observed_run["gram_spectrum"].values[-1], values.flip(0).numpy())
    np.testing.assert_array_equal(observed_run["gram_eigmin"].values[-1], float(values[0]))
    with pytest.raises(RuntimeError, match="needs_eigenvectors"):
        _ = SavedState(traj, 0).eigenvectors


class _Recorder(Measurement):
    needs_eigenvectors = True

    def __init__(self, fail_at: int | None = None) -> None:
        self.rows: list[tuple[int, float, float, np.ndarray, np.ndarray]] = []
        self.fail_at = fail_at

    def update(self, state: SavedState) -> None:
        if state.index == self.fail_at:
            raise ArithmeticError(f"no value at state {state.index}")
        values, vectors = state.eigh
        self.rows.append((state.index, state.train_loss, state.test_loss, values.numpy(), np.abs(vectors.numpy())))


def test_parallel_measuring_pass_equals_the_serial_pass_in_time_order(observed_run):
    """Worker threads computing the next states give the serial pass's values, bit for bit, in time order."""
    traj = trajectory_from_dataset(observed_run)
    before = torch.get_num_threads()
    serial, parallel = _Recorder(), _Recorder()
    try:
        torch.set_num_threads(1)
        measure(traj, [serial], workers=1)
        torch.set_num_threads(2)
        measure(traj, [parallel], workers=3)
        assert torch.get_num_threads() == 2  # restored after the pass
    finally:
        torch.set_num_threads(before)
    assert [row[0] for row in parallel.rows] == list(range(traj.n_times))
    for a, b in zip(serial.rows, parallel.rows, strict=True):
        assert a[:3] == b[:3]
        np.testing.assert_array_equal(a[3], b[3])
        np.testing.assert_array_equal(a[4], b[4])


def test_parallel_measuring_pass_raises_the_measurements_error_and_restores_threads(observed_run):
    traj = trajectory_from_dataset(observed_run)
    before = torch.get_num_threads()
    recorder = _Recorder(fail_at=3)
    try:
        torch.set_num_threads(2)
        with pytest.raises(ArithmeticError, match="no value at state 3"):
            measure(traj, [recorder], workers=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert [row[0] for row in recorder.rows] == [0, 1, 2]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        measure(traj, [recorder], workers=0)
