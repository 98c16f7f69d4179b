"""Small timings behind performance.md's choices: predict's row blocks, threads per GN evaluation, file compression.

Measurements at the paper's size, each against a baseline in the same process, interleaved:

- ``predict``: the test forward pass (10^4 test points, d = 10, one torch thread) as
  ``ParticleModel.predict`` computes it (the bias inside the product, ``[x, 1] [u, b]^T``) at row
  blocks of 8 to 64 rows, against the earlier form (``addmm`` of a separate bias, blocks of 2^18
  entries), at M = 1000, 5000 and 20000; nanoseconds per (test point, particle) entry;
- ``threads``: one Gauss--Newton evaluation of the paper-size flow (N = 500, M = 5000) at one and
  at two torch threads, medians of 9;
- ``startup``: the wall time of ``python -c "import gnflow.cli, gnflow.simulation"`` (what every
  ``gnflow run`` imports before it starts), median of 3, against ``python -c "import torch"``;
- ``write``: writing a run's dataset (``examples/gn.toml``'s shape: 186 saved states of 5000 x 12
  weights, written from a synthetic trajectory) with zlib level 4 and the shuffle filter (what
  ``gnflow.dataset.write_dataset`` does), level 1, and uncompressed: seconds and MiB;
- ``activations``: S = sigma(z) and T = sigma'(z) v of a linearization (N = 500, M = 5000, silu,
  one thread) as ``gnflow.model._activations`` computes them (sigmoid into a scratch block, value
  and derivative written in place: five passes per block) against the earlier path (``_silu_`` per
  block: seven passes and two fresh blocks, the value copied into S), alone and inside one
  Gauss--Newton evaluation; five interleaved rounds of medians, and the largest difference;
- ``contention``: a GN evaluation and one saved state's measurements (train and test loss, Gram
  spectrum), each at one torch thread, alone, side by side as two threads of this process (how
  ``gnflow run`` on two threads runs them), and side by side as two processes pinned one per core.

Writes ``data/studies/performance/parts.json`` with the load average before and after; ``--only``
measures some sections and keeps the file's others.

    python studies/performance/parts.py                      # about three minutes on 2 idle cores
    python studies/performance/parts.py --only activations
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_states import _median_time, run_config

import gnflow.model
from gnflow.config import config_from_dict
from gnflow.experiment import build_experiment
from gnflow.model import ParticleModel
from gnflow.studies import measurement_provenance
from gnflow.threads import torch_threads

OUTPUT = Path("data/studies/performance/parts.json")


def _median(function: Callable[[], object], repeats: int) -> float:
    """saved_states' median of ``repeats`` timed calls, after one untimed call."""
    function()
    return _median_time(function, repeats)


def _predict_rows(weights: torch.Tensor, x: torch.Tensor, rows: int) -> torch.Tensor:
    """ParticleModel.predict's no-autograd loop (silu) at a given row block."""
    d = x.shape[1]
    x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    hidden, output = weights[:, : d + 1].T, weights[:, d + 1]
    result = x.new_empty(x.shape[0])
    buffer = x.new_empty(rows, weights.shape[0])
    for start in range(0, x.shape[0], rows):
        stop = min(start + rows, x.shape[0])
        z = torch.mm(x1[start:stop], hidden, out=buffer[: stop - start])
        torch.mv(torch.nn.functional.silu(z, inplace=True), output, out=result[start:stop])
    return result


