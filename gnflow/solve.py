"""Integration of a flow with torchdiffeq, with saved times, early stopping and step statistics.

torchdiffeq 0.2.5 integrates to a list of times and returns only the states there. gnflow drives
its solvers step by step instead (the same solver objects ``odeint`` builds), which gives:

- the number of accepted and rejected steps and of vector-field evaluations;
- early stopping as soon as an accepted state has train loss <= ratio x initial train loss;
- partial results: a solver failure (step-size underflow, non-finite state, singular solve,
  too many steps, Ctrl-C) ends the run with the trajectory up to the failure and a status string.

``kernel_exponential`` (:mod:`gnflow.exponential`) is driven like the adaptive torchdiffeq
methods: its steps are exact for the linearized model, its saved states come from its own
interpolant (no extra linearization), and one evaluation is one linearization of the flow.

Adaptive methods save by torchdiffeq's dense output (the interpolant of each step), so saved times
cost no extra evaluations. Fixed-step methods save at grid points t = k h: requested times are
rounded to the nearest grid point, so a saved state is exactly the state after k steps.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torchdiffeq._impl.interp import _interp_evaluate
from torchdiffeq._impl.misc import _check_inputs
from torchdiffeq._impl.odeint import SOLVERS
from tqdm.auto import tqdm

from gnflow.config import SolverConfig
from gnflow.damping import GramSolveError
from gnflow.exponential import KernelExponentialSolver
from gnflow.flows import Flow, FlowError

__all__ = ["Solution", "integrate", "save_times"]

logger = logging.getLogger(__name__)


def save_times(config: SolverConfig) -> np.ndarray:
    """The flow times at which states are saved, always starting at t = 0.

    ``config.save_times`` when given (with 0 prepended if absent); otherwise ``n_save`` times,
    linearly spaced on [0, t_end] or t = 0 followed by log-spaced times over ``save_decades``
    decades ending at t_end.
    """
    if config.save_times is not None:
        times = np.asarray(config.save_times, dtype=np.float64)
        return times if times[0] == 0.0 else np.concatenate([[0.0], times])
    if config.save_spacing == "linear":
        return np.linspace(0.0, config.t_end, config.n_save)
    t_min = config.t_end * 10.0 ** (-config.save_decades)
    return np.concatenate([[0.0], np.geomspace(t_min, config.t_end, config.n_save - 1)])


@dataclass
class Solution:
    """A trajectory at its saved times and how the solver got there.

    Attributes
    ----------
    t:
        Saved flow times, shape (t,).
    weights:
        States at the saved times, shape (t, particle, component).
    nfe, n_accepted, n_rejected:
        Cumulative vector-field evaluations, accepted and rejected steps at each saved time.
    status:
        ``"completed"`` (reached t_end), ``"converged"`` (stopped on the loss ratio) or
        ``"failed: <reason>"``.
    wall_time_s:
        Wall-clock time of the integration in seconds.
    """

    t: np.ndarray
    weights: torch.Tensor
    nfe: np.ndarray
    n_accepted: np.ndarray
    n_rejected: np.ndarray
    status: str
    wall_time_s: float
    method: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Whether the solver stopped on a failure."""
        return self.status.startswith("failed")


