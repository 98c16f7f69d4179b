"""``integrate`` and the integration loop that drives every stepper.

:func:`integration_loop` is the only loop over steps in :mod:`gnflow.solve`. It alone saves
states at the requested times (from the stepper's interpolant), stops early on the loss ratio,
enforces the step limit and the time budgets, calls the user's callback, writes checkpoints and
resumes from them, shows the progress bar and keeps the step statistics. Steppers
(:mod:`gnflow.solve._steppers`) only take steps.

A failure does not raise: the run ends with the trajectory up to it and a failed
:class:`~gnflow.status.RunResult`. Stops for a budget or on the callback's request keep the
last accepted state (it is exact, only off the grid of saved times) and, with a checkpoint hook,
write a checkpoint first, so that ``resume`` continues the run as if it had never stopped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch

from gnflow.config import SolverConfig, SolverMethod
from gnflow.damping import GramSolveError
from gnflow.flows import Flow, FlowError
from gnflow.method_choice import auto_method
from gnflow.solve._budget import Budget, ProgressBar, StopWatch
from gnflow.solve._schedule import StepSchedule, save_times
from gnflow.solve._solution import Recorder, Solution
from gnflow.solve._steppers import Stepper, make_stepper
from gnflow.status import RunResult, interruption_reason

FLOW_ONLY_FIXED = ("midpoint", "rk4")
"""Fixed-step methods that only integrate a flow (euler is also the discrete method, GGN or GD, whose
loss may rise): their train loss is checked like an adaptive run's, since a rise means that the
steps are too large for the flow (beyond the method's stability limit, or inaccurate)."""

__all__ = ["Callback", "CheckpointHook", "StateSink", "StepInfo", "integrate", "integration_loop"]

logger = logging.getLogger("gnflow.solve")


@dataclass(frozen=True, kw_only=True)
class StepInfo:
    """What the callback of :func:`integrate` learns after an accepted step.

    Attributes
    ----------
    t:
        Flow time reached.
    n_accepted, n_rejected:
        Steps so far (a resumed run counts from its start).
    nfe:
        Vector-field evaluations so far.
    train_loss, loss_ratio:
        L at t and L / L(0); None after mini-batch steps that did not look at the loss.
    wall_time_s, cpu_time_s:
        Time spent by the run so far.
    """

    t: float
    n_accepted: int
    n_rejected: int
    nfe: int
    train_loss: float | None
    loss_ratio: float | None
    wall_time_s: float
    cpu_time_s: float


Callback = Callable[[StepInfo], "str | bool | None"]
"""Called after every accepted step that does not end the run. A true return value stops the run
(failed, with reason ``stopped on request (<text>)`` when it is a string); a STOP file, say::

    callback=lambda info: Path("STOP").exists() and "STOP file"
"""


class CheckpointHook(Protocol):
    """Receives the solver position after accepted steps, to write it somewhere durable.

    ``integrate`` asks ``due(n_accepted)`` after every accepted step that does not end the run
    and, when it answers True, calls ``write(position)``; it also writes when the run stops for a
    time budget or on request. The position is a dictionary of tensors, numbers and strings;
    passing it back as ``integrate(..., resume=position)`` continues the run exactly where it was.
    """

    def due(self, n_accepted: int) -> bool:
        """Whether to write the position now, after ``n_accepted`` accepted steps."""
        ...

    def write(self, position: dict[str, Any]) -> None:
        """Store ``position`` (it must not be modified afterwards by the caller)."""
        ...


class StateSink(Protocol):
    """Work on the saved states beside the integration, in threads of its own (``on_save`` of
    :func:`integrate`): :meth:`put` receives every state as the loop saves it and must return at
    once; the integration's processor time leaves out :attr:`cpu_s`."""

    def put(self, index: int, weights: torch.Tensor) -> None:
        """Take the state saved at time index ``index`` (the stored copy: read, never modify)."""

    @property
    def cpu_s(self) -> float:
        """Processor seconds the sink's threads have spent so far."""


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
    callback: Callback | None = None,
    on_save: StateSink | None = None,
) -> Solution:
    """Integrate ``flow`` from ``weights0`` at t = 0 to ``config.t_end``.

    Parameters
    ----------
    flow:
        The vector field (t, weights) -> d weights / dt.
    weights0:
        Initial state, shape (particle, component).
    config:
        Method, tolerances, step size, horizon, stopping ratio, step limit and time budgets.
    times:
        Saved flow times (increasing, starting at 0); default :func:`save_times` of ``config``.
        Fixed-step methods save at the grid points t = k h nearest to them.
    progress:
        Show a progress bar: True, False, or None (only when stderr is a terminal).
    schedule:
        Explicit steps for a fixed-step method (sizes, mini-batches, saved steps); replaces
        ``times``, ``config.step_size`` and ``config.t_end``. Early stopping then looks at the
        train loss on all samples at saved steps only (and after every step when the schedule has
        no mini-batches).
    checkpoint:
        Receives the solver position every so often (see :class:`CheckpointHook`).
    resume:
        A position written through ``checkpoint`` by an earlier call with the same flow,
        initial state, config and times: the integration continues from there and returns the
        whole trajectory, as if it had never stopped.
    callback:
        Called with a :class:`StepInfo` after every accepted step that does not end the run; a
        true return value stops the run (see :data:`Callback`).
    on_save:
        Receives every state saved by this call (see :class:`StateSink`); a resumed run's states
        saved before the resume are not passed.

    Returns
    -------
    Solution
        The saved states, counters, result and statistics. A failure does not raise: the
        trajectory up to the failure is returned with a failed result.
    """
    if schedule is not None and config.adaptive:
        raise ValueError(f"a step schedule needs a fixed-step method, got solver.method = {config.method!r}")
    if config.method == "auto":
        config = resolve_auto(flow, weights0, config)
    if schedule is None:
        times = save_times(config) if times is None else np.asarray(times, dtype=np.float64)
        _check_times(times)
        if not config.adaptive:
            schedule = StepSchedule.uniform(config.step_size, times)
    if schedule is not None:
        times = schedule.saved_times()
        _check_times(times)
        horizon = float(schedule.times()[-1])
    else:
        assert times is not None
        horizon = float(times[-1])
    if resume is not None:
        _check_resume(resume, config.method, times)
    stepper = make_stepper(flow, weights0, config, horizon=horizon, schedule=schedule)
    recorder, result, stats = integration_loop(
        stepper,
        flow,
        weights0,
        times,
        budget=Budget.of(config),
        stop_loss_ratio=config.stop_loss_ratio,
        progress=progress,
        checkpoint=checkpoint,
        callback=callback,
        resume=resume,
        monotone_rtol=config.rtol if config.adaptive else (0.0 if config.method in FLOW_ONLY_FIXED else None),
        on_save=on_save,
    )
    return recorder.solution(result, stats, config.method)


