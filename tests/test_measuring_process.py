"""Saved states measured in a second process: the numbers of a one-thread run, bit for bit, and
nothing lost when the process fails."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from test_alongside import assert_same_variables, small_config

import gnflow.measuring_process
import gnflow.simulation
from gnflow import load_config, simulate
from gnflow.experiment import build_experiment
from gnflow.measuring_process import MeasuringProcess, worth_a_process


@pytest.fixture
def spied(monkeypatch):
    """Every run on two threads measures in a process; records what each side measured."""
    monkeypatch.setattr(gnflow.measuring_process, "MIN_WORK", 0.0)
    monkeypatch.setattr(gnflow.simulation, "MEASURE_IN_PROCESS", True)
    record: dict[str, list[int]] = {"here": [], "process": [], "k": []}
    measure_here, collect, finish = (
        MeasuringProcess._measure_here,
        MeasuringProcess._collect,
        MeasuringProcess.finish,
    )

    def _measure_here(self, split):
        record["here"].append(measure_here(self, split))
        return record["here"][-1]

    def _collect(self, builtins):
        record["process"].append(collect(self, builtins))
        return record["process"][-1]

    def _finish(self):
        k = finish(self)
        if not record["k"] or record["k"][-1] != k:
            record["k"].append(k)
        return k

    monkeypatch.setattr(MeasuringProcess, "_measure_here", _measure_here)
    monkeypatch.setattr(MeasuringProcess, "_collect", _collect)
    monkeypatch.setattr(MeasuringProcess, "finish", _finish)
    return record


@pytest.mark.parametrize(
    "overrides",
    [[], ['observe.names=["spectrum", "kernel_movement"]'], ["dtype=float32"]],
    ids=["gauss_newton", "with_observables", "float32"],
)
def test_a_run_measured_in_a_process_equals_the_one_thread_run(spied, overrides) -> None:
    one = simulate(small_config("compute.threads=1", *overrides), progress=False)
    assert not spied["k"]  # one thread: no process
    two = simulate(small_config("compute.threads=2", *overrides), progress=False)
    n_saved = two.sizes["t"]
    assert n_saved >= 5 and spied["k"] == [n_saved]  # every state measured by one side or the other
    # the process measured a prefix, this process the rest, and together all of them
    assert spied["process"][0] >= 1 and spied["process"][0] + spied["here"][0] == n_saved
    assert_same_variables(one, two)
    assert np.isfinite(two["test_loss"].values).all() and np.isfinite(two["gram_eigmin"].values).all()
    assert two.attrs["gnflow_threads"] == 2


def test_a_failed_process_loses_nothing(spied, monkeypatch) -> None:
    start = MeasuringProcess.__init__

    def killed(self, experiment):
        start(self, experiment)
        self._process.kill()

    monkeypatch.setattr(MeasuringProcess, "__init__", killed)
    one = simulate(small_config("compute.threads=1"), progress=False)
    two = simulate(small_config("compute.threads=2"), progress=False)
    assert spied["process"] == [0] and spied["k"] == [0]  # nothing from the process: the pass measured all
    assert_same_variables(one, two)


def test_only_runs_with_much_to_measure_use_a_process() -> None:
    paper = build_experiment(load_config("examples/gn.toml", ["data.n_test=10"]))
    assert worth_a_process(paper)  # 500 x 5000 x 201 entries
    reduced = build_experiment(
        load_config("examples/gn.toml", ["data.n_train=200", "model.width=2000", "data.n_test=10"])
    )
    assert not worth_a_process(reduced)
    few_saves = build_experiment(load_config("examples/gn.toml", ["solver.n_save=21", "data.n_test=10"]))
    assert not worth_a_process(few_saves)


def test_the_python_api_measures_in_a_thread_unless_told(monkeypatch) -> None:
    # a spawned process imports the caller's main module: only guarded callers may ask for one
    monkeypatch.setattr(gnflow.measuring_process, "MIN_WORK", 0.0)
    started: list[int] = []
    monkeypatch.setattr(MeasuringProcess, "__init__", lambda self, experiment: started.append(1) or 1 / 0)
    simulate(small_config("compute.threads=2"), progress=False)
    assert not started and gnflow.simulation.MEASURE_IN_PROCESS is False


def test_a_stalled_process_is_stopped_and_its_states_measured_here(spied, monkeypatch) -> None:
    start = MeasuringProcess.__init__

    def stalled(self, experiment):
        start(self, experiment)
        os.kill(self._process.pid, signal.SIGSTOP)  # alive, and measuring nothing

    monkeypatch.setattr(MeasuringProcess, "__init__", stalled)
    monkeypatch.setattr(gnflow.measuring_process, "STALL_S", 2.0)
    one = simulate(small_config("compute.threads=1"), progress=False)
    two = simulate(small_config("compute.threads=2"), progress=False)
    assert spied["process"] == [0] and spied["k"] == [0]
    assert_same_variables(one, two)


def test_the_command_line_in_this_process_keeps_the_thread_schedule(monkeypatch, tmp_path) -> None:
    # pytest's main module is not gnflow's entry point: gnflow.cli.main here must not spawn
    from gnflow.cli import main

    monkeypatch.setattr(gnflow.measuring_process, "MIN_WORK", 0.0)
    started: list[int] = []
    monkeypatch.setattr(MeasuringProcess, "__init__", lambda self, experiment: started.append(1) or 1 / 0)
    sets = ["model.width=40", "data.n_train=12", "data.n_test=60", "solver.n_save=9", "solver.stop_loss_ratio=1e-6"]
    args = ["run", "--threads", "2", "-q", "-o", str(tmp_path / "r.nc")]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    assert not started and gnflow.simulation.MEASURE_IN_PROCESS is False
