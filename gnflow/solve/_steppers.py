"""Steppers: how each ``solver.method`` takes one step, and the registry of them.

A stepper knows one method and nothing else: it attempts a step (accepted or rejected), gives
states inside its last accepted step, counts its evaluations of the vector field and hands over
its state for a checkpoint. Saving, stopping, budgets, checkpoints, progress and statistics are
the business of the integration loop (:func:`gnflow.solve._loop.integration_loop`), which drives
every stepper the same way.

- :class:`RungeKuttaStepper`: torchdiffeq's adaptive Runge--Kutta methods, with their dense
  output (the interpolant of each step), so that saved times cost no evaluations;
- :class:`FixedStepper`: torchdiffeq's fixed-step methods on the steps of a
  :class:`~gnflow.solve.StepSchedule` (uniform steps, or GGN's per-step sizes and mini-batches
  through :meth:`Flow.restrict <gnflow.flows.Flow.restrict>`);
- :class:`KernelExponentialStepper`: :class:`gnflow.exponential.KernelExponentialSolver`
  (``kernel_exponential``) or :class:`gnflow.exponential_rk.KernelETD3Solver` (``kernel_etd3``;
  ``KernelETD4Solver``: ``kernel_etd4``);
- :class:`KernelEulerStepper`: :class:`gnflow.kernel_euler.KernelEulerSolver` (the Euler
  iterations of a uniform schedule, taken in blocks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from gnflow.config import ADAPTIVE_METHODS, EXPONENTIAL_METHODS, FIXED_METHODS, KERNEL_EULER_METHODS, SolverConfig
from gnflow.exponential import ExponentialStep, KernelExponentialSolver
from gnflow.exponential_rk import KernelETD3Solver, KernelETD4Solver
from gnflow.flows import Flow
from gnflow.kernel_euler import KernelEulerBlock, KernelEulerSolver
from gnflow.solve._schedule import StepSchedule
from gnflow.solve._torchdiffeq import FixedGridMethod, RungeKuttaMethod

__all__ = [
    "STEPPERS",
    "CountedField",
    "FixedStepper",
    "KernelEulerStepper",
    "KernelExponentialStepper",
    "RungeKuttaStepper",
    "Stepper",
    "make_stepper",
]


class Stepper(Protocol):
    """One integration method, one step at a time.

    The loop calls :meth:`start` (a new run) or :meth:`load_state_dict` (a resumed one), then
    :meth:`attempt` until :attr:`finished`. After an accepted step, :attr:`t` and
    :attr:`weights` are the new state and :meth:`interpolate` gives states inside the step.
    """

    method: str
    """The ``solver.method`` name."""
    horizon: float
    """The flow time at which the run ends."""
    loss_every_step: bool
    """Whether the loop looks at the train loss after every accepted step (otherwise only after
    steps that saved a state: mini-batch steps, where the loss on all samples costs a forward pass)."""

    @property
    def t(self) -> float:
        """Flow time of the current state (the end of the last accepted step)."""
        ...

    @property
    def weights(self) -> torch.Tensor:
        """The current state, shape (particle, component)."""
        ...

    @property
    def finished(self) -> bool:
        """Whether the horizon is reached."""
        ...

    @property
    def nfe(self) -> int:
        """Evaluations of the vector field so far (for kernel_exponential: linearizations)."""
        ...

    @property
    def epoch(self) -> float:
        """Passes over the training set so far (NaN when the method does not count them)."""
        ...

    def start(self) -> None:
        """Prepare the first step from the initial state (may evaluate the field)."""
        ...

    def attempt(self) -> bool:
        """Attempt one step; whether it was accepted (a rejected step leaves the state as it was)."""
        ...

    def interpolate(self, t: float) -> torch.Tensor:
        """The state at flow time t inside the last accepted step, shape (particle, component)."""
        ...

    def train_loss(self) -> float:
        """L at the current state."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly from the current state (tensors on the CPU)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a stepper built with the same arguments."""
        ...


