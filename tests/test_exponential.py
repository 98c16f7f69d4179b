"""Kernel-exponential integrator: its step factor, its steps on the linearized model, and
agreement with dopri5 on the full model, where J moves.

The exact laws it holds for (random features with GD and GN, undamped GN and the eigmin bounds on
the nonlinear network, descent of the gradient flow) are run in ``test_exact_laws.py``; here one
step of any size is checked against scipy.linalg.expm, and the random-features law is run under
unusual step-size control.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.linalg
import torch
from problems import PROBLEMS

from gnflow.config import ConfigError, config_from_dict
from gnflow.damping import ConstantDamping, EigminDamping, RelativeDamping
from gnflow.experiment import build_experiment
from gnflow.exponential import (
    KernelExponentialSolver,
    exponential_factor,
    freeze_kernel,
    phi1,
)
from gnflow.flows import Flow, GaussNewtonFlow
from gnflow.model import Linearization
from gnflow.simulation import simulate
from gnflow.solve import integrate, save_times

pytestmark = pytest.mark.usefixtures("one_thread")


def _experiment(
    *,
    train: str = "all",
    kind: str = "gradient",
    n_train: int = 50,
    width: int = 200,
    init_scale: float = 1.0,
    output_init: str = "normal",
    damping: str = "eigmin",
    epsilon: float = 1e-7,
    seed: int = 3,
    **solver: object,
):
    config = config_from_dict(
        {
            "seed": seed,
            "device": "cpu",
            "data": {"n_train": n_train, "n_test": 20},
            "model": {
                "width": width,
                "init_scale": init_scale,
                "train": train,
                "output_init": output_init,
            },
            "flow": {"kind": kind, "damping": damping, "epsilon": epsilon},
            "solver": {"n_save": 12, "stop_loss_ratio": 0.0, **solver},
        }
    )
    return build_experiment(config), config


def _residuals(experiment, weights: torch.Tensor) -> np.ndarray:
    """r = f(X) - y at each saved state, shape (t, sample)."""
    flow = experiment.flow
    return np.stack([(experiment.model.predict(w, flow.x) - flow.y).numpy() for w in weights])


def _gram_and_residual(experiment) -> tuple[np.ndarray, np.ndarray]:
    lin = experiment.model.linearize(experiment.weights0, experiment.flow.x)
    return lin.gram().numpy(), (lin.predict() - experiment.flow.y).numpy()


# --- the step factor --------------------------------------------------------------------------


def test_phi1_matches_its_definition_and_limit() -> None:
    z = torch.tensor([-1e3, -30.0, -1.0, -1e-3, -1e-6, -1e-12, 0.0, 1e-9], dtype=torch.float64)
    exact = [np.expm1(v) / v if v != 0 else 1.0 for v in z.tolist()]
    np.testing.assert_allclose(phi1(z).numpy(), exact, rtol=1e-14)


def test_factor_is_the_integrated_decay_of_each_mode() -> None:
    lam = torch.tensor([0.0, 1e-14, 1e-6, 0.3, 5.0, 1e3], dtype=torch.float64)
    n, h, eps = 40, 7.5, 1e-3
    gd = exponential_factor(lam, torch.ones_like(lam), h, n).numpy()
    gn = exponential_factor(lam, 1.0 / (lam + eps), h, n).numpy()
    lam_np = lam.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        gd_closed = -np.expm1(-h * lam_np / n) / lam_np
        gn_closed = -np.expm1(-h * lam_np / (n * (lam_np + eps))) / lam_np
    # lambda -> 0: the factor tends to h/N (GD) and h / (N eps) (GN)
    assert gd[0] == pytest.approx(h / n, rel=1e-15)
    assert gn[0] == pytest.approx(h / (n * eps), rel=1e-15)
    np.testing.assert_allclose(gd[1:], gd_closed[1:], rtol=1e-12)
    np.testing.assert_allclose(gn[1:], gn_closed[1:], rtol=1e-12)


@pytest.mark.parametrize(
    "damping",
    [None, EigminDamping(1e-7), EigminDamping(0.05), ConstantDamping(1e-3), RelativeDamping(0.1)],
    ids=["gradient", "eigmin", "eigmin_active", "constant", "relative"],
)
def test_preconditioner_spectrum_reproduces_the_flow_direction(damping) -> None:
    experiment, _ = _experiment()
    flow = experiment.flow
    if damping is not None:
        flow = GaussNewtonFlow(flow.model, flow.x, flow.y, damping)
    lin = flow.model.linearize(experiment.weights0, flow.x)
    r = lin.predict() - flow.y
    kernel = freeze_kernel(flow, experiment.weights0)
    q = kernel.eigenvectors
    spectral = q @ (kernel.multiplier * (q.T @ r.double())) / flow.n_samples
    direct = flow.function_space_direction(lin, r).double()
    torch.testing.assert_close(spectral, direct, rtol=1e-9, atol=1e-12 * float(direct.abs().max()))


# --- exact for the linearized model --------------------------------------------------------------


@pytest.mark.parametrize("h", [1e-3, 1.0, 1e2, 1e4, 1e6, 1e9])
def test_one_step_is_exact_for_random_features_at_any_step_size(h: float) -> None:
    experiment, _ = _experiment(train="output")
    a, r0 = _gram_and_residual(experiment)
    n = r0.size
    kernel = freeze_kernel(experiment.flow, experiment.weights0)
    r = _residuals(experiment, kernel.step(h)[None])[0]
    exact = scipy.linalg.expm(-h * a / n) @ r0
    assert np.abs(r - exact).max() <= 1e-12 * np.linalg.norm(r0)


@pytest.mark.parametrize(
    ("rtol", "first_step"),
    [(1e-2, None), (1e-8, 1e-4), (1e-3, 1e7)],
    ids=["loose", "tiny_first_step", "huge_first_step"],
)
def test_random_features_exact_whatever_the_step_control(rtol: float, first_step: float | None) -> None:
    # the catalog's random-features law (expm oracle) at its own tolerance, exact to rounding
    law = PROBLEMS["random_features_gd"]
    overrides = {"rtol": rtol, "atol": rtol * 1e-3, "first_step": first_step}
    solution = law.solve("kernel_exponential", **overrides)
    np.testing.assert_array_equal(solution.t, save_times(law.solver_config("kernel_exponential", **overrides)))
    law.check(solution)


# --- the full model: J moves ---------------------------------------------------------------------


def _relative_weight_error(weights: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """||w(t) - w_ref(t)|| / ||w_ref(t) - w_ref(0)|| at each saved time t > 0."""
    error = (weights - reference).flatten(1).norm(dim=1)
    change = (reference - reference[0]).flatten(1).norm(dim=1)
    return (error[1:] / change[1:]).numpy()


@pytest.fixture(scope="module")
def gradient_reference():
    experiment, config = _experiment(method="dopri5", rtol=1e-10, atol=1e-13, t_end=300.0)
    solution = integrate(experiment.flow, experiment.weights0, config.solver)
    assert solution.status == "completed"
    return experiment, config, solution


def test_gradient_flow_agrees_with_dopri5_and_converges(gradient_reference) -> None:
    experiment, config, reference = gradient_reference
    errors = []
    for rtol in (1e-3, 1e-5):
        solver = replace(config.solver, method="kernel_exponential", rtol=rtol, atol=rtol * 1e-3)
        solution = integrate(experiment.flow, experiment.weights0, solver)
        assert solution.status == "completed"
        np.testing.assert_array_equal(solution.t, reference.t)
        error = _relative_weight_error(solution.weights, reference.weights)
        assert error.max() <= rtol, f"rtol = {rtol}: relative error {error.max():.3g}"
        # the cost law of step doubling: 1 + 2 per accepted step + 1 per rejected step
        assert solution.nfe[-1] == 1 + 2 * solution.n_accepted[-1] + solution.n_rejected[-1]
        errors.append(error.max())
    assert errors[1] < errors[0] / 10, f"no convergence: {errors}"


def test_gauss_newton_flow_agrees_with_dopri5() -> None:
    experiment, config = _experiment(kind="gauss_newton", method="dopri5", rtol=1e-10, atol=1e-13, t_end=200.0)
    reference = integrate(experiment.flow, experiment.weights0, config.solver)
    rtol = 1e-5
    solver = replace(config.solver, method="kernel_exponential", rtol=rtol, atol=rtol * 1e-3)
    solution = integrate(experiment.flow, experiment.weights0, solver)
    assert solution.status == reference.status == "completed"
    assert _relative_weight_error(solution.weights, reference.weights).max() <= rtol


# --- stopping, failures, configuration ------------------------------------------------------------


def test_stops_on_the_loss_ratio() -> None:
    experiment, config = _experiment(train="output", method="kernel_exponential", t_end=1e9, stop_loss_ratio=1e-3)
    solution = integrate(experiment.flow, experiment.weights0, config.solver)
    assert solution.status == "converged"
    loss0 = experiment.flow.train_loss(solution.weights[0])
    assert experiment.flow.train_loss(solution.weights[-1]) <= 1e-3 * loss0
    assert solution.t[-1] < 1e9
    assert np.all(np.diff(solution.t) > 0)


def test_singular_gauss_newton_fails_with_a_partial_result() -> None:
    # more samples than trained parameters: A = S S^T / M^2 is singular, and eps = 0
    experiment, config = _experiment(
        train="output",
        kind="gauss_newton",
        damping="constant",
        epsilon=0.0,
        n_train=30,
        width=10,
        method="kernel_exponential",
    )
    solution = integrate(experiment.flow, experiment.weights0, config.solver)
    assert solution.failed
    assert "not positive definite" in solution.status
    assert solution.t.tolist() == [0.0]
    torch.testing.assert_close(solution.weights[0], experiment.weights0)


def test_step_limit_fails_with_the_states_reached() -> None:
    experiment, config = _experiment(method="kernel_exponential", rtol=1e-8, atol=1e-11, t_end=300.0, max_steps=5)
    solution = integrate(experiment.flow, experiment.weights0, config.solver)
    assert solution.status == "failed: more than solver.max_steps = 5 steps"
    assert solution.n_accepted[-1] + solution.n_rejected[-1] <= 5
    assert solution.t[0] == 0.0


def test_flow_without_a_spectral_direction_is_a_config_error() -> None:
    class ShiftedFlow(Flow):
        name = "shifted"

        def function_space_direction(self, lin: Linearization, residual: torch.Tensor) -> torch.Tensor:
            return residual + 1.0

    experiment, _ = _experiment()
    flow = ShiftedFlow(experiment.model, experiment.flow.x, experiment.flow.y)
    message = r"solver\.method: 'kernel_exponential', 'kernel_etd3', 'kernel_etd4' and 'kernel_euler' need"
    with pytest.raises(ConfigError, match=message):
        KernelExponentialSolver(flow, experiment.weights0, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("key", "value"), [("rtol", -1e-6), ("atol", 0.0), ("first_step", -1.0)])
def test_bad_tolerances_are_rejected_by_the_config(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"solver.{key}: must be a finite number > 0"):
        config_from_dict({"solver": {"method": "kernel_exponential", key: value}})


def test_run_dataset_records_the_method_and_its_counters() -> None:
    config = config_from_dict(
        {
            "device": "cpu",
            "data": {"n_train": 30, "n_test": 10},
            "model": {"width": 60},
            "flow": {"kind": "gradient"},
            "solver": {
                "method": "kernel_exponential",
                "rtol": 1e-4,
                "atol": 1e-7,
                "t_end": 1e3,
                "n_save": 5,
                "stop_loss_ratio": 0.0,
            },
        }
    )
    ds = simulate(config, progress=False)
    assert ds.attrs["gnflow_status"] == "completed"
    assert ds.attrs["gnflow_solver"].startswith("kernel_exponential (rtol=")
    assert np.all(np.diff(ds["nfe"].values) >= 0) and ds["nfe"].values[-1] > 1
    np.testing.assert_array_equal(ds["t"].values, np.concatenate([[0.0], np.geomspace(0.1, 1e3, 4)]))