class _Recorder:
    """Collects saved states and counters during the integration."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.t: list[float] = []
        self.weights: list[torch.Tensor] = []
        self.nfe: list[int] = []
        self.accepted: list[int] = []
        self.rejected: list[int] = []
        self.n_accepted = 0
        self.n_rejected = 0

    def save(self, t: float, weights: torch.Tensor) -> None:
        if self.t and t <= self.t[-1]:
            return
        self.t.append(float(t))
        self.weights.append(weights.detach().clone())
        self.nfe.append(self.flow.nfe)
        self.accepted.append(self.n_accepted)
        self.rejected.append(self.n_rejected)

    def solution(self, status: str, wall_time: float, method: str) -> Solution:
        return Solution(
            t=np.asarray(self.t, dtype=np.float64),
            weights=torch.stack(self.weights),
            nfe=np.asarray(self.nfe, dtype=np.int64),
            n_accepted=np.asarray(self.accepted, dtype=np.int64),
            n_rejected=np.asarray(self.rejected, dtype=np.int64),
            status=status,
            wall_time_s=wall_time,
            method=method,
        )


class _Progress:
    """Progress bar over flow time with the loss ratio and the evaluation count."""

    def __init__(self, t_end: float, name: str, enabled: bool | None) -> None:
        disable = None if enabled is None else not enabled
        self.bar = tqdm(
            total=t_end,
            desc=name,
            unit="",
            disable=disable,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| t={n:.4g}/{total:.4g} [{elapsed}<{remaining}{postfix}]",
            leave=False,
        )
        self.t = 0.0

    def update(self, t: float, loss_ratio: float, nfe: int) -> None:
        if self.bar.disable:
            return
        self.bar.update(max(0.0, min(t, self.bar.total) - self.t))
        self.t = min(t, self.bar.total)
        self.bar.set_postfix_str(f"loss/L0={loss_ratio:.2e}, nfe={nfe}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def _failure_reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by the user"
    if isinstance(exc, AssertionError) and text.startswith("underflow in dt"):
        return f"step size underflow ({text})"
    if isinstance(exc, AssertionError) and text.startswith("non-finite"):
        return "non-finite state"
    return text


def integrate(
    flow: Flow,
    weights0: torch.Tensor,
    config: SolverConfig,
    *,
    times: np.ndarray | None = None,
    progress: bool | None = None,
) -> Solution:
    """Integrate ``flow`` from ``weights0`` at t = 0 to ``config.t_end``.

    Parameters
    ----------
    flow:
        The vector field (t, weights) -> d weights / dt.
    weights0:
        Initial state, shape (particle, component).
    config:
        Method, tolerances, step size, horizon, stopping ratio and step limit.
    times:
        Saved flow times (increasing, starting at 0); default :func:`save_times` of ``config``.
    progress:
        Show a progress bar: True, False, or None (only when stderr is a terminal).

    Returns
    -------
    Solution
        The saved states and counters. A failure does not raise: the trajectory up to the failure
        is returned with ``status = "failed: <reason>"``.
    """
    times = save_times(config) if times is None else np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0 or times[0] != 0.0 or np.any(np.diff(times) <= 0):
        raise ValueError("saved times must be a strictly increasing 1-d array starting at 0")
    recorder = _Recorder(flow)
    bar = _Progress(float(times[-1]), flow.name, progress)
    start = time.perf_counter()
    status = "completed"
    try:
        loss0 = flow.train_loss(weights0)
        threshold = config.stop_loss_ratio * loss0
        recorder.save(0.0, weights0)
        if config.adaptive:
            status = _integrate_adaptive(flow, weights0, config, times, recorder, bar, loss0, threshold)
        else:
            status = _integrate_fixed(flow, weights0, config, times, recorder, bar, loss0, threshold)
    except (FlowError, GramSolveError, AssertionError, RuntimeError, KeyboardInterrupt) as exc:
        status = f"failed: {_failure_reason(exc)}"
        logger.warning("integration stopped at t=%.6g: %s", recorder.t[-1] if recorder.t else 0.0, status)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    if not recorder.t:
        recorder.save(0.0, weights0)
    return recorder.solution(status, wall, config.method)


def _integrate_exponential(
    flow: Flow,
    weights0: torch.Tensor,
    config: SolverConfig,
    times: np.ndarray,
    recorder: _Recorder,
    bar: _Progress,
    loss0: float,
    threshold: float,
) -> str:
    solver = KernelExponentialSolver(
        flow, weights0, rtol=config.rtol, atol=config.atol, first_step=config.first_step
    )
    t_end = float(times[-1])
    next_index = 1
    n_steps = 0
    while next_index < len(times):
        if n_steps >= config.max_steps:
            return f"failed: more than solver.max_steps = {config.max_steps} steps"
        step = solver.attempt(t_end)
        n_steps += 1
        if step is None:
            recorder.n_rejected += 1
            continue
        recorder.n_accepted += 1
        while next_index < len(times) and times[next_index] <= step.t1:
            recorder.save(float(times[next_index]), step.interpolate(float(times[next_index])))
            next_index += 1
        loss = solver.kernel.train_loss
        bar.update(step.t1, loss / loss0 if loss0 > 0 else 0.0, flow.nfe)
        if not math.isfinite(loss):
            return "failed: non-finite train loss"
        if config.stop_loss_ratio > 0 and loss <= threshold:
            recorder.save(step.t1, step.weights)
            return "converged"
    return "completed"


def _integrate_adaptive(
    flow: Flow,
    weights0: torch.Tensor,
    config: SolverConfig,
    times: np.ndarray,
    recorder: _Recorder,
    bar: _Progress,
    loss0: float,
    threshold: float,
) -> str:
    if config.method == "kernel_exponential":
        return _integrate_exponential(flow, weights0, config, times, recorder, bar, loss0, threshold)
    t_tensor = torch.as_tensor(times, dtype=torch.float64, device=weights0.device)
    options: dict[str, object] = {"dtype": torch.float64}
    if config.first_step is not None:
        options["first_step"] = config.first_step
    _, func, y0, t_tensor, rtol, atol, method, options, _, _ = _check_inputs(
        flow, weights0, t_tensor, config.rtol, config.atol, config.method, options, None, SOLVERS
    )
    solver = SOLVERS[method](func=func, y0=y0, rtol=rtol, atol=atol, **options)
    solver._before_integrate(t_tensor)
    next_index = 1
    n_steps = 0
    while next_index < len(times):
        if n_steps >= config.max_steps:
            return f"failed: more than solver.max_steps = {config.max_steps} steps"
        state = solver.rk_state
        new_state = solver._adaptive_step(state)
        solver.rk_state = new_state
        n_steps += 1
        if not bool(new_state.t1 > state.t1):
            recorder.n_rejected += 1
            continue
        recorder.n_accepted += 1
        t1 = float(new_state.t1)
        while next_index < len(times) and times[next_index] <= t1:
            y = _interp_evaluate(new_state.interp_coeff, new_state.t0, new_state.t1, t_tensor[next_index])
            recorder.save(float(times[next_index]), y)
            next_index += 1
        loss = flow.train_loss(new_state.y1)
        bar.update(t1, loss / loss0 if loss0 > 0 else 0.0, flow.nfe)
        if not math.isfinite(loss):
            return "failed: non-finite train loss"
        if config.stop_loss_ratio > 0 and loss <= threshold:
            recorder.save(t1, new_state.y1)
            return "converged"
    return "completed"


def _integrate_fixed(
    flow: Flow,
    weights0: torch.Tensor,
    config: SolverConfig,
    times: np.ndarray,
    recorder: _Recorder,
    bar: _Progress,
    loss0: float,
    threshold: float,
) -> str:
    h = config.step_size
    n_total = int(math.floor(times[-1] / h + 1e-9))
    if n_total < 1:
        raise ValueError(f"solver.step_size = {h} is larger than the horizon {times[-1]}")
    save_steps = set(np.clip(np.rint(times / h).astype(np.int64), 0, n_total).tolist())
    t_tensor = torch.as_tensor([0.0, n_total * h], dtype=torch.float64, device=weights0.device)
    options = {"step_size": h}
    _, func, y, _, rtol, atol, method, options, _, _ = _check_inputs(
        flow, weights0, t_tensor, config.rtol, config.atol, config.method, options, None, SOLVERS
    )
    solver = SOLVERS[method](func=func, y0=y, rtol=rtol, atol=atol, **options)
    dt = torch.as_tensor(h, dtype=weights0.dtype, device=weights0.device)
    for k in range(n_total):
        if k >= config.max_steps:
            return f"failed: more than solver.max_steps = {config.max_steps} steps"
        t0 = torch.as_tensor(k * h, dtype=weights0.dtype, device=weights0.device)
        dy, _ = solver._step_func(func, t0, dt, t0 + dt, y)
        y = y + dy
        recorder.n_accepted += 1
        if k + 1 in save_steps:
            recorder.save((k + 1) * h, y)
        loss = flow.train_loss(y)
        bar.update((k + 1) * h, loss / loss0 if loss0 > 0 else 0.0, flow.nfe)
        if not math.isfinite(loss):
            return "failed: non-finite train loss"
        if config.stop_loss_ratio > 0 and loss <= threshold:
            recorder.save((k + 1) * h, y)
            return "converged"
    return "completed"
