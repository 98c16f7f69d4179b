"""Nothing lost, nothing mislabeled: outputs are never replaced silently, failed and interrupted
runs are written, and wrong results are not labeled good."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import gnflow.dataset as dataset_module
from gnflow.checkpoint import CheckpointError, checkpoint_path, load_checkpoint
from gnflow.cli import main
from gnflow.config import ConfigError, config_from_dict
from gnflow.dataset import OutputExistsError, atomic_write, check_writable, dataset_result
from gnflow.flows import Flow
from gnflow.grid import load_grid
from gnflow.simulation import run, simulate
from gnflow.status import INTERRUPTED, RunResult
from gnflow.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]


def _values(path, **sections):
    values = {
        "seed": 1,
        "device": "cpu",
        "data": {"input_dim": 3, "teacher_width": 2, "n_train": 12, "n_test": 10},
        "model": {"width": 12, "output_init": "normal"},
        "flow": {"kind": "gauss_newton", "damping": "constant", "epsilon": 1e-4},
        "solver": {"method": "dopri5", "t_end": 50.0, "n_save": 12, "rtol": 1e-7, "atol": 1e-10},
        "output": {"path": str(path)},
    }
    for name, changes in sections.items():
        if isinstance(changes, dict):
            values[name] = {**values[name], **changes}
        else:
            values[name] = changes
    return values


def _config(path, **sections):
    return config_from_dict(_values(path, **sections))


def _toml(path: Path, values: dict) -> Path:
    lines = []
    for key, value in values.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {json.dumps(value)}")
    for key, value in values.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in value.items())
    path.write_text("\n".join(lines) + "\n")
    return path


# --- 1. results are never replaced silently ----------------------------------------------------


def test_atomic_write_without_overwrite_never_replaces(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("first")
    with pytest.raises(OutputExistsError, match=r"x.txt exists .*nothing was replaced: pass --overwrite"):
        atomic_write(path, lambda name: Path(name).write_text("second"), overwrite=False)
    assert path.read_text() == "first"
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file is gone
    fresh = atomic_write(path, lambda name: Path(name).write_text("second"), overwrite=False, fresh_name=True)
    assert fresh == tmp_path / "x-1.txt" and fresh.read_text() == "second" and path.read_text() == "first"


def test_a_file_written_meanwhile_by_another_process_is_kept(tmp_path):
    path = tmp_path / "x.nc"

    def slow_write(name):  # the other process finishes first, while this one writes
        Path(name).write_text("mine")
        path.write_text("theirs")

    with pytest.raises(OutputExistsError):
        atomic_write(path, slow_write, overwrite=False)
    assert path.read_text() == "theirs"
    assert atomic_write(path, slow_write, overwrite=False, fresh_name=True) == tmp_path / "x-1.nc"
    assert path.read_text() == "theirs" and (tmp_path / "x-1.nc").read_text() == "mine"


def test_python_run_refuses_an_existing_output_before_computing(tmp_path, monkeypatch):
    config = _config(tmp_path / "r.nc")
    path = tmp_path / "r.nc"
    path.write_text("an earlier result")
    monkeypatch.setattr("gnflow.simulation.simulate", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(OutputExistsError, match=r"r.nc exists; pass --overwrite \(overwrite=True\)"):
        run(config, progress=False)
    assert path.read_text() == "an earlier result"


def test_resume_onto_a_finished_run_of_another_config_is_refused(tmp_path, capsys):
    out = tmp_path / "r.nc"
    first = _toml(tmp_path / "a.toml", _values(out))
    assert main(["-q", "run", str(first)]) == 0
    before = out.read_bytes()
    other = _toml(tmp_path / "b.toml", _values(out, solver={"rtol": 1e-6}))
    capsys.readouterr()
    assert main(["-q", "run", str(other), "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gnflow: error: {out} holds a run of another config (hash ")
    assert "\n" not in err and out.read_bytes() == before
    # the same config resumes onto its own file
    assert main(["-q", "run", str(first), "--resume"]) == 0


_RACE = textwrap.dedent(
    """
    import sys, time
    import gnflow.simulation as simulation
    from gnflow.cli import main
    original = simulation.write_dataset
    def late_write(ds, path, **kw):  # both finish their computation before either writes
        time.sleep(float(sys.argv[2]))
        return original(ds, path, **kw)
    simulation.write_dataset = late_write
    sys.exit(main(["-q", "run", sys.argv[1], *sys.argv[3:]]))
    """
)


def _race(tmp_path, toml, n, *extra):
    script = tmp_path / "race.py"
    script.write_text(_RACE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(toml), str(1.0 + 0.2 * k), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for k in range(n)
    ]
    return [(p.wait(timeout=300), *p.communicate()) for p in procs]


def test_concurrent_runs_on_one_named_output_lose_no_result(tmp_path):
    a = _toml(tmp_path / "a.toml", _values(tmp_path / "x.nc", seed=1))
    b = _toml(tmp_path / "b.toml", _values(tmp_path / "x.nc", seed=2))
    script = tmp_path / "race.py"
    script.write_text(_RACE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(toml), str(delay), "-o", str(tmp_path / "x.nc")],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for toml, delay in ((a, 1.0), (b, 2.0))
    ]
    outcomes = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 1], outcomes  # one wins, the other fails clearly
    winner = [code for code, _ in outcomes].index(0)
    err = outcomes[1 - winner][1].strip().splitlines()[-1]
    assert err.startswith(f"gnflow: error: {tmp_path / 'x.nc'} exists (written while this one was computed?)")
    assert "nothing was replaced: pass --overwrite" in err
    with xr.open_dataset(tmp_path / "x.nc") as ds:
        assert json.loads(ds.attrs["gnflow_config"])["seed"] == (1, 2)[winner]


def test_concurrent_runs_on_a_default_name_each_keep_their_result(tmp_path):
    toml = _toml(tmp_path / "a.toml", _values("r.nc"))
    (tmp_path / "r.nc").write_text("an earlier result")  # both choose r-1.nc
    outcomes = _race(tmp_path, toml, 3)
    assert [code for code, _, _ in outcomes] == [0, 0, 0], outcomes
    written = sorted(p.name for p in tmp_path.glob("r-*.nc"))
    assert written == ["r-1.nc", "r-2.nc", "r-3.nc"]
    assert (tmp_path / "r.nc").read_text() == "an earlier result"


def _written_run(tmp_path, name="run.nc"):
    toml = _toml(tmp_path / "c.toml", _values(tmp_path / name))
    assert main(["-q", "run", str(toml)]) == 0
    return tmp_path / name


def test_observe_replaces_no_file_without_overwrite(tmp_path, capsys):
    path = _written_run(tmp_path)
    before = path.read_bytes()
    other = tmp_path / "other.nc"
    other.write_text("keep me")
    capsys.readouterr()
    assert main(["-q", "observe", str(path), "weight_movement", "-o", str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"gnflow: error: {other} exists; pass --overwrite to replace it, or choose another -o"
    assert other.read_text() == "keep me"
    assert path.read_bytes() == before
    assert main(["-q", "observe", str(path), "weight_movement", "-o", str(other), "--overwrite"]) == 0
    assert "hidden_weight_movement" in xr.open_dataset(other)


def test_observe_in_place_adds_to_the_file_and_keeps_what_it_held(tmp_path):
    # docs/cli.md: `gnflow observe FILE.nc [NAMES ...]` adds observables to the saved trajectory itself
    path = _written_run(tmp_path)
    with xr.open_dataset(path) as before:
        weights = before["weights"].values.copy()
    assert main(["-q", "observe", str(path), "weight_movement"]) == 0
    with xr.open_dataset(path) as after:
        assert "hidden_weight_movement" in after
        np.testing.assert_array_equal(after["weights"].values, weights)


def test_observe_in_place_writes_through_a_symlink(tmp_path):
    path = _written_run(tmp_path)
    link = tmp_path / "link.nc"
    link.symlink_to(path.name)
    assert main(["-q", "observe", str(link), "weight_movement"]) == 0
    assert link.is_symlink() and os.readlink(link) == path.name
    with xr.open_dataset(path) as ds:
        assert "hidden_weight_movement" in ds


# --- 2. failed or interrupted runs are written --------------------------------------------------


def test_result_interruption_signal():
    assert RunResult.failure(INTERRUPTED).interruption_signal == signal.SIGINT
    term = RunResult.failure("interrupted (signal SIGTERM)")
    assert term.interrupted and term.interruption_signal == signal.SIGTERM
    assert RunResult.parse(str(term)) == term
    assert not RunResult.failure("non-finite train loss").interrupted
    assert RunResult.completed().interruption_signal is None


def _sigterm_at_evaluation(monkeypatch, n):
    original = Flow.__call__
    calls = {"n": 0}

    def call(self, t, weights):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, t, weights)

    monkeypatch.setattr(Flow, "__call__", call)


def test_sigterm_writes_the_partial_run_keeps_the_checkpoint_and_restores_the_handler(tmp_path, monkeypatch):
    config = _config(tmp_path / "t.nc", output={"checkpoint_every_steps": 2})
    before = signal.getsignal(signal.SIGTERM)
    _sigterm_at_evaluation(monkeypatch, 40)
    ds, written = run(config, progress=False)
    assert ds.attrs["gnflow_status"] == "failed: interrupted (signal SIGTERM)"
    assert dataset_result(xr.load_dataset(written)).interruption_signal == signal.SIGTERM
    assert float(ds["t"][-1]) < config.solver.t_end
    assert checkpoint_path(written).is_file()
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_exit_code_is_143_and_sigint_130(tmp_path, monkeypatch, capsys):
    toml = _toml(tmp_path / "c.toml", _values(tmp_path / "t.nc"))
    _sigterm_at_evaluation(monkeypatch, 30)
    assert main(["-q", "run", str(toml)]) == 143
    assert "failed: interrupted (signal SIGTERM)" in capsys.readouterr().out
    monkeypatch.undo()
    original = Flow.__call__
    calls = {"n": 0}

    def ctrl_c(self, t, weights):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return original(self, t, weights)

    monkeypatch.setattr(Flow, "__call__", ctrl_c)
    assert main(["-q", "run", str(toml), "-o", str(tmp_path / "i.nc")]) == 130
    assert xr.open_dataset(tmp_path / "i.nc").attrs["gnflow_status"] == f"failed: {INTERRUPTED}"


def test_interruption_while_measuring_keeps_the_finished_integration(tmp_path, monkeypatch):
    import gnflow.trajectory as trajectory

    original = trajectory._BuiltinVariables.update

    def update(self, state):
        if state.index == 5:
            raise KeyboardInterrupt
        original(self, state)

    monkeypatch.setattr(trajectory._BuiltinVariables, "update", update)
    config = _config(tmp_path / "m.nc", solver={"stop_loss_ratio": 0.0})
    ds, written = run(config, progress=False)
    status = xr.open_dataset(written).attrs["gnflow_status"]
    assert status == f"failed: {INTERRUPTED} while measuring saved states (integration: completed)"
    assert float(ds["t"][-1]) == config.solver.t_end  # the whole integration is there
    losses = ds["train_loss"].values
    assert np.all(np.isfinite(losses[:5])) and np.all(np.isnan(losses[5:]))


def test_a_gram_matrix_without_spectrum_gives_nan_and_a_reason_not_a_crash(tmp_path, monkeypatch):
    import gnflow.observables._trajectory as states

    def no_spectrum(self):
        if self.index >= 3:
            raise torch.linalg.LinAlgError("linalg.eigvalsh: The algorithm failed to converge")
        return torch.linalg.eigvalsh(self.gram)

    monkeypatch.setattr(states.SavedState, "eigenvalues", property(no_spectrum))
    ds, written = run(_config(tmp_path / "g.nc"), progress=False)
    status = xr.open_dataset(written).attrs["gnflow_status"]
    assert status.startswith("failed: Gram spectrum not computable at ")
    assert "linalg.eigvalsh: The algorithm failed to converge" in status
    assert np.all(np.isfinite(ds["gram_eigmin"].values[:3])) and np.all(np.isnan(ds["gram_eigmin"].values[3:]))
    assert np.all(np.isfinite(ds["train_loss"].values))


def test_huge_data_failure_is_written(tmp_path):
    x = np.random.default_rng(0).normal(size=(12, 2)) * 1e300
    np.savez(tmp_path / "d.npz", x=x, y=x[:, 0])
    config = _config(tmp_path / "h.nc", data={"kind": "file", "path": str(tmp_path / "d.npz")}, seed=1)
    ds, written = run(config, progress=False)
    assert written.is_file()
    assert dataset_result(ds).failed


def test_an_unwritable_folder_is_found_before_the_computation(tmp_path, monkeypatch, capsys):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(dataset_module.tempfile, "mkstemp", denied)
    monkeypatch.setattr("gnflow.simulation.simulate", lambda *a, **k: pytest.fail("computed"))
    toml = _toml(tmp_path / "c.toml", _values(tmp_path / "runs" / "x.nc"))
    assert main(["-q", "run", str(toml)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"gnflow: error: cannot write to {tmp_path / 'runs'}: [Errno 13] Permission denied"
    )


def test_an_output_folder_that_is_a_file_is_found_before_the_computation(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match=r"^cannot write to .*file/sub: \[Errno 20\] Not a directory$"):
        check_writable(tmp_path / "file" / "sub")


def test_a_full_disk_names_the_path_and_enospc(tmp_path, monkeypatch):
    class Full:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(dataset_module.os, "statvfs", lambda path: Full())

    def hdf_error(name):
        raise RuntimeError("NetCDF: HDF error")

    with pytest.raises(OSError, match=r"^cannot write .*x.nc: \[Errno 28\] No space left on device \(NetCDF"):
        atomic_write(tmp_path / "x.nc", hdf_error)
    assert not list(tmp_path.iterdir())


# --- 3. wrong results are not labeled good ------------------------------------------------------


@pytest.mark.parametrize(
    "sections",
    [
        {"model": {"width": 20, "init_scale": 1e12}},
        {"dtype": "float32", "model": {"width": 20, "init_scale": 1e20}},
    ],
)
def test_a_run_whose_train_loss_grows_is_failed(tmp_path, sections):
    """The issue's examples: huge hidden weights, where dopri5's error control does not hold the loss."""
    values = _values(
        tmp_path / "x.nc",
        data={"n_train": 15},
        solver={"t_end": 100.0, "n_save": 20, "stop_loss_ratio": 0.0},
        **sections,
    )
    del values["model"]["output_init"]  # the default (small) output weights: L(0) stays O(1)
    ds = simulate(config_from_dict(values), progress=False)
    status = ds.attrs["gnflow_status"]
    assert status.startswith("failed: train loss increased by a factor ")
    assert status.endswith("(the solution is not accurate: lower solver.rtol)")


def test_an_accurate_run_passes_the_monotonicity_check(tmp_path):
    for kind in ("gauss_newton", "gradient"):
        ds = simulate(_config(tmp_path / "x.nc", flow={"kind": kind}, solver={"rtol": 1e-3}), progress=False)
        assert not dataset_result(ds).failed, ds.attrs["gnflow_status"]


def _gradient_flow_at_fraction_of_rk4_limit(tmp_path, method: str, fraction: float):
    """A GD flow integrated by a fixed-step method at ``fraction`` of rk4's stability limit
    2.78 N / lambda_max(A(0)) (the stiffest mode's rate is lambda_max / N near the start)."""
    from gnflow.experiment import build_experiment
    from gnflow.solve import integrate

    values = _values(tmp_path / "x.nc", flow={"kind": "gradient"})
    probe = build_experiment(config_from_dict(values))
    rate = float(torch.linalg.eigvalsh(probe.model.linearize(probe.weights0, probe.flow.x).gram())[-1]) / 12
    step = fraction * 2.78 / rate
    values["solver"] = {"method": method, "step_size": step, "t_end": 60 * step, "n_save": 4, "stop_loss_ratio": 0.0}
    experiment = build_experiment(config_from_dict(values))
    return integrate(experiment.flow, experiment.weights0, experiment.config.solver, progress=False), step


def test_rk4_beyond_its_stability_limit_fails_and_says_where(tmp_path):
    # rk4 only integrates the flow: a rising loss means that its steps are too large; the failure
    # names the step size and the statistics say how far the run got (not the last saved state)
    solution, step = _gradient_flow_at_fraction_of_rk4_limit(tmp_path, "rk4", 1.5)
    assert solution.status.startswith("failed: train loss increased by a factor ")
    assert solution.status.endswith("(the solution is not accurate: lower solver.step_size)")
    assert 0 < solution.stats["t_reached"] < 60 * step and solution.stats["nfe"] >= 4


def test_rk4_within_its_stability_limit_and_euler_beyond_it_are_not_failed_by_the_check(tmp_path):
    within, _ = _gradient_flow_at_fraction_of_rk4_limit(tmp_path, "rk4", 0.5)
    assert within.status == "completed", within.status
    # euler is also the discrete method (GD), whose loss may rise: not checked
    euler, _ = _gradient_flow_at_fraction_of_rk4_limit(tmp_path, "euler", 1.5)
    assert "train loss increased" not in euler.status


@pytest.mark.parametrize("rtol", [1e10, 1.0])
def test_a_meaningless_rtol_is_refused(rtol):
    with pytest.raises(ConfigError, match=r"^solver.rtol: must be < 1 \(.*allowed: 0 < rtol < 1\), got "):
        _config("x.nc", solver={"rtol": rtol})


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b, equal_nan=True)
    return a == b or (a != a and b != b)


