"""Checkpointed runs: a run killed after a checkpoint and resumed equals the uninterrupted run."""

from __future__ import annotations

import tomllib
from dataclasses import replace

import numpy as np
import pytest
import xarray as xr

from gnflow.checkpoint import Checkpointer, CheckpointError, checkpoint_path, load_checkpoint
from gnflow.cli import main
from gnflow.config import ConfigError, config_from_dict, config_hash
from gnflow.flows import Flow
from gnflow.simulation import run


class _Killed(BaseException):
    """Stands in for the process dying: nothing in gnflow catches it."""


def _config(path, *, method="dopri5", every_steps=3, every_s=0.0, **solver):
    values = {
        "seed": 3,
        "device": "cpu",
        "data": {"input_dim": 3, "teacher_width": 2, "n_train": 15, "n_test": 40},
        "model": {"width": 20, "output_init": "normal"},
        "flow": {"kind": "gauss_newton", "damping": "constant", "epsilon": 1e-4},
        "solver": {
            "method": method,
            "t_end": 300.0,
            "n_save": 25,
            "save_decades": 3.0,
            "stop_loss_ratio": 0.0,
            "rtol": 1e-7,
            "atol": 1e-10,
            "step_size": 2.0,
            **solver,
        },
        "output": {
            "path": str(path),
            "checkpoint_every_steps": every_steps,
            "checkpoint_every_s": every_s,
        },
    }
    return config_from_dict(values)


def _kill_at_evaluation(monkeypatch, n_kill):
    """Make the flow 'kill the process' at its n_kill-th evaluation (counted across calls)."""
    original = Flow.__call__
    calls = {"n": 0}

    def dying_call(self, t, weights):
        calls["n"] += 1
        if calls["n"] == n_kill:
            raise _Killed
        return original(self, t, weights)

    monkeypatch.setattr(Flow, "__call__", dying_call)
    return calls


def _count_evaluations(monkeypatch):
    original = Flow.__call__
    calls = {"n": 0}

    def counting_call(self, t, weights):
        calls["n"] += 1
        return original(self, t, weights)

    monkeypatch.setattr(Flow, "__call__", counting_call)
    return calls


def _assert_same_trajectory(resumed: xr.Dataset, reference: xr.Dataset, rtol: float, atol: float) -> None:
    np.testing.assert_array_equal(resumed["t"].values, reference["t"].values)
    for name in ("weights", "train_loss", "test_loss", "gram_eigmin", "gram_eigmax"):
        np.testing.assert_allclose(resumed[name].values, reference[name].values, rtol=rtol, atol=atol, err_msg=name)
    for name in ("nfe", "n_steps", "n_rejected"):
        np.testing.assert_array_equal(resumed[name].values, reference[name].values, err_msg=name)
    assert resumed.attrs["gnflow_status"] == reference.attrs["gnflow_status"]


