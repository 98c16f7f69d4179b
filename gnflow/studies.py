"""Studies: scripted reproductions and benchmarks, their scale files, the runner and the report.

A *study* is a folder ``studies/<name>/`` holding ``<name>.py`` (the script), ``<name>.toml``
(its scale file) and ``README.md``. (A *sweep grid*, :mod:`gnflow.grid`, is something else: the
grid of runs that ``gnflow sweep`` and :func:`run_grid` execute; a study may run several.) The
script defines ``run(settings, context) -> StudyReport``: it executes its runs (through the sweep
engine, :func:`run_grid`, where they are runs of a grid), measures, draws its figures into
``context.out_dir`` and returns its claims and measurements. :func:`run_study` writes
``report.md`` (:mod:`gnflow.report`: claims, verdicts, the report file; re-exported here), and a
comparative claim is decided by :func:`gnflow.verdicts.paired_comparison`. Every study runs by
``gnflow study NAME --scale S``; a script may also keep a
``main()`` for ``python studies/NAME/NAME.py`` that calls :func:`run_study` with options.

The scale file has one table per scale and an optional ``[defaults]`` table merged under each of
them (tables merged key by key, other values replaced)::

    [defaults]              # shared by every scale
    seed = 1
    run.solver.t_end = 1e4  # a nested table: merged key by key
    [smoke]                 # required: tiny, for continuous integration (seconds to two minutes)
    run.solver.t_end = 100.0
    [small]                 # further scales: any name

Every table other than ``[defaults]`` is a scale, in the order of the file: reproductions have
``smoke``, ``small`` (a laptop CPU in under an hour) and ``paper`` (the published setting); a
benchmark declares the scales it measures (performance: ``smoke``, ``full``, ``gpu``,
``gpu_float32``). The key ``threads`` (optional) sets torch's CPU thread count while the study
runs. A study is a *reproduction* (its report states each claim of a paper, the numbers measured
for it and a verdict) or a *benchmark* (:data:`BENCHMARKS`: its report holds measured tables and
may state no claim).

The folder is looked up in the installed package first (``gnflow/_studies/``, which the wheel
ships), then in the source checkout holding the package (``studies/``).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import logging
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from gnflow.dataset import dataset_result, read_dataset
from gnflow.report import (
    VERDICTS,
    Claim,
    StudyError,
    StudyReport,
    Verdict,
    claims_table,
    table,
    write_report,
)

__all__ = [
    "BENCHMARKS",
    "SCALES",
    "STUDIES",
    "VERDICTS",
    "Claim",
    "GridRun",
    "StudyContext",
    "StudyError",
    "StudyReport",
    "Verdict",
    "claims_table",
    "load_study_settings",
    "map_in_workers",
    "run_grid",
    "run_study",
    "source_commit",
    "study_folder",
    "study_module",
    "study_scales",
    "table",
    "time_to_level",
    "write_report",
]

logger = logging.getLogger(__name__)

#: The scales of a reproduction study (a benchmark declares its own; every study has ``smoke``).
SCALES: tuple[str, ...] = ("smoke", "small", "paper")
DEFAULTS_TABLE = "defaults"
PACKAGED_STUDIES = "_studies"  # the studies folder inside the installed package

#: Study name -> one-line description. The folder is ``studies/<name>/``.
STUDIES: dict[str, str] = {
    "arbel2023": "Arbel, Menegaux, Wolinski (2023): GN vs GD across tau0 and N; hidden learning of slowed GN",
    "cai2019": "Cai et al. (2019): quadratic convergence of full-batch GGN; mini-batch GGN vs SGD and Adam",
    "ggn_vs_sgd": "Cai et al. (2019) on real data: mini-batch GGN vs SGD with momentum and Adam, per epoch and time",
    "long_horizon": "Benchmark: long gradient flows, the kernel-exponential integrator against dopri5",
    "mean_field_limit": "Convergence of GN and GD trajectories and particle measures as the width M grows",
    "performance": "Benchmark: the Gauss-Newton field against a full-Jacobian baseline and the roofline",
}
#: The studies that are benchmarks: their reports hold measured tables and may state no claim.
BENCHMARKS: tuple[str, ...] = ("long_horizon", "performance")


@dataclass(frozen=True)
class StudyContext:
    """Where and how a study runs.

    Attributes
    ----------
    name, scale:
        The study and its scale.
    out_dir:
        Output folder: figures and ``report.md`` at the top, sweeps in sub-folders.
    executor:
        Sweep executor: ``"serial"`` (in this process), ``"dask"`` or ``"auto"``.
    workers:
        Worker processes of a local dask cluster (None: the sweep engine's default).
    progress:
        Progress bars on stderr: True, False or None (when stderr is a terminal).
    options:
        Options of this invocation that are not part of the scale (a script's command-line
        flags, e.g. long_horizon's ``method``); the study names the ones it takes.
    threads:
        The scale's ``threads`` (torch CPU threads while the study runs), None when unset.
    """

    name: str
    scale: str
    out_dir: Path
    executor: str = "serial"
    workers: int | None = None
    progress: bool | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    threads: int | None = None


def _study_roots(package_dir: Path) -> tuple[Path, Path]:
    """Where studies are looked for: the installed package's data, then the source checkout."""
    return package_dir / PACKAGED_STUDIES, package_dir.parent / "studies"


def study_folder(name: str, *, package_dir: str | Path | None = None) -> Path:
    """The folder of study ``name``: ``gnflow/_studies/<name>/`` of an installed wheel, else
    ``studies/<name>/`` of the source checkout holding the package.

    Parameters
    ----------
    name:
        A key of :data:`STUDIES`.
    package_dir:
        The ``gnflow`` package folder to look from (default: the imported package's).
    """
    if name not in STUDIES:
        raise StudyError(f"unknown study {name!r}; allowed: {', '.join(STUDIES)}")
    if package_dir is None:
        package_dir = Path(str(importlib.resources.files("gnflow")))
    roots = _study_roots(Path(package_dir))
    for root in roots:
        if (root / name / f"{name}.py").is_file():
            return root / name
    raise StudyError(
        f"study {name!r}: no {name}/{name}.py in {roots[0]} (an installed wheel ships it there) or {roots[1]} "
        "(a source checkout); install gnflow from a wheel or run from a gnflow source checkout"
    )


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: tables merged key by key, every other value replaced."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _scale_tables(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The ``[defaults]`` table and the scale tables of a scale file, in the file's order."""
    try:
        tables = tomllib.loads(path.read_text())
    except OSError as exc:
        raise StudyError(f"scale file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: invalid TOML: {exc}") from None
    loose = [key for key, value in tables.items() if not isinstance(value, dict)]
    if loose:
        raise StudyError(f"{path}: top-level key {loose[0]!r}: settings go in [{DEFAULTS_TABLE}] or a scale table")
    defaults = tables.pop(DEFAULTS_TABLE, {})
    if "smoke" not in tables:
        raise StudyError(f"{path}: no [smoke] table; every study has a smoke scale")
    return defaults, tables


def _scale_file(name: str, path: str | Path | None) -> Path:
    return Path(path) if path is not None else study_folder(name) / f"{name}.toml"


def study_scales(name: str, *, path: str | Path | None = None) -> tuple[str, ...]:
    """The scales of study ``name``, in the order of its scale file (``path``: another scale file)."""
    return tuple(_scale_tables(_scale_file(name, path))[1])


def load_study_settings(name: str, scale: str, *, path: str | Path | None = None) -> dict[str, Any]:
    """The settings of ``scale``: its table of ``studies/<name>/<name>.toml`` over ``[defaults]``.

    Parameters
    ----------
    name:
        A key of :data:`STUDIES`.
    scale:
        A scale table of the file.
    path:
        Another scale file of the same format (e.g. a script's ``--config``).
    """
    file = _scale_file(name, path)
    defaults, scales = _scale_tables(file)
    if scale not in scales:
        raise StudyError(f"study {name}: unknown scale {scale!r}; allowed: {', '.join(scales)}")
    return _merge(defaults, scales[scale])


def study_module(name: str) -> Any:
    """The imported script ``<name>.py`` of study ``name`` (imported once per process)."""
    module_name = f"gnflow_study_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = study_folder(name) / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - importlib failure
        raise StudyError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses of the script look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    if not callable(getattr(module, "run", None)):
        del sys.modules[module_name]
        raise StudyError(f"{path} defines no run(settings, context) function")
    return module


def _call_in_study(study: str, module: str, function: str, threads: int, item: Any) -> Any:
    """Run ``module.function(item)`` of study ``study`` in a worker process with ``threads`` torch
    threads (imports the study first, which registers its sibling modules)."""
    import torch

    torch.set_num_threads(threads)
    study_module(study)
    return getattr(sys.modules[module], function)(item)


def map_in_workers(context: StudyContext, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[function(item) for item in items]``, on the study's worker processes when it has several.

    For the work of a study that is not a run (measurements over finished runs): with a serial
    executor, one worker, or at most one item it runs in this process; otherwise on
    ``context.workers`` spawned processes (one per CPU core when None), each with the scale's torch
    threads, or the cores shared out among the workers when the scale sets none. ``function`` is a
    top-level function of the study's script or of one of its sibling modules, and ``items`` and the
    results must pickle. The first exception raised by a call is raised here.
    """
    n_workers = context.workers if context.workers is not None else (os.cpu_count() or 1)
    if context.executor == "serial" or n_workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    n_workers = min(n_workers, len(items))
    threads = context.threads or max(1, (os.cpu_count() or 1) // n_workers)
    logger.info("%s: %d items on %d worker processes", function.__name__, len(items), n_workers)
    from concurrent.futures import ProcessPoolExecutor

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=spawn) as pool:
        futures = [
            pool.submit(_call_in_study, context.name, function.__module__, function.__name__, threads, item)
            for item in items
        ]
        return [f.result() for f in futures]


def run_study(
    name: str,
    scale: str = "smoke",
    out_dir: str | Path | None = None,
    *,
    executor: str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    options: Mapping[str, Any] | None = None,
    settings_path: str | Path | None = None,
) -> Path:
    """Run study ``name`` at ``scale`` and write its figures and ``report.md`` into ``out_dir``.

    Parameters
    ----------
    name:
        A key of :data:`STUDIES`.
    scale:
        A scale of the study's scale file (:func:`study_scales`).
    out_dir:
        Output folder (default ``data/studies/<name>/<scale>``).
    executor:
        Sweep executor; default ``"serial"``, and ``"auto"`` (dask when installed) for ``paper``.
    workers, progress:
        Passed to the sweep engine.
    options:
        Options of this invocation for the study (:attr:`StudyContext.options`).
    settings_path:
        Another scale file to read the settings from (default: the study's own).

    Returns
    -------
    Path
        The report written.
    """
    settings = load_study_settings(name, scale, path=settings_path)
    threads = settings.pop("threads", None)
    module = study_module(name)
    out = Path(out_dir) if out_dir is not None else Path("data/studies") / name / scale
    out.mkdir(parents=True, exist_ok=True)
    context = StudyContext(
        name=name,
        scale=scale,
        out_dir=out,
        executor=executor or ("auto" if scale == "paper" else "serial"),
        workers=workers,
        progress=progress,
        options=dict(options or {}),
        threads=None if threads is None else int(threads),
    )
    import torch

    previous_threads = torch.get_num_threads()
    if threads is not None:
        # runs in this process (serial executor): the thread count of the scale, since
        # oversubscribed BLAS threads on a busy machine cost more than they give
        torch.set_num_threads(int(threads))
    start = time.perf_counter()
    try:
        report: StudyReport = module.run(settings, context)
    finally:
        torch.set_num_threads(previous_threads)
    wall = time.perf_counter() - start
    logger.info("study %s (%s) took %.1f s", name, scale, wall)
    return write_report(out / "report.md", report, name=name, scale=scale, wall_time_s=wall, options=context.options)


# --- running grids through the sweep engine ---------------------------------------------------


@dataclass(frozen=True)
class GridRun:
    """One finished run of :func:`run_grid`: its label, varied values and trajectory dataset."""

    label: str | None
    values: Mapping[str, Any]
    path: Path
    dataset: xr.Dataset

    def value(self, key: str) -> Any:
        """The run's value of a varied key (``"model.init_scale"``, ``"seed"``)."""
        return self.values[key]


def run_grid(
    context: StudyContext,
    name: str,
    base: Mapping[str, Any],
    *,
    grid: Mapping[str, Sequence[Any]] | None = None,
    runs: Sequence[Mapping[str, Any]] | None = None,
) -> list[GridRun]:
    """Execute a grid of runs with :func:`gnflow.sweep.run_sweep` into ``out_dir/<name>``.

    ``base``, ``grid`` and ``runs`` are the ``[base]``, ``[grid]`` and ``[[runs]]`` tables of a
    sweep grid file (:mod:`gnflow.grid`). Runs with a valid file there are not computed again, so an interrupted
    study continues where it stopped.

    Returns
    -------
    list of GridRun
        Every run of the grid with its dataset read back.

    Raises
    ------
    StudyError
        When some run wrote no file (it raised). Runs whose integration failed (too many steps,
        step-size underflow) are returned with their partial trajectory and status.
    """
    from gnflow.grid import check_name, grid_from_dict
    from gnflow.sweep import run_sweep

    check_name(name, "run_grid: name")  # the grid's folder under the study's output folder
    definition: dict[str, Any] = {"sweep": {"name": f"{context.name}-{name}"}, "base": dict(base)}
    if grid:
        definition["grid"] = {k: list(v) for k, v in grid.items()}
    if runs:
        definition["runs"] = [dict(r) for r in runs]
    sweep_grid = grid_from_dict(definition, name=f"{context.name}-{name}")
    folder = context.out_dir / name
    kwargs: dict[str, Any] = {"executor": context.executor, "progress": context.progress}
    if context.executor != "serial":
        kwargs["workers"] = context.workers
    result = run_sweep(sweep_grid, folder, **kwargs)
    finished: list[GridRun] = []
    for run in sweep_grid.runs:
        values = dict(run.values)
        label = sweep_grid.labels[run.index[0]] if sweep_grid.labels is not None else None
        path = folder / "runs" / f"{run.run_id}.nc"
        if not path.is_file():
            outcome = result.outcomes.get(run.run_id, {})
            raise StudyError(
                f"run {run.run_id} of {name} wrote no file: {outcome.get('status', 'unknown')} "
                f"(see {result.manifest_path})"
            )
        dataset = read_dataset(path)
        status = dataset_result(dataset)
        if status.failed:
            # a run that ran out of steps or horizon is a measurement too (e.g. a slow gradient
            # flow); the study reports its status and where it stopped
            logger.warning(
                "run %s of %s (%s): %s at t = %.6g",
                run.run_id,
                name,
                label or values,
                status,
                float(dataset["t"].values[-1]),
            )
        finished.append(GridRun(label=label, values=values, path=path, dataset=dataset))
    return finished


def select(runs: Sequence[GridRun], label: str | None = None, **values: Any) -> list[GridRun]:
    """The runs with ``label`` whose varied values match ``values`` (keys with ``__`` for ``.``)."""
    wanted = {k.replace("__", "."): v for k, v in values.items()}
    return [
        r for r in runs if (label is None or r.label == label) and all(r.values.get(k) == v for k, v in wanted.items())
    ]


# --- measurements shared by the studies ---------------------------------------------------------


def time_to_level(t: np.ndarray, loss: np.ndarray, level: float) -> float:
    """First flow time at which ``loss`` reaches ``level`` (log-linear interpolation between saved
    times); ``inf`` when it never does.

    Parameters
    ----------
    t:
        Saved flow times, shape (t,), increasing.
    loss:
        Loss at those times, shape (t,), positive.
    level:
        The loss level.
    """
    t = np.asarray(t, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    below = np.nonzero(np.isfinite(loss) & (loss <= level))[0]
    if below.size == 0:
        return float("inf")
    k = int(below[0])
    if k == 0:
        return float(t[0])
    l0, l1 = np.log(loss[k - 1]), np.log(loss[k])
    frac = (l0 - np.log(level)) / (l0 - l1) if l0 != l1 else 1.0
    return float(t[k - 1] + frac * (t[k] - t[k - 1]))


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (NaN with fewer than two positive points)."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = (xa > 0) & (ya > 0) & np.isfinite(ya)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(xa[keep]), np.log(ya[keep]), 1)[0])


def fmt(value: float, digits: int = 3) -> str:
    """A number for a report: ``g`` format with ``digits`` significant digits; inf/nan spelled."""
    if value is None or not np.isfinite(value):
        return "not reached" if value == float("inf") else "nan"
    return f"{value:.{digits}g}"


def save_study_figure(fig: Any, context: StudyContext, name: str) -> Path:
    """Save a figure as ``out_dir/<name>.png`` (atomically) and close it."""
    import matplotlib.pyplot as plt

    from gnflow.plot import save_figure

    try:
        return save_figure(fig, context.out_dir / f"{name}.png", dpi=110)
    finally:
        plt.close(fig)


StudyFunction = Callable[[dict[str, Any], StudyContext], StudyReport]


def source_commit() -> str:
    """The git commit of the gnflow source this process runs, for a measurement's provenance.

    The short hash, with ``+`` when ``gnflow/`` has uncommitted changes; ``"not in a git checkout"``
    for an installed copy (or without git).
    """
    package = Path(__file__).parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", ".")
    except OSError:
        return "not in a git checkout"
    return head + ("+" if dirty else "") if head else "not in a git checkout"


def measurement_provenance() -> dict[str, str]:
    """Where and with what a benchmark ran: machine, torch, gnflow's commit (:func:`source_commit`)
    and the UTC date, the keys every performance script records."""
    import torch

    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "git_commit": source_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
