"""Performance of the Gauss--Newton field: gnflow against a full-Jacobian baseline and the roofline.

For every (N, M) of ``performance.toml`` one teacher--student state (d = 10, float64) is built and
timed, interleaved in the same process:

- ``gn``: gnflow's Gauss--Newton field with eigmin damping (warm-started, as inside a solve);
- ``gn_eigh``: the same field with lambda_min from a full eigendecomposition (the structured Gram
  matrix without the Lanczos path);
- ``baseline``: what a careful user would write: per-sample Jacobian by ``torch.func``
  (vmap of jacrev), A = J J^T, eigendecomposition, field -J^T U diag(1/(lambda + eps)) U^T g;
- ``roofline``: the two N x M x N products T T^T and S S^T (symmetric rank-k updates on the CPU in
  float64, general products elsewhere) plus one Cholesky
  factorization of an N x N matrix: what no exact Gauss--Newton field can avoid;
- ``gd``: the gradient field.

Then the paper-size Gauss--Newton run (N = 500, M = 5000, tau0 = 1, to 1e-8 x the initial train
loss) is integrated by :func:`gnflow.run.simulate` and checked against the eigmin law, and a large
run (N = 2000, M = 20000) is integrated in a subprocess whose peak resident memory is reported.
The table is a NetCDF file; a figure shows the times.

Usage::

    gnflow study performance --scale full               # writes data/studies/performance/full/
    python studies/performance/performance.py --scale smoke -o /tmp/perf
    python studies/performance/performance.py --scale full --large-only

The script's flags ``--skip-large``, ``--large-only`` and ``--large-from`` are the study options
``skip_large``, ``large_only`` and ``large_from`` of :func:`run`; every invocation goes through
:func:`gnflow.studies.run_study` and writes ``report.md`` with the measured tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

import gnflow
from gnflow.config import ConfigError, RunConfig, config_from_dict, config_to_json
from gnflow.damping import EigminDamping, solve_damped
from gnflow.dataset import atomic_write_json, cf_attributes, write_dataset
from gnflow.experiment import build_experiment
from gnflow.flows import GaussNewtonFlow, GradientFlow
from gnflow.model import ParticleModel
from gnflow.simulation import simulate
from gnflow.studies import StudyContext, StudyError, StudyReport, fmt, run_study, table

logger = logging.getLogger("performance")

METHODS = ("gn", "gn_eigh", "baseline", "roofline", "gd")
EPS0 = 1e-7
# torch's thread count of the process before a scale's `threads` applies: `run_threads = 0`
PROCESS_THREADS = torch.get_num_threads()


@dataclass(frozen=True)
class Benchmark:
    """The top-level keys of a scale of ``performance.toml``."""

    sizes_n: tuple[int, ...]
    sizes_m: tuple[int, ...]
    input_dim: int
    dtype: str
    repeats: int
    baseline_repeats: int
    threads: int
    seed: int
    run_threads: int = 0  # torch threads of the whole runs; 0 = torch's default (all cores)
    device: str = "cpu"  # device of the timed evaluations ("cuda": timed between device synchronisations)


def benchmark_of(settings: Mapping[str, Any]) -> tuple[Benchmark, RunConfig, RunConfig]:
    """Benchmark settings, paper-run config and large-run config of a scale's settings."""
    chosen = dict(settings)
    paper = config_from_dict(chosen.pop("paper_run"))
    large = config_from_dict(chosen.pop("large_run"))
    chosen["sizes_n"] = tuple(int(n) for n in chosen["sizes_n"])
    chosen["sizes_m"] = tuple(int(m) for m in chosen["sizes_m"])
    return Benchmark(**chosen), paper, large


# --- one state and its fields ------------------------------------------------------------------