def _predict_addmm(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The earlier form: z = x u^T + b by addmm, blocks of 2^18 entries."""
    d = x.shape[1]
    rows = max(1, (1 << 18) // weights.shape[0])
    bias, hidden, output = weights[:, d].contiguous(), weights[:, :d].T, weights[:, d + 1]
    result = x.new_empty(x.shape[0])
    buffer = x.new_empty(rows, weights.shape[0])
    for start in range(0, x.shape[0], rows):
        stop = min(start + rows, x.shape[0])
        z = torch.addmm(bias, x[start:stop], hidden, out=buffer[: stop - start])
        torch.mv(torch.nn.functional.silu(z, inplace=True), output, out=result[start:stop])
    return result


def predict_blocks(repeats: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    n, d = 10_000, 10
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    out: dict[str, Any] = {}
    with torch_threads(1):
        for width in (1000, 5000, 20_000):
            weights = 0.5 * torch.randn(width, d + 2, generator=generator, dtype=torch.float64)
            model = ParticleModel(input_dim=d, activation="silu")
            reference = _predict_addmm(weights, x)
            torch.testing.assert_close(model.predict(weights, x) / model.scale(width), reference, rtol=1e-12, atol=1e-9)
            timed = {"addmm, 2^18 entries (earlier)": lambda w=weights: _predict_addmm(w, x)}
            timed |= {f"{rows} rows": lambda w=weights, r=rows: _predict_rows(w, x, r) for rows in (8, 16, 32, 64)}
            timed["ParticleModel.predict"] = lambda w=weights, m=model: m.predict(w, x)
            samples: dict[str, list[float]] = {name: [] for name in timed}
            for _ in range(repeats):  # interleaved
                for name, function in timed.items():
                    samples[name].append(_median(function, 1))
            out[str(width)] = {name: statistics.median(s) / (n * width) * 1e9 for name, s in samples.items()}
    return {"unit": "ns per (test point, particle)", "by_width": out}


def gn_threads(repeats: int) -> dict[str, Any]:
    experiment = build_experiment(config_from_dict(run_config(500, 5000, 10_000, 201, 2)))
    weights = experiment.weights0.clone()
    weights[:, -1] = 0.01 * torch.randn(
        weights.shape[0], generator=torch.Generator().manual_seed(1), dtype=weights.dtype
    )
    t = torch.tensor(0.0)
    samples: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(2):
        for threads in (1, 2):
            with torch_threads(threads):
                samples[threads].append(_median(lambda: experiment.flow(t, weights), repeats))
    return {f"{k} threads": {"median_s": statistics.median(v), "runs": v} for k, v in samples.items()}


def _activations_generic(
    model: ParticleModel, weights: torch.Tensor, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The earlier silu path of ``gnflow.model._activations``: ``_silu_`` per block (seven passes, two
    fresh blocks), its value copied into S."""
    d = model.input_dim
    z = x1 @ weights[:, : d + 1].T
    v = weights[:, d + 1]
    rows = max(1, gnflow.model._ELEMENTWISE_BLOCK_ENTRIES // z.shape[1])
    s = torch.empty_like(z)
    for start in range(0, z.shape[0], rows):
        block = z[start : start + rows]
        value, derivative = gnflow.model._silu_(block)
        s[start : start + rows] = value
        derivative.mul_(v)
    return s, z


def activations(repeats: int) -> dict[str, Any]:
    """S and T of a linearization (N = 500, M = 5000, silu, one thread) and one GN evaluation, with
    ``gnflow.model._activations`` against the earlier path, interleaved rounds of medians."""
    experiment = build_experiment(config_from_dict(run_config(500, 5000, 10_000, 201, 1)))
    weights = experiment.weights0.clone()
    weights[:, -1] = torch.randn(weights.shape[0], generator=torch.Generator().manual_seed(0), dtype=weights.dtype)
    x = torch.as_tensor(experiment.data.x_train, dtype=torch.float64)
    x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    current = gnflow.model._activations
    paths = {"gnflow": current, "earlier (_silu_ per block)": _activations_generic}
    s0, t0 = _activations_generic(experiment.model, weights, x1)
    s1, t1 = current(experiment.model, weights, x1)
    t = torch.tensor(0.0)
    samples: dict[str, dict[str, list[float]]] = {name: {"activations_s": [], "gn_evaluation_s": []} for name in paths}
    with torch_threads(1):
        for _ in range(5):
            for name, path in paths.items():
                samples[name]["activations_s"].append(
                    _median(lambda path=path: path(experiment.model, weights, x1), repeats)
                )
                gnflow.model._activations = path
                try:
                    samples[name]["gn_evaluation_s"].append(_median(lambda: experiment.flow(t, weights), repeats))
                finally:
                    gnflow.model._activations = current
    out: dict[str, Any] = {
        name: {key: {"median_s": statistics.median(v), "runs": v} for key, v in parts.items()}
        for name, parts in samples.items()
    }
    out["max_difference"] = {
        "S": float((s0 - s1).abs().max()),
        "T relative to max |T|": float((t0 - t1).abs().max() / t0.abs().max()),
    }
    return out


def _contention_work(role: str, seconds: float) -> list[float]:
    """Seconds per call of ``role`` repeated for ``seconds``: one GN evaluation of the paper-size
    flow, or one saved state's measurements (train and test loss, Gram spectrum), one thread."""
    from gnflow.observables._trajectory import SavedState
    from gnflow.trajectory import _run_dtype_trajectory

    experiment = build_experiment(config_from_dict(run_config(500, 5000, 10_000, 201, 1)))
    weights = experiment.weights0.clone()
    weights[:, -1] = torch.randn(weights.shape[0], generator=torch.Generator().manual_seed(0), dtype=weights.dtype)
    trajectory = _run_dtype_trajectory(experiment, None)
    t = torch.tensor(0.0)

    def call() -> None:
        if role == "gn_evaluation":
            experiment.flow(t, weights)
        else:
            state = SavedState(trajectory, 0, weights=weights)
            _ = (state.train_loss, state.test_loss, state.eigenvalues)

    call()
    times = []
    end = time.perf_counter() + seconds
    with torch.no_grad():
        while time.perf_counter() < end:
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return times


def contention(repeats: int, seconds: float = 12.0) -> dict[str, Any]:
    """A GN evaluation and a saved state's measurements, each at one torch thread: alone, side by
    side as two threads of one process (as ``gnflow run`` runs them on two threads: the evaluations
    in the calling thread, the measurements in a worker), and side by side as two processes pinned
    to cores 0 and 1; medians in seconds."""
    import threading

    from gnflow import _blas

    roles = ("gn_evaluation", "saved_state")
    out: dict[str, Any] = {}
    with torch_threads(1):
        _blas.hold_blas_at_one_thread()
        out["alone"] = {role: statistics.median(_contention_work(role, seconds / 2)) for role in roles}
        # as in gnflow run: the integration's evaluations in the calling thread, the measurements in a worker
        results: dict[str, list[float]] = {}
        worker = threading.Thread(
            target=lambda: results.__setitem__("saved_state", _contention_work("saved_state", seconds))
        )
        worker.start()
        results["gn_evaluation"] = _contention_work("gn_evaluation", seconds)
        worker.join()
        out["two threads of one process"] = {role: statistics.median(results[role]) for role in roles}
    if len(os.sched_getaffinity(0)) >= 2:
        code = (
            "import json, statistics, sys; sys.path.insert(0, sys.argv[3]); import parts; "
            "print(json.dumps(statistics.median(parts._contention_work(sys.argv[1], float(sys.argv[2])))))"
        )
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", code, role, str(seconds), str(Path(__file__).resolve().parent)],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                preexec_fn=lambda core=core: os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[core]}),
            )
            for core, role in enumerate(roles)
        ]
        out["two processes, one core each"] = {
            role: json.loads(process.communicate()[0].strip().splitlines()[-1])
            for role, process in zip(roles, processes, strict=True)
        }
    return out


