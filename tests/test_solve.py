"""Integration against the exact laws of SPEC section 1, at every saved time."""

import numpy as np
import pytest
import scipy.linalg
import torch
from problems import explicit_jacobian, relative_error, small_problem

from gnflow.config import SolverConfig
from gnflow.damping import ConstantDamping, EigminDamping
from gnflow.flows import GaussNewtonFlow, GradientFlow
from gnflow.solve import integrate, save_times


def residuals(flow, solution):
    return np.stack([flow.residual(w).numpy() for w in solution.weights])


@pytest.mark.parametrize(
    ("method", "rtol", "tol"), [("dopri5", 1e-10, 1e-7), ("dopri8", 1e-10, 1e-7), ("bosh3", 1e-6, 1e-3)]
)
def test_undamped_gauss_newton_residual_is_exponential(method, rtol, tol):
    # the nonlinear network, all components trained: r(t) = exp(-t/N) r(0) exactly
    model, w, x, y = small_problem(n_train=15, width=80, output_init="normal")
    n = x.shape[0]
    flow = GaussNewtonFlow(model, x, y, ConstantDamping(0.0))
    config = SolverConfig(method=method, rtol=rtol, atol=rtol * 1e-2, t_end=6.0 * n, n_save=25, stop_loss_ratio=0.0)
    sol = integrate(flow, w, config, progress=False)
    assert sol.status == "completed"
    assert sol.t[-1] == pytest.approx(6.0 * n)
    r = residuals(flow, sol)
    scale = np.linalg.norm(r[0])
    for k, t in enumerate(sol.t):
        assert np.linalg.norm(r[k] - np.exp(-t / n) * r[0]) < tol * scale, t
    # the weights really moved: the law is not satisfied trivially by a frozen network
    assert relative_error(sol.weights[-1], sol.weights[0]) > 1e-2


def test_eigmin_residual_bounds_while_lambda_min_above_floor():
    model, w, x, y = small_problem(n_train=20, width=100, output_init="zero", init_scale=1.0)
    n = x.shape[0]
    eps0 = 1e-9
    flow = GaussNewtonFlow(model, x, y, EigminDamping(eps0))
    config = SolverConfig(rtol=1e-9, atol=1e-12, t_end=8.0 * n, n_save=40, stop_loss_ratio=0.0)
    sol = integrate(flow, w, config, progress=False)
    assert sol.status == "completed"
    r = residuals(flow, sol)
    ratios = np.linalg.norm(r, axis=1) / np.linalg.norm(r[0])
    eigmin = np.array([flow.diagnostics(wk).gram_eigmin for wk in sol.weights])
    assert np.all(eigmin >= eps0)
    lower, upper = np.exp(-sol.t / n), np.exp(-sol.t / (2 * n))
    assert np.all(ratios >= lower * (1 - 1e-6))
    assert np.all(ratios <= upper * (1 + 1e-6))
    # the damping is really active: the residual lags behind the undamped law exp(-t/N)
    assert ratios[-1] > lower[-1] * (1 + 1e-3)


def test_gradient_flow_loss_is_non_increasing():
    model, w, x, y = small_problem(n_train=25, width=60, output_init="zero", activation="tanh")
    flow = GradientFlow(model, x, y)
    config = SolverConfig(rtol=1e-8, atol=1e-10, t_end=2000.0, n_save=60, stop_loss_ratio=0.0)
    sol = integrate(flow, w, config, progress=False)
    losses = np.array([flow.train_loss(wk) for wk in sol.weights])
    assert sol.status == "completed"
    assert np.all(np.diff(losses) <= 1e-14 * losses[0])
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(("method", "tol"), [("dopri5", 1e-10), ("adaptive_heun", 1e-6), ("fehlberg2", 1e-6)])
def test_random_features_closed_form(method, tol):
    # frozen hidden layer: J is constant and r(t) = expm(-t A / N) r(0)
    model, w, x, y = small_problem(n_train=15, width=40, train="output", output_init="zero")
    n = x.shape[0]
    flow = GradientFlow(model, x, y)
    config = SolverConfig(method=method, rtol=tol, atol=tol * 1e-2, t_end=20.0 * n, n_save=20, stop_loss_ratio=0.0)
    sol = integrate(flow, w, config, progress=False)
    jac = explicit_jacobian(model, w, x).numpy()
    a = jac @ jac.T
    r = residuals(flow, sol)
    for k, t in enumerate(sol.t):
        expected = scipy.linalg.expm(-t * a / n) @ r[0]
        assert relative_error(r[k], expected) < 1e3 * tol, t


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_one_euler_step_equals_explicit_gauss_newton_step(eps):
    model, w, x, y = small_problem(n_train=10, width=30)
    n = x.shape[0]
    h = 3.5
    flow = GaussNewtonFlow(model, x, y, ConstantDamping(eps))
    config = SolverConfig(method="euler", step_size=h, t_end=h, save_times=(h,), stop_loss_ratio=0.0)
    sol = integrate(flow, w, config, progress=False)
    jac = explicit_jacobian(model, w, x).numpy()
    g = (model.predict(w, x) - y).numpy() / n
    delta = -h * jac.T @ np.linalg.solve(jac @ jac.T + eps * np.eye(n), g)
    mask = model.trainable_mask(dtype=torch.bool)
    expected = w.clone()
    expected[:, mask] += torch.as_tensor(delta).reshape(w.shape[0], -1)
    assert sol.t.tolist() == [0.0, h]
    assert relative_error(sol.weights[-1], expected) < 1e-12
    assert sol.nfe[-1] == 1


