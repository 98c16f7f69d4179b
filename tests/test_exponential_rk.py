"""Exponential Runge--Kutta steps on the kernel splitting (``kernel_etd3``, ``kernel_etd4``).

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
from gnflow.exponential_rk import KernelETD3Solver, KernelETD4Solver, phi_functions
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
    step = solver._etd4 if isinstance(solver, KernelETD4Solver) else solver._etd3
    for _ in range(n):
        weights, _ratio = step(freeze_kernel(flow, weights), h)
    return weights


def _fixed_step_errors(kind: str, solvers: dict[str, type], ns: tuple[int, ...]) -> dict[str, list[float]]:
    """Relative final-weight errors of n fixed steps to the horizon, per solver, against dopri5 at rtol 1e-13."""
    experiment, config = _experiment(kind)
    flow, w0 = experiment.flow, experiment.weights0
    horizon = 60.0 if kind == "gradient" else 20.0
    reference = integrate(flow, w0, replace(config.solver, method="dopri5", rtol=1e-13, atol=1e-15, t_end=horizon))
    target = torch.as_tensor(reference.weights[-1])
    out = {}
    for name, cls in solvers.items():
        solver = cls(flow, w0, rtol=1.0, atol=1.0)
        out[name] = [
            float((_fixed_steps(solver, flow, w0, horizon / n, n) - target).norm() / (target - w0).norm()) for n in ns
        ]
    return out


def _orders(errors: list[float]) -> np.ndarray:
    return np.log2(np.array(errors[:-1]) / np.array(errors[1:]))


@pytest.mark.parametrize("kind", ["gradient", "gauss_newton"])
def test_fixed_steps_converge_at_third_order(kind) -> None:
    errors = _fixed_step_errors(kind, {"etd3": KernelETD3Solver}, (16, 32, 64))["etd3"]
    orders = _orders(errors)
    # third order: the error falls by 8 per halving (measured 7.6 and 7.8 for GD); first-order
    # kernel-exponential steps fall by 2
    floor = 2.7 if kind == "gradient" else 2.4
    assert orders.min() >= floor, f"{kind}: errors {errors}, observed orders {orders}"


@pytest.mark.parametrize("kind", ["gradient", "gauss_newton"])
def test_etd4_fixed_steps_converge_at_fourth_order(kind) -> None:
    errors = _fixed_step_errors(kind, {"etd4": KernelETD4Solver, "etd3": KernelETD3Solver}, (8, 16, 32))
    orders = _orders(errors["etd4"])
    # fourth order: the error falls by 16 per halving; third-order steps (kernel_etd3) fall by 8
    assert orders.min() >= 3.6, f"{kind}: errors {errors}, observed orders {orders}"
    assert errors["etd4"][-1] < errors["etd3"][-1] / 3


@pytest.mark.parametrize("solver_class", [KernelETD3Solver, KernelETD4Solver])
def test_error_estimate_is_third_order_in_the_step(solver_class) -> None:
    experiment, _ = _experiment()
    flow, w0 = experiment.flow, experiment.weights0
    solver = solver_class(flow, w0, rtol=1e-300, atol=1.0)  # error ratio = RMS of v3 - v2 (v4 - v2)
    step = solver._etd4 if solver_class is KernelETD4Solver else solver._etd3
    kernel = freeze_kernel(flow, w0)
    estimates = [step(kernel, h)[1] for h in (2.0, 1.0, 0.5)]
    orders = np.log2(np.array(estimates[:-1]) / np.array(estimates[1:]))
    assert np.all((orders > 2.7) & (orders < 3.3)), f"estimates {estimates}, orders {orders}"


@pytest.mark.parametrize("kind", ["gradient", "gauss_newton"])
def test_adaptive_runs_agree_with_dopri5_and_etd4_beats_etd3_at_its_tolerance(kind) -> None:
    experiment, config = _experiment(kind, method="dopri5", rtol=1e-12, atol=1e-14, t_end=300.0)
    reference = integrate(experiment.flow, experiment.weights0, config.solver)
    w0 = reference.weights[0]
    scale = np.linalg.norm(reference.weights - w0, axis=(1, 2)).max()

    def error(method: str, rtol: float) -> float:  # the largest over the saved states
        solver = replace(config.solver, method=method, rtol=rtol, atol=rtol * 1e-3)
        solution = integrate(experiment.flow, experiment.weights0, solver)
        assert solution.status == "completed"
        np.testing.assert_array_equal(solution.t, reference.t)
        return float(np.linalg.norm(solution.weights - reference.weights, axis=(1, 2)).max() / scale)

    etd3 = {rtol: error("kernel_etd3", rtol) for rtol in (1e-4, 1e-6)}
    assert all(e <= 10 * rtol for rtol, e in etd3.items()), f"{kind}: kernel_etd3 errors {etd3}"
    assert etd3[1e-6] < etd3[1e-4] / 10, f"no convergence: {etd3}"
    for rtol in (1e-4, 1e-6):
        etd4 = error("kernel_etd4", rtol)
        assert etd4 <= rtol, f"{kind}, rtol = {rtol}: relative error {etd4:.3g}"
        assert etd4 < etd3[rtol] / 3, f"{kind}, rtol = {rtol}: no gain over kernel_etd3 ({etd4:.3g}, {etd3[rtol]:.3g})"


def test_etd4_continuous_extension_is_third_order_inside_a_step() -> None:
    # one step of size h from w0, read at theta = 0.3 and 0.5: local error O(h^4) (third order; measured
    # ratios 2.7-2.9), where the kernel-exponential interpolant of kernel_etd3 is O(h^3) (1.8-1.9)
    experiment, config = _experiment()
    flow, w0 = experiment.flow, experiment.weights0
    kernel = freeze_kernel(flow, w0)
    solver = KernelETD4Solver(flow, w0, rtol=1.0, atol=1.0)
    for theta in (0.3, 0.5):
        errors = []
        for h in (4.0, 2.0, 1.0):
            solver._etd4(kernel, h)
            dense = solver._dense_output()
            assert dense is not None
            exact = integrate(
                flow,
                w0,
                replace(
                    config.solver,
                    method="dopri5",
                    rtol=1e-13,
                    atol=1e-15,
                    t_end=theta * h,
                    n_save=2,
                    save_spacing="linear",
                ),
            )
            assert exact.t[-1] == pytest.approx(theta * h, rel=1e-12)
            target = torch.as_tensor(exact.weights[-1])
            errors.append(float((dense(theta) - target).norm() / (target - w0).norm()))
        orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
        # relative to the motion theta h: the local error h^4 gives order 3 of the ratio
        assert orders.min() > 2.6, f"theta = {theta}: errors {errors}, orders {orders}"
    # at theta = 1 the extension is the step itself
    new, _ = solver._etd4(kernel, 1.0)
    torch.testing.assert_close(solver._dense_output()(1.0), new, rtol=1e-13, atol=1e-13)
