"""Running a sweep grid: every run to its own NetCDF file, on dask.distributed or serially, resumably.

``run_sweep(grid, out_dir)`` writes

- ``out_dir/runs/<run_id>.nc``: the trajectory dataset of each run (``gnflow.run``, atomic);
- ``out_dir/manifest.json``: every run's id, grid values, config, state (done / failed /
  pending), status and error, and which runs each invocation computed (atomic, rewritten after
  every finished run);
- ``out_dir/sweep.nc``: the combined summary dataset (:func:`gnflow.combine.combine_runs`).

A run whose file exists and is valid (it opens, its ``gnflow_status`` is not failed and its
stored config hashes to its id) is not computed again, so a sweep that was killed continues
with the missing runs when started again; a truncated or corrupt file is computed again. A run
that raises is recorded in the manifest and the others go on. On dask, a run whose worker dies
is given to another worker (the scheduler's ``allowed-failures``, plus ``retries`` for errors
outside the run itself). Without dask installed the runs execute one after the other in this
process and give the same files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import os
import socket
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr

from gnflow import __version__
from gnflow._progress import progress_bar
from gnflow.combine import combine_runs, is_failure
from gnflow.config import RunConfig, config_from_json, config_hash, config_to_dict, config_to_json
from gnflow.dataset import atomic_write_json, file_sha256, remove_stale_temporaries, run_config_of, write_dataset
from gnflow.grid import SweepGrid, SweepRun
from gnflow.lock import FolderLock, LockError
from gnflow.status import RunResult

__all__ = [
    "SweepError",
    "SweepResult",
    "dask_available",
    "execute_run",
    "run_file_status",
    "run_sweep",
]

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
DEFAULT_RETRIES = 2

RunTask = Callable[..., dict[str, Any]]


class SweepError(RuntimeError):
    """The sweep cannot start (output folder in use, no cluster, dask missing when required)."""


# --- one run ----------------------------------------------------------------------------------


def run_file_status(path: str | Path, run_id: str) -> tuple[str | None, str]:
    """Whether ``path`` holds a finished run of ``run_id``.

    Returns
    -------
    (status, reason)
        ``status`` is the file's ``gnflow_status`` when the file is valid (it opens, all its
        data read back, its status is not failed and its config hashes to ``run_id``), else
        None; ``reason`` says why not.
    """
    path = Path(path)
    if not path.is_file():
        return None, "no file"
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            ds.load()  # reads every chunk: a damaged file fails here
            attrs = dict(ds.attrs)
            has_losses = "train_loss" in ds and "t" in ds.coords
    except Exception as exc:  # netCDF4/HDF5 raise many types for damaged files
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    status = attrs.get("gnflow_status")
    if not isinstance(status, str) or not has_losses:
        return None, "not a gnflow trajectory file"
    try:
        result = RunResult.parse(status)
    except ValueError as exc:
        return None, str(exc)
    if result.failed:
        return None, status
    try:
        stored = config_hash(run_config_of(ds))
    except (ValueError, TypeError) as exc:
        return None, f"unreadable config ({exc})"
    if stored != run_id:
        return None, f"written by another config (hash {stored})"
    return status, "valid"


def _place_on_worker() -> int | None:
    """Inside a dask worker: one intra-op thread and, with a GPU resource, its CUDA device."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    import torch

    torch.set_num_threads(1)
    resources = getattr(getattr(worker, "state", None), "total_resources", {}) or {}
    if resources.get("GPU") and torch.cuda.is_available():
        name = worker.name
        index = name % torch.cuda.device_count() if isinstance(name, int) else 0
        torch.cuda.set_device(index)
        return index
    return None


