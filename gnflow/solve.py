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

A :class:`StepSchedule` generalizes the fixed-step grid: step k has its own size h_k and may use
the vector field restricted to a mini-batch of the training samples (:meth:`Flow.restrict`).
Discrete Gram--Gauss--Newton is this driver with the Euler method, h_k = b_k / lam and constant
damping alpha / lam (see :mod:`gnflow.ggn`); a uniform fixed-step run is the schedule with
h_k = h on all samples.
Long runs can hand their solver position to a :class:`CheckpointHook` every so often and later
continue from it (``resume=``): the position holds the solver's complete state (for adaptive
methods the Runge--Kutta state: y, f, t0, t1, dt and the interpolation coefficients), the saved
states and the counters, so a resumed run takes exactly the steps the uninterrupted run takes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torchdiffeq._impl.interp import _interp_evaluate
from torchdiffeq._impl.misc import _check_inputs, _PerturbFunc
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.rk_common import _RungeKuttaState
from tqdm.auto import tqdm

from gnflow.config import EXPONENTIAL_METHODS, SolverConfig
from gnflow.damping import GramSolveError
from gnflow.exponential import KernelExponentialSolver
from gnflow.flows import Flow, FlowError

__all__ = ["CheckpointHook", "Solution", "StepSchedule", "integrate", "save_times"]

logger = logging.getLogger(__name__)


def save_times(config: SolverConfig) -> np.ndarray:
    """The flow times at which states are saved, always starting at t = 0.

    ``config.save_times`` when given (with 0 and t_end added if absent); otherwise ``n_save`` times,
    linearly spaced on [0, t_end] or t = 0 followed by log-spaced times over ``save_decades``
    decades ending at t_end.
    """
    if config.save_times is not None:
        times = np.asarray(config.save_times, dtype=np.float64)
        if times[0] != 0.0:
            times = np.concatenate([[0.0], times])
        if times[-1] != config.t_end:
            times = np.concatenate([times, [config.t_end]])
        return times
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
    epoch:
        Runs with a :class:`StepSchedule` of known N: passes over the training set completed at
        each saved time (samples used / N), shape (t,); None otherwise.
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
    epoch: np.ndarray | None = None

    @property
    def failed(self) -> bool:
        """Whether the solver stopped on a failure."""
        return self.status.startswith("failed")