def resolve_auto(flow: Flow, weights0: torch.Tensor, config: SolverConfig) -> SolverConfig:
    """``config`` with ``method = "auto"`` replaced by the method :func:`gnflow.method_choice.auto_method`
    chooses for ``flow`` from ``weights0`` (logged, with the reason)."""
    if config.method != "auto":
        return config
    method, why = auto_choice(flow, weights0, config)
    logger.info("solver.method = auto: %s (%s)", method, why)
    return replace(config, method=method)


def auto_choice(flow: Flow, weights0: torch.Tensor, config: SolverConfig) -> tuple[SolverMethod, str]:
    """The (method, reason) of ``solver.method = "auto"`` for ``flow`` from ``weights0``."""
    lambda_max = math.nan
    if flow.name == "gradient":
        gram = flow.model.linearize(weights0, flow.x).gram()
        lambda_max = float(torch.linalg.eigvalsh(gram)[-1])
    return auto_method(flow.name, config.t_end, flow.n_samples, lambda_max)


def integration_loop(
    stepper: Stepper,
    flow: Flow,
    weights0: torch.Tensor,
    times: np.ndarray,
    *,
    budget: Budget,
    stop_loss_ratio: float = 0.0,
    progress: bool | None = None,
    checkpoint: CheckpointHook | None = None,
    callback: Callback | None = None,
    resume: Mapping[str, Any] | None = None,
    monotone_rtol: float | None = None,
    on_save: StateSink | None = None,
) -> tuple[Recorder, RunResult, dict[str, float | int]]:
    """Advance ``stepper`` from t = 0 (or from ``resume``) until its horizon, a stop or a failure.

    Parameters
    ----------
    stepper:
        The method, built for ``flow`` and ``weights0`` (not started).
    flow:
        The vector field, for the initial train loss L(0).
    weights0:
        Initial state, shape (particle, component).
    times:
        Flow times to save (strictly increasing from 0; for fixed steps, grid points).
    budget:
        Step limit and time budgets.
    stop_loss_ratio:
        Stop (converged) once the train loss is <= ratio * L(0) (0 = never).
    progress, checkpoint, callback, resume, on_save:
        As for :func:`integrate`.
    monotone_rtol:
        Check that the train loss does not increase (both continuous flows guarantee it in exact
        arithmetic), with a tolerance tied to this relative tolerance of the method (see
        :class:`_MonotoneLoss`); None = no check (discrete steps, whose loss may rise). Fixed-step
        integrators of a flow (``FLOW_ONLY_FIXED``) are checked with 0.

    Returns
    -------
    tuple
        The recorded trajectory, the result and the statistics (``t_reached``, ``n_steps``,
        ``n_accepted``, ``n_rejected``, ``nfe``, ``max_steps``, ``wall_time_s``, ``cpu_time_s``).
    """
    recorder = Recorder(None if on_save is None else on_save.put)
    clock = StopWatch(excluded_cpu_s=None if on_save is None else lambda: on_save.cpu_s).start()
    before_wall = before_cpu = 0.0
    bar = ProgressBar(stepper.horizon, flow.name, progress)
    result = RunResult.completed()
    reached = 0.0  # the flow time of the last accepted step

    def position() -> dict[str, Any]:
        return {
            "method": stepper.method,
            "times": torch.as_tensor(times, dtype=torch.float64),
            "recorder": recorder.state_dict(),
            "stepper": stepper.state_dict(),
            "flow": flow.state_dict(),
            "wall_time_s": before_wall + clock.wall_s,
            "cpu_time_s": before_cpu + clock.cpu_s,
        }

    try:
        loss0 = flow.train_loss(weights0)
        threshold = stop_loss_ratio * loss0
        if resume is None:
            recorder.save(0.0, weights0, stepper.nfe, stepper.epoch)
            stepper.start()
        else:
            recorder.load_state_dict(resume["recorder"], weights0.device)
            stepper.load_state_dict(resume["stepper"])
            flow.load_state_dict(resume.get("flow", {}))
            before_wall, before_cpu = float(resume["wall_time_s"]), float(resume["cpu_time_s"])
            bar.update(stepper.t, f"resumed, nfe={stepper.nfe}")
            reached = float(stepper.t)
        remedy = "lower solver.step_size" if stepper.method in FLOW_ONLY_FIXED else "lower solver.rtol"
        monotone = None if monotone_rtol is None else _MonotoneLoss(monotone_rtol, loss0, weights0.dtype, remedy)
        next_index = int(np.searchsorted(times, stepper.t, side="right"))
        ratio: float | None = None
        stop: str | None = None
        while not stepper.finished:
            stop = budget.exhausted(recorder.n_steps, clock)
            if stop is not None:
                break
            if not stepper.attempt():
                recorder.n_rejected += 1
                continue
            recorder.n_accepted += 1
            t1 = stepper.t
            reached = float(t1)
            saved = False
            while next_index < len(times) and times[next_index] <= t1:
                t_save = float(times[next_index])
                saved |= recorder.save(t_save, stepper.interpolate(t_save), stepper.nfe, stepper.epoch)
                next_index += 1
            loss = stepper.train_loss() if stepper.loss_every_step or saved else None
            if loss is not None:
                ratio = loss / loss0 if loss0 > 0 else 0.0
            bar.update(t1, f"loss/L0={ratio if ratio is not None else math.nan:.2e}, nfe={stepper.nfe}")
            if loss is not None and not math.isfinite(loss):
                result = RunResult.failure("non-finite train loss")
                break
            violation = None if monotone is None or loss is None else monotone.check(t1, loss)
            if violation is not None:
                result = RunResult.failure(violation)
                break
            if loss is not None and stop_loss_ratio > 0 and loss <= threshold:
                recorder.save(t1, stepper.weights, stepper.nfe, stepper.epoch)
                result = RunResult.converged()
                break
            if stepper.finished:
                break
            if callback is not None:
                info = StepInfo(
                    t=t1,
                    n_accepted=recorder.n_accepted,
                    n_rejected=recorder.n_rejected,
                    nfe=stepper.nfe,
                    train_loss=loss,
                    loss_ratio=None if loss is None else ratio,
                    wall_time_s=before_wall + clock.wall_s,
                    cpu_time_s=before_cpu + clock.cpu_s,
                )
                request = callback(info)
                if request:
                    stop = f"stopped on request ({request})" if isinstance(request, str) else "stopped on request"
                    break
            if checkpoint is not None and checkpoint.due(recorder.n_accepted):
                checkpoint.write(position())
        if stop is not None:
            result = RunResult.failure(stop)
            if checkpoint is not None:
                checkpoint.write(position())  # before the off-grid state below: resumable as if never stopped
            recorder.save(stepper.t, stepper.weights, stepper.nfe, stepper.epoch)
    except (FlowError, GramSolveError, AssertionError, RuntimeError, KeyboardInterrupt) as exc:
        result = RunResult.failure(_failure_reason(exc))
    finally:
        bar.close()
        clock.stop()
    if not recorder.t:
        recorder.save(0.0, weights0, 0, math.nan)
    # the flow time reached: the last accepted step (an adaptive step may pass the horizon, whose
    # state is interpolated); a failed run's last saved state may be much earlier
    t_reached = min(reached, float(stepper.horizon))
    if result.failed:
        logger.warning("integration stopped at t=%.6g (last saved state t=%.6g): %s", t_reached, recorder.t[-1], result)
    stats: dict[str, float | int] = {
        "t_reached": t_reached,
        "n_steps": recorder.n_steps,
        "n_accepted": recorder.n_accepted,
        "n_rejected": recorder.n_rejected,
        "nfe": stepper.nfe,
        "max_steps": budget.max_steps,
        "wall_time_s": before_wall + clock.wall_s,
        "cpu_time_s": before_cpu + clock.cpu_s,
    }
    return recorder, result, stats