def benchmark_state(bench: Benchmark, n: int, m: int) -> tuple[ParticleModel, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A teacher--student state with non-zero output weights (so that T T^T does not vanish)."""
    config = config_from_dict(
        {
            "seed": bench.seed,
            "device": bench.device,
            "dtype": bench.dtype,
            "data": {"n_train": n, "n_test": 0, "input_dim": bench.input_dim},
            "model": {"width": m, "output_init": "normal"},
        }
    )
    experiment = build_experiment(config)
    return experiment.model, experiment.flow.x, experiment.flow.y, experiment.weights0


def baseline_field(model: ParticleModel, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """-J^T (A + eps I)^{-1} g with J the explicit per-sample Jacobian and A's eigendecomposition."""
    m, c = weights.shape

    def output(w: torch.Tensor, x_n: torch.Tensor) -> torch.Tensor:
        return model.predict(w, x_n[None])[0]

    jac = torch.func.vmap(torch.func.jacrev(output), in_dims=(None, 0))(weights, x).reshape(x.shape[0], m * c)
    residual = model.predict(weights, x) - y
    gram = jac @ jac.T
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    eps = torch.clamp(eigenvalues[0], min=EPS0)
    z = eigenvectors @ ((eigenvectors.T @ (residual / x.shape[0])) / (eigenvalues + eps))
    return -(jac.T @ z).reshape(m, c)


def gn_eigh_field(flow: GaussNewtonFlow, weights: torch.Tensor) -> torch.Tensor:
    """The Gauss--Newton field with lambda_min from ``eigvalsh`` (no Lanczos, no warm start)."""
    lin = flow.model.linearize(weights, flow.x)
    gram = lin.gram()
    g = (lin.predict() - flow.y).double() / flow.n_samples
    return -lin.vjp(solve_damped(gram, g, flow.damping.epsilon(gram)))


def roofline(s: torch.Tensor, t: torch.Tensor, gram: torch.Tensor) -> tuple[float, float]:
    """Seconds of T T^T + S S^T and of one Cholesky factorization.

    On the CPU in float64 the products are symmetric rank-k updates (numpy's ``a @ a.T``, a BLAS
    ``dsyrk`` of N^2 M multiply-adds, as gnflow's Gram computes them at one thread), timed with the
    BLAS at torch's thread count; elsewhere general products (2 N^2 M).
    """
    _synchronize(t.device)
    if t.device.type == "cpu" and t.dtype == torch.float64:
        from threadpoolctl import threadpool_limits

        t_np, s_np = t.contiguous().numpy(), s.contiguous().numpy()
        with threadpool_limits(torch.get_num_threads(), user_api="blas"):
            start = time.perf_counter()
            hidden = t_np @ t_np.T
            output = s_np @ s_np.T
            products = time.perf_counter() - start
    else:
        start = time.perf_counter()
        hidden = t @ t.T
        output = s @ s.T
        _synchronize(t.device)
        products = time.perf_counter() - start
    del hidden, output
    damped = gram + EPS0 * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    _synchronize(gram.device)
    start = time.perf_counter()
    torch.linalg.cholesky(damped)
    _synchronize(gram.device)
    return products, time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU), so that wall times are whole."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(function: Any, *args: Any) -> tuple[float, Any]:
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    _synchronize(device)
    start = time.perf_counter()
    out = function(*args)
    _synchronize(device)
    return time.perf_counter() - start, out


