"""Which schedule of integration and saved-state measurement is fastest on two CPU threads.

The paper-size Gauss--Newton run of ``saved_states.py`` (N = 500, M = 5000, 10^4 test points,
eigmin damping, dopri5, to 1e-8 x the initial train loss, log-spaced saves to t = 1e4) is timed,
whole (integration and every saved state's measurements, not the file), under three schedules,
interleaved over ``--rounds`` rounds in one process:

- ``alongside``: integrate at one torch thread while a worker measures each saved state at the
  other, then the states left two at a time (what ``gnflow run`` did on two threads before the
  switch below);
- ``sequential``: integrate at two threads, then measure the states two at a time;
- ``switch K``: integrate at two threads until K saved states wait to be measured, then at one
  thread with the worker measuring alongside (the integration's first part runs at two threads, so
  its numbers agree with a one-thread run to rounding only). ``gnflow run`` on two threads does this
  with K = 16 (``gnflow.simulation.MEASURE_ALONGSIDE_AFTER``, chosen from this study), by the same
  :class:`gnflow.observables.SwitchingAlongside`.

Writes ``data/studies/performance/schedules.json`` (wall seconds of the integration and of the
whole, states measured by the worker, the switch time) with the load average before and after.

    python studies/performance/schedules.py                         # about 6 minutes on 2 idle cores
    python studies/performance/schedules.py --n-save 21 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_states import run_config

from gnflow.config import config_from_dict
from gnflow.experiment import build_experiment
from gnflow.observables import SwitchingAlongside
from gnflow.solve import integrate
from gnflow.studies import measurement_provenance
from gnflow.threads import torch_threads
from gnflow.trajectory import measuring_alongside, trajectory_dataset

OUTPUT = Path("data/studies/performance/schedules.json")


def _record(start: float, integrated: float, solution: Any, measured: int, **extra: Any) -> dict[str, Any]:
    return {
        "integration_s": integrated - start,
        "whole_s": time.perf_counter() - start,
        "states": len(solution.t),
        "evaluations": int(solution.nfe[-1]),
        "measured_alongside": measured,
        **extra,
    }


def alongside(config: Any) -> dict[str, Any]:
    experiment = build_experiment(config)
    start = time.perf_counter()
    with torch_threads(1):
        sink = measuring_alongside(experiment)
        solution = integrate(experiment.flow, experiment.weights0, config.solver, on_save=sink, progress=False)
        integrated = time.perf_counter()
        measured = sink.finish()
    with torch_threads(2):
        trajectory_dataset(experiment, solution, progress=False, alongside=sink)
    return _record(start, integrated, solution, measured)


def sequential(config: Any) -> dict[str, Any]:
    experiment = build_experiment(config)
    start = time.perf_counter()
    with torch_threads(2):
        solution = integrate(experiment.flow, experiment.weights0, config.solver, progress=False)
        integrated = time.perf_counter()
        trajectory_dataset(experiment, solution, progress=False)
    return _record(start, integrated, solution, 0)


def switch(config: Any, after: int) -> dict[str, Any]:
    experiment = build_experiment(config)
    start = time.perf_counter()
    switched_at: list[float] = []

    def start_worker() -> Any:
        switched_at.append(time.perf_counter())
        return measuring_alongside(experiment)

    with torch_threads(2):
        sink = SwitchingAlongside(start_worker, after)
        solution = integrate(experiment.flow, experiment.weights0, config.solver, on_save=sink, progress=False)
        integrated = time.perf_counter()
        measured = sink.finish()
        torch.set_num_threads(2)
        trajectory_dataset(experiment, solution, progress=False, alongside=sink.worker)
    switched = switched_at[0] - start if switched_at else None
    return _record(start, integrated, solution, measured, switched_after_s=switched)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=500)
    parser.add_argument("--width", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--n-save", type=int, nargs="+", default=[201, 21])
    parser.add_argument("--switch-after", type=int, nargs="*", default=[16, 48], help="K of the switch schedules")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    for n_save in args.n_save:
        config = config_from_dict(run_config(args.n_train, args.width, args.n_test, n_save, 2, 1e4))
        schedules = [("alongside", alongside), ("sequential", sequential)] + [
            (f"switch {k}", lambda c, k=k: switch(c, k)) for k in args.switch_after
        ]
        for round_ in range(args.rounds):
            for name, schedule in schedules:
                record = {"n_save": n_save, "schedule": name, "round": round_, **schedule(config)}
                runs.append(record)
                print(json.dumps(record), flush=True)
    result = {
        "sizes": {"n_train": args.n_train, "width": args.width, "n_test": args.n_test, "t_end": 1e4},
        "runs": runs,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "definition": "wall seconds from the start of the integration to the end of the measurements (no file)",
        **measurement_provenance(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
