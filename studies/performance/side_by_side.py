"""The paper-size GN run, whole process, against the authors' discrete GN algorithm, side by side.

The authors' algorithm (Arbel et al.'s released code, as described in the project notes): every
iteration computes the predictions in float32, the Jacobian J (N x P, P = M (d + 2)) by ``vmap``
of one vector-Jacobian product per training sample, A = J J^T in float64, its full SVD, the
damping eps = max(eps0, s_min), z = V diag(1 / (s + eps)) U^T g with g = (f(X) - y) / N, and the
update w <- w - lr J^T z at lr = 10, until the train loss is 1e-8 of its initial value.

This script times, on the same teacher--student draw (``examples/gn.toml``: N = 500, M = 5000,
d = 10, tau0 = 1, 10^4 test points) and interleaved over ``--rounds`` rounds:

- ``authors``: ``--steps`` of the authors' iterations (after one untimed warm-up), median seconds
  per iteration, times the number of iterations their run takes. That number is counted by
  gnflow's Euler steps of step 10 on the same flow (``solver.method = "euler"``,
  ``step_size = 10``), which are the same iterations (tested: ``authors_step`` in float64 equals
  w + 10 F(w) for gnflow's field F); the iterations run at the default torch thread count;
- ``gnflow``: ``gnflow run examples/gn.toml`` as a subprocess (wall time of the whole process:
  start-up, integration, the measurements at its 201 saved times, writing the file), at its
  default settings.

It writes ``data/studies/performance/side_by_side.{json,md}``; the ratio is authors / gnflow.

    python studies/performance/side_by_side.py                       # about 5 minutes on 2 idle cores
    python studies/performance/side_by_side.py --rounds 1 --steps 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import gnflow
from gnflow.config import load_config
from gnflow.experiment import build_experiment
from gnflow.solve import integrate
from gnflow.studies import measurement_provenance

CONFIG = Path("examples/gn.toml")
OUT = Path("data/studies/performance/side_by_side.json")
LR = 10.0
EPS0 = 1e-7


def authors_step(
    weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One iteration of the authors' discrete GN: weights (M, d + 2) = [u, b, v] -> the next weights.

    The model and data in ``dtype`` (float32 in their runs), the Jacobian by ``vmap`` of per-sample
    VJPs, A, its SVD and the solve in float64, the update in ``dtype``.
    """
    d = x.shape[1]
    u, b, v = (p.to(dtype) for p in (weights[:, :d], weights[:, d], weights[:, d + 1]))
    x, y = x.to(dtype), y.to(dtype)
    m, n = weights.shape[0], x.shape[0]

    def predict(u: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x @ u.T + b) @ v / m

    pred, vjp = torch.func.vjp(predict, u, b, v)
    # their vmap runs over chunks of at most 128 samples when all N do not fit: (128, N, M) per chunk
    jac = torch.func.vmap(vjp, chunk_size=128)(torch.eye(n, dtype=dtype))  # (N, M, d), (N, M), (N, M)
    g = (pred - y) / n
    gram = sum(j.reshape(n, -1).double() @ j.reshape(n, -1).double().T for j in jac)
    left, s, right_h = torch.linalg.svd(gram)
    s = s.clamp(min=0.0)
    eps = torch.clamp(s.min(), min=EPS0)
    z = (right_h.T @ ((left.T @ g.double()) / (s + eps))).to(dtype)
    step = [torch.einsum("n,n...->...", z, j) for j in jac]  # J_p^T z for every parameter
    u, b, v = u - LR * step[0], b - LR * step[1], v - LR * step[2]
    return torch.cat([u, b[:, None], v[:, None]], dim=1).to(weights.dtype)


def count_iterations(config: Any) -> dict[str, Any]:
    """The authors' iteration count: gnflow's Euler steps of step ``LR`` until the stop."""
    experiment = build_experiment(config)
    solver = dataclasses.replace(config.solver, method="euler", step_size=LR, t_end=LR * 100_000, n_save=2)
    start = time.perf_counter()
    solution = integrate(experiment.flow, experiment.weights0, solver, progress=False)
    if solution.status != "converged":
        raise SystemExit(f"the Euler iterations did not reach the stop: {solution.status} at t = {solution.t[-1]:g}")
    return {
        "iterations": int(solution.n_accepted[-1]),
        "status": solution.status,
        "t": float(solution.t[-1]),
        "wall_s": time.perf_counter() - start,
    }