def time_size(bench: Benchmark, n: int, m: int) -> dict[str, float]:
    """Median seconds per evaluation of every method at one (N, M), interleaved."""
    model, x, y, w = benchmark_state(bench, n, m)
    gn = GaussNewtonFlow(model, x, y, EigminDamping(EPS0))
    gd = GradientFlow(model, x, y)
    t0 = torch.tensor(0.0, dtype=torch.float64, device=w.device)
    reference = gn(t0, w)  # also the warm start of the timed calls, as inside a solve
    gen = torch.Generator().manual_seed(bench.seed)
    times: dict[str, list[float]] = {k: [] for k in ("gn", "gn_eigh", "baseline", "products", "cholesky", "gd")}
    difference = float("nan")
    steps_before = (gn.solver.stats.lanczos_steps, gn.solver.stats.cg_steps, gn.solver.stats.calls)
    for rep in range(bench.repeats):
        # a nearby state, as the stages of one solver step are
        state = w + 1e-4 * torch.randn(w.shape, generator=gen, dtype=w.dtype).to(w.device) * w.abs().mean()
        elapsed, _ = _timed(gn, t0, state)
        times["gn"].append(elapsed)
        elapsed, _ = _timed(gn_eigh_field, gn, state)
        times["gn_eigh"].append(elapsed)
        elapsed, _ = _timed(gd, t0, state)
        times["gd"].append(elapsed)
        lin = model.linearize(state, x)
        s, t = lin.s.double(), lin.t.double()
        products, cholesky = roofline(s, t, lin.gram())
        times["products"].append(products)
        times["cholesky"].append(cholesky)
        del lin, s, t
        if rep < bench.baseline_repeats:
            elapsed, field = _timed(baseline_field, model, x, y, w)
            times["baseline"].append(elapsed)
            difference = float((field - reference).abs().max() / reference.abs().max())
            del field
    stats = gn.solver.stats
    calls = stats.calls - steps_before[2]
    row = {k: float(np.median(v)) for k, v in times.items()}
    # median of per-repeat sums: products and Cholesky of one repeat belong together
    row["roofline"] = float(np.median(np.add(times["products"], times["cholesky"])))
    row["lanczos_steps"] = (stats.lanczos_steps - steps_before[0]) / calls
    row["cg_steps"] = (stats.cg_steps - steps_before[1]) / calls
    row["baseline_difference"] = difference
    logger.info(
        "N=%d M=%d: gn %.3f s, roofline %.3f s (x%.2f), baseline %.3f s (gn %.1fx faster), gd %.3f s",
        n,
        m,
        row["gn"],
        row["roofline"],
        row["gn"] / row["roofline"],
        row["baseline"],
        row["baseline"] / row["gn"],
        row["gd"],
    )
    return row


# --- whole runs --------------------------------------------------------------------------------


def paper_run(config: RunConfig) -> tuple[xr.Dataset, float]:
    """The paper-size Gauss--Newton run and its wall time in seconds (including measurements)."""
    start = time.perf_counter()
    ds = simulate(config, progress=False)
    return ds, time.perf_counter() - start


def eigmin_law_margin(ds: xr.Dataset, eps0: float) -> np.ndarray:
    """min over the two sides of the eigmin law, per saved time (>= 0 where the law holds).

    exp(-t/N) <= ||r(t)|| / ||r(0)|| <= exp(-t/(2N)) while lambda_min(A) >= eps0; on the log scale
    the margins are log(ratio) + t/N and -t/(2N) - log(ratio). NaN where lambda_min < eps0 (the law
    does not apply there).
    """
    n = ds.sizes["sample"]
    t = ds["t"].values
    log_ratio = 0.5 * np.log(ds["train_loss"].values / ds["train_loss"].values[0])
    margin = np.minimum(log_ratio + t / n, -t / (2 * n) - log_ratio)
    return np.where(ds["gram_eigmin"].values >= eps0, margin, np.nan)


_LARGE_RUN = """
import json, resource, sys, time
import torch
from gnflow.config import config_from_json
from gnflow.simulation import simulate
from gnflow.studies import StudyContext, StudyError, StudyReport, fmt, run_study, table
config = config_from_json(sys.stdin.read())
start = time.perf_counter()
ds = simulate(config, progress=False)
wall = time.perf_counter() - start
gpu = torch.cuda.max_memory_allocated() if ds.attrs["gnflow_device"].startswith("cuda") else 0
print(json.dumps({"wall_s": wall, "status": ds.attrs["gnflow_status"], "nfe": int(ds.attrs["gnflow_nfe"]),
                  "loss_ratio": float(ds.train_loss[-1] / ds.train_loss[0]), "t": float(ds.t[-1]),
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "max_gpu_bytes": gpu}))
"""