class CheckpointHook(Protocol):
    """Receives the solver position after accepted steps, to write it somewhere durable.

    ``integrate`` asks ``due(n_accepted)`` after every accepted step that does not end the run
    and, when it answers True, calls ``write(position)``. The position is a dictionary of
    tensors, numbers and strings; passing it back as ``integrate(..., resume=position)``
    continues the run exactly where it was.
    """

    def due(self, n_accepted: int) -> bool:
        """Whether to write the position now, after ``n_accepted`` accepted steps."""
        ...

    def write(self, position: dict[str, Any]) -> None:
        """Store ``position`` (it must not be modified afterwards by the caller)."""
        ...


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
        self.epoch: list[float] = []

    def save(self, t: float, weights: torch.Tensor, epoch: float = math.nan) -> None:
        if self.t and t <= self.t[-1]:
            return
        self.t.append(float(t))
        self.epoch.append(float(epoch))
        self.weights.append(weights.detach().clone())
        self.nfe.append(self.flow.nfe)
        self.accepted.append(self.n_accepted)
        self.rejected.append(self.n_rejected)

    def state_dict(self) -> dict[str, Any]:
        return {
            "t": list(self.t),
            "weights": torch.stack(self.weights).cpu(),
            "nfe": list(self.nfe),
            "accepted": list(self.accepted),
            "rejected": list(self.rejected),
            "n_accepted": self.n_accepted,
            "n_rejected": self.n_rejected,
            "epoch": list(self.epoch),
        }

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device) -> None:
        self.t = [float(t) for t in state["t"]]
        self.weights = list(state["weights"].to(device))
        self.nfe = [int(n) for n in state["nfe"]]
        self.accepted = [int(n) for n in state["accepted"]]
        self.rejected = [int(n) for n in state["rejected"]]
        self.n_accepted = int(state["n_accepted"])
        self.n_rejected = int(state["n_rejected"])
        self.epoch = [float(e) for e in state["epoch"]]

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
            epoch=np.asarray(self.epoch) if not np.isnan(self.epoch).any() else None,
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
    schedule: StepSchedule | None = None,
    checkpoint: CheckpointHook | None = None,
    resume: Mapping[str, Any] | None = None,
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
    schedule:
        Explicit steps for a fixed-step method (sizes, mini-batches, saved steps); replaces
        ``times`` and ``config.step_size`` and ``config.t_end``. Early stopping then looks at the
        train loss on all samples at saved steps only (and after every step when the schedule has
        no mini-batches).
    checkpoint:
        Receives the solver position every so often (see :class:`CheckpointHook`).
    resume:
        A position written through ``checkpoint`` by an earlier call with the same flow,
        initial state, config and times: the integration continues from there and returns the
        whole trajectory, as if it had never stopped.

    Returns
    -------
    Solution
        The saved states and counters. A failure does not raise: the trajectory up to the failure
        is returned with ``status = "failed: <reason>"``.
    """
    if schedule is not None:
        if config.adaptive:
            raise ValueError(f"a step schedule needs a fixed-step method, got solver.method = {config.method!r}")
        times = schedule.times()
    else:
        times = save_times(config) if times is None else np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0 or times[0] != 0.0 or np.any(np.diff(times) <= 0):
        raise ValueError("saved times must be a strictly increasing 1-d array starting at 0")
    recorder = _Recorder(flow)
    bar = _Progress(float(times[-1]), flow.name, progress)
    start = time.perf_counter()
    status = "completed"
    if resume is not None:
        _check_resume(resume, config, times)
        recorder.load_state_dict(resume["recorder"], weights0.device)
        start -= float(resume["wall_time_s"])
    stamped = _StampedHook(checkpoint, config.method, times) if checkpoint is not None else None
    resumable = {"checkpoint": stamped, "resume": resume, "start": start}
    try:
        loss0 = flow.train_loss(weights0)
        threshold = config.stop_loss_ratio * loss0
        if resume is None:
            recorder.save(0.0, weights0, 0.0 if schedule is not None and schedule.n_samples else math.nan)
        if config.adaptive:
            status = _integrate_adaptive(flow, weights0, config, times, recorder, bar, loss0, threshold, **resumable)
        else:
            if schedule is None:
                schedule = StepSchedule.uniform(config.step_size, times)
            status = _integrate_fixed(flow, weights0, config, schedule, recorder, bar, loss0, threshold, **resumable)
    except (FlowError, GramSolveError, AssertionError, RuntimeError, KeyboardInterrupt) as exc:
        status = f"failed: {_failure_reason(exc)}"
        logger.warning("integration stopped at t=%.6g: %s", recorder.t[-1] if recorder.t else 0.0, status)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    if not recorder.t:
        recorder.save(0.0, weights0)
    return recorder.solution(status, wall, config.method)


def _finish_accepted_step(
    config: SolverConfig,
    times: np.ndarray,
    next_index: int,
    t1: float,
    interpolate: Callable[[int], torch.Tensor],
    y1: torch.Tensor,
    loss: float,
    loss0: float,
    threshold: float,
    recorder: _Recorder,
    bar: _Progress,
    nfe: int,
) -> tuple[int, str | None]:
    """Save the requested times up to t1 (by the step's interpolant) and test the loss at y1.

    Returns the index of the next time to save and the final status when the run ends here.
    """
    while next_index < len(times) and times[next_index] <= t1:
        recorder.save(float(times[next_index]), interpolate(next_index))
        next_index += 1
    bar.update(t1, loss / loss0 if loss0 > 0 else 0.0, nfe)
    if not math.isfinite(loss):
        return next_index, "failed: non-finite train loss"
    if config.stop_loss_ratio > 0 and loss <= threshold:
        recorder.save(t1, y1)
        return next_index, "converged"
    return next_index, None


def _integrate_exponential(
    flow: Flow,
    weights0: torch.Tensor,
    config: SolverConfig,
    times: np.ndarray,
    recorder: _Recorder,
    bar: _Progress,
    loss0: float,
    threshold: float,
    checkpoint: CheckpointHook | None = None,
    resume: Mapping[str, Any] | None = None,
    start: float = 0.0,
) -> str:
    if resume is None:
        solver = KernelExponentialSolver(
            flow, weights0, rtol=config.rtol, atol=config.atol, first_step=config.first_step
        )
        next_index, n_steps = 1, 0
    else:
        # the state after the last accepted step and the step size proposed for the next one
        solver = KernelExponentialSolver(
            flow, resume["y"].to(weights0.device), rtol=config.rtol, atol=config.atol, first_step=float(resume["h"])
        )
        solver.t = float(resume["t"])
        next_index, n_steps, flow.nfe = int(resume["next_index"]), int(resume["n_steps"]), int(resume["nfe"])
    t_end = float(times[-1])
    while next_index < len(times):
        if n_steps >= config.max_steps:
            return f"failed: more than solver.max_steps = {config.max_steps} steps"
        step = solver.attempt(t_end)
        n_steps += 1
        if step is None:
            recorder.n_rejected += 1
            continue
        recorder.n_accepted += 1
        next_index, final = _finish_accepted_step(
            config,
            times,
            next_index,
            step.t1,
            lambda k, step=step: step.interpolate(float(times[k])),
            step.weights,
            solver.kernel.train_loss,
            loss0,
            threshold,
            recorder,
            bar,
            flow.nfe,
        )
        if final is not None:
            return final
        if checkpoint is not None and next_index < len(times) and checkpoint.due(recorder.n_accepted):
            checkpoint.write(
                _position(
                    recorder,
                    flow,
                    start,
                    y=step.weights.cpu(),
                    t=solver.t,
                    h=solver.h,
                    next_index=next_index,
                    n_steps=n_steps,
                )
            )
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
    checkpoint: CheckpointHook | None = None,
    resume: Mapping[str, Any] | None = None,
    start: float = 0.0,
) -> str:
    if config.method == "kernel_exponential":
        return _integrate_exponential(
            flow, weights0, config, times, recorder, bar, loss0, threshold, checkpoint, resume, start
        )
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
    if resume is not None:
        solver.rk_state = _RungeKuttaState(**{k: _to_device(v, weights0.device) for k, v in resume["rk_state"].items()})
        next_index, n_steps, flow.nfe = int(resume["next_index"]), int(resume["n_steps"]), int(resume["nfe"])
        bar.update(float(solver.rk_state.t1), float("nan"), flow.nfe)
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
        next_index, final = _finish_accepted_step(
            config,
            times,
            next_index,
            float(new_state.t1),
            lambda k, s=new_state: _interp_evaluate(s.interp_coeff, s.t0, s.t1, t_tensor[k]),
            new_state.y1,
            flow.train_loss(new_state.y1),
            loss0,
            threshold,
            recorder,
            bar,
            flow.nfe,
        )
        if final is not None:
            return final
        if checkpoint is not None and next_index < len(times) and checkpoint.due(recorder.n_accepted):
            rk_state = {k: _to_device(v, torch.device("cpu")) for k, v in new_state._asdict().items()}
            checkpoint.write(
                _position(recorder, flow, start, rk_state=rk_state, next_index=next_index, n_steps=n_steps)
            )
    return "completed"


def _integrate_fixed(
    flow: Flow,
    weights0: torch.Tensor,
    config: SolverConfig,
    schedule: StepSchedule,
    recorder: _Recorder,
    bar: _Progress,
    loss0: float,
    threshold: float,
    checkpoint: CheckpointHook | None = None,
    resume: Mapping[str, Any] | None = None,
    start: float = 0.0,
) -> str:
    t_grid = schedule.times()
    epochs = schedule.epochs()
    t_tensor = torch.as_tensor([0.0, t_grid[-1]], dtype=torch.float64, device=weights0.device)
    options = {"step_size": float(schedule.step_sizes[0])}
    _, func, y, _, rtol, atol, method, options, _, _ = _check_inputs(
        flow, weights0, t_tensor, config.rtol, config.atol, config.method, options, None, SOLVERS
    )
    solver = SOLVERS[method](func=func, y0=y, rtol=rtol, atol=atol, **options)
    batches = None
    if schedule.batches is not None:
        batches = [torch.as_tensor(b, dtype=torch.long, device=weights0.device) for b in schedule.batches]
    first = 0
    if resume is not None:
        first, y, flow.nfe = int(resume["n_steps"]), resume["y"].to(weights0.device), int(resume["nfe"])
        bar.update(float(t_grid[first]), float("nan"), flow.nfe)
    for k in range(first, schedule.n_steps):
        if k >= config.max_steps:
            return f"failed: more than solver.max_steps = {config.max_steps} steps"
        t0 = torch.as_tensor(t_grid[k], dtype=weights0.dtype, device=weights0.device)
        dt = torch.as_tensor(schedule.step_sizes[k], dtype=weights0.dtype, device=weights0.device)
        if batches is None:
            dy, _ = solver._step_func(func, t0, dt, t0 + dt, y)
        else:
            batch_flow = flow.restrict(batches[k])
            dy, _ = solver._step_func(_PerturbFunc(batch_flow), t0, dt, t0 + dt, y)
            flow.nfe += batch_flow.nfe
        y = y + dy
        recorder.n_accepted += 1
        t1 = float(t_grid[k + 1])
        if schedule.save[k]:
            recorder.save(t1, y, epochs[k + 1])
        if batches is not None and not schedule.save[k]:
            continue  # the loss on all samples costs a forward pass: look at it when saving only
        loss = flow.train_loss(y)
        bar.update(t1, loss / loss0 if loss0 > 0 else 0.0, flow.nfe)
        if not math.isfinite(loss):
            return "failed: non-finite train loss"
        if config.stop_loss_ratio > 0 and loss <= threshold:
            recorder.save(t1, y, epochs[k + 1])
            return "converged"
        if checkpoint is not None and k + 1 < schedule.n_steps and checkpoint.due(recorder.n_accepted):
            checkpoint.write(_position(recorder, flow, start, y=y.cpu(), n_steps=k + 1))
    return "completed"


@dataclass(frozen=True, eq=False)
class StepSchedule:
    """The steps of a fixed-step integration, one entry per step.

    Attributes
    ----------
    step_sizes:
        h_k, flow time advanced by step k, shape (step,), all > 0.
    save:
        Whether the state after step k is saved, shape (step,) bool.
    batches:
        None: every step uses all training samples. Otherwise one integer index array per step:
        step k integrates the vector field restricted to the samples ``batches[k]``.
    n_samples:
        N, the number of training samples, to count epochs (samples used / N); None when unknown.
    """

    step_sizes: np.ndarray
    save: np.ndarray
    batches: tuple[np.ndarray, ...] | None = None
    n_samples: int | None = None

    def __post_init__(self) -> None:
        h = np.asarray(self.step_sizes, dtype=np.float64)
        if h.ndim != 1 or h.size == 0 or not np.all(np.isfinite(h)) or np.any(h <= 0):
            raise ValueError("step sizes must be a non-empty 1-d array of finite numbers > 0")
        if np.shape(self.save) != h.shape:
            raise ValueError(f"save must have one flag per step ({h.size}), got shape {np.shape(self.save)}")
        if self.batches is not None:
            if len(self.batches) != h.size:
                raise ValueError(f"batches must hold one index array per step ({h.size}), got {len(self.batches)}")
            if any(np.asarray(b).ndim != 1 or len(b) == 0 for b in self.batches):
                raise ValueError("every batch must be a non-empty 1-d index array")
        if self.n_samples is not None and self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")

    @classmethod
    def uniform(cls, step_size: float, times: np.ndarray) -> StepSchedule:
        """Steps of size h on all samples up to times[-1], saving at the grid points t = k h
        nearest to ``times``."""
        n_total = math.floor(times[-1] / step_size + 1e-9)
        if n_total < 1:
            raise ValueError(f"solver.step_size = {step_size} is larger than the horizon {times[-1]}")
        save = np.zeros(n_total, dtype=bool)
        save_steps = np.clip(np.rint(np.asarray(times) / step_size).astype(np.int64), 0, n_total)
        save[save_steps[save_steps >= 1] - 1] = True
        return cls(step_sizes=np.full(n_total, float(step_size)), save=save)

    @property
    def n_steps(self) -> int:
        """The number of steps."""
        return int(np.size(self.step_sizes))

    def times(self) -> np.ndarray:
        """Flow times before the first and after every step, shape (step + 1,).

        Equal steps give t_k = k h exactly; otherwise t_k is the running sum of the h's.
        """
        h = np.asarray(self.step_sizes, dtype=np.float64)
        if np.all(h == h[0]):
            return h[0] * np.arange(h.size + 1, dtype=np.float64)
        return np.concatenate([[0.0], np.cumsum(h)])

    def epochs(self) -> np.ndarray:
        """Passes over the training set completed before the first and after every step (samples
        used / N), shape (step + 1,); NaN when N is unknown."""
        if self.n_samples is None:
            return np.full(self.n_steps + 1, np.nan)
        if self.batches is None:
            return np.arange(self.n_steps + 1, dtype=np.float64)
        used = np.cumsum([len(b) for b in self.batches])
        return np.concatenate([[0.0], used / self.n_samples])


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return [v.to(device) for v in value]
    return value


class _StampedHook:
    """Adds to every position what it is valid for (method, saved times) before writing it."""

    def __init__(self, hook: CheckpointHook, method: str, times: np.ndarray) -> None:
        self.hook = hook
        self.stamp = {"method": method, "times": torch.as_tensor(times, dtype=torch.float64)}

    def due(self, n_accepted: int) -> bool:
        return self.hook.due(n_accepted)

    def write(self, position: dict[str, Any]) -> None:
        self.hook.write({**self.stamp, **position})


def _position(recorder: _Recorder, flow: Flow, start: float, **solver_state: Any) -> dict[str, Any]:
    """Everything needed to continue the integration after the last accepted step."""
    return {
        "recorder": recorder.state_dict(),
        "nfe": flow.nfe,
        "wall_time_s": time.perf_counter() - start,
        **solver_state,
    }


def _check_resume(resume: Mapping[str, Any], config: SolverConfig, times: np.ndarray) -> None:
    if resume.get("method") != config.method:
        raise ValueError(f"cannot resume: the position was written by {resume.get('method')!r}, not {config.method!r}")
    saved = resume["times"].numpy()
    if saved.shape != times.shape or not np.array_equal(saved, times):
        raise ValueError("cannot resume: the position was written for different saved times")
    key = "rk_state" if config.adaptive and config.method not in EXPONENTIAL_METHODS else "y"
    if key not in resume:
        raise ValueError(f"cannot resume: the position holds no {key!r} for method {config.method!r}")
