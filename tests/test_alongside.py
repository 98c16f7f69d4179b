"""Saved states measured while the run integrates: the same numbers as a serial pass, nothing lost."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import xarray as xr

import gnflow.simulation
from gnflow import load_config, simulate
from gnflow.experiment import build_experiment
from gnflow.model import ParticleModel
from gnflow.observables import MeasuringAlongside, SavedState, SwitchingAlongside, trajectory_from_dataset
from gnflow.observables._trajectory import Measurement, measure
from gnflow.solve import StopWatch, integrate
from gnflow.threads import torch_threads
from gnflow.trajectory import measuring_alongside, trajectory_dataset

WORKER = "gnflow-measure-alongside"


def small_config(*overrides: str):
    """A teacher-student GN run with a few saved states, integrated in about a second."""
    base = ["model.width=40", "data.n_train=12", "data.n_test=60", "solver.n_save=9", "solver.stop_loss_ratio=1e-6"]
    return load_config(None, [*base, *overrides])


def worker_alive() -> bool:
    return any(thread.name == WORKER for thread in threading.enumerate())


def integrated(config):
    experiment = build_experiment(config)
    with torch_threads(1):
        solution = integrate(experiment.flow, experiment.weights0, config.solver, progress=False)
    return experiment, solution


def assert_same_variables(a: xr.Dataset, b: xr.Dataset) -> None:
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for name in a.data_vars:
        xr.testing.assert_identical(a[name], b[name])


@pytest.fixture
def drained(monkeypatch):
    """Runs whose worker measures every saved state before the pass after the integration."""
    finish = MeasuringAlongside.finish
    counts: list[int] = []

    def finish_after_the_queue(self, *, wait=False):
        counts.append(finish(self, wait=True))
        return counts[-1]

    monkeypatch.setattr(MeasuringAlongside, "finish", finish_after_the_queue)
    return counts


@pytest.mark.parametrize(
    "overrides",
    [[], ["flow.kind=gradient"], ['observe.names=["spectrum", "kernel_movement", "residual_topk"]'], ["dtype=float32"]],
    ids=["gauss_newton", "gradient", "with_observables", "float32"],
)
def test_two_thread_run_measured_alongside_equals_the_one_thread_run(drained, overrides, monkeypatch):
    # the worker from the first saved state on (t = 0): the whole integration at one thread
    monkeypatch.setattr(gnflow.simulation, "MEASURE_ALONGSIDE_AFTER", 1)
    one = simulate(small_config("compute.threads=1", *overrides), progress=False)
    assert not drained  # one thread: no worker
    two = simulate(small_config("compute.threads=2", *overrides), progress=False)
    n_saved = two.sizes["t"]
    assert n_saved >= 5 and drained[0] == n_saved  # every state measured by the worker
    assert_same_variables(one, two)
    assert np.isfinite(two["test_loss"].values).all() and np.isfinite(two["gram_eigmin"].values).all()
    assert two.attrs["gnflow_threads"] == 2 and not worker_alive()


def assert_agree_to_rounding(a: xr.Dataset, b: xr.Dataset) -> None:
    assert sorted(a.data_vars) == sorted(b.data_vars)
    np.testing.assert_allclose(a["t"].values, b["t"].values, rtol=1e-8)  # the converged time too
    for name in a.data_vars:
        if np.issubdtype(a[name].dtype, np.floating):
            np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-8, atol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


@pytest.mark.parametrize("after", [3, 1000])
def test_two_thread_run_switches_to_measuring_alongside_after_k_waiting_states(drained, after, monkeypatch):
    # integrated at two threads until `after` states wait (never, for 1000: measured after the
    # integration), then at one while the worker measures; the numbers agree with a one-thread run
    # to rounding, and torch's thread count is restored
    monkeypatch.setattr(gnflow.simulation, "MEASURE_ALONGSIDE_AFTER", after)
    one = simulate(small_config("compute.threads=1"), progress=False)
    before = torch.get_num_threads()
    two = simulate(small_config("compute.threads=2"), progress=False)
    assert torch.get_num_threads() == before and two.attrs["gnflow_threads"] == 2
    n_saved = two.sizes["t"]
    assert n_saved >= 5
    assert drained[:1] == ([n_saved] if after < n_saved else [])  # the worker measured every state, or none
    assert_agree_to_rounding(one, two)
    assert not worker_alive()


def test_switching_sink_hands_the_waiting_states_to_the_worker_in_order(trajectory):
    indices = _Indices()
    started = []

    def start():
        started.append(torch.get_num_threads())
        return MeasuringAlongside(trajectory, [indices])

    with torch_threads(2):
        sink = SwitchingAlongside(start, after=3)
        for k in range(2):
            sink.put(k, trajectory.weights[k])
        assert sink.worker is None and sink.cpu_s == 0.0 and torch.get_num_threads() == 2
        for k in range(2, 5):
            sink.put(k, trajectory.weights[k])
        assert started == [1] and torch.get_num_threads() == 1  # the integration goes on at one thread
        sink.worker.finish(wait=True)
    assert indices.indices == [0, 1, 2, 3, 4] and sink.finish() == 5
    with pytest.raises(ValueError, match="after must be >= 1, got 0"):
        SwitchingAlongside(start, after=0)


@pytest.mark.parametrize(
    ("overrides", "linearizations"),
    [
        ([], lambda n, prefix: n - prefix),  # the prefix is not measured again
        (['observe.names=["spectrum", "residual_topk"]'], lambda n, prefix: n),  # the observables read every state
        (["dtype=float32", 'observe.names=["spectrum"]'], lambda n, prefix: 2 * n - prefix),  # and a float64 pass
    ],
    ids=["built_ins", "with_observables", "float32"],
)
@pytest.mark.parametrize("prefix", [0, 3])
def test_states_left_by_the_worker_are_measured_after(monkeypatch, overrides, linearizations, prefix):
    config = small_config(*overrides)
    experiment, solution = integrated(config)
    serial = trajectory_dataset(experiment, solution)
    n_saved = serial.sizes["t"]
    with torch_threads(1):
        alongside = measuring_alongside(experiment)
        for index in range(prefix):
            alongside.put(index, solution.weights[index])
        assert alongside.finish(wait=True) == prefix
    linearized = []
    linearize = ParticleModel.linearize
    monkeypatch.setattr(ParticleModel, "linearize", lambda self, *a: linearized.append(1) or linearize(self, *a))
    with torch_threads(2):
        parallel = trajectory_dataset(experiment, solution, alongside=alongside)
    assert_same_variables(serial, parallel)
    assert len(linearized) == linearizations(n_saved, prefix)


class _Indices(Measurement):
    def __init__(self, fail_at: int | None = None) -> None:
        self.indices: list[int] = []
        self.test_losses: list[float] = []
        self.fail_at = fail_at

    def update(self, state: SavedState) -> None:
        if state.index == self.fail_at:
            raise ArithmeticError(f"no value at state {state.index}")
        self.indices.append(state.index)
        self.test_losses.append(state.test_loss)


@pytest.fixture(scope="module")
def trajectory():
    return trajectory_from_dataset(simulate(small_config("compute.threads=1"), progress=False))


def test_the_worker_measures_a_prefix_in_time_order_and_the_pass_continues_it(trajectory):
    with torch_threads(1):
        indices = _Indices()
        alongside = MeasuringAlongside(trajectory, [indices])
        for k in range(4):
            alongside.put(k, trajectory.weights[k])
        assert alongside.finish(wait=True) == 4 and alongside.finish() == 4
        alongside.put(4, trajectory.weights[4])  # after finish: ignored
        measure(trajectory, [indices], start=4)
        serial = _Indices()
        measure(trajectory, [serial])
    assert indices.indices == serial.indices == list(range(trajectory.n_times))
    assert indices.test_losses == serial.test_losses
    with pytest.raises(ValueError, match=r"start must lie in \[0, "):
        measure(trajectory, [serial], start=trajectory.n_times + 1)


def test_a_state_out_of_turn_or_a_failing_measurement_ends_the_prefix(trajectory):
    with torch_threads(1):
        resumed = MeasuringAlongside(trajectory, [_Indices()])
        resumed.put(2, trajectory.weights[2])  # a resumed run saves from index 2 on
        resumed.put(3, trajectory.weights[3])
        assert resumed.finish(wait=True) == 0

        failing = _Indices(fail_at=2)
        alongside = MeasuringAlongside(trajectory, [failing])
        for k in range(trajectory.n_times):
            alongside.put(k, trajectory.weights[k])
        assert alongside.finish(wait=True) == 2
        assert isinstance(alongside.error, ArithmeticError)
        with pytest.raises(ArithmeticError, match="no value at state 2"):  # met again in this thread
            measure(trajectory, [failing], start=2)
    assert failing.indices == [0, 1] and not worker_alive()


def test_the_worker_needs_torch_at_one_thread(trajectory):
    with torch_threads(2), pytest.raises(ValueError, match=r"needs torch at one thread .* it runs at 2"):
        MeasuringAlongside(trajectory, [])


def test_an_interrupted_two_thread_run_keeps_every_state_and_stops_the_worker():
    def interrupt(info):
        if info.n_accepted == 4:
            raise KeyboardInterrupt

    ds = simulate(small_config("compute.threads=2", "solver.n_save=40"), progress=False, callback=interrupt)
    assert ds.attrs["gnflow_status"].startswith("failed: interrupted")
    assert ds.sizes["t"] >= 2 and np.isfinite(ds["train_loss"].values).all()
    assert np.isfinite(ds["gram_eigmax"].values).all() and not worker_alive()


def test_the_integration_clock_leaves_out_the_sinks_processor_time():
    """The integration's CPU seconds are the process's minus the sink's (here a counter of 10^6 s per state)."""

    class Counter:
        def __init__(self) -> None:
            self.states = 0

        def put(self, index: int, weights: torch.Tensor) -> None:
            self.states += 1

        @property
        def cpu_s(self) -> float:
            return 1e6 * self.states

    config = small_config()
    experiment = build_experiment(config)
    sink = Counter()
    solution = integrate(experiment.flow, experiment.weights0, config.solver, progress=False, on_save=sink)
    assert sink.states == len(solution.t) >= 5
    cpu = solution.stats["cpu_time_s"] + 1e6 * sink.states  # what the process spent
    assert 0 < cpu < 60
    excluded = [0.0]
    watch = StopWatch(excluded_cpu_s=lambda: excluded[0]).start()
    excluded[0] = 1e6
    assert -1e6 < watch.cpu_s < -1e6 + 60
    watch.stop()
    assert -1e6 < watch.cpu_s < -1e6 + 60
    with pytest.raises(RuntimeError, match="not running"):
        watch.stop()


def test_the_parallel_pass_measures_no_more_states_at_once_than_fit_in_memory(trajectory, monkeypatch):
    import gnflow.observables._trajectory as module

    per_state = module.state_bytes(trajectory)
    n = trajectory.x_train.shape[0]
    assert per_state >= 8 * (4 * n * trajectory.width + 3 * n * n)  # the whole width is one chunk here
    used: list[int] = []
    monkeypatch.setattr(module, "_measure_in_parallel", lambda *args: used.append(args[-1]))
    for available, expected in [(2 * per_state + 1, []), (6 * per_state, [3]), (None, [4])]:
        used.clear()
        monkeypatch.setattr(module, "available_memory", lambda available=available: available)
        measure(trajectory, [_Indices()], workers=4)
        assert used == expected