def startup() -> dict[str, Any]:
    def wall(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - start

    return {
        name: statistics.median(wall(code) for _ in range(3))
        for name, code in (("gnflow", "import gnflow.cli, gnflow.simulation"), ("torch alone", "import torch"))
    }


def write_levels() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5000, 12))
    # a smooth trajectory of the size of examples/gn.toml's file: weights drifting from w0
    weights = w0[None] + np.cumsum(1e-3 * rng.normal(size=(186, 5000, 12)), axis=0)
    ds = xr.Dataset({"weights": (("t", "particle", "component"), weights)}, coords={"t": np.arange(186.0)})
    settings = {"zlib 4, shuffle (written)": {"zlib": True, "complevel": 4, "shuffle": True}}
    settings |= {"zlib 1, shuffle": {"zlib": True, "complevel": 1, "shuffle": True}, "uncompressed": {}}
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, encoding in settings.items():
            path = Path(folder) / "w.nc"
            start = time.perf_counter()
            ds.to_netcdf(path, engine="netcdf4", encoding={"weights": {"_FillValue": None, **encoding}})
            out[name] = {"write_s": time.perf_counter() - start, "mib": path.stat().st_size / 2**20}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=tuple(SECTIONS),
        help="measure these sections only; the file's other sections are kept (each section records its own "
        "load average, commit and date)",
    )
    parser.add_argument(
        "--label", default="", help="with --only: store the sections as 'NAME (LABEL)', beside the unlabeled ones"
    )
    args = parser.parse_args(argv)
    names = args.only or list(SECTIONS)
    keys = {name: f"{name} ({args.label})" if args.label else name for name in names}
    result = json.loads(args.output.read_text()) if args.only and args.output.exists() else {}
    load_before = os.getloadavg()
    for name in names:
        section_load = os.getloadavg()
        key = keys[name]
        result[key] = SECTIONS[name](args.repeats)
        if args.only:  # a section measured on its own says when and where
            conditions = {"load_average_before": list(section_load), "load_average_after": list(os.getloadavg())}
            result[key] |= conditions | measurement_provenance() | _environment()
    if not args.only:
        conditions = {"load_average_before": list(load_before), "load_average_after": list(os.getloadavg())}
        result |= conditions | measurement_provenance() | _environment()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({keys[name]: result[keys[name]] for name in names}, indent=1))
    return 0


def _environment() -> dict[str, Any]:
    """The environment variables that change these timings (glibc's heap, OpenMP), where set."""
    names = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "OMP_NUM_THREADS")
    return {"environment": {name: os.environ[name] for name in names if name in os.environ}}


SECTIONS: dict[str, Callable[[int], dict[str, Any]]] = {
    "predict": predict_blocks,
    "gn_evaluation": lambda repeats: gn_threads(9),
    "startup_s": lambda repeats: startup(),
    "write": lambda repeats: write_levels(),
    "activations": activations,
    "contention": contention,
}


if __name__ == "__main__":
    sys.exit(main())
