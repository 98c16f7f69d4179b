"""Small timings behind performance.md's choices: predict's row blocks, threads per GN evaluation, file compression.

Three measurements at the paper's size, each against a baseline in the same process, interleaved:

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
  ``gnflow.dataset.write_dataset`` does), level 1, and uncompressed: seconds and MiB.

Writes ``data/studies/performance/parts.json`` with the load average before and after.

    python studies/performance/parts.py          # about two minutes on 2 idle cores
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
from saved_states import run_config

from gnflow.config import config_from_dict
from gnflow.experiment import build_experiment
from gnflow.model import ParticleModel
from gnflow.studies import measurement_provenance
from gnflow.threads import torch_threads

OUTPUT = Path("data/studies/performance/parts.json")


def _median(function: Callable[[], object], repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    result = {
        "predict": predict_blocks(args.repeats),
        "gn_evaluation": gn_threads(9),
        "startup_s": startup(),
        "write": write_levels(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        **measurement_provenance(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
