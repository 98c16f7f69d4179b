"""Share of a run's time spent measuring its saved states, against its integration.

A run integrates its flow (:func:`gnflow.solve.integrate`), then measures every saved state
(:func:`gnflow.trajectory.trajectory_dataset`): the train loss, the Gram spectrum (extreme
eigenvalues of A = J J^T and the damping) and the test loss. This script times both on one
Gauss--Newton run (Arbel et al.'s teacher--student task, eigmin damping, dopri5, to 1e-8 x the
initial train loss, SPEC's 201 log-spaced saved times) and reports the share
measurement / integration, both timed in the same process, so that the ratio stands on a shared
machine even where the seconds do not.

It also times, on the run's saved states, what one measurement is made of (linearization, Gram
matrix, its eigenvalues, the test forward pass) against one Gauss--Newton evaluation, interleaved,
so that the report says where the measuring time goes.

Usage::

    python studies/performance/saved_states.py                        # paper size: N = 500, M = 5000, 10^4 test points
    python studies/performance/saved_states.py --n-train 200 --width 2000 --n-test 4000
    python studies/performance/saved_states.py --label after -o data/studies/performance/saved_states.json

With ``--alongside`` it measures the run on two CPU threads as ``gnflow run`` makes it
(``--schedule switch``, the default): the integration runs at both threads until
:data:`gnflow.simulation.MEASURE_ALONGSIDE_AFTER` saved states wait, then at one torch thread while
a worker measures the saved states at the other (:class:`gnflow.observables.SwitchingAlongside`),
and the states left are measured after, two at a time. ``--schedule alongside`` measures alongside
from the first state instead (what ``gnflow run`` did before; ``schedules.py`` compares the
schedules). The baseline is the same integration alone at one thread, without any measurement,
timed in the same process before and after; the share is then the wall time the measurements add
to the run, (whole run - integration alone) / integration alone, and the CPU share is reported
beside it. The share against the integration alone at two threads (the fastest integration
without measurements) is reported too.

    python studies/performance/saved_states.py --alongside --label alongside

Results are appended to the JSON file under ``--label`` (one entry per label), with the load
average before and after, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import gnflow
from gnflow.config import config_from_dict
from gnflow.experiment import build_experiment
from gnflow.measuring_process import MeasuringProcess
from gnflow.observables import SwitchingAlongside
from gnflow.simulation import MEASURE_ALONGSIDE_AFTER
from gnflow.solve import integrate
from gnflow.studies import measurement_provenance
from gnflow.threads import torch_threads
from gnflow.trajectory import measuring_alongside, trajectory_dataset

OUTPUT = Path("data/studies/performance/saved_states.json")


def run_config(n_train: int, width: int, n_test: int, n_save: int, threads: int, t_end: float = 1e4) -> dict[str, Any]:
    """The Gauss--Newton run (config defaults: eigmin, dopri5, rtol 1e-6, tau0 = 1, t_end = 1e4)."""
    return {
        "seed": 1,
        "device": "cpu",
        "dtype": "float64",
        "data": {"n_train": n_train, "n_test": n_test},
        "model": {"width": width, "init_scale": 1.0},
        "solver": {"t_end": t_end, "n_save": n_save, "stop_loss_ratio": 1e-8},
        "compute": {"threads": threads},
    }


def _median_time(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measurement_parts(experiment: Any, weights: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds of each part of one saved-state measurement, and of one GN evaluation, interleaved."""
    model, flow = experiment.model, experiment.flow
    x_test = experiment.tensor(experiment.data.x_test)
    lin = model.linearize(weights, flow.x)
    gram = lin.gram()
    t = torch.tensor(0.0)
    flow(t, weights)  # warm the Lanczos start vector, as inside a solve
    parts: dict[str, list[float]] = {}
    timed: dict[str, Callable[[], object]] = {
        "gn_evaluation": lambda: flow(t, weights),
        "linearization": lambda: model.linearize(weights, flow.x).predict(),
        "gram": lin.gram,
        "eigenvalues": lambda: torch.linalg.eigvalsh(gram),
        "test_forward": lambda: model.predict(weights, x_test),
    }
    for _ in range(repeats):
        for name, function in timed.items():
            parts.setdefault(name, []).append(_median_time(function, 1))
    return {name: statistics.median(values) for name, values in parts.items()}


