"""Performance of the Gauss--Newton field: gnflow against a full-Jacobian baseline and the roofline.

For every (N, M) of ``performance.toml`` one teacher--student state (d = 10, float64) is built and
timed, interleaved in the same process:

- ``gn``: gnflow's Gauss--Newton field with eigmin damping (warm-started, as inside a solve);
- ``gn_eigh``: the same field with lambda_min from a full eigendecomposition (the structured Gram
  matrix without the Lanczos path);
- ``baseline``: what a careful user would write: per-sample Jacobian by ``torch.func``
  (vmap of jacrev), A = J J^T, eigendecomposition, field -J^T U diag(1/(lambda + eps)) U^T g;
- ``roofline``: the two N x M x N products T T^T and S S^T (as general products) plus one Cholesky
  factorization of an N x N matrix: what no exact Gauss--Newton field can avoid;
- ``gd``: the gradient field.

Then the paper-size Gauss--Newton run (N = 500, M = 5000, tau0 = 1, to 1e-8 x the initial train
loss) is integrated by :func:`gnflow.run.simulate` and checked against the eigmin law, and a large
run (N = 2000, M = 20000) is integrated in a subprocess whose peak resident memory is reported.
The table is a NetCDF file; a figure shows the times.

Usage (from the repository root)::

    python studies/performance/performance.py --scale full
    python studies/performance/performance.py --scale smoke -o /tmp/perf
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
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

import gnflow
from gnflow.config import ConfigError, RunConfig, apply_overrides, config_from_dict, config_to_json
from gnflow.damping import EigminDamping, solve_damped
from gnflow.dataset import atomic_write_json, cf_attributes, write_dataset
from gnflow.experiment import build_experiment
from gnflow.flows import GaussNewtonFlow, GradientFlow
from gnflow.model import ParticleModel
from gnflow.simulation import simulate

logger = logging.getLogger("performance")

HERE = Path(__file__).resolve().parent
METHODS = ("gn", "gn_eigh", "baseline", "roofline", "gd")
EPS0 = 1e-7


@dataclass(frozen=True)
class Benchmark:
    """The ``[benchmark]`` table of the study config, after the scale's overrides."""

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


def load_study(path: Path, scale: str) -> tuple[Benchmark, RunConfig, RunConfig]:
    """Benchmark settings, paper-run config and large-run config of ``scale`` in ``path``."""
    values = tomllib.loads(path.read_text())
    scales = values.get("scales", {})
    if scale not in scales:
        raise ConfigError(f"--scale {scale!r}: unknown; allowed: {', '.join(scales)}")
    chosen = dict(scales[scale])
    paper = config_from_dict(apply_overrides(values["paper_run"], chosen.pop("paper_run", [])))
    large = config_from_dict(apply_overrides(values["large_run"], chosen.pop("large_run", [])))
    bench = {**values["benchmark"], **chosen}
    bench["sizes_n"] = tuple(int(n) for n in bench["sizes_n"])
    bench["sizes_m"] = tuple(int(m) for m in bench["sizes_m"])
    return Benchmark(**bench), paper, large


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
    """Seconds of T T^T + S S^T (general products) and of one Cholesky factorization."""
    _synchronize(t.device)
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
        raise ValueError(f"--large-from {path}: written for another large_run config than this scale's")
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
        "roofline": "two N x M x N Gram products plus one Cholesky factorization",
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
        f"studies/performance/performance.py --scale {scale}",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full", help="scale in performance.toml: full or smoke")
    parser.add_argument("--config", type=Path, default=HERE / "performance.toml")
    parser.add_argument("-o", "--output", type=Path, default=Path("data/studies/performance"))
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
    try:
        bench, paper_config, large_config = load_study(args.config, args.scale)
        reused = _load_large_result(args.large_from, large_config) if args.large_from else None
    except (ConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_threads = bench.run_threads or torch.get_num_threads()
    if args.large_only:
        large = large_run(large_config, run_threads)
        logger.info("large run: %s", large)
        path = _write_large_result(args.output / f"large_run_{args.scale}.json", large, large_config)
        logger.info("wrote %s", path)
        return 0
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
    if args.skip_large:
        large = {
            "wall_s": float("nan"),
            "status": "not run",
            "nfe": -1,
            "loss_ratio": float("nan"),
            "maxrss_kib": float("nan"),
        }
    elif reused is not None:
        large = reused
    else:
        large = large_run(large_config, run_threads)
        logger.info("large run: %s", large)
    ds = study_dataset(
        bench,
        rows,
        paper,
        paper_wall,
        paper_config,
        large,
        large_config,
        args.scale,
        (load_start, os.getloadavg()[0]),
    )
    table = write_dataset(ds, args.output / f"performance_{args.scale}.nc")
    figure = plot_study(ds, args.output / f"performance_{args.scale}.png")
    logger.info("wrote %s and %s", table, figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