def test_a_flipped_byte_in_a_checkpoint_is_refused_or_harmless(tmp_path):
    config = _config(tmp_path / "c.nc", output={"checkpoint_every_steps": 2}, solver={"max_steps": 12})
    run(config, progress=False)  # fails on the step limit; the checkpoint stays
    ckpt = checkpoint_path(config.output.path)
    data = ckpt.read_bytes()
    original = load_checkpoint(ckpt, config)
    refused = 0
    offsets = range(0, len(data), 23)
    for offset in offsets:
        damaged = bytearray(data)
        damaged[offset] ^= 0x10
        ckpt.write_bytes(bytes(damaged))
        try:
            position = load_checkpoint(ckpt, config)
        except CheckpointError as exc:
            assert str(exc).startswith(f"{ckpt}: ") and "\n" not in str(exc)
            refused += 1
        else:  # zip headers, padding, the version string: the position itself is untouched
            assert _same(position, original), f"a flipped byte at {offset} resumed to another position"
    assert refused > 0.8 * len(offsets)


def test_a_changed_sweep_run_file_is_recomputed(tmp_path, caplog):
    grid = tmp_path / "g.toml"
    base = _values("unused.nc")
    lines = ["[base]", 'device = "cpu"', "seed = 1"]
    for section in ("data", "model", "flow", "solver"):
        lines.append(f"[base.{section}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in base[section].items())
    lines += ["[grid]", '"model.init_scale" = [0.5, 1.0]']
    grid.write_text("\n".join(lines) + "\n")
    out = tmp_path / "sweep"
    first = run_sweep(load_grid(grid), out, executor="serial", progress=False)
    assert len(first.executed) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    run_id, entry = next(iter(manifest["runs"].items()))
    path = out / entry["path"]
    assert len(entry["sha256"]) == 64
    # one changed byte inside the uncompressed train loss: the file still reads as valid NetCDF
    with xr.open_dataset(path) as ds:
        loss = ds["train_loss"].values.copy()
    raw = bytearray(path.read_bytes())
    offset = raw.find(loss.astype(">f8").tobytes()[:16])
    if offset < 0:
        offset = raw.find(loss.astype("<f8").tobytes()[:16])
    assert offset > 0
    raw[offset + 3] ^= 0x01
    path.write_bytes(bytes(raw))
    second = run_sweep(load_grid(grid), out, executor="serial", progress=False)
    assert second.executed == [run_id]  # only the changed file is computed again
    assert path.with_name(f"{path.name}.changed").is_file()  # kept aside, not deleted
    assert "changed since it was written (SHA-256); computing again" in caplog.text
    with xr.open_dataset(path) as ds:
        np.testing.assert_array_equal(ds["train_loss"].values, loss)


def test_huge_init_scale_failure_is_written_with_the_spectrum_reason(tmp_path):
    ds, written = run(_config(tmp_path / "b.nc", model={"init_scale": 1e200}), progress=False)
    status = xr.open_dataset(written).attrs["gnflow_status"]
    assert status.startswith("failed: the damped Gram matrix A + eps I is not positive definite")
    assert "; Gram spectrum not computable at 1 saved states (" in status
    assert np.isnan(ds["gram_eigmin"].values).all()


def test_a_real_sigterm_to_gnflow_run_writes_the_partial_run(tmp_path):
    """What ``timeout``, Slurm and ``docker stop`` do: SIGTERM to the process."""
    values = _values(
        tmp_path / "long.nc",
        solver={"t_end": 1e6, "n_save": 50, "stop_loss_ratio": 0.0, "rtol": 1e-12, "atol": 1e-14},
        output={"checkpoint_every_steps": 1},
    )
    toml = _toml(tmp_path / "long.toml", values)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gnflow", "-q", "run", str(toml)], stderr=subprocess.PIPE, text=True, env=env
    )
    ckpt = checkpoint_path(tmp_path / "long.nc")
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.communicate()
    with xr.open_dataset(tmp_path / "long.nc") as ds:
        assert ds.attrs["gnflow_status"] == "failed: interrupted (signal SIGTERM)"
        assert float(ds["t"][-1]) < 1e6
    assert ckpt.is_file()