def time_authors(experiment: Any, steps: int) -> list[float]:
    """Wall seconds of ``steps`` authors' iterations from the initial state (one warm-up first)."""
    x, y = experiment.flow.x, experiment.flow.y
    w = authors_step(experiment.weights0, x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        w = authors_step(w, x, y)
        times.append(time.perf_counter() - start)
    return times


def time_gnflow_run(config_path: Path) -> dict[str, Any]:
    """Wall seconds of ``gnflow run CONFIG`` as a whole process (output to a scratch file)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "gn.nc"
        command = [sys.executable, "-m", "gnflow", "run", str(config_path), "-o", str(out)]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"gnflow run failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        # the run's summary line: "302 evaluations, 50 steps (0 rejected), 34.20 s" (the integration)
        found = re.search(r"(\d+) evaluations, \d+ steps \(\d+ rejected\), ([\d.]+) s", done.stdout + done.stderr)
        import xarray as xr

        with xr.open_dataset(out) as ds:
            info = {
                "wall_s": wall,
                "status": str(ds.attrs.get("gnflow_status", "")),
                "evaluations": int(ds["nfe"].values[-1]) if "nfe" in ds else None,
                "saved_states": int(ds.sizes["t"]) if "t" in ds.sizes else None,
                "threads": int(ds.attrs.get("gnflow_threads", 0)),
                "integration_wall_s": float(found.group(2)) if found else None,
            }
    return info


def report(result: dict[str, Any], path: Path) -> Path:
    a, g = result["authors"], result["gnflow"]
    lines = [
        "# The paper-size GN run against the authors' algorithm",
        "",
        f"Config `{result['config']}` (N = 500, M = 5000, d = 10, tau0 = 1, 10^4 test points), "
        f"{result['machine']}, torch {result['torch']}, gnflow {result['git_commit']}, {result['date']}; "
        f"load average before {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f}.",
        "",
        "| | per iteration (s) | iterations / evaluations | whole run (s) |",
        "|---|---|---|---|",
        f"| authors' discrete GN (median of {len(a['step_s'])} timed iterations x their iteration count) "
        f"| {a['median_step_s']:.2f} | {a['iterations']} iterations | {a['estimated_run_s']:.0f} |",
        f"| `gnflow run` (whole process, median of {len(g['runs'])} runs; default settings, "
        f"{g['runs'][0]['saved_states']} saved states) | | {g['runs'][0]['evaluations']} evaluations "
        f"| {g['median_wall_s']:.1f} |",
    ]
    integration = [r["integration_wall_s"] for r in g["runs"] if r.get("integration_wall_s")]
    if integration:
        lines.append(
            f"| `gnflow run`: its integration alone (median of the same runs; the rest is start-up, the "
            f"measurements at the saved states and the file) | | | {statistics.median(integration):.1f} |"
        )
    lines += [
        "",
        f"**authors / gnflow = {result['ratio']:.0f}x** for the whole process (range over the runs: "
        f"{result['ratio_range'][0]:.0f}x-{result['ratio_range'][1]:.0f}x)"
        + (
            f"; **{a['estimated_run_s'] / statistics.median(integration):.0f}x** against the integration alone."
            if integration
            else "."
        ),
        "",
        "The authors' iteration count is that of gnflow's Euler steps of step 10 on the same flow "
        f"({a['iterations']} to {a['count_status']}), which are their iterations in float64 "
        "(tests/test_side_by_side.py); their own runs are float32 with a float64 Gram solve. "
        "Their logging (test loss every 100 iterations) is not counted.",
        "",
    ]
    path.with_suffix(".md").write_text("\n".join(lines))
    return path.with_suffix(".md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed authors' iterations per round")
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    experiment = build_experiment(config)
    load_before = os.getloadavg()
    steps: list[float] = []
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        steps += time_authors(experiment, args.steps)
        runs.append(time_gnflow_run(args.config))
        print(f"round {round_ + 1}: authors {steps[-args.steps :]}, gnflow {runs[-1]}", flush=True)
    count = count_iterations(config)
    load_after = os.getloadavg()
    median_step = statistics.median(steps)
    walls = [r["wall_s"] for r in runs]
    estimated = median_step * count["iterations"]
    result = {
        "config": str(args.config),
        "authors": {
            "step_s": steps,
            "median_step_s": median_step,
            "iterations": count["iterations"],
            "count_status": count["status"],
            "count_wall_s": count["wall_s"],
            "estimated_run_s": estimated,
        },
        "gnflow": {"runs": runs, "median_wall_s": statistics.median(walls)},
        "ratio": estimated / statistics.median(walls),
        "ratio_range": [min(steps) * count["iterations"] / max(walls), max(steps) * count["iterations"] / min(walls)],
        "load_before": list(load_before),
        "load_after": list(load_after),
        "gnflow_version": gnflow.__version__,
        **measurement_provenance(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.output} and {report(result, args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
