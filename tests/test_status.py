"""The run result: its text form (``gnflow_status``, docs/dataset.md) round-trips; malformed statuses are refused."""

from __future__ import annotations

import pytest

from gnflow.status import INTERRUPTED, RunResult, RunStatus


@pytest.mark.parametrize(
    ("text", "status", "reason"),
    [
        ("completed", RunStatus.COMPLETED, ""),
        ("converged", RunStatus.CONVERGED, ""),
        (
            "failed: step size underflow (underflow in dt 1e-300)",
            RunStatus.FAILED,
            "step size underflow (underflow in dt 1e-300)",
        ),
        ("failed: more than solver.max_steps = 10 steps", RunStatus.FAILED, "more than solver.max_steps = 10 steps"),
    ],
)
def test_spec_text_round_trips(text: str, status: RunStatus, reason: str) -> None:
    result = RunResult.parse(text)
    assert (result.status, result.reason) == (status, reason)
    assert str(result) == text
    assert result.failed is (status is RunStatus.FAILED)


def test_interruption_is_a_failure_of_its_own() -> None:
    assert RunResult.parse(f"failed: {INTERRUPTED}").interrupted
    assert not RunResult.parse("failed: non-finite train loss").interrupted
    assert not RunResult.completed().interrupted


@pytest.mark.parametrize("text", ["done", "failure: x", "", "completed: early"])
def test_malformed_status_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="not a gnflow run status") as info:
        RunResult.parse(text)
    assert "\n" not in str(info.value)


def test_a_failure_needs_a_one_line_reason_and_only_a_failure_has_one() -> None:
    with pytest.raises(ValueError, match="needs a reason"):
        RunResult(RunStatus.FAILED)
    with pytest.raises(ValueError, match="only a failed run has a reason"):
        RunResult(RunStatus.CONVERGED, "why")
    assert RunResult.failure("first line\nsecond line").reason == "first line"
