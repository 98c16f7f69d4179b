"""Sweeps: sweep grid expansion, dask and serial execution, fault tolerance and the combined dataset."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from gnflow.cli import main
from gnflow.config import ConfigError, config_from_json, config_hash
from gnflow.grid import grid_from_dict, load_grid
from gnflow.lock import process_tag
from gnflow.sweep import SweepError, execute_run, run_file_status, run_sweep

ROOT = Path(__file__).resolve().parents[1]

BASE = """
[base]
device = "cpu"
[base.data]
input_dim = 3
teacher_width = 2
n_train = 12
n_test = 30
[base.model]
width = 15
output_init = "normal"
[base.solver]
t_end = 200.0
n_save = 15
save_decades = 2.0
stop_loss_ratio = 1e-3
"""

# Gauss-Newton runs stop early at different times, gradient-flow runs mostly reach t_end, and
# the third variant raises in every run (its data file does not exist).
STUDY = (
    BASE
    + """
[grid]
"model.init_scale" = [0.5, 2.0]
seed = [1, 2]

[[runs]]
name = "gn"

[[runs]]
name = "gd"
flow.kind = "gradient"
solver.method = "rk4"
solver.step_size = 4.0

[[runs]]
name = "broken"
"data.kind" = "file"
"data.path" = "does-not-exist.npz"
"""
)


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local,
        distributed.Client(local) as client,
    ):
        yield local, client


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- sweep grid files ------------------------------------------------------------------------------


def test_grid_expands_to_the_product_with_stable_ids(tmp_path):
    study = load_grid(_write(tmp_path / "s.toml", STUDY))
    assert study.dims == ("run", "model_init_scale", "seed")
    assert study.shape == (3, 2, 2)
    assert len(study.runs) == 12 and len({r.run_id for r in study.runs}) == 12
    gd = [r for r in study.runs if r.index[0] == 1]
    assert all(r.config.flow.kind == "gradient" and r.config.solver.method == "rk4" for r in gd)
    assert {(r.config.model.init_scale, r.config.seed) for r in gd} == {
        (0.5, 1),
        (0.5, 2),
        (2.0, 1),
        (2.0, 2),
    }
    for run in study.runs:
        assert run.run_id == config_hash(run.config)
    # the id depends on what is computed, not on the order of the grid or of the keys
    reordered = BASE + '[grid]\nseed = [2, 1]\n"model.init_scale" = [2, 0.5]\n'
    other = load_grid(_write(tmp_path / "o.toml", reordered))
    assert {r.run_id for r in other.runs} == {r.run_id for r in study.runs if r.index[0] == 0}


def test_grid_header_is_sweep_or_its_older_name_study(tmp_path):
    import gnflow.study

    base = tmp_path / "base.toml"
    base.write_text("seed = 5\n[data]\nn_train = 12\ninput_dim = 3\n[model]\nwidth = 15\n")
    for header in ("sweep", "study"):
        text = f'[{header}]\nname = "named"\nbase_file = "base.toml"\n[grid]\n"model.init_scale" = [0.5, 2.0]\n'
        grid = load_grid(_write(tmp_path / f"{header}.toml", text))
        assert grid.name == "named" and len(grid.runs) == 2
        assert {r.config.seed for r in grid.runs} == {5}
        # the old names of gnflow.study read the same file to the same runs
        old = gnflow.study.load_study(tmp_path / f"{header}.toml")
        assert isinstance(old, gnflow.study.Study) and old.runs == grid.runs
    with pytest.raises(ConfigError, match=r"\[sweep\] and \[study\] are the same table"):
        grid_from_dict({"sweep": {}, "study": {}}, name="both")
    with pytest.raises(ConfigError, match=r"\[study\]: allowed keys are name and base_file"):
        grid_from_dict({"study": {"nope": 1}}, name="bad")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[grid]\n"model.init_scale" = 0.1\n', "non-empty list"),
        ('[grid]\n"model.init_scale" = []\n', "non-empty list"),
        ('[grid]\n"model.init_scale" = [1, 1.0]\n', "same run"),
        ('[grid]\n"model.nope" = [1, 2]\n', "unknown key 'model.nope'"),
        ('[grid]\n"model.width" = [0, 5]\n', "model.width=0"),
        ('[grid]\n"output.path" = ["a.nc"]\n', "set by the sweep"),
        ("[grid]\nseed = [1, 2]\n[[runs]]\nseed = 3\n", "also a [grid] key"),
        ('[grid]\nseed = [1]\n[[runs]]\nname = "a"\n[[runs]]\nname = "a"\n', "distinct"),
        ("[model]\nwidth = 3\n", "unknown sweep grid table 'model'"),
    ],
)
def test_bad_grid_files_name_the_problem(text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        grid_from_dict(tomllib.loads(BASE + text), name="bad")


# --- running ----------------------------------------------------------------------------------


def _assert_combined_matches_run_files(combined: xr.Dataset, study, out_dir: Path) -> None:
    assert tuple(d for d in combined["train_loss"].dims) == (*study.dims, "t")
    for dim, key in study.keys.items():
        assert list(combined[dim].values) == list(study.grid[key])
    assert list(combined["run"].values) == list(study.labels)
    for run in study.runs:
        cell = combined.isel(dict(zip(study.dims, run.index, strict=True)))
        assert str(cell["run_id"].values) == run.run_id
        path = out_dir / "runs" / f"{run.run_id}.nc"
        if run.config.data.kind == "file":
            assert not path.exists()
            assert str(cell["status"].values).startswith("error: DataError")
            assert np.isnan(cell["train_loss"].values).all()
            continue
        ds = xr.load_dataset(path)
        assert str(cell["status"].values) == ds.attrs["gnflow_status"]
        t = ds["t"].values
        # a converged run's stopping time is off the save grid: it is only in the *_final values
        on_axis = t[:-1] if ds.attrs["gnflow_status"] == "converged" else t
        for name in ("train_loss", "test_loss", "gram_eigmin", "nfe", "n_steps"):
            np.testing.assert_array_equal(cell[name].sel(t=on_axis).values, ds[name].values[: on_axis.size])
            assert float(cell[f"{name}_final"]) == float(ds[name].values[-1])
            after = cell[name].sel(t=slice(on_axis[-1], None)).values[1:]
            assert np.isnan(after).all()  # padded after the run stopped
        assert float(cell["t_final"]) == t[-1]


def test_dask_sweep_combined_dataset_manifest_and_serial_path(tmp_path, cluster):
    _, client = cluster
    study = load_grid(_write(tmp_path / "study.toml", STUDY))
    result = run_sweep(study, tmp_path / "dask", client=client, progress=False)
    assert sorted(result.executed) == sorted(r.run_id for r in study.runs)
    broken = {r.run_id for r in study.runs if r.index[0] == 2}
    assert set(result.failed) == broken  # the raising runs failed, every other one finished

    manifest = json.loads((tmp_path / "dask" / "manifest.json").read_text())
    assert manifest["summary"] == {"done": 8, "failed": 4, "pending": 0}
    for run in study.runs:
        entry = manifest["runs"][run.run_id]
        assert config_hash(config_from_json(json.dumps(entry["config"]))) == run.run_id
        if run.run_id in broken:
            assert entry["state"] == "failed" and "does-not-exist.npz" in entry["error"]
        else:
            assert entry["state"] == "done" and entry["error"] is None
            assert run_file_status(tmp_path / "dask" / entry["path"], run.run_id)[0] == entry["status"]
    pids = {manifest["runs"][r]["pid"] for r in result.executed}
    assert len(pids) >= 1 and os.getpid() not in pids  # computed in the worker processes

    combined = xr.load_dataset(tmp_path / "dask" / "sweep.nc")
    _assert_combined_matches_run_files(combined, study, tmp_path / "dask")
    checker = shutil.which("compliance-checker") or str(Path(sys.executable).parent / "compliance-checker")
    if Path(checker).exists():
        report = subprocess.run(
            [checker, "--test=cf:1.8", str(tmp_path / "dask" / "sweep.nc")],
            capture_output=True,
            text=True,
        )
        assert report.returncode == 0, report.stdout

    serial = run_sweep(study, tmp_path / "serial", executor="serial", progress=False)
    assert sorted(serial.executed) == sorted(result.executed)
    combined_serial = xr.load_dataset(tmp_path / "serial" / "sweep.nc")
    assert set(combined_serial.variables) == set(combined.variables)
    for name in combined.variables:
        if name != "wall_time_s":
            xr.testing.assert_allclose(combined_serial[name], combined[name], rtol=1e-12, atol=0)


def test_existing_scheduler_from_the_command_line(tmp_path, cluster):
    local, _ = cluster
    study_file = _write(tmp_path / "s.toml", BASE + "[grid]\nseed = [7]\n")
    out = tmp_path / "out"
    assert main(["-q", "sweep", str(study_file), "-o", str(out), "--scheduler", local.scheduler_address]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"] == {"done": 1, "failed": 0, "pending": 0}
    assert manifest["invocations"][-1]["executor"] == "dask"


def _die_once(config_json: str, path: str, *, marker: str, victim_seed: int) -> dict:
    """A run task whose first attempt at one run kills its worker process."""
    config = config_from_json(config_json)
    if config.seed == victim_seed and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    return execute_run(config_json, path)


def test_a_dead_worker_does_not_lose_its_run(tmp_path, cluster):
    cloudpickle = pytest.importorskip("cloudpickle")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    _, client = cluster
    study = load_grid(_write(tmp_path / "s.toml", BASE + "[grid]\nseed = [1, 2, 3]\n"))
    marker = tmp_path / "died"
    task = functools.partial(_die_once, marker=str(marker), victim_seed=2)
    result = run_sweep(study, tmp_path / "out", client=client, progress=False, task=task)
    assert marker.exists()  # the worker did die
    assert result.failed == [] and sorted(result.executed) == sorted(r.run_id for r in study.runs)
    victim = next(r.run_id for r in study.runs if r.config.seed == 2)
    assert result.outcomes[victim]["pid"] != int(marker.read_text())  # retried in another process
    for run in study.runs:
        assert run_file_status(tmp_path / "out" / "runs" / f"{run.run_id}.nc", run.run_id)[0] is not None


# --- restarts and fallbacks (no dask needed) ---------------------------------------------------


def test_killed_sweep_restarts_with_only_the_missing_runs(tmp_path):
    study_file = _write(tmp_path / "s.toml", BASE + "[grid]\nseed = [1, 2, 3, 4, 5, 6]\n")
    study = load_grid(study_file)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gnflow",
            "-q",
            "sweep",
            str(study_file),
            "-o",
            str(out),
            "--workers",
            "0",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "runs").glob("*.nc"))) < 2:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the sweep wrote no runs"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    ids = [r.run_id for r in study.runs]
    done = {i for i in ids if run_file_status(out / "runs" / f"{i}.nc", i)[0] is not None}
    assert 2 <= len(done) < len(ids), "the sweep was not killed midway"
    assert (out / ".sweep.lock").exists()  # left behind by the killed process

    # damage one finished file: it must be detected and computed again
    damaged = sorted(done)[0]
    path = out / "runs" / f"{damaged}.nc"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    # a temporary file of the killed process (its host and pid are in the name: provably stale)
    (out / "runs" / f".{damaged}.nc.{process_tag().split('-')[0]}-{process.pid}.abcdefgh.tmp").write_bytes(b"half")
    done.discard(damaged)

    result = run_sweep(study, out, executor="serial", progress=False)
    assert sorted(result.executed) == sorted(set(ids) - done)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["invocations"][-1]["executed"]) == sorted(set(ids) - done)
    assert manifest["summary"] == {"done": 6, "failed": 0, "pending": 0}
    assert not list((out / "runs").glob(".*.tmp")) and not (out / ".sweep.lock").exists()

    again = run_sweep(study, out, executor="serial", progress=False)
    assert again.executed == []


def test_without_dask_the_sweep_runs_serially_and_says_so(tmp_path, monkeypatch, caplog):
    import gnflow.sweep

    monkeypatch.setattr(gnflow.sweep, "dask_available", lambda: False)
    study = load_grid(_write(tmp_path / "s.toml", BASE + "[grid]\nseed = [1, 2]\n"))
    with caplog.at_level("INFO", logger="gnflow.sweep"):
        result = run_sweep(study, tmp_path / "out", progress=False)
    assert "dask.distributed is not installed" in caplog.text
    assert json.loads(result.manifest_path.read_text())["invocations"][-1]["executor"] == "serial"
    assert result.failed == [] and len(result.executed) == 2
    with pytest.raises(SweepError, match="not installed"):
        run_sweep(study, tmp_path / "out", executor="dask", progress=False)


def test_a_second_sweep_into_the_same_folder_is_refused(tmp_path):
    study = load_grid(_write(tmp_path / "s.toml", BASE + "[grid]\nseed = [1]\n"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".sweep.lock").write_text(f"{socket.gethostname()} {os.getpid()}")
    with pytest.raises(SweepError, match="another gnflow sweep"):
        run_sweep(study, tmp_path / "out", executor="serial", progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_local_cluster_gives_each_worker_a_gpu(tmp_path):
    pytest.importorskip("distributed")
    study = load_grid(
        _write(
            tmp_path / "s.toml",
            BASE.replace('device = "cpu"', 'device = "auto"') + "[grid]\nseed = [1, 2]\n",
        )
    )
    result = run_sweep(study, tmp_path / "out", executor="dask", progress=False)
    assert result.failed == []
    for run_id in result.executed:
        assert str(result.outcomes[run_id]["device"]).startswith("cuda")


def test_base_file_and_command_line_errors(tmp_path, capsys):
    _write(tmp_path / "base.toml", 'seed = 4\n[model]\nwidth = 9\nactivation = "tanh"\n')
    study = load_grid(
        _write(
            tmp_path / "s.toml",
            '[study]\nname = "tiny"\nbase_file = "base.toml"\n[base.model]\nwidth = 11\n',
        )
    )
    assert study.name == "tiny" and study.dims == () and len(study.runs) == 1
    config = study.runs[0].config
    assert (config.seed, config.model.width, config.model.activation) == (
        4,
        11,
        "tanh",
    )  # [base] wins
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert "sweep grid file" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "s.toml"), "--workers", "-1"]) == 2
