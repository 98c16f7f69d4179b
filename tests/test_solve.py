"""The integration driver: saving on the step grid, step statistics, early stopping, failures.

The exact laws of docs/mathematics.md, section Exact laws (undamped GN, the eigmin bounds, random
features, descent of the gradient flow, GGN = Euler) are run with every method in
``test_exact_laws.py``.
"""

import numpy as np
import pytest
import torch
from problems import small_problem

from gnflow.config import SolverConfig
from gnflow.damping import ConstantDamping, EigminDamping
from gnflow.flows import GaussNewtonFlow, GradientFlow
from gnflow.solve import integrate, save_times


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
    assert sol.status.startswith("failed: the Gram matrix A is singular")
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
    # every spacing ends at t_end, also with the fewest saves (log-spaced: t = 0 and one more time)
    for spacing in ("log", "linear"):
        for n_save in (2, 3):
            times = save_times(SolverConfig(t_end=1e6, n_save=n_save, save_spacing=spacing))
            assert times[0] == 0.0 and times[-1] == 1e6 and len(times) == n_save
