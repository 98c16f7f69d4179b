"""The one place where gnflow uses torchdiffeq's private API (written against torchdiffeq 0.2.5).

torchdiffeq's public ``odeint`` integrates to a list of times and returns only the states
there. gnflow's steppers need one step at a time, the dense output of the last step, and the
solver's state for checkpoints, which torchdiffeq keeps in ``torchdiffeq._impl``:
``_check_inputs`` (the same normalization ``odeint`` applies), ``SOLVERS`` (method name to
solver class), ``_RungeKuttaState`` with ``_adaptive_step`` and ``_before_integrate`` (adaptive
Runge--Kutta), ``_step_func`` (fixed-grid methods) and ``_interp_evaluate`` (the interpolant of a Runge--Kutta step).
Should torchdiffeq change them, this module is all that needs to follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torchdiffeq._impl.interp import _interp_evaluate
from torchdiffeq._impl.misc import _check_inputs
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.rk_common import _RungeKuttaState

__all__ = ["FixedGridMethod", "RungeKuttaMethod"]

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _solver(method: str, field: Field, y0: torch.Tensor, t_end: float, rtol: float, atol: float, **options: Any) -> Any:
    """torchdiffeq's solver object for ``method``, built exactly as ``odeint`` builds it."""
    t = torch.as_tensor([0.0, t_end], dtype=torch.float64, device=y0.device)
    _, func, y0, _, rtol, atol, method, options, _, _ = _check_inputs(
        field, y0, t, rtol, atol, method, options, None, SOLVERS
    )
    return SOLVERS[method](func=func, y0=y0, rtol=rtol, atol=atol, **options)


class RungeKuttaMethod:
    """A torchdiffeq adaptive Runge--Kutta solver driven one step attempt at a time.

    Parameters
    ----------
    method:
        A torchdiffeq adaptive method (dopri5, bosh3, adaptive_heun, dopri8, fehlberg2).
    field:
        The vector field (t, y) -> dy/dt.
    y0:
        Initial state at t = 0.
    t_end:
        The horizon (for torchdiffeq's checks; steps may end past it).
    rtol, atol:
        Tolerances of the local error test.
    first_step:
        First step size (None: torchdiffeq's estimate, which costs one evaluation).
    """

    def __init__(
        self,
        method: str,
        field: Field,
        y0: torch.Tensor,
        *,
        t_end: float,
        rtol: float,
        atol: float,
        first_step: float | None,
    ) -> None:
        options: dict[str, Any] = {"dtype": torch.float64}
        if first_step is not None:
            options["first_step"] = first_step
        self._solver = _solver(method, field, y0, t_end, rtol, atol, **options)
        self._device = y0.device

    def start(self) -> None:
        """Evaluate the field at t = 0 (and estimate the first step size)."""
        self._solver._before_integrate(torch.zeros(1, dtype=torch.float64, device=self._device))

    def attempt(self) -> bool:
        """One adaptive step from the current state; whether it was accepted.

        Raises
        ------
        AssertionError
            torchdiffeq's own checks: ``underflow in dt`` and ``non-finite values in state``.
        """
        state = self._solver.rk_state
        self._solver.rk_state = self._solver._adaptive_step(state)
        return bool(self._solver.rk_state.t1 > state.t1)

    @property
    def t(self) -> float:
        """Flow time of the current state (the end of the last accepted step)."""
        return float(self._solver.rk_state.t1)

    @property
    def y(self) -> torch.Tensor:
        """The current state."""
        state: torch.Tensor = self._solver.rk_state.y1
        return state

    def interpolate(self, t: float) -> torch.Tensor:
        """The dense output of the last accepted step at flow time t within it."""
        state = self._solver.rk_state
        at = torch.as_tensor(t, dtype=torch.float64, device=self._device)
        value: torch.Tensor = _interp_evaluate(state.interp_coeff, state.t0, state.t1, at)
        return value

    def state_dict(self) -> dict[str, Any]:
        """The Runge--Kutta state (y, f, t0, t1, dt, interpolation coefficients), on the CPU."""
        return {key: _to_device(value, torch.device("cpu")) for key, value in self._solver.rk_state._asdict().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a state of :meth:`state_dict`, without evaluating the field."""
        self._solver.rk_state = _RungeKuttaState(**{k: _to_device(v, self._device) for k, v in state.items()})
        # what _before_integrate sets besides rk_state: no prescribed step or jump times
        empty = torch.tensor([], dtype=self._solver.dtype, device=self._device)
        self._solver.step_t, self._solver.jump_t = empty, empty.clone()
        self._solver.next_step_index = self._solver.next_jump_index = -1


class FixedGridMethod:
    """One step of a torchdiffeq fixed-grid method (euler, midpoint, rk4) at a time.

    Parameters
    ----------
    method:
        The method name.
    field:
        The vector field (t, y) -> dy/dt, called through torchdiffeq's wrapper.
    y0:
        Initial state (its dtype and device are those of the time tensors of a step).
    step_size, t_end:
        A step size and the horizon, for torchdiffeq's checks (the steps are given to :meth:`step`).
    rtol, atol:
        Passed on as ``odeint`` passes them (unused by fixed-grid methods).
    """

    def __init__(
        self, method: str, field: Field, y0: torch.Tensor, *, step_size: float, t_end: float, rtol: float, atol: float
    ) -> None:
        self._solver = _solver(method, field, y0, t_end, rtol, atol, step_size=step_size)

    def step(self, t0: float, dt: float, y: torch.Tensor) -> torch.Tensor:
        """The state after one step of size dt from state y at flow time t0."""
        t = torch.as_tensor(t0, dtype=y.dtype, device=y.device)
        h = torch.as_tensor(dt, dtype=y.dtype, device=y.device)
        dy, _ = self._solver._step_func(self._solver.func, t, h, t + h, y)
        return y + dy


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return [v.to(device) for v in value]
    return value
