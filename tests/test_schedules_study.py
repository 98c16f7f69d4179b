"""studies/performance/schedules.py at a small size: every schedule measures every saved state of
the same run, and the switching prototype switches exactly when K states wait."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "performance" / "schedules.py"


def test_schedules_time_the_same_run_and_switch_after_k_states(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # schedules imports saved_states
    spec = importlib.util.spec_from_file_location("schedules", SCRIPT)
    schedules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(schedules)
    out = tmp_path / "schedules.json"
    args = ["--n-train", "12", "--width", "40", "--n-test", "60", "--n-save", "9", "--rounds", "1"]
    assert schedules.main([*args, "--switch-after", "3", "1000", "-o", str(out)]) == 0
    runs = {run["schedule"]: run for run in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"alongside", "sequential", "switch 3", "switch 1000"}
    states = {run["states"] for run in runs.values()}
    assert len(states) == 1 and states.pop() >= 5  # the same run under every schedule
    assert runs["sequential"]["measured_alongside"] == 0
    assert runs["switch 1000"]["measured_alongside"] == 0 and runs["switch 1000"]["switched_after_s"] is None
    switched = runs["switch 3"]
    assert switched["switched_after_s"] is not None and switched["measured_alongside"] >= 1
    assert all(run["whole_s"] >= run["integration_s"] > 0 for run in runs.values())


def test_saved_states_measures_gnflow_runs_schedule_against_both_baselines(tmp_path, monkeypatch) -> None:
    script = SCRIPT.parent / "saved_states.py"
    spec = importlib.util.spec_from_file_location("saved_states_study", script)
    saved_states = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(saved_states)
    monkeypatch.setattr("gnflow.simulation.MEASURE_ALONGSIDE_AFTER", 2)
    monkeypatch.setattr(saved_states, "MEASURE_ALONGSIDE_AFTER", 2)
    out = tmp_path / "saved_states.json"
    args = ["--n-train", "12", "--width", "40", "--n-test", "60", "--n-save", "9", "--alongside", "--label", "x"]
    assert saved_states.main([*args, "--schedule", "switch", "-o", str(out)]) == 0
    result = json.loads(out.read_text())["x"]
    assert result["mode"].startswith("switch (gnflow run's schedule): integration at both threads until 2 saved")
    (run,) = result["runs"]
    assert 1 <= run["alongside"] <= result["saved_states_measured"]  # the worker started and measured
    assert len(result["integration_alone"]) == 2 and len(result["integration_alone_two_threads"]) == 1
    whole = run["whole"]["wall_s"]
    two = result["integration_alone_two_threads"][0]["wall_s"]
    assert result["share_wall_vs_two_threads"] == (whole - two) / two


def test_process_worker_prototype_measures_every_state_once_and_agrees_with_the_thread_schedule(
    tmp_path, monkeypatch
) -> None:
    script = SCRIPT.parent / "process_worker.py"
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    # under the name of its file: the spawned process imports the module to find its entry point
    spec = importlib.util.spec_from_file_location("process_worker", script)
    process_worker = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "process_worker", process_worker)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SCRIPT.parent), os.environ.get("PYTHONPATH", "")]))
    spec.loader.exec_module(process_worker)
    monkeypatch.setattr(process_worker, "MEASURE_ALONGSIDE_AFTER", 2)
    out = tmp_path / "process_worker.json"
    args = ["--n-train", "12", "--width", "40", "--n-test", "60", "--n-save", "9", "--rounds", "1"]
    # the script raises when the two schedules' measured variables differ
    assert process_worker.main([*args, "-o", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    process = run["process"]
    # the process measured a prefix, this process the rest: split where the script says
    assert 1 <= process["measured_by_process"] <= run["states"]
    assert process["measured_by_process"] >= process["process_had_measured_at_integration_end"]


def test_saved_states_measures_the_process_schedule(tmp_path) -> None:
    script = SCRIPT.parent / "saved_states.py"
    spec = importlib.util.spec_from_file_location("saved_states_study_process", script)
    saved_states = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(saved_states)
    out = tmp_path / "saved_states.json"
    args = ["--n-train", "12", "--width", "40", "--n-test", "60", "--n-save", "9", "--alongside", "--label", "p"]
    assert saved_states.main([*args, "-o", str(out)]) == 0  # the integrations compared bit for bit
    result = json.loads(out.read_text())["p"]
    assert result["mode"].startswith("process (gnflow run's schedule at this size)")
    (run,) = result["runs"]
    assert run["alongside"] == result["saved_states_measured"]  # every state, by one side or the other
