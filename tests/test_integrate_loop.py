"""The integration loop, the same cases through every stepper.

Each case is a tiny Gauss--Newton problem (N = 10, M = 30, d = 3, constant damping, so that a
field evaluation does not depend on the ones before it) integrated by one stepper: the adaptive
Runge--Kutta methods, the fixed-step methods, the kernel-exponential method and a mini-batch GGN
schedule (Euler steps on batches). Every test runs for every case.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import torch
from problems import small_problem

import gnflow.solve._budget as budget_module
from gnflow.config import FlowConfig, SolverConfig, SolverMethod
from gnflow.damping import ConstantDamping
from gnflow.flows import GaussNewtonFlow
from gnflow.ggn import ggn_schedule
from gnflow.solve import STEPPERS, StepSchedule, integrate
from gnflow.solve._steppers import FixedStepper, KernelEulerStepper, KernelExponentialStepper, RungeKuttaStepper
from gnflow.status import RunStatus

N_TRAIN, WIDTH = 10, 30


@dataclass(frozen=True)
class Case:
    name: str
    config: SolverConfig
    schedule: StepSchedule | None = None

    def flow(self) -> tuple[GaussNewtonFlow, torch.Tensor]:
        model, weights, x, y = small_problem(n_train=N_TRAIN, width=WIDTH, input_dim=3)
        return GaussNewtonFlow(model, x, y, ConstantDamping(1e-3)), weights

    def run(self, **kwargs: Any):
        flow, weights = self.flow()
        config = replace(self.config, **kwargs.pop("solver", {}))
        return integrate(flow, weights, config, progress=False, schedule=self.schedule, **kwargs)


def _cases() -> list[Case]:
    base = SolverConfig(t_end=30.0, n_save=12, save_decades=2.0, stop_loss_ratio=0.0, rtol=1e-6, atol=1e-9)
    ggn = FlowConfig(kind="ggn", lam=2.0, alpha=2e-3, batch_size=4, epochs=8, batch_order="shuffled")
    return [
        Case("dopri5", replace(base, method="dopri5")),
        Case("bosh3", replace(base, method="bosh3")),
        Case("euler", replace(base, method="euler", step_size=0.5)),
        Case("rk4", replace(base, method="rk4", step_size=1.0)),
        Case("kernel_exponential", replace(base, method="kernel_exponential", rtol=1e-5, atol=1e-8)),
        Case("kernel_etd3", replace(base, method="kernel_etd3", rtol=1e-5, atol=1e-8)),
        Case("kernel_etd4", replace(base, method="kernel_etd4", rtol=1e-5, atol=1e-8)),
        Case("kernel_euler", replace(base, method="kernel_euler", step_size=0.5, rtol=1e-5, atol=1e-8)),
        Case("ggn", replace(base, method="euler"), ggn_schedule(ggn, N_TRAIN, 11)),
    ]


CASES = _cases()


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def case(request):
    """A case and its uninterrupted run."""
    return request.param, request.param.run()


class _Positions:
    """A checkpoint hook that keeps every position, serialized as a checkpoint file would be."""

    def __init__(self, every: int = 1) -> None:
        self.every = every
        self.written: list[bytes] = []

    def due(self, n_accepted: int) -> bool:
        return n_accepted % self.every == 0

    def write(self, position: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(position, buffer)
        self.written.append(buffer.getvalue())

    def position(self, k: int) -> dict[str, Any]:
        return torch.load(io.BytesIO(self.written[k]), weights_only=True)


def _assert_identical(solution, reference) -> None:
    assert solution.status == reference.status
    np.testing.assert_array_equal(solution.t, reference.t)
    assert torch.equal(solution.weights, reference.weights)
    for name in ("nfe", "n_accepted", "n_rejected"):
        np.testing.assert_array_equal(getattr(solution, name), getattr(reference, name), err_msg=name)
    for key in ("n_steps", "n_accepted", "n_rejected", "nfe"):
        assert solution.stats[key] == reference.stats[key], key


def _prefix_of(partial, reference) -> int:
    """Number of leading saved states of ``partial`` that are states of ``reference`` (bit for bit)."""
    k = 0
    while k < len(partial.t) and k < len(reference.t) and partial.t[k] == reference.t[k]:
        assert torch.equal(partial.weights[k], reference.weights[k]), partial.t[k]
        assert partial.nfe[k] == reference.nfe[k] and partial.n_accepted[k] == reference.n_accepted[k]
        k += 1
    return k


def test_the_reference_run_completes_and_moves(case) -> None:
    _, reference = case
    assert reference.status == "completed" and reference.result.status is RunStatus.COMPLETED
    assert reference.stats["n_accepted"] > 8
    loss = [reference_loss(case[0], w) for w in (reference.weights[0], reference.weights[-1])]
    assert loss[1] < 0.5 * loss[0]


def reference_loss(case: Case, weights: torch.Tensor) -> float:
    flow, _ = case.flow()
    return flow.train_loss(weights)


def test_resume_from_a_mid_run_checkpoint_is_bit_identical(case) -> None:
    case_, reference = case
    hook = _Positions(every=2)
    checkpointed = case_.run(checkpoint=hook)
    _assert_identical(checkpointed, reference)  # writing checkpoints changes nothing
    assert len(hook.written) >= 3
    position = hook.position(len(hook.written) // 2)
    assert 0 < position["recorder"]["t"][-1] < reference.t[-1]
    resumed = case_.run(resume=position)
    _assert_identical(resumed, reference)


def test_early_stop_on_the_loss_ratio_saves_the_stopping_state(case) -> None:
    case_, reference = case
    flow, _ = case_.flow()
    losses = np.array([flow.train_loss(w) for w in reference.weights])
    ratio = float(np.sqrt(losses[-1] / losses[0]))  # reached about half-way
    solution = case_.run(solver={"stop_loss_ratio": ratio})
    assert solution.status == "converged" and not solution.failed
    final = [flow.train_loss(w) for w in solution.weights]
    assert final[-1] <= ratio * final[0]
    assert all(loss > ratio * final[0] for loss in final[:-1])
    assert solution.t[-1] < reference.t[-1]
    assert solution.stats["n_accepted"] == solution.n_accepted[-1]  # the stopping state is the last one
    assert _prefix_of(solution, reference) >= len(solution.t) - 1


def test_max_steps_fails_with_the_states_reached(case) -> None:
    case_, reference = case
    limit = reference.stats["n_steps"] // 2
    solution = case_.run(solver={"max_steps": limit})
    assert solution.failed and solution.result.status is RunStatus.FAILED
    assert solution.status == f"failed: more than solver.max_steps = {limit} steps"
    assert solution.stats["n_steps"] == limit
    assert _prefix_of(solution, reference) >= len(solution.t) - 1 >= 1
    assert solution.t[-1] < reference.t[-1]


@pytest.mark.parametrize(("key", "clock"), [("max_wall_time_s", "perf_counter"), ("max_cpu_time_s", "process_time")])
def test_a_time_budget_fails_with_the_partial_trajectory(case, monkeypatch, key, clock) -> None:
    case_, reference = case
    ticks = iter(range(10**9))

    class FakeTime:
        """Real clocks, except the budgeted one, which advances one second per reading."""

        perf_counter = staticmethod(__import__("time").perf_counter)
        process_time = staticmethod(__import__("time").process_time)

    setattr(FakeTime, clock, staticmethod(lambda: float(next(ticks))))
    monkeypatch.setattr(budget_module, "time", FakeTime)
    budget_s = 0.5 * reference.stats["n_steps"]
    solution = case_.run(solver={key: budget_s})
    assert solution.failed
    assert f"budget of solver.{key} = {budget_s:g} s spent" in solution.status
    assert 1 <= solution.stats["n_steps"] < reference.stats["n_steps"]
    assert solution.stats[key.removeprefix("max_")] >= budget_s
    # the partial trajectory is the uninterrupted one, then the state where the budget ran out
    assert _prefix_of(solution, reference) >= len(solution.t) - 1 >= 1
    assert solution.stats["n_accepted"] == solution.n_accepted[-1]


def test_a_callback_stop_ends_the_run_and_its_checkpoint_resumes(case, tmp_path) -> None:
    case_, reference = case
    stop_file = tmp_path / "STOP"
    seen: list[Any] = []

    def callback(info):
        seen.append(info)
        if info.n_accepted == 5:
            stop_file.touch()
        return stop_file.exists() and "STOP file"

    hook = _Positions(every=10**9)
    stopped = case_.run(callback=callback, checkpoint=hook)
    assert stopped.status == "failed: stopped on request (STOP file)"
    assert [info.n_accepted for info in seen] == list(range(1, 6))
    assert np.all(np.diff([info.t for info in seen]) > 0) and all(info.nfe > 0 for info in seen)
    assert stopped.stats["n_accepted"] == 5 == stopped.n_accepted[-1]
    assert stopped.t[-1] == pytest.approx(seen[-1].t, abs=0)
    with pytest.raises(AttributeError):
        seen[0].t = 1.0  # frozen
    assert len(hook.written) == 1  # the stop wrote the position
    _assert_identical(case_.run(resume=hook.position(0)), reference)


def test_stats_agree_with_the_per_time_arrays(case) -> None:
    case_, reference = case
    stats = reference.stats
    assert stats["n_accepted"] == reference.n_accepted[-1] and stats["n_rejected"] == reference.n_rejected[-1]
    assert stats["nfe"] == reference.nfe[-1] and stats["n_steps"] == stats["n_accepted"] + stats["n_rejected"]
    for name in ("nfe", "n_accepted", "n_rejected"):
        assert np.all(np.diff(getattr(reference, name)) >= 0), name
    assert reference.wall_time_s == stats["wall_time_s"] > 0 and stats["cpu_time_s"] > 0
    assert stats["max_steps"] == case_.config.max_steps
    n_acc, n_rej = stats["n_accepted"], stats["n_rejected"]
    if case_.name == "kernel_euler":
        # one linearization per single iteration, two per longer block, one per rejected block
        assert 1 + n_acc + n_rej <= stats["nfe"] <= 1 + 2 * n_acc + n_rej
        assert n_acc < 60  # fewer blocks than the 60 iterations
        return
    expected_nfe = {
        "dopri5": 2 + 6 * (n_acc + n_rej),  # f0 and the first-step estimate, six per attempt (FSAL)
        "bosh3": 2 + 3 * (n_acc + n_rej),
        "euler": n_acc,
        "rk4": 4 * n_acc,
        "kernel_exponential": 1 + 2 * n_acc + n_rej,  # linearizations of step doubling
        "kernel_etd3": 1 + 3 * n_acc + 2 * n_rej,  # two fields per attempt, a linearization per accepted step
        "kernel_etd4": 1 + 4 * n_acc + 3 * n_rej,  # three fields per attempt
        "ggn": n_acc,  # one batch field per Euler step
    }[case_.name]
    assert stats["nfe"] == expected_nfe
    if case_.schedule is not None:
        assert n_acc == case_.schedule.n_steps and n_rej == 0
        assert reference.epoch is not None and reference.epoch[-1] == pytest.approx(8.0)


def test_every_configured_method_has_its_stepper() -> None:
    kinds = {"euler": FixedStepper, "midpoint": FixedStepper, "rk4": FixedStepper}
    kinds["kernel_exponential"] = kinds["kernel_etd3"] = kinds["kernel_etd4"] = KernelExponentialStepper
    kinds["kernel_euler"] = KernelEulerStepper
    assert set(STEPPERS) == set(get_args(SolverMethod)) - {"auto"}  # auto is resolved before a stepper is made
    for method, stepper in STEPPERS.items():
        assert stepper is kinds.get(method, RungeKuttaStepper), method


def test_a_schedule_with_an_adaptive_method_is_refused() -> None:
    case_ = CASES[-1]
    flow, weights = case_.flow()
    with pytest.raises(ValueError, match="a step schedule needs a fixed-step method"):
        integrate(flow, weights, replace(case_.config, method="dopri5"), schedule=case_.schedule)


def test_a_position_of_another_method_is_refused() -> None:
    hook = _Positions(every=3)
    CASES[0].run(checkpoint=hook)
    with pytest.raises(ValueError, match="written by 'dopri5', not 'bosh3'"):
        CASES[1].run(resume=hook.position(0))


def test_the_stop_file_example_is_one_line(tmp_path: Path) -> None:
    stop = tmp_path / "STOP"
    stop.touch()
    solution = CASES[0].run(callback=lambda info: stop.exists() and "STOP file")
    assert solution.status == "failed: stopped on request (STOP file)" and solution.stats["n_accepted"] == 1
    assert not math.isnan(solution.t[-1])
