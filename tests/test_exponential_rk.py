"""Third-order exponential Runge--Kutta steps on the kernel splitting (``kernel_etd3``).

The exact laws (random features with GD and GN at any step, undamped GN and the eigmin bounds on
the nonlinear network, descent of the gradient flow) run in ``test_exact_laws.py``; the loop battery
and the bit-identical resume in ``test_integrate_loop.py`` and ``test_checkpoint.py``. Here: the phi
functions against quadrature, the order of the step and of its error estimate against a tight
dopri5 reference, and the adaptive method against dopri5 on the full model.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.integrate
import torch

from gnflow.config import config_from_dict
from gnflow.experiment import build_experiment
from gnflow.exponential import freeze_kernel
from gnflow.exponential_rk import KernelETD3Solver, phi_functions
from gnflow.solve import integrate

pytestmark = pytest.mark.usefixtures("one_thread")


def _experiment(kind: str = "gradient", **solver: object):
    config = config_from_dict(
        {
            "seed": 4,
            "device": "cpu",
            "data": {"n_train": 30, "n_test": 20},
            "model": {"width": 40, "init_scale": 1.0, "output_init": "normal"},
            "flow": {"kind": kind, "damping": "eigmin", "epsilon": 1e-7},
            "solver": {"n_save": 12, "stop_loss_ratio": 0.0, **solver},
        }
    )
    return build_experiment(config), config


def _phi_by_quadrature(z: float, k: int) -> float:
    # phi_k(z) = 1/(k-1)! int_0^1 exp((1 - s) z) s^(k-1) ds  (k >= 1)
    value, _ = scipy.integrate.quad(
        lambda s: math.exp((1.0 - s) * z) * s ** (k - 1), 0.0, 1.0, epsabs=0, epsrel=1e-13, limit=200
    )
    return value / math.factorial(k - 1)


def test_phi_functions_match_their_integral_form() -> None:
    zs = [0.0, -1e-12, -1e-6, -0.3, -0.999, -1.0, -1.5, -7.0, -60.0, -1e4]
    phis = phi_functions(torch.tensor(zs, dtype=torch.float64), 4)
    np.testing.assert_allclose(phis[0].numpy(), np.exp(zs), rtol=1e-15)
    for k in range(1, 5):
        exact = [_phi_by_quadrature(z, k) for z in zs]
        np.testing.assert_allclose(phis[k].numpy(), exact, rtol=1e-12, err_msg=f"phi_{k}")


def _fixed_steps(solver: KernelETD3Solver, flow, weights, h: float, n: int) -> torch.Tensor:
    for _ in range(n):
        weights, _ratio = solver._etd3(freeze_kernel(flow, weights), h)
    return weights


@pytest.mark.parametrize("kind", ["gradient", "gauss_newton"])
def test_fixed_steps_converge_at_third_order(kind) -> None:
    experiment, config = _experiment(kind)
    flow, w0 = experiment.flow, experiment.weights0
    horizon = 60.0 if kind == "gradient" else 20.0
    reference = integrate(flow, w0, replace(config.solver, method="dopri5", rtol=1e-12, atol=1e-14, t_end=horizon))
    target = torch.as_tensor(reference.weights[-1])
    solver = KernelETD3Solver(flow, w0, rtol=1.0, atol=1.0)
    errors = []
    for n in (16, 32, 64):
        weights = _fixed_steps(solver, flow, w0, horizon / n, n)
        errors.append(float((weights - target).norm() / (target - w0).norm()))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    # third order: the error falls by 8 per halving (measured 7.6 and 7.8 for GD); first-order
    # kernel-exponential steps fall by 2
    floor = 2.7 if kind == "gradient" else 2.4
    assert orders.min() >= floor, f"{kind}: errors {errors}, observed orders {orders}"


def test_error_estimate_is_third_order_in_the_step() -> None:
    experiment, _ = _experiment()
    flow, w0 = experiment.flow, experiment.weights0
    solver = KernelETD3Solver(flow, w0, rtol=1e-300, atol=1.0)  # error ratio = RMS of v3 - v2
    kernel = freeze_kernel(flow, w0)
    estimates = [solver._etd3(kernel, h)[1] for h in (2.0, 1.0, 0.5)]
    orders = np.log2(np.array(estimates[:-1]) / np.array(estimates[1:]))
    assert np.all((orders > 2.7) & (orders < 3.3)), f"estimates {estimates}, orders {orders}"


@pytest.mark.parametrize("kind", ["gradient", "gauss_newton"])
def test_adaptive_run_agrees_with_dopri5(kind) -> None:
    experiment, config = _experiment(kind, method="dopri5", rtol=1e-11, atol=1e-13, t_end=300.0)
    reference = integrate(experiment.flow, experiment.weights0, config.solver)
    w0 = reference.weights[0]
    scale = np.linalg.norm(reference.weights - w0, axis=(1, 2)).max()
    errors = []
    for rtol in (1e-4, 1e-6):
        solver = replace(config.solver, method="kernel_etd3", rtol=rtol, atol=rtol * 1e-3)
        solution = integrate(experiment.flow, experiment.weights0, solver)
        assert solution.status == "completed"
        np.testing.assert_array_equal(solution.t, reference.t)
        error = np.linalg.norm(solution.weights - reference.weights, axis=(1, 2)).max() / scale
        assert error <= 10 * rtol, f"{kind}, rtol = {rtol}: relative error {error:.3g}"
        errors.append(error)
    assert errors[1] < errors[0] / 10, f"no convergence: {errors}"