class _MonotoneLoss:
    """The loss-monotonicity invariant of the continuous flows, checked along an adaptive run.

    A loss above the smallest one so far by more than the factor ``1 + max(1e-6, 100 rtol,
    1000 eps)`` plus ``sqrt(eps) L(0)`` (eps: the machine epsilon of the run's dtype, for losses
    at rounding level) means that the solution is not accurate.
    """

    def __init__(self, rtol: float, loss0: float, dtype: torch.dtype, remedy: str = "lower solver.rtol") -> None:
        self.remedy = remedy
        eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float64).eps
        self.factor = 1.0 + max(1e-6, 100.0 * rtol, 1000.0 * eps)
        self.tiny = math.sqrt(eps) * abs(loss0) if math.isfinite(loss0) else 0.0
        self.smallest = loss0
        self.t_smallest = 0.0

    def check(self, t: float, loss: float) -> str | None:
        """The failure reason when ``loss`` at ``t`` violates the invariant, else None."""
        if not math.isfinite(self.smallest):
            return None
        if loss > self.smallest * self.factor + self.tiny:
            ratio = loss / self.smallest if self.smallest > 0 else math.inf
            return (
                f"train loss increased by a factor {ratio:.3g} between t={self.t_smallest:.6g} and t={t:.6g} "
                f"(the solution is not accurate: {self.remedy})"
            )
        if loss < self.smallest:
            self.smallest, self.t_smallest = loss, t
        return None


def _check_times(times: np.ndarray) -> None:
    if times.ndim != 1 or times.size == 0 or times[0] != 0.0 or np.any(np.diff(times) <= 0):
        raise ValueError("saved times must be a strictly increasing 1-d array starting at 0")


def _failure_reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return interruption_reason(exc)
    if isinstance(exc, AssertionError) and text.startswith("underflow in dt"):
        return f"step size underflow ({text})"
    if isinstance(exc, AssertionError) and text.startswith("non-finite"):
        return "non-finite state"
    return text


def _check_resume(resume: Mapping[str, Any], method: str, times: np.ndarray) -> None:
    if resume.get("method") != method:
        raise ValueError(f"cannot resume: the position was written by {resume.get('method')!r}, not {method!r}")
    saved = resume["times"].numpy()
    if saved.shape != times.shape or not np.array_equal(saved, times):
        raise ValueError("cannot resume: the position was written for different saved times")
    missing = [key for key in ("recorder", "stepper", "wall_time_s", "cpu_time_s") if key not in resume]
    if missing:
        raise ValueError(f"cannot resume: the position holds no {', '.join(missing)} (written by an older gnflow)")
