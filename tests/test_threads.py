"""compute.threads: explicit thread counts are used, the default follows free cores and never
raises torch's setting, the file records the count, and the key does not change the config hash."""

from __future__ import annotations

import pytest
import torch

import gnflow.threads as threads
from gnflow.cli import main
from gnflow.config import ConfigError, config_from_dict, config_hash
from gnflow.dataset import read_dataset
from gnflow.simulation import simulate


def _config(**compute):
    return config_from_dict(
        {
            "data": {"n_train": 12, "n_test": 10},
            "model": {"width": 16},
            "solver": {"t_end": 5.0, "n_save": 4},
            "compute": compute,
        }
    )


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_the_default_uses_the_free_cores_and_never_more_than_torch_has(monkeypatch, two_threads):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    for busy, expected in ((0, 2), (1, 2), (2, 2), (3, 1), (9, 1)):
        monkeypatch.setattr(threads, "busy_threads", lambda b=busy: (b, "test"))
        assert threads.resolve_threads(0) == expected, busy
    assert threads.resolve_threads(3) == 3  # explicit: whatever the load
    torch.set_num_threads(1)
    monkeypatch.setattr(threads, "busy_threads", lambda: (0, "test"))
    assert threads.resolve_threads(0) == 1  # a worker pinned to one thread keeps it


def test_busy_threads_reads_the_running_task_count(monkeypatch):
    readings = iter([5, 3, 4, 6, 3])
    monkeypatch.setattr(threads, "_running_tasks", lambda: next(readings))
    monkeypatch.setattr(threads, "_SAMPLE_GAP_S", 0.0)
    assert threads.busy_threads() == (2, "running tasks of /proc/loadavg")  # least reading, minus itself


def test_a_run_uses_the_configured_threads_and_records_them(two_threads):
    seen = []

    def callback(info):
        seen.append(torch.get_num_threads())

    ds = simulate(_config(threads=1), progress=False, callback=callback)
    assert seen and set(seen) == {1}
    assert ds.attrs["gnflow_threads"] == 1
    assert torch.get_num_threads() == 2  # restored


def test_threads_leave_the_config_hash_alone_and_refuse_negatives():
    assert config_hash(_config(threads=1)) == config_hash(_config(threads=2)) == config_hash(_config())
    with pytest.raises(ConfigError, match=r"compute\.threads: must be >= 0 \(0 = the free cores\), got -1"):
        _config(threads=-1)


def test_run_threads_flag_sets_the_key(tmp_path, two_threads):
    out = tmp_path / "r.nc"
    args = ["run", "--set", "data.n_train=12", "--set", "model.width=16", "--set", "solver.t_end=5"]
    assert main([*args, "--threads", "1", "-o", str(out), "-q"]) == 0
    ds = read_dataset(out)
    assert ds.attrs["gnflow_threads"] == 1
    assert '"threads": 1' in ds.attrs["gnflow_config"]
