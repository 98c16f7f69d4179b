"""A prototype: the saved states measured in a second process instead of a worker thread.

On two CPU threads ``gnflow run`` integrates and measures its saved states in two threads of one
process (:class:`gnflow.observables.SwitchingAlongside`). ``parts.py --only contention`` found
that the two threads slow each other more than two processes on the two cores do. This script
measures what a measuring *process* would give on the paper-size GN run (``examples/gn.toml``: 186
saved states), against the same integration alone at one thread and against gnflow's schedule,
interleaved over ``--rounds`` rounds in one process:

- ``alone``: the integration at one torch thread, no measurements (the baseline of
  ``saved_states.py``);
- ``thread``: gnflow's schedule (integrate at two threads until
  :data:`gnflow.simulation.MEASURE_ALONGSIDE_AFTER` states wait, then at one while a worker thread
  measures them; the rest two at a time), up to the finished dataset (no file);
- ``process``: a measuring process is started (``spawn``) when the run starts; the integration
  runs at two threads until as many states wait (``--process-after``: another number), then at
  one; each saved state goes to the process (its weights pickled through a queue), which measures
  the built-in variables at one torch thread in time order. When the integration ends, the states
  left are split in two: the process measures the first half, this process the second, at the
  same time; then the dataset is assembled as in ``thread``.

Both end with the same dataset; with the same schedule the script checks that the measured
variables agree to a relative 1e-8 (the same steps; other thread counts change the steps, and the
largest relative difference is recorded instead). Writes
``data/studies/performance/process_worker.json``: wall seconds of each, the shares
(whole - alone) / alone, and the states each side measured.

    python studies/performance/process_worker.py             # about 5 minutes on 2 idle cores
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_states import add_size_arguments, run_config

from gnflow.config import config_from_dict, config_to_json
from gnflow.experiment import build_experiment
from gnflow.observables import SwitchingAlongside
from gnflow.observables._trajectory import SavedState
from gnflow.simulation import MEASURE_ALONGSIDE_AFTER
from gnflow.solve import integrate
from gnflow.studies import measurement_provenance
from gnflow.threads import torch_threads
from gnflow.trajectory import _BuiltinVariables, _run_dtype_trajectory, measuring_alongside, trajectory_dataset

OUTPUT = Path("data/studies/performance/process_worker.json")
_NO_LIMIT = 1 << 30


def _child(config_json: str, states: Any, results: Any, progress: Any, limit: Any) -> None:
    """The measuring process: built-in variables of the states it is sent, in time order, below ``limit``."""
    torch.set_num_threads(1)
    from gnflow import _blas
    from gnflow.config import config_from_json

    _blas.hold_blas_at_one_thread()
    experiment = build_experiment(config_from_json(config_json))
    trajectory = _run_dtype_trajectory(experiment, None)
    builtins = _BuiltinVariables(experiment.flow)
    measured = 0
    with torch.no_grad():
        while True:
            item = states.get()
            if item is None:
                break
            index, weights = item
            if index != measured or index >= limit.value:
                break
            builtins.update(SavedState(trajectory, index, weights=torch.from_numpy(weights)))
            measured += 1
            progress.value = measured
    results.put((measured, {name: values[:measured] for name, values in builtins.values.items()}))


class _ProcessSink:
    """integrate(on_save=...): both threads until ``after`` states wait, then one; states to the process."""

    cpu_s = 0.0

    def __init__(self, states: Any, after: int) -> None:
        self.states = states
        self.after = after
        self.sent = 0
        self.switched_after_s: float | None = None
        self._start = time.perf_counter()

    def put(self, index: int, weights: torch.Tensor) -> None:
        self.states.put((index, weights.numpy()))
        self.sent += 1
        if self.switched_after_s is None and self.sent >= self.after:
            torch.set_num_threads(1)
            self.switched_after_s = time.perf_counter() - self._start


class _Measured:
    """What trajectory_dataset reads of an alongside worker: every state measured already."""

    def __init__(self, builtins: _BuiltinVariables, n: int) -> None:
        self.measurements = [builtins]
        self._n = n

    def finish(self) -> int:
        return self._n


def run_alone(config: Any) -> float:
    experiment = build_experiment(config)
    with torch_threads(1):
        start = time.perf_counter()
        integrate(experiment.flow, experiment.weights0, config.solver, progress=False)
        return time.perf_counter() - start


def run_thread(config: Any) -> tuple[float, Any, dict[str, Any]]:
    start = time.perf_counter()
    experiment = build_experiment(config)
    with torch_threads(2):
        sink = SwitchingAlongside(lambda: measuring_alongside(experiment), MEASURE_ALONGSIDE_AFTER)
        with torch_threads(2):
            solution = integrate(experiment.flow, experiment.weights0, config.solver, progress=False, on_save=sink)
            measured = sink.finish()
        integration = time.perf_counter() - start
        ds = trajectory_dataset(experiment, solution, progress=False, alongside=sink.worker)
    whole = time.perf_counter() - start
    return whole, ds, {"integration_s": integration, "measured_alongside": measured}


def run_process(config: Any, after: int) -> tuple[float, Any, dict[str, Any]]:
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    states, results = context.Queue(), context.Queue()
    progress, limit = context.Value("i", 0, lock=False), context.Value("i", _NO_LIMIT, lock=False)
    child = context.Process(target=_child, args=(config_to_json(config), states, results, progress, limit))
    child.start()
    experiment = build_experiment(config)
    sink = _ProcessSink(states, after)
    with torch_threads(2):
        with torch_threads(2):
            solution = integrate(experiment.flow, experiment.weights0, config.solver, progress=False, on_save=sink)
        integration = time.perf_counter() - start
        n = len(solution.t)
        done = progress.value  # the process may be measuring state `done` now: it keeps it
        split = min(n, done + 1 + max(0, n - done - 1) // 2)
        limit.value = split
        states.put(None)
        trajectory = _run_dtype_trajectory(experiment, solution)
        builtins = _BuiltinVariables(experiment.flow, n)
        with torch_threads(1), torch.no_grad():
            for index in range(split, n):
                builtins.update(SavedState(trajectory, index, weights=solution.weights[index]))
        mine_done = time.perf_counter() - start
        measured, values = results.get()
        child.join()
        states.cancel_join_thread()
        if measured != split:
            raise AssertionError(f"the measuring process measured {measured} states, not {split}")
        for name, column in values.items():
            builtins.values[name][:measured] = column
        ds = trajectory_dataset(experiment, solution, progress=False, alongside=_Measured(builtins, n))
    whole = time.perf_counter() - start
    details = {
        "integration_s": integration,
        "switched_after_s": sink.switched_after_s,
        "measured_by_process": measured,
        "process_had_measured_at_integration_end": done,
        "this_process_done_s": mine_done,
    }
    return whole, ds, details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_arguments(parser)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--process-after",
        type=int,
        default=0,
        help="process: waiting states that lower the integration to one thread (default: as gnflow run, "
        "MEASURE_ALONGSIDE_AFTER; 1: one thread from the first state, while the process starts)",
    )
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    config = config_from_dict(run_config(args.n_train, args.width, args.n_test, args.n_save, 2))
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    after = args.process_after or MEASURE_ALONGSIDE_AFTER
    for round_ in range(args.rounds):
        alone = run_alone(config)
        thread_s, thread_ds, thread_details = run_thread(config)
        process_s, process_ds, process_details = run_process(config, after)
        differences = {}
        for name in ("train_loss", "test_loss", "gram_eigmin", "gram_eigmax", "damping"):
            a, b = thread_ds[name].values, process_ds[name].values
            same_schedule = after == MEASURE_ALONGSIDE_AFTER
            if a.shape != b.shape or (same_schedule and not np.allclose(a, b, rtol=1e-8, atol=0.0)):
                raise AssertionError(f"{name} differs between the thread and the process schedules")
            if a.shape == b.shape:
                differences[name] = float(np.max(np.abs(a - b) / np.abs(a)))
        runs.append(
            {
                "round": round_,
                "alone_s": alone,
                "thread": {"whole_s": thread_s, **thread_details},
                "process": {"whole_s": process_s, **process_details},
                "states": int(thread_ds.sizes["t"]),
                "largest_relative_difference": differences,
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    alone = statistics.median(r["alone_s"] for r in runs)
    result = {
        "sizes": {"n_train": args.n_train, "width": args.width, "n_test": args.n_test, "n_save": args.n_save},
        "process_after": args.process_after or MEASURE_ALONGSIDE_AFTER,
        "runs": runs,
        "share_thread": (statistics.median(r["thread"]["whole_s"] for r in runs) - alone) / alone,
        "share_process": (statistics.median(r["process"]["whole_s"] for r in runs) - alone) / alone,
        "definition": "share = (median whole run to the dataset - median integration alone, one thread) / the latter",
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        **measurement_provenance(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("share_thread", "share_process")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