@pytest.mark.parametrize(
    ("method", "options"),
    [("dopri5", {"every_steps": 3}), ("rk4", {"every_steps": 0, "every_s": 1e-9})],
)
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, method, options):
    reference_config = _config(tmp_path / "reference.nc", method=method, every_steps=0)
    reference, _ = run(reference_config, progress=False)
    total = int(reference["nfe"].values[-1])
    assert reference.attrs["gnflow_status"] == "completed"

    config = _config(tmp_path / "run.nc", method=method, **options)
    ckpt = checkpoint_path(config.output.path)
    with monkeypatch.context() as patch:
        _kill_at_evaluation(patch, (2 * total) // 3)
        with pytest.raises(_Killed):
            run(config, progress=False)
    assert ckpt.is_file() and not (tmp_path / "run.nc").exists()
    position = load_checkpoint(ckpt, config)
    t_checkpoint = position["recorder"]["t"][-1]
    assert 0 < t_checkpoint < config.solver.t_end

    with monkeypatch.context() as patch:
        calls = _count_evaluations(patch)
        resumed, written = run(config, progress=False, resume=True)
    assert 0 < calls["n"] < total / 2 + 10  # continued, did not start over
    assert not ckpt.exists()  # a finished run removes its checkpoint
    _assert_same_trajectory(resumed, reference, rtol=config.solver.rtol, atol=config.solver.atol)
    _assert_same_trajectory(xr.load_dataset(written), reference, rtol=config.solver.rtol, atol=config.solver.atol)


def test_resume_from_the_command_line(tmp_path, monkeypatch):
    config = _config(tmp_path / "cli.nc", every_steps=2)
    reference, _ = run(_config(tmp_path / "reference.nc", every_steps=0), progress=False)
    with monkeypatch.context() as patch:
        _kill_at_evaluation(patch, int(reference["nfe"].values[-1]) // 2)
        with pytest.raises(_Killed):
            run(config, progress=False)
    toml = tmp_path / "cli.toml"
    toml.write_text(
        'seed = 3\ndevice = "cpu"\n'
        "[data]\ninput_dim = 3\nteacher_width = 2\nn_train = 15\nn_test = 40\n"
        '[model]\nwidth = 20\noutput_init = "normal"\n'
        '[flow]\nkind = "gauss_newton"\ndamping = "constant"\nepsilon = 1e-4\n'
        '[solver]\nmethod = "dopri5"\nt_end = 300.0\nn_save = 25\nsave_decades = 3.0\n'
        "stop_loss_ratio = 0.0\nrtol = 1e-7\natol = 1e-10\nstep_size = 2.0\n"
        f'[output]\npath = "{tmp_path / "cli.nc"}"\ncheckpoint_every_steps = 2\n'
    )
    assert config_hash(config) == config_hash(config_from_dict(tomllib.loads(toml.read_text())))
    assert main(["-q", "run", str(toml), "--resume"]) == 0
    resumed = xr.load_dataset(tmp_path / "cli.nc")
    _assert_same_trajectory(resumed, reference, rtol=1e-7, atol=1e-10)


def test_resume_without_a_checkpoint_starts_at_zero(tmp_path):
    config = _config(tmp_path / "fresh.nc", every_steps=0)
    fresh, _ = run(config, progress=False, resume=True)
    reference, _ = run(_config(tmp_path / "reference.nc", every_steps=0), progress=False)
    _assert_same_trajectory(fresh, reference, rtol=0, atol=0)


def test_checkpoint_of_another_config_is_refused(tmp_path, monkeypatch):
    config = _config(tmp_path / "a.nc")
    with monkeypatch.context() as patch:
        _kill_at_evaluation(patch, 60)
        with pytest.raises(_Killed):
            run(config, progress=False)
    other = _config(tmp_path / "a.nc", rtol=1e-6)
    with pytest.raises(CheckpointError, match="another config"):
        run(other, progress=False, resume=True)
    checkpoint_path(config.output.path).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        run(config, progress=False, resume=True)


def test_checkpoint_of_an_older_format_says_to_rerun_without_resume(tmp_path):
    import torch

    from gnflow import checkpoint as checkpoint_module

    config = _config(tmp_path / "old.nc")
    path = checkpoint_path(config.output.path)
    old = {"format": 1, "gnflow_version": "0.1", "config_hash": config_hash(config), "position": {"recorder": {}}}
    torch.save(old, path)
    assert checkpoint_module.FORMAT == 3
    with pytest.raises(CheckpointError, match=r"checkpoint format 1 .*; rerun without --resume$"):
        run(config, progress=False, resume=True)


def test_checkpoint_triggers_and_keys():
    config = _config("x.nc")
    hook = Checkpointer("x.checkpoint.pt", config, every_steps=4)
    assert [hook.due(n) for n in range(1, 6)] == [False, False, False, True, True]
    assert Checkpointer.for_output("x.nc", _config("x.nc", every_steps=0)) is None
    assert checkpoint_path("data/runs/r.nc").as_posix() == "data/runs/r.checkpoint.pt"
    # where and how often files are written does not change what is computed
    assert config_hash(_config("a.nc", every_steps=5)) == config_hash(_config("b.nc", every_steps=0))
    assert config_hash(_config("a.nc")) != config_hash(_config("a.nc", rtol=1e-6))
    with pytest.raises(ConfigError, match=r"output\.checkpoint_every_s"):
        config_from_dict({"output": {"checkpoint_every_s": -1.0}})
    with pytest.raises(ConfigError, match=r"output\.checkpoint_every_steps"):
        config_from_dict({"output": {"checkpoint_every_steps": -2}})


def test_mini_batch_ggn_run_resumes_exactly(tmp_path, monkeypatch):
    def ggn_config(path, every_steps):
        values = {
            "seed": 5,
            "device": "cpu",
            "data": {"input_dim": 3, "teacher_width": 2, "n_train": 16, "n_test": 20},
            "model": {"width": 12, "output_init": "normal"},
            "flow": {"kind": "ggn", "lam": 2.0, "alpha": 0.1, "batch_size": 4, "epochs": 6, "batch_order": "shuffled"},
            "solver": {"stop_loss_ratio": 0.0, "n_save": 10},
            "output": {"path": str(path), "checkpoint_every_steps": every_steps},
        }
        return config_from_dict(values)

    reference, _ = run(ggn_config(tmp_path / "reference.nc", 0), progress=False)
    config = ggn_config(tmp_path / "ggn.nc", 1)
    with monkeypatch.context() as patch:
        _kill_at_evaluation(patch, int(reference["nfe"].values[-1]) * 2 // 3)
        with pytest.raises(_Killed):
            run(config, progress=False)
    assert checkpoint_path(config.output.path).is_file()
    resumed, _ = run(config, progress=False, resume=True)
    np.testing.assert_array_equal(resumed["t"].values, reference["t"].values)
    np.testing.assert_array_equal(resumed["weights"].values, reference["weights"].values)
    np.testing.assert_array_equal(resumed["nfe"].values, reference["nfe"].values)


@pytest.mark.parametrize("method", ["kernel_exponential", "kernel_etd3", "kernel_etd4"])
def test_kernel_exponential_run_resumes_exactly(tmp_path, monkeypatch, method):
    import gnflow.exponential as exponential

    def config_at(path, every_steps):
        return _config(path, method=method, every_steps=every_steps, rtol=1e-5, atol=1e-8)

    original = exponential.freeze_kernel
    calls = {"n": 0, "kill_at": 0}

    def counted_freeze(flow, weights):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            raise _Killed
        return original(flow, weights)

    with monkeypatch.context() as patch:
        patch.setattr(exponential, "freeze_kernel", counted_freeze)  # both solvers linearize through it
        reference, _ = run(config_at(tmp_path / "reference.nc", 0), progress=False)
    total = calls["n"]  # linearizations of the uninterrupted run
    assert reference.attrs["gnflow_status"] == "completed" and total > 10

    config = config_at(tmp_path / "run.nc", 2)
    calls.update(n=0, kill_at=(2 * total) // 3)
    with monkeypatch.context() as patch:
        patch.setattr(exponential, "freeze_kernel", counted_freeze)  # both solvers linearize through it
        with pytest.raises(_Killed):
            run(config, progress=False)
    assert checkpoint_path(config.output.path).is_file()
    resumed, _ = run(config, progress=False, resume=True)
    np.testing.assert_array_equal(resumed["t"].values, reference["t"].values)
    np.testing.assert_array_equal(resumed["nfe"].values, reference["nfe"].values)
    np.testing.assert_array_equal(resumed["weights"].values, reference["weights"].values)
    np.testing.assert_array_equal(resumed["n_steps"].values, reference["n_steps"].values)
    assert resumed.attrs["gnflow_status"] == "completed"


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_eigmin_gauss_newton_run_resumes_bit_for_bit(tmp_path, monkeypatch, method):
    # eigmin damping warm-starts its Lanczos iteration from the previous evaluation: the checkpoint
    # carries that warm start, so the resumed run takes exactly the uninterrupted run's steps
    def config_at(path, every_steps):
        config = _config(path, method=method, every_steps=every_steps)
        return replace(config, flow=replace(config.flow, damping="eigmin", epsilon=1e-7))

    reference, _ = run(config_at(tmp_path / "reference.nc", 0), progress=False)
    total = int(reference["nfe"].values[-1])
    config = config_at(tmp_path / "run.nc", 2)
    with monkeypatch.context() as patch:
        _kill_at_evaluation(patch, (2 * total) // 3)
        with pytest.raises(_Killed):
            run(config, progress=False)
    position = load_checkpoint(checkpoint_path(config.output.path), config)
    assert position["flow"]["solver"]["shift"] is not None and position["flow"]["solver"]["vector"] is not None
    resumed, _ = run(config, progress=False, resume=True)
    for name in ("t", "weights", "train_loss", "damping", "gram_eigmin", "nfe", "n_steps", "n_rejected"):
        np.testing.assert_array_equal(resumed[name].values, reference[name].values, err_msg=name)
