"""studies/performance/schedules.py at a small size: every schedule measures every saved state of
the same run, and the switching prototype switches exactly when K states wait."""

from __future__ import annotations

import importlib.util
import json
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