def _sizes(args: argparse.Namespace) -> dict[str, float]:
    """The run's sizes and saved times, as recorded with each measurement."""
    return {name: getattr(args, name) for name in ("n_train", "width", "n_test", "n_save", "t_end")}


def _conditions(load_before: tuple[float, ...], load_after: tuple[float, ...], idle_below: float) -> dict[str, Any]:
    """Load averages, whether the machine was otherwise idle, and the provenance of the numbers."""
    idle = max(load_before[0], load_after[0]) <= idle_below
    return {
        "load_average_before": list(load_before),
        "load_average_after": list(load_after),
        "note": (
            f"measured on an otherwise idle machine (one-minute load averages at most {idle_below}, this script "
            "included)"
            if idle
            else "measured under load on a shared machine (see the load averages); compare ratios, not seconds"
        ),
        "gnflow": gnflow.__version__,
        "gnflow_path": str(Path(gnflow.__file__).parent),
        **measurement_provenance(),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    config = config_from_dict(run_config(args.n_train, args.width, args.n_test, args.n_save, args.threads, args.t_end))
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    experiment = build_experiment(config)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    solution = integrate(experiment.flow, experiment.weights0, config.solver, progress=False)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    trajectory_dataset(experiment, solution, progress=False)
    cpu2, wall2 = time.process_time(), time.perf_counter()
    parts = measurement_parts(experiment, solution.weights[len(solution.t) // 2], args.repeats)
    load_after = os.getloadavg()
    integration = {"wall_s": wall1 - wall0, "cpu_s": cpu1 - cpu0}
    measuring = {"wall_s": wall2 - wall1, "cpu_s": cpu2 - cpu1}
    n_saved = len(solution.t)
    per_state = measuring["cpu_s"] / n_saved
    return {
        "sizes": _sizes(args),
        "torch_threads": args.threads,
        "status": str(solution.status),
        "t_final": float(solution.t[-1]),
        "saved_states_measured": n_saved,
        "evaluations": int(solution.nfe[-1]),
        "integration": integration,
        "measuring": measuring,
        "share_cpu": measuring["cpu_s"] / integration["cpu_s"],
        "share_wall": measuring["wall_s"] / integration["wall_s"],
        "measuring_cpu_s_per_state": per_state,
        "integration_cpu_s_per_evaluation": integration["cpu_s"] / int(solution.nfe[-1]),
        "parts_s": parts,
        "parts_over_gn_evaluation": {name: value / parts["gn_evaluation"] for name, value in parts.items()},
        **_conditions(load_before, load_after, idle_below=1.5),
    }


def _timed(function: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    value = function()
    return value, {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0}


def measure_alongside(args: argparse.Namespace) -> dict[str, Any]:
    """The run as ``gnflow run`` makes it on two threads, against its integration alone at one."""
    config = config_from_dict(run_config(args.n_train, args.width, args.n_test, args.n_save, 2, args.t_end))
    load_before = os.getloadavg()

    def integration_alone(threads: int = 1) -> Any:
        experiment = build_experiment(config)  # a fresh flow: its solver state (Lanczos start) as in a new run
        with torch_threads(threads):
            return _timed(lambda: integrate(experiment.flow, experiment.weights0, config.solver, progress=False))

    def with_measurements() -> tuple[Any, dict[str, float], dict[str, float], dict[str, float], int]:
        experiment = build_experiment(config)
        flow, weights0 = experiment.flow, experiment.weights0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if args.schedule == "process":  # gnflow run's for this size: one thread, a second process measures
            with torch_threads(2):
                sink = MeasuringProcess(experiment)
                with torch_threads(1):
                    solution, integration = _timed(lambda: integrate(flow, weights0, config.solver, on_save=sink))
                sink.stop()
                _, after = _timed(lambda: trajectory_dataset(experiment, solution, progress=False, alongside=sink))
                sink.close()
            measured = sink.finish()
            whole = {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0}
            return solution, integration, after, whole, measured
        if args.schedule == "switch":  # both threads until MEASURE_ALONGSIDE_AFTER states wait
            with torch_threads(2):
                sink = SwitchingAlongside(lambda: measuring_alongside(experiment), MEASURE_ALONGSIDE_AFTER)
                with torch_threads(2):  # restores the count the sink lowers
                    solution, integration = _timed(lambda: integrate(flow, weights0, config.solver, on_save=sink))
                    measured = sink.finish()
            alongside = sink.worker
        else:
            with torch_threads(1):
                alongside = measuring_alongside(experiment)
                solution, integration = _timed(lambda: integrate(flow, weights0, config.solver, on_save=alongside))
                measured = alongside.finish()
        with torch_threads(2):
            _, after = _timed(lambda: trajectory_dataset(experiment, solution, progress=False, alongside=alongside))
        whole = {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0}
        return solution, integration, after, whole, measured

    alone: list[dict[str, float]] = []
    alone_two: list[dict[str, float]] = []
    runs: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        solution, timing = integration_alone()
        alone.append(timing)
        alone_two.append(integration_alone(2)[1])
        solution_b, integration, after, whole, measured = with_measurements()
        # alongside: the same one-thread integration, bit for bit; switch: its first states at two
        # threads, so equal to rounding
        same = (
            torch.equal(solution.weights, solution_b.weights)
            if args.schedule in ("alongside", "process")
            else solution.weights.shape == solution_b.weights.shape
            and torch.allclose(solution.weights, solution_b.weights, rtol=1e-6, atol=1e-9)
        )
        if not same:
            raise AssertionError("the integration with the measurements alongside took other steps")
        runs.append({"integration": integration, "after_integration": after, "whole": whole, "alongside": measured})
    solution, timing = integration_alone()
    alone.append(timing)
    load_after = os.getloadavg()
    alone_wall = statistics.median(a["wall_s"] for a in alone)
    alone_cpu = statistics.median(a["cpu_s"] for a in alone)
    whole_wall = statistics.median(r["whole"]["wall_s"] for r in runs)
    whole_cpu = statistics.median(r["whole"]["cpu_s"] for r in runs)
    n_saved = len(solution.t)
    alone_two_wall = statistics.median(a["wall_s"] for a in alone_two)
    modes = {
        "process": "process (gnflow run's schedule at this size): integration at one thread, saved states measured "
        "in a second process meanwhile, the states left split between the two",
        "alongside": "alongside: integration at one torch thread, saved states measured meanwhile at the other",
        "switch": (
            f"switch (gnflow run's schedule): integration at both threads until {MEASURE_ALONGSIDE_AFTER} saved states "
            "wait, then at one while the other measures them"
        ),
    }
    return {
        "mode": modes[args.schedule],
        "sizes": _sizes(args),
        "torch_threads": 2,
        "status": str(solution.status),
        "t_final": float(solution.t[-1]),
        "saved_states_measured": n_saved,
        "evaluations": int(solution.nfe[-1]),
        "integration_alone": alone,
        "runs": runs,
        "share_wall": (whole_wall - alone_wall) / alone_wall,
        "share_cpu": (whole_cpu - alone_cpu) / alone_cpu,
        "integration_alone_two_threads": alone_two,
        "share_wall_vs_two_threads": (whole_wall - alone_two_wall) / alone_two_wall,
        **(
            {"note_cpu": "process: share_cpu counts this process only, not the measuring process"}
            if args.schedule == "process"
            else {}
        ),
        "definition": (
            "share_wall = (median whole run with measurements - median integration alone at one thread) / median "
            "integration alone, wall seconds; share_cpu the same in processor seconds; share_wall_vs_two_threads "
            "against the integration alone at two threads (the fastest integration without measurements); all "
            "timed in this process"
        ),
        **_conditions(load_before, load_after, idle_below=2.5),
    }


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """--n-train, --width, --n-test and --n-save, the paper's size by default."""
    parser.add_argument("--n-train", type=int, default=500)
    parser.add_argument("--width", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--n-save", type=int, default=201)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_arguments(parser)
    parser.add_argument(
        "--t-end",
        type=float,
        default=1e4,
        help="end of the log-spaced saved times (SPEC's default 1e4: 186 saved states before the run converges at "
        "t = 4941; 1e5: 137)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the timed parts of one measurement")
    parser.add_argument(
        "--alongside", action="store_true", help="measure as gnflow run does on two threads (see the module)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="--alongside: rounds of (integration alone, whole run)")
    parser.add_argument(
        "--schedule",
        choices=("process", "switch", "alongside"),
        default="process",
        help="--alongside: gnflow run's schedule at this size (process, default: a second process measures), "
        "the thread schedule of smaller runs (switch), or a thread alongside from the first state",
    )
    parser.add_argument("--label", default="current", help="key of this measurement in the output file")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    result = measure_alongside(args) if args.alongside else measure(args)
    stored = json.loads(args.output.read_text()) if args.output.is_file() else {}
    stored[args.label] = result
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(stored, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