def test_fixed_step_saves_on_the_step_grid():
    model, w, x, y = small_problem(n_train=8, width=20)
    flow = GradientFlow(model, x, y)
    config = SolverConfig(method="rk4", step_size=0.5, t_end=10.0, save_times=(0.9, 2.0, 7.26), stop_loss_ratio=0.0)
    sol = integrate(flow, w, config, progress=False)
    assert sol.t.tolist() == [0.0, 1.0, 2.0, 7.5, 10.0]
    assert sol.n_accepted.tolist() == [0, 2, 4, 15, 20]
    assert sol.nfe[-1] == 4 * 20  # rk4: four evaluations per step, 20 steps to t_end


def test_step_statistics_are_consistent():
    model, w, x, y = small_problem(n_train=15, width=40)
    flow = GaussNewtonFlow(model, x, y, EigminDamping(1e-7))
    config = SolverConfig(rtol=1e-7, t_end=200.0, n_save=11, stop_loss_ratio=0.0)
    sol = integrate(flow, w, config, progress=False)
    # dopri5: two evaluations to start (f0 and the first-step estimate), six per attempted step (FSAL)
    assert sol.nfe[-1] == 2 + 6 * (sol.n_accepted[-1] + sol.n_rejected[-1])
    assert np.all(np.diff(sol.nfe) >= 0)


def test_stops_early_on_loss_ratio():
    model, w, x, y = small_problem(n_train=15, width=60)
    n = x.shape[0]
    flow = GaussNewtonFlow(model, x, y, EigminDamping(1e-7))
    config = SolverConfig(rtol=1e-8, t_end=1e6, n_save=50, stop_loss_ratio=1e-6)
    sol = integrate(flow, w, config, progress=False)
    assert sol.status == "converged"
    losses = np.array([flow.train_loss(wk) for wk in sol.weights])
    assert losses[-1] <= 1e-6 * losses[0]
    assert np.all(losses[:-1] > 1e-6 * losses[0])
    # GN with eigmin damping cannot need longer than the upper bound exp(-t/(2N)) allows
    assert sol.t[-1] <= 2 * n * np.log(1e3) * 1.01


def test_failure_keeps_the_partial_trajectory():
    # undamped GN with fewer parameters than samples: A is singular, the solve must fail
    model, w, x, y = small_problem(n_train=40, width=2, input_dim=2)
    flow = GaussNewtonFlow(model, x, y, ConstantDamping(0.0))
    config = SolverConfig(t_end=100.0, n_save=5)
    sol = integrate(flow, w, config, progress=False)
    assert sol.failed
    assert sol.status.startswith("failed: the damped Gram matrix A + eps I is not positive definite")
    assert sol.t.tolist() == [0.0]
    assert torch.equal(sol.weights[0], w)


def test_failure_mid_run_returns_states_before_it():
    model, w, x, y = small_problem(n_train=10, width=20)
    flow = GradientFlow(model, x, y)
    config = SolverConfig(rtol=1e-10, t_end=1e4, n_save=30, max_steps=25, stop_loss_ratio=0.0)
    sol = integrate(flow, w, config, progress=False)
    assert sol.status == "failed: more than solver.max_steps = 25 steps"
    assert 1 < len(sol.t) < 30
    assert sol.n_accepted[-1] + sol.n_rejected[-1] <= 25


def test_save_times():
    log = save_times(SolverConfig(t_end=100.0, n_save=5, save_decades=2))
    assert log.tolist() == pytest.approx([0.0, 1.0, 10 ** (2 / 3), 10 ** (4 / 3), 100.0], rel=1e-12)
    lin = save_times(SolverConfig(t_end=10.0, n_save=3, save_spacing="linear"))
    assert lin.tolist() == [0.0, 5.0, 10.0]
    explicit = save_times(SolverConfig(t_end=10.0, save_times=(1.0, 4.0)))
    assert explicit.tolist() == [0.0, 1.0, 4.0, 10.0]