def large_run(config: RunConfig, threads: int) -> dict[str, Any]:
    """Integrate ``config`` in a fresh interpreter; its wall time, status and peak memory."""
    # the child imports the same gnflow as this process
    package_root = str(Path(gnflow.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=path)
    done = subprocess.run(
        [sys.executable, "-c", _LARGE_RUN],
        input=config_to_json(config),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"large run failed: {done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write_large_result(path: Path, result: dict[str, Any], config: RunConfig) -> Path:
    """The large run's result with its config, written atomically as JSON."""
    return atomic_write_json(path, {"config": json.loads(config_to_json(config)), "result": result})


def _load_large_result(path: Path, config: RunConfig) -> dict[str, Any]:
    """A result written by ``--large-only``; it must be for the same large-run config."""
    stored = json.loads(path.read_text())
    if stored.get("config") != json.loads(config_to_json(config)):
        raise ConfigError(f"--large-from {path}: written for another large_run config than this scale's")
    return stored["result"]


# --- table and figure --------------------------------------------------------------------------


def _var(dims: tuple[str, ...], values: Any, long_name: str, units: str, comment: str = "") -> xr.Variable:
    attrs = {"long_name": long_name, "units": units}
    if comment:
        attrs["comment"] = comment
    return xr.Variable(dims, np.asarray(values), attrs)


def study_dataset(
    bench: Benchmark,
    rows: dict[tuple[int, int], dict[str, float]],
    paper: xr.Dataset,
    paper_wall: float,
    paper_config: RunConfig,
    large: dict[str, Any],
    large_config: RunConfig,
    scale: str,
    load: tuple[float, float],
) -> xr.Dataset:
    dims = ("n_train", "width")
    grid = lambda key: [[rows[n, m][key] for m in bench.sizes_m] for n in bench.sizes_n]  # noqa: E731
    seconds = {
        "gn": "gnflow Gauss-Newton field evaluation (eigmin damping)",
        "gn_eigh": "Gauss-Newton field with lambda_min from a full eigendecomposition",
        "baseline": "full-Jacobian baseline field evaluation (torch.func Jacobian, J J^T, eigh)",
        "roofline": "two N x M x N Gram products (dsyrk on the CPU in float64, general products elsewhere) "
        "plus one Cholesky factorization",
        "products": "two N x M x N Gram products T T^T and S S^T",
        "cholesky": "one Cholesky factorization of an N x N matrix",
        "gd": "gradient field evaluation",
    }
    variables: dict[str, xr.Variable] = {
        f"{key}_time": _var(dims, grid(key), f"median wall time: {text}", "s") for key, text in seconds.items()
    }
    ratio = np.asarray(grid("gn")) / np.asarray(grid("roofline"))
    speedup = np.asarray(grid("baseline")) / np.asarray(grid("gn"))
    margin = eigmin_law_margin(paper, paper_config.flow.epsilon)
    n_paper = paper.sizes["sample"]
    variables.update(
        gn_over_roofline=_var(dims, ratio, "gnflow GN evaluation time / roofline time", "1"),
        speedup_over_baseline=_var(dims, speedup, "full-Jacobian baseline time / gnflow GN evaluation time", "1"),
        lanczos_steps=_var(dims, grid("lanczos_steps"), "Lanczos steps per GN evaluation (warm-started)", "1"),
        cg_steps=_var(dims, grid("cg_steps"), "conjugate-gradient steps per GN evaluation", "1"),
        baseline_difference=_var(
            dims,
            grid("baseline_difference"),
            "max |baseline field - gnflow field| / max |gnflow field|",
            "1",
        ),
        paper_t=_var(("paper_t",), paper["t"].values, "flow time of the paper-size run's saved states", "1"),
        paper_residual_ratio=_var(
            ("paper_t",),
            np.sqrt(paper["train_loss"].values / paper["train_loss"].values[0]),
            "||r(t)|| / ||r(0)|| of the paper-size run",
            "1",
        ),
        paper_law_lower=_var(
            ("paper_t",),
            np.exp(-paper["t"].values / n_paper),
            "eigmin law lower bound exp(-t/N)",
            "1",
        ),
        paper_law_upper=_var(
            ("paper_t",),
            np.exp(-paper["t"].values / (2 * n_paper)),
            "eigmin law upper bound exp(-t/(2N))",
            "1",
        ),
        paper_law_margin=_var(
            ("paper_t",),
            margin,
            "log-scale margin of the eigmin law (>= 0 where it holds)",
            "1",
            "NaN where lambda_min(A) < eps0, where the law does not apply",
        ),
        paper_gram_eigmin=_var(
            ("paper_t",),
            paper["gram_eigmin"].values,
            "smallest Gram eigenvalue of the paper-size run",
            "1",
        ),
    )
    coords = {
        "n_train": _var(("n_train",), np.asarray(bench.sizes_n, dtype=np.int64), "training points N", "1"),
        "width": _var(("width",), np.asarray(bench.sizes_m, dtype=np.int64), "particles M", "1"),
    }
    ds = xr.Dataset(variables, coords=coords)
    applicable = margin[np.isfinite(margin)]
    ds.attrs = cf_attributes(
        "gnflow performance: Gauss-Newton field against a full-Jacobian baseline and the roofline",
        f"gnflow study performance --scale {scale}",
        references="Arbel, Menegaux, Wolinski (2023), arXiv:2302.02904",
        libraries=False,
    )
    ds.attrs |= {
        "gnflow_scale": scale,
        "gnflow_benchmark": json.dumps(bench.__dict__, sort_keys=True),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "device": bench.device
        + (f" ({torch.cuda.get_device_name(bench.device)})" if bench.device.startswith("cuda") else ""),
        "load_average_start": load[0],
        "load_average_end": load[1],
        "input_dim": bench.input_dim,
        "dtype": bench.dtype,
        "paper_run_config": config_to_json(paper_config),
        "paper_run_wall_time_s": paper_wall,
        "paper_run_integration_time_s": float(paper.attrs["gnflow_wall_time_s"]),
        "paper_run_status": paper.attrs["gnflow_status"],
        "paper_run_nfe": int(paper.attrs["gnflow_nfe"]),
        "paper_run_steps": int(paper.attrs["gnflow_steps"]),
        "paper_run_rejected_steps": int(paper.attrs["gnflow_rejected_steps"]),
        "paper_run_final_loss_ratio": float(paper["train_loss"].values[-1] / paper["train_loss"].values[0]),
        "paper_run_eigmin_law_holds": int(bool(np.all(applicable >= -1e-9))),
        "large_run_config": config_to_json(large_config),
        "large_run_status": large["status"],
        "large_run_wall_time_s": large["wall_s"],
        "large_run_nfe": large["nfe"],
        "large_run_final_loss_ratio": large["loss_ratio"],
        "large_run_peak_rss_gib": large["maxrss_kib"] / 2**20,
        "large_run_peak_gpu_gib": large.get("max_gpu_bytes", 0) / 2**30,
        "large_run_dense_activations_gib": large_config.data.n_train
        * large_config.model.width
        * (large_config.data.input_dim + 2)
        * 8
        / 2**30,
    }
    return ds


def plot_study(ds: xr.Dataset, path: Path) -> Path:
    """Times per evaluation against N (one panel per M) and the paper run's residual."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = ds["width"].values
    fig, axes = plt.subplots(1, len(widths) + 1, figsize=(4.2 * (len(widths) + 1), 3.8), constrained_layout=True)
    styles = {"baseline": "s-", "gn_eigh": "^-", "gn": "o-", "roofline": "k--", "gd": "x:"}
    labels = {
        "baseline": "full Jacobian + eigh",
        "gn_eigh": "structured Gram + eigh",
        "gn": "gnflow GN",
        "roofline": "roofline (2 products + Cholesky)",
        "gd": "gradient field",
    }
    for ax, m in zip(axes, widths, strict=False):
        for key, style in styles.items():
            ax.loglog(ds["n_train"], ds[f"{key}_time"].sel(width=m), style, label=labels[key])
        ax.set_title(f"M = {m}, d = {ds.attrs['input_dim']}, {ds.attrs['dtype']}")
        ax.set_xlabel("training points N")
        ax.set_ylabel("seconds per field evaluation")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    ax.semilogy(ds["paper_t"], ds["paper_residual_ratio"], "o-", label="||r(t)|| / ||r(0)||")
    ax.semilogy(ds["paper_t"], ds["paper_law_lower"], "k--", label="exp(-t/N)")
    ax.semilogy(ds["paper_t"], ds["paper_law_upper"], "k:", label="exp(-t/(2N))")
    ax.set_title(f"GN run: {ds.attrs['paper_run_nfe']} evaluations, {ds.attrs['paper_run_wall_time_s']:.1f} s")
    ax.set_xlabel("flow time t")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


OPTIONS = ("skip_large", "large_only", "large_from")
_NOT_RUN = {
    "wall_s": float("nan"),
    "status": "not run",
    "nfe": -1,
    "loss_ratio": float("nan"),
    "maxrss_kib": float("nan"),
}


def run(settings: dict[str, Any], context: StudyContext) -> StudyReport:
    """Time every (N, M), integrate the paper-size and the large run, and write table and figure.

    Options (:attr:`~gnflow.studies.StudyContext.options`, at most one): ``skip_large`` (no large
    run), ``large_only`` (only the large run, its result to ``large_run_<scale>.json``) and
    ``large_from`` (the large run's result from such a file, refused for another config).
    """
    options = {k: v for k, v in context.options.items() if v}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown or len(options) > 1:
        what = f"unknown option {unknown[0]!r}" if unknown else f"options {', '.join(options)} exclude each other"
        raise StudyError(f"performance: {what}; allowed: one of {', '.join(OPTIONS)}")
    threads = context.threads if context.threads is not None else torch.get_num_threads()
    bench, paper_config, large_config = benchmark_of({**settings, "threads": threads})
    reused = _load_large_result(Path(options["large_from"]), large_config) if "large_from" in options else None
    run_threads = bench.run_threads or PROCESS_THREADS
    if options.get("large_only"):
        large = large_run(large_config, run_threads)
        path = _write_large_result(context.out_dir / f"large_run_{context.scale}.json", large, large_config)
        logger.info("large run: %s; wrote %s", large, path)
        return StudyReport(
            title="Performance of the Gauss-Newton field: the large run alone",
            setup=[f"large run {_sizes(large_config)}, {run_threads} torch thread(s); its result: `{path.name}`"],
            claims=[],
            measurements=_large_lines(large, large_config),
        )
    torch.set_num_threads(bench.threads)
    load_start = os.getloadavg()[0]
    rows = {(n, m): time_size(bench, n, m) for n in bench.sizes_n for m in bench.sizes_m}
    torch.set_num_threads(run_threads)
    paper, paper_wall = paper_run(paper_config)
    torch.set_num_threads(bench.threads)
    logger.info(
        "paper-size run: %s, %d evaluations, %.1f s",
        paper.attrs["gnflow_status"],
        paper.attrs["gnflow_nfe"],
        paper_wall,
    )
    if options.get("skip_large"):
        large = dict(_NOT_RUN)
    elif reused is not None:
        large = reused
    else:
        large = large_run(large_config, run_threads)
        logger.info("large run: %s", large)
    load = (load_start, os.getloadavg()[0])
    ds = study_dataset(bench, rows, paper, paper_wall, paper_config, large, large_config, context.scale, load)
    path = write_dataset(ds, context.out_dir / f"performance_{context.scale}.nc")
    figure = plot_study(ds, context.out_dir / f"performance_{context.scale}.png")
    logger.info("wrote %s and %s", path, figure)
    return StudyReport(
        title="Performance of the Gauss-Newton field: gnflow, a full-Jacobian baseline and the roofline",
        setup=[
            f"timed evaluations: N in {list(bench.sizes_n)}, M in {list(bench.sizes_m)}, d = {bench.input_dim}, "
            f"{bench.dtype} on {ds.attrs['device']}, median of {bench.repeats} ({bench.baseline_repeats} for the "
            f"baseline), {bench.threads} torch thread(s)",
            f"paper-size run {_sizes(paper_config)} and large run {_sizes(large_config)}, "
            f"{run_threads} torch thread(s)",
            f"load average {load[0]:.2f} at the start, {load[1]:.2f} at the end; the table: `{path.name}`",
        ],
        claims=[],
        measurements=_measurements(ds, large, large_config),
        figures=[(figure, "seconds per field evaluation against N, per M, and the paper-size run's residual")],
    )


def _sizes(config: RunConfig) -> str:
    return f"(N = {config.data.n_train}, M = {config.model.width}, {config.solver.method}, {config.device})"


def _measurements(ds: xr.Dataset, large: dict[str, Any], large_config: RunConfig) -> list[str]:
    """Seconds per evaluation per (N, M), the paper-size run and the large run, as Markdown."""
    rows = []
    for n in ds["n_train"].values:
        for m in ds["width"].values:
            cell = ds.sel(n_train=n, width=m)
            times = [fmt(float(cell[f"{key}_time"])) for key in METHODS]
            ratios = [fmt(float(cell["gn_over_roofline"])), fmt(float(cell["speedup_over_baseline"]))]
            rows.append([str(n), str(m), *times, *ratios, fmt(float(cell["baseline_difference"]), 2)])
    header = ["N", "M", *[f"{key} s" for key in METHODS], "gn / roofline", "baseline / gn", "baseline difference"]
    a = ds.attrs
    paper = (
        f"Paper-size run: {a['paper_run_status']}, {a['paper_run_nfe']} evaluations, {a['paper_run_steps']} steps "
        f"({a['paper_run_rejected_steps']} rejected), final loss ratio {fmt(a['paper_run_final_loss_ratio'])}, "
        f"{fmt(a['paper_run_wall_time_s'])} s ({fmt(a['paper_run_integration_time_s'])} s integrating); "
        f"eigmin law holds at every saved time where it applies: {'yes' if a['paper_run_eigmin_law_holds'] else 'no'}."
    )
    return [*table(header, rows), "", paper, "", *_large_lines(large, large_config)]


def _large_lines(large: dict[str, Any], config: RunConfig) -> list[str]:
    if large["status"] == "not run":
        return ["Large run: not run."]
    memory = f"peak resident memory {fmt(large['maxrss_kib'] / 2**20)} GiB"
    if large.get("max_gpu_bytes"):
        memory += f", peak GPU memory {fmt(large['max_gpu_bytes'] / 2**30)} GiB"
    return [
        f"Large run (N = {config.data.n_train}, M = {config.model.width}): {large['status']}, {large['nfe']} "
        f"evaluations, final loss ratio {fmt(large['loss_ratio'])}, {fmt(large['wall_s'])} s, {memory}."
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full", help="scale in performance.toml: smoke, full, gpu, gpu_float32")
    parser.add_argument("--config", type=Path, help="another scale file (default: performance.toml of the study)")
    parser.add_argument("-o", "--output", type=Path, help="output folder (default: data/studies/performance/SCALE)")
    large = parser.add_mutually_exclusive_group()
    large.add_argument("--skip-large", action="store_true", help="do not run the large N x M run")
    large.add_argument(
        "--large-only",
        action="store_true",
        help="run only the large run and write its result to large_run_<scale>.json in the output folder",
    )
    large.add_argument("--large-from", type=Path, metavar="JSON", help="take the large run's result from this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    options = {"skip_large": args.skip_large, "large_only": args.large_only, "large_from": args.large_from}
    try:
        report = run_study(
            "performance",
            args.scale,
            args.output,
            options={k: str(v) if isinstance(v, Path) else v for k, v in options.items() if v},
            settings_path=args.config,
        )
    except (StudyError, ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
