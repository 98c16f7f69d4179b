"""The two-layer model's products through numpy's BLAS against torch's, at one torch thread.

At one torch thread on the CPU in float64 gnflow computes the Gram matrix's a a^T by ``syrk``,
J delta and J^T c (skinny products of a (sample, particle) block) and the kernel linearization's
eigendecomposition through numpy's BLAS and LAPACK (:mod:`gnflow._blas`). This script times each
of them, and the gradient and Gauss--Newton fields and one kernel linearization that use them,
with that routing and inside :func:`gnflow._blas.torch_only` (every product in torch), interleaved
in one process so that the ratios stand on a shared machine. ``jvp (elementwise)`` is the earlier
form of J delta, sum_i T_ni (x_n . delta_i), with its (sample, particle) temporaries.

Usage::

    python studies/performance/products.py                 # N = 500, M = 5000, d = 10: about a minute
    python studies/performance/products.py --n-train 200 --width 2000 -o /tmp/products.json

Writes ``data/studies/performance/products.{json,md}``.
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

from gnflow import _blas
from gnflow.damping import EigminDamping
from gnflow.exponential import freeze_kernel
from gnflow.flows import GaussNewtonFlow, GradientFlow
from gnflow.model import ParticleModel
from gnflow.studies import measurement_provenance

OUTPUT = Path("data/studies/performance/products.json")


def _time(function: Callable[[], object]) -> float:
    start = time.process_time()
    function()
    return time.process_time() - start


def _elementwise_jvp(lin: Any, delta: torch.Tensor) -> torch.Tensor:
    d = lin.model.input_dim
    hidden = torch.addmm(delta[:, d], lin.x, delta[:, :d].T)
    return ((lin.t * hidden).sum(1) + lin.s @ delta[:, d + 1]) * lin.scale


def measure(n_train: int, width: int, input_dim: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_train, input_dim, generator=gen, dtype=torch.float64)
    y = torch.randn(n_train, generator=gen, dtype=torch.float64)
    weights = torch.randn(width, input_dim + 2, generator=gen, dtype=torch.float64)
    model = ParticleModel(input_dim=input_dim)
    lin = model.linearize(weights, x)
    gram = lin.gram()
    c = torch.randn(n_train, generator=gen, dtype=torch.float64)
    delta = torch.randn(width, input_dim + 2, generator=gen, dtype=torch.float64)
    gradient = GradientFlow(model, x, y)
    gauss_newton = GaussNewtonFlow(model, x, y, EigminDamping(1e-7))
    t0 = torch.zeros((), dtype=torch.float64)
    gauss_newton(t0, weights)  # its Lanczos start vector, as inside a solve
    timed: dict[str, Callable[[], object]] = {
        "jvp": lambda: lin.jvp(delta),
        "vjp": lambda: lin.vjp(c),
        "gram": lin.gram,
        "eigh": lambda: _blas.eigh(gram),
        "gradient field": lambda: gradient(t0, weights),
        "gauss_newton field": lambda: gauss_newton(t0, weights),
        "kernel linearization": lambda: freeze_kernel(gradient, weights),
    }
    blas: dict[str, list[float]] = {name: [] for name in timed}
    baseline: dict[str, list[float]] = {name: [] for name in timed}
    elementwise: list[float] = []
    for function in timed.values():  # warm both paths
        function()
        with _blas.torch_only():
            function()
    for _ in range(repeats):
        for name, function in timed.items():
            blas[name].append(_time(function))
            with _blas.torch_only():
                baseline[name].append(_time(function))
        elementwise.append(_time(lambda: _elementwise_jvp(lin, delta)))
    rows = {
        name: {
            "blas_s": statistics.median(blas[name]),
            "torch_s": statistics.median(baseline[name]),
            "torch_over_blas": statistics.median(baseline[name]) / statistics.median(blas[name]),
        }
        for name in timed
    }
    rows["jvp (elementwise)"] = {
        "blas_s": rows["jvp"]["blas_s"],
        "torch_s": statistics.median(elementwise),
        "torch_over_blas": statistics.median(elementwise) / rows["jvp"]["blas_s"],
    }
    return {"sizes": {"n_train": n_train, "width": width, "input_dim": input_dim}, "repeats": repeats, "rows": rows}


def report(result: dict[str, Any]) -> str:
    sizes = result["sizes"]
    lines = [
        "# The model's products through numpy's BLAS against torch's (one torch thread)",
        "",
        f"N = {sizes['n_train']}, M = {sizes['width']}, d = {sizes['input_dim']}, float64, random state; "
        f"{result['machine']}, torch {result['torch']}, gnflow {result['git_commit']}, {result['date']}; "
        f"load average before {result['load_average_before'][0]:.2f}, after {result['load_average_after'][0]:.2f}. "
        f"Process CPU seconds, median of {result['repeats']} interleaved repeats.",
        "",
        "| | numpy's BLAS (ms) | torch only (ms) | torch / BLAS |",
        "|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        lines.append(
            f"| {name} | {row['blas_s'] * 1e3:.1f} | {row['torch_s'] * 1e3:.1f} | {row['torch_over_blas']:.2f} |"
        )
    lines += [
        "",
        "`jvp (elementwise)` is the earlier form of J delta (a (sample, particle) temporary), against the "
        "BLAS form; `torch only` computes the current forms in torch (`gnflow._blas.torch_only`).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=500)
    parser.add_argument("--width", type=int, default=5000)
    parser.add_argument("--input-dim", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    result = measure(args.n_train, args.width, args.input_dim, args.repeats)
    result.update(
        load_average_before=list(load_before), load_average_after=list(os.getloadavg()), **measurement_provenance()
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    args.output.with_suffix(".md").write_text(report(result))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