def execute_run(config_json: str, path: str) -> dict[str, Any]:
    """Compute one run into ``path`` unless a valid file is there (the task of every executor).

    A checkpoint left beside ``path`` by an earlier attempt is resumed. Exceptions raised by the
    run are returned as ``error`` (not raised), so that they are recorded once and not retried.

    Returns
    -------
    dict
        ``run_id``, ``status`` (``gnflow_status`` or ``"error: ..."``), ``executed`` (False when
        a valid file existed), ``error``, ``wall_time_s``, ``pid``, ``host``, ``device``.
    """
    from gnflow.checkpoint import checkpoint_path
    from gnflow.simulation import run

    config = config_from_json(config_json)
    run_id = config_hash(config)
    outcome: dict[str, Any] = {
        "run_id": run_id,
        "executed": False,
        "error": None,
        "wall_time_s": 0.0,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    status, _ = run_file_status(path, run_id)
    if status is not None:
        return {**outcome, "status": status}
    gpu = _place_on_worker()
    outcome["device"] = f"cuda:{gpu}" if gpu is not None else None
    outcome["executed"] = True
    try:
        ds, _ = run(config, path=path, progress=False, resume=checkpoint_path(path).is_file(), overwrite=True)
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else ""
        error = f"{type(exc).__name__}: {message}".rstrip(": ")
        logger.debug("run %s raised:\n%s", run_id, traceback.format_exc())
        return {**outcome, "status": f"error: {error}", "error": error}
    status = str(ds.attrs["gnflow_status"])
    if RunResult.parse(status).interrupted:
        raise KeyboardInterrupt  # Ctrl-C stops the sweep, not just this run (its checkpoint stays)
    return {
        **outcome,
        "status": status,
        "error": status if RunResult.parse(status).failed else None,
        "wall_time_s": float(ds.attrs["gnflow_wall_time_s"]),
        "device": str(ds.attrs.get("gnflow_device")),
    }


# --- bookkeeping ------------------------------------------------------------------------------


def _write_json_atomic(data: Mapping[str, Any], path: Path) -> None:
    atomic_write_json(path, data)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


@dataclass
class SweepResult:
    """What a sweep did.

    Attributes
    ----------
    out_dir, manifest_path, combined_path:
        The output folder, its ``manifest.json`` and ``sweep.nc``.
    outcomes:
        Run id -> the outcome dictionary of :func:`execute_run` (or the error of a dead worker).
    executed:
        Ids of the runs computed by this invocation (the others had valid files).
    """

    out_dir: Path
    manifest_path: Path
    combined_path: Path
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """Ids of the runs without a valid file."""
        return [rid for rid, o in self.outcomes.items() if _is_failure(o)]


def _is_failure(outcome: Mapping[str, Any]) -> bool:
    return is_failure(str(outcome.get("status", "missing")))


class _Manifest:
    """``manifest.json``: the state of every run, rewritten atomically after each change."""

    def __init__(
        self,
        path: Path,
        grid: SweepGrid,
        runs: Sequence[SweepRun],
        paths: Mapping[str, Path],
        executor: str,
    ) -> None:
        self.path = path
        previous: dict[str, Any] = {}
        if path.is_file():
            try:
                previous = json.loads(path.read_text())
            except (OSError, ValueError):
                logger.warning("%s is unreadable; starting a new manifest", path)
        invocations = previous.get("invocations", []) if isinstance(previous, dict) else []
        entries = previous.get("runs", {}) if isinstance(previous, dict) else {}
        #: run id -> SHA-256 of its file when it finished (verified on restart)
        self.digests = {k: v.get("sha256") for k, v in entries.items() if isinstance(v, dict)} if entries else {}
        self.invocation: dict[str, Any] = {
            "started": _now(),
            "executor": executor,
            "executed": [],
            "finished": None,
        }
        self.data: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "gnflow_version": __version__,
            "study": grid.name,
            "dims": list(grid.dims),
            "grid_keys": grid.keys,
            "invocations": [*invocations, self.invocation],
            "runs": {},
        }
        for run in runs:
            self.data["runs"][run.run_id] = {
                "state": "pending",
                "status": "missing",
                "error": None,
                "path": str(paths[run.run_id].relative_to(path.parent)),
                "grid": dict(run.values),
                "index": list(run.index),
                "label": grid.labels[run.index[0]] if grid.labels is not None else None,
                "config": config_to_dict(run.config),
            }

    def record(self, outcome: Mapping[str, Any]) -> None:
        entry = self.data["runs"][outcome["run_id"]]
        entry["status"] = outcome["status"]
        entry["error"] = outcome.get("error")
        entry["state"] = "failed" if _is_failure(outcome) else "done"
        file = self.path.parent / entry["path"]
        entry["sha256"] = file_sha256(file) if entry["state"] == "done" and file.is_file() else None
        for key in ("wall_time_s", "host", "pid", "device"):
            if outcome.get(key) is not None:
                entry[key] = outcome[key]
        if outcome.get("executed"):
            self.invocation["executed"].append(outcome["run_id"])
        self.write()

    def counts(self) -> dict[str, int]:
        states = [entry["state"] for entry in self.data["runs"].values()]
        return {name: states.count(name) for name in ("done", "failed", "pending")}

    def write(self, *, finished: bool = False) -> None:
        if finished:
            self.invocation["finished"] = _now()
        self.data["summary"] = self.counts()
        self.data["updated"] = _now()
        _write_json_atomic(self.data, self.path)