class CountedField:
    """The vector field ``flow`` with a count of its evaluations (the one count of a run).

    ``flow`` may be replaced between steps (mini-batches); the count goes on.
    """

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.count = 0

    def __call__(self, t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        self.count += 1
        return self.flow(t, weights)


class RungeKuttaStepper:
    """torchdiffeq's adaptive Runge--Kutta methods (dopri5, bosh3, adaptive_heun, dopri8, fehlberg2).

    Saved states come from the dense output of each accepted step (no extra evaluations).
    """

    loss_every_step = True

    def __init__(
        self, flow: Flow, weights0: torch.Tensor, config: SolverConfig, *, horizon: float, schedule: None = None
    ) -> None:
        self.method: str = config.method
        self.flow = flow
        self.horizon = horizon
        self._field = CountedField(flow)
        self._solver = RungeKuttaMethod(
            config.method,
            self._field,
            weights0,
            t_end=horizon,
            rtol=config.rtol,
            atol=config.atol,
            first_step=config.first_step,
        )

    @property
    def t(self) -> float:
        return self._solver.t

    @property
    def weights(self) -> torch.Tensor:
        return self._solver.y

    @property
    def finished(self) -> bool:
        # the last step may end past the horizon: the state there is interpolated
        return self._solver.t >= self.horizon

    @property
    def nfe(self) -> int:
        return self._field.count

    @property
    def epoch(self) -> float:
        return math.nan

    def start(self) -> None:
        self._solver.start()

    def attempt(self) -> bool:
        return self._solver.attempt()

    def interpolate(self, t: float) -> torch.Tensor:
        return self._solver.interpolate(t)

    def train_loss(self) -> float:
        return self.flow.train_loss(self.weights)

    def state_dict(self) -> dict[str, Any]:
        return {"rk_state": self._solver.state_dict(), "nfe": self._field.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._solver.load_state_dict(state["rk_state"])
        self._field.count = int(state["nfe"])


class FixedStepper:
    """torchdiffeq's fixed-step methods (euler, midpoint, rk4) on the steps of a schedule.

    Step k advances t_k by h_k with the field on all samples or, for a schedule with
    mini-batches, with ``flow.restrict(batches[k])`` (GGN). States are saved at grid points.
    """

    def __init__(
        self, flow: Flow, weights0: torch.Tensor, config: SolverConfig, *, horizon: float, schedule: StepSchedule
    ) -> None:
        self.method: str = config.method
        self.flow = flow
        self.schedule = schedule
        self.loss_every_step = schedule.batches is None
        self._grid = schedule.times()
        self.horizon = float(self._grid[-1])
        self._epochs = schedule.epochs()
        self._field = CountedField(flow)
        self._solver = FixedGridMethod(
            config.method,
            self._field,
            weights0,
            step_size=float(schedule.step_sizes[0]),
            t_end=float(self._grid[-1]),
            rtol=config.rtol,
            atol=config.atol,
        )
        self._batches = None
        if schedule.batches is not None:
            device = weights0.device
            self._batches = [torch.as_tensor(b, dtype=torch.long, device=device) for b in schedule.batches]
        self._device = weights0.device
        self._k = 0
        self._y = weights0
        self._y_before = weights0

    @property
    def t(self) -> float:
        return float(self._grid[self._k])

    @property
    def weights(self) -> torch.Tensor:
        return self._y

    @property
    def finished(self) -> bool:
        return self._k >= self.schedule.n_steps

    @property
    def nfe(self) -> int:
        return self._field.count

    @property
    def epoch(self) -> float:
        return float(self._epochs[self._k])

    def start(self) -> None:
        """Nothing to prepare: a fixed step needs no evaluation before it."""

    def attempt(self) -> bool:
        k = self._k
        if self._batches is not None:
            self._field.flow = self.flow.restrict(self._batches[k])
        self._y_before = self._y
        self._y = self._solver.step(float(self._grid[k]), float(self.schedule.step_sizes[k]), self._y)
        self._k = k + 1
        return True

    def interpolate(self, t: float) -> torch.Tensor:
        """The state at a grid point; linear inside the step (saved times are grid points)."""
        t0, t1 = float(self._grid[self._k - 1]), float(self._grid[self._k])
        if t == t1:
            return self._y
        if not t0 <= t < t1:
            raise ValueError(f"t = {t} lies outside the last step [{t0}, {t1}]")
        return self._y_before + ((t - t0) / (t1 - t0)) * (self._y - self._y_before)

    def train_loss(self) -> float:
        return self.flow.train_loss(self._y)

    def state_dict(self) -> dict[str, Any]:
        return {"y": self._y.cpu(), "n_steps": self._k, "nfe": self._field.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._k = int(state["n_steps"])
        if not 0 <= self._k <= self.schedule.n_steps:
            raise ValueError(f"cannot resume: step {self._k} is not in the schedule of {self.schedule.n_steps} steps")
        self._y = self._y_before = state["y"].to(self._device)
        self._field.count = int(state["nfe"])


class _LinearizedStepper:
    """What the two steppers on frozen kernels share: the state, the count of linearizations, the
    interpolant of the last accepted step and the train loss of its kernel (no evaluation)."""

    loss_every_step = True
    _solver: KernelExponentialSolver | KernelETD3Solver | KernelEulerSolver | None = None
    _last: ExponentialStep | KernelEulerBlock | None = None
    _name = ""

    @property
    def solver(self) -> KernelExponentialSolver | KernelETD3Solver | KernelEulerSolver:
        """The solver (after :meth:`start` or :meth:`load_state_dict`)."""
        if self._solver is None:
            raise RuntimeError(f"the {self._name} stepper has not started")
        return self._solver

    @property
    def t(self) -> float:
        return self.solver.t

    @property
    def weights(self) -> torch.Tensor:
        return self.solver.kernel.weights

    @property
    def nfe(self) -> int:
        return 0 if self._solver is None else self._solver.nfe

    @property
    def epoch(self) -> float:
        return math.nan  # as for Euler steps on all samples: epochs are counted for mini-batch schedules

    def interpolate(self, t: float) -> torch.Tensor:
        if self._last is None:
            raise RuntimeError("no accepted step to interpolate in")
        return self._last.interpolate(t)

    def train_loss(self) -> float:
        return self.solver.kernel.train_loss


class KernelExponentialStepper(_LinearizedStepper):
    """Adaptive steps on the kernel splitting: :class:`~gnflow.exponential.KernelExponentialSolver`
    (``kernel_exponential``: exact steps for the linearized model, step doubling) or
    :class:`~gnflow.exponential_rk.KernelETD3Solver` (``kernel_etd3``: third-order exponential
    Runge--Kutta steps) or :class:`~gnflow.exponential_rk.KernelETD4Solver` (``kernel_etd4``: fourth
    order).

    Saved states come from the step's own interpolant and the train loss from the frozen kernel
    of the accepted state, so neither costs an evaluation. One evaluation is one linearization,
    and for kernel_etd3 and kernel_etd4 also one field evaluation.
    """

    _name = "kernel-exponential"

    def __init__(
        self, flow: Flow, weights0: torch.Tensor, config: SolverConfig, *, horizon: float, schedule: None = None
    ) -> None:
        self.method: str = config.method
        self.flow = flow
        self.horizon = horizon
        self._weights0 = weights0
        self._config = config
        self._solver: KernelExponentialSolver | KernelETD3Solver | None = None

    @property
    def finished(self) -> bool:
        return self.solver.t >= self.horizon

    def _new_solver(
        self, weights: torch.Tensor, first_step: float | None
    ) -> KernelExponentialSolver | KernelETD3Solver:
        config = self._config
        solver = {"kernel_etd3": KernelETD3Solver, "kernel_etd4": KernelETD4Solver}.get(
            config.method, KernelExponentialSolver
        )
        return solver(self.flow, weights, rtol=config.rtol, atol=config.atol, first_step=first_step)

    def start(self) -> None:
        self._solver = self._new_solver(self._weights0, self._config.first_step)

    def attempt(self) -> bool:
        assert self._solver is not None, "the kernel-exponential stepper has not started"
        step = self._solver.attempt(self.horizon)
        if step is None:
            return False
        self._last = step
        return True

    def state_dict(self) -> dict[str, Any]:
        # the state after the last accepted step and the step size proposed for the next one; the
        # frozen kernel there is recomputed on resume (deterministic, so not counted again)
        assert self._solver is not None, "the kernel-exponential stepper has not started"
        solver = self._solver
        state: dict[str, Any] = {"y": solver.kernel.weights.cpu(), "t": solver.t, "h": solver.h, "nfe": solver.nfe}
        if isinstance(solver, KernelETD3Solver):
            state["field_evaluations"] = solver.field_evaluations
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        solver = self._new_solver(state["y"].to(self._weights0.device), float(state["h"]))
        solver.t = float(state["t"])
        if isinstance(solver, KernelETD3Solver):
            solver.field_evaluations = int(state["field_evaluations"])
            solver.linearizations = int(state["nfe"]) - solver.field_evaluations
        else:
            solver.nfe = int(state["nfe"])
        self._solver = solver


class KernelEulerStepper(_LinearizedStepper):
    """:class:`~gnflow.kernel_euler.KernelEulerSolver`: the Euler iterations of a uniform schedule
    (all samples), many at a time, exact for the linearized model.

    Saved states (grid points of the schedule) come from the block's interpolant and the train
    loss from the frozen kernel of the accepted state, so neither costs an evaluation. One
    evaluation is one linearization.
    """

    _name = "kernel-Euler"

    def __init__(
        self, flow: Flow, weights0: torch.Tensor, config: SolverConfig, *, horizon: float, schedule: StepSchedule
    ) -> None:
        if schedule.batches is not None:
            raise ValueError("solver.method = 'kernel_euler' iterates on all samples; it cannot take mini-batches")
        sizes = schedule.step_sizes
        if not bool((sizes == sizes[0]).all()):
            raise ValueError("solver.method = 'kernel_euler' needs steps of one size")
        self.method: str = config.method
        self.flow = flow
        self.lam = float(sizes[0])
        self.iterations = schedule.n_steps
        self.horizon = float(schedule.times()[-1])
        self._weights0 = weights0
        self._config = config
        self._solver: KernelEulerSolver | None = None

    @property
    def finished(self) -> bool:
        assert self._solver is not None, "the kernel-Euler stepper has not started"
        return self._solver.finished

    def _new_solver(self, weights: torch.Tensor, first_block: int) -> KernelEulerSolver:
        config = self._config
        return KernelEulerSolver(
            self.flow,
            weights,
            lam=self.lam,
            iterations=self.iterations,
            rtol=config.rtol,
            atol=config.atol,
            first_block=first_block,
            stop_loss=self._stop_loss(),
        )

    def _stop_loss(self) -> float:
        # the loop's threshold (ratio x L at the initial state), the same on a resumed run
        ratio = self._config.stop_loss_ratio
        return ratio * self.flow.train_loss(self._weights0) if ratio > 0 else 0.0

    def start(self) -> None:
        first = self._config.first_step
        self._solver = self._new_solver(self._weights0, 1 if first is None else max(1, math.floor(first / self.lam)))

    def attempt(self) -> bool:
        assert self._solver is not None, "the kernel-Euler stepper has not started"
        block = self._solver.attempt()
        if block is None:
            return False
        self._last = block
        return True

    def state_dict(self) -> dict[str, Any]:
        # the state after the last accepted block and the length proposed for the next one; the
        # frozen kernel there is recomputed on resume (deterministic, so not counted again)
        assert self._solver is not None, "the kernel-Euler stepper has not started"
        solver = self._solver
        return {"y": solver.kernel.weights.cpu(), "k": solver.k, "block": solver.block, "nfe": solver.nfe}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        solver = self._new_solver(state["y"].to(self._weights0.device), int(state["block"]))
        solver.k = int(state["k"])
        if not 0 <= solver.k <= self.iterations:
            raise ValueError(f"cannot resume: iteration {solver.k} is not in the {self.iterations} iterations")
        solver.nfe = int(state["nfe"])
        self._solver = solver


StepperFactory = Callable[..., Stepper]
"""``factory(flow, weights0, config, *, horizon, schedule)``: a stepper for ``config.method``."""

STEPPERS: Mapping[str, StepperFactory] = {
    **dict.fromkeys(ADAPTIVE_METHODS, RungeKuttaStepper),
    **dict.fromkeys(FIXED_METHODS, FixedStepper),
    **dict.fromkeys(EXPONENTIAL_METHODS, KernelExponentialStepper),
    **dict.fromkeys(KERNEL_EULER_METHODS, KernelEulerStepper),
}
"""The stepper of every ``solver.method``: the one place that maps method names to steppers."""


def make_stepper(
    flow: Flow,
    weights0: torch.Tensor,
    config: SolverConfig,
    *,
    horizon: float,
    schedule: StepSchedule | None = None,
) -> Stepper:
    """The stepper of ``config.method`` for a run from ``weights0`` at t = 0 to ``horizon``.

    Raises
    ------
    ValueError
        When the method has no stepper, or a fixed-step method has no schedule.
    """
    if config.method not in STEPPERS:
        raise ValueError(f"solver.method: no stepper for {config.method!r}; allowed: {', '.join(STEPPERS)}")
    factory = STEPPERS[config.method]
    scheduled = factory is FixedStepper or factory is KernelEulerStepper
    if scheduled and schedule is None:
        raise ValueError(f"solver.method = {config.method!r} needs a step schedule")
    if not scheduled and schedule is not None:
        raise ValueError(f"a step schedule needs a fixed-step method, got solver.method = {config.method!r}")
    return factory(flow, weights0, config, horizon=horizon, schedule=schedule)