@contextlib.contextmanager
def _folder_lock(out_dir: Path, *, break_lock: bool) -> Iterator[None]:
    """Refuse a second sweep writing into the same folder at the same time (:mod:`gnflow.lock`)."""
    lock = FolderLock(out_dir / ".sweep.lock", what="gnflow sweep")
    try:
        lock.acquire(break_lock=break_lock)
    except LockError as exc:
        raise SweepError(str(exc)) from None
    try:
        yield
    finally:
        lock.release()


# --- executors --------------------------------------------------------------------------------


def dask_available() -> bool:
    """Whether dask.distributed can be imported."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


class _Progress:
    def __init__(self, total: int, counts: Mapping[str, int], enabled: bool | None) -> None:
        self.bar = progress_bar(total=total, enabled=enabled, desc="sweep", unit="run", file=sys.stderr)
        self.bar.update(total - counts["pending"])
        self.show(counts)

    def show(self, counts: Mapping[str, int]) -> None:
        self.bar.set_postfix_str(f"done={counts['done']}, failed={counts['failed']}, remaining={counts['pending']}")

    def advance(self, counts: Mapping[str, int]) -> None:
        self.bar.update(1)
        self.show(counts)

    def close(self) -> None:
        self.bar.close()


def _run_serial(todo: list[tuple[SweepRun, str]], task: RunTask, finish: Callable[[dict[str, Any]], None]) -> None:
    for run, config_json in todo:
        finish(task(config_json, str(run.config.output.path)))


@contextlib.contextmanager
def _dask_client(workers: int | None, scheduler: str | None, scheduler_file: str | None) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    if scheduler is not None or scheduler_file is not None:
        try:
            client = Client(address=scheduler, scheduler_file=scheduler_file, timeout="30s")
        except (OSError, TimeoutError, ValueError) as exc:
            target = scheduler or f"scheduler file {scheduler_file}"
            raise SweepError(f"cannot connect to the dask scheduler at {target}: {exc}") from None
        with client:
            yield client
        return
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    n_workers = workers if workers is not None else (n_gpus or os.cpu_count() or 1)
    resources = {"GPU": 1} if n_gpus else None
    logger.info(
        "starting a local dask cluster: %d worker processes, 1 thread each%s",
        n_workers,
        f", one CUDA device each ({n_gpus} present)" if n_gpus else "",
    )
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        resources=resources,
    )
    with cluster, Client(cluster) as client:
        yield client


def _run_dask(
    client: Any,
    todo: list[tuple[SweepRun, str]],
    task: RunTask,
    finish: Callable[[dict[str, Any]], None],
    retries: int,
) -> None:
    from distributed import as_completed

    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    uses_gpus = any(w.get("resources", {}).get("GPU") for w in workers.values())
    token = uuid.uuid4().hex[:8]
    futures = {}
    for run, config_json in todo:
        future = client.submit(
            task,
            config_json,
            str(run.config.output.path),
            key=f"gnflow-run-{run.run_id}-{token}",
            pure=False,
            retries=retries,
            resources={"GPU": 1} if uses_gpus else None,
        )
        futures[future] = run.run_id
    try:
        for future in as_completed(futures):
            run_id = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # KilledWorker after repeated worker deaths, lost scheduler
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
                outcome = {
                    "run_id": run_id,
                    "status": f"error: {error}",
                    "error": error,
                    "executed": True,
                }
            finish(outcome)
    finally:
        client.cancel(list(futures))


# --- the sweep --------------------------------------------------------------------------------


def run_sweep(
    grid: SweepGrid,
    out_dir: str | Path,
    *,
    executor: str = "auto",
    workers: int | None = None,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    client: Any = None,
    retries: int = DEFAULT_RETRIES,
    progress: bool | None = None,
    task: RunTask = execute_run,
    break_lock: bool = False,
) -> SweepResult:
    """Compute the runs of the sweep ``grid`` that have no valid file in ``out_dir`` and combine them.

    Parameters
    ----------
    grid:
        The expanded sweep grid (:func:`gnflow.grid.load_grid`).
    out_dir:
        Output folder; runs go to ``out_dir/runs/<run_id>.nc``.
    executor:
        ``"dask"``, ``"serial"`` (in this process, one run after the other) or ``"auto"`` (dask
        when it is installed, otherwise serial, with a log line saying so).
    workers:
        Worker processes of the local dask cluster (default: one per CUDA device when CUDA is
        present, else one per CPU core).
    scheduler, scheduler_file:
        Address or scheduler file of an existing dask cluster instead of a local one.
    client:
        An existing ``distributed.Client`` (takes precedence over the three above).
    retries:
        dask retries of a task that raised outside the run itself.
    progress:
        tqdm progress on stderr: True, False or None (only when stderr is a terminal).
    task:
        The function computing one run, ``task(config_json, path) -> outcome``; by default
        :func:`execute_run`, which every replacement should call.
    break_lock:
        Take the folder's lock even when another sweep holds it (``gnflow sweep --break-lock``):
        for a lock left by a sweep of another host that is known to be gone. A lock of this host
        whose process is gone is broken without it.

    Returns
    -------
    SweepResult
    """
    if executor not in ("auto", "dask", "serial"):
        raise ValueError(f"executor must be 'auto', 'dask' or 'serial', got {executor!r}")
    wants_cluster = client is not None or scheduler is not None or scheduler_file is not None
    if executor == "serial" and wants_cluster:
        raise SweepError("a scheduler or client was given for a serial sweep")
    if executor != "serial" and not dask_available():
        if executor == "dask" or wants_cluster:
            raise SweepError("dask.distributed is not installed: pip install 'gnflow[dist]'")
        logger.info(
            "dask.distributed is not installed: running the %d runs serially in this process "
            "(pip install 'gnflow[dist]' for parallel runs)",
            len(grid.runs),
        )
        executor = "serial"
    elif executor == "auto":
        executor = "dask"

    out_dir = Path(out_dir).resolve()
    runs_dir = out_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    paths = {run.run_id: runs_dir / f"{run.run_id}.nc" for run in grid.runs}
    runs = [
        SweepRun(run.run_id, _with_output(run.config, paths[run.run_id]), run.index, run.values) for run in grid.runs
    ]
    result = SweepResult(out_dir=out_dir, manifest_path=out_dir / "manifest.json", combined_path=out_dir / "sweep.nc")

    with _folder_lock(out_dir, break_lock=break_lock):
        remove_stale_temporaries(runs_dir)
        manifest = _Manifest(result.manifest_path, grid, runs, paths, executor)
        todo: list[tuple[SweepRun, str]] = []
        for run in runs:
            path = paths[run.run_id]
            status, reason = run_file_status(path, run.run_id)
            if status is not None and manifest.digests.get(run.run_id) not in (None, file_sha256(path)):
                logger.warning("run %s: %s changed since it was written (SHA-256); computing again", run.run_id, path)
                path.replace(path.with_name(f"{path.name}.changed"))
                status, reason = None, "changed"
            if status is not None:
                outcome = {"run_id": run.run_id, "status": status, "executed": False}
                manifest.record(outcome)
                result.outcomes[run.run_id] = outcome
                continue
            if path.exists():
                logger.info("run %s will be computed again: %s is %s", run.run_id, path.name, reason)
            todo.append((run, config_to_json(run.config)))
        manifest.write()
        counts = manifest.counts()
        logger.info(
            "sweep %s: %d runs, %d with valid files, %d to compute (%s)",
            grid.name,
            len(grid.runs),
            counts["done"],
            len(todo),
            executor,
        )
        bar = _Progress(len(grid.runs), counts, progress)

        def finish(outcome: dict[str, Any]) -> None:
            result.outcomes[outcome["run_id"]] = outcome
            if outcome.get("executed"):
                result.executed.append(outcome["run_id"])
            manifest.record(outcome)
            bar.advance(manifest.counts())
            level = logging.WARNING if _is_failure(outcome) else logging.DEBUG
            logger.log(level, "run %s: %s", outcome["run_id"], outcome["status"])

        try:
            if not todo:
                pass
            elif executor == "serial":
                _run_serial(todo, task, finish)
            elif client is not None:
                _run_dask(client, todo, task, finish, retries)
            else:
                with _dask_client(workers, scheduler, scheduler_file) as own_client:
                    _run_dask(own_client, todo, task, finish, retries)
        finally:
            bar.close()
            manifest.write(finished=True)
        combined = combine_runs(grid, paths, result.outcomes)
        write_dataset(combined, result.combined_path)
    counts = manifest.counts()
    logger.info(
        "sweep %s: %d done, %d failed; wrote %s",
        grid.name,
        counts["done"],
        counts["failed"],
        result.combined_path,
    )
    return result


def _with_output(config: RunConfig, path: Path) -> RunConfig:
    return dataclasses.replace(config, output=dataclasses.replace(config.output, path=str(path)))
