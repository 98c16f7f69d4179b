"""The long-horizon study script at its smoke scale: it runs, writes its table and figure, and
the two methods it compares agree on the trajectory."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gnflow.dataset import read_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "long_horizon" / "long_horizon.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("long_horizon", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_smoke_scale_writes_a_table_and_a_figure(study, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        assert study.main(["--scale", "smoke", "-o", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    ds = read_dataset(tmp_path / "long_horizon_smoke.nc")
    assert (tmp_path / "long_horizon_smoke.png").stat().st_size > 0
    assert list(ds["method"].values) == ["kernel_exponential", "dopri5"]
    exp = {"method": "kernel_exponential"}
    assert (ds["t_reached"].sel(exp) == ds.attrs["gnflow_t_end"]).all()
    # step doubling: one linearization at t = 0, two per accepted and one per rejected step
    nfe = 1 + 2 * ds["n_steps"].sel(exp) + ds["n_rejected"].sel(exp)
    np.testing.assert_array_equal(ds["nfe"].sel(exp).values, nfe.values)
    # the trajectories agree where both exist (exponential rtol 1e-3, dopri5 rtol 1e-4)
    assert float(ds["weight_difference"].max()) < 1e-2
    assert np.all(ds["wall_time_s"].values > 0)
    assert set(ds["time_limited"].values.ravel()) <= {0, 1}


def test_unknown_scale_is_a_one_line_error(study, capsys) -> None:
    assert study.main(["--scale", "huge"]) == 2
    assert "--scale 'huge': unknown; allowed: smoke, small, paper" in capsys.readouterr().err


def test_tau0_runs_can_be_split_and_combined(study, tmp_path: Path, capsys) -> None:
    threads = torch.get_num_threads()
    try:
        for tau0 in ("10", "1"):
            assert (
                study.main(["--scale", "smoke", "-o", str(tmp_path), "--tau0", tau0, "--dopri5-budget-s", "0.5"]) == 0
            )
    finally:
        torch.set_num_threads(threads)
    parts = [tmp_path / "long_horizon_smoke_tau0-1.nc", tmp_path / "long_horizon_smoke_tau0-10.nc"]
    assert study.main(["-o", str(tmp_path), "--combine", *map(str, parts)]) == 0
    ds = read_dataset(tmp_path / "long_horizon_smoke.nc")
    assert list(ds["tau0"].values) == [1.0, 10.0]
    assert ds.attrs["gnflow_scale"] == "smoke"
    for tau0, part in zip((1.0, 10.0), parts, strict=True):
        one = read_dataset(part)
        assert list(one["tau0"].values) == [tau0]
        np.testing.assert_array_equal(ds["nfe"].sel(tau0=tau0).values, one["nfe"].isel(tau0=0).values)
        np.testing.assert_array_equal(
            ds["train_loss_ratio"].sel(tau0=tau0).values, one["train_loss_ratio"].isel(tau0=0).values
        )
    # the dopri5 runs stop on their CPU-time budget and say so
    assert (ds["time_limited"].sel({"method": "dopri5"}) == 1).all()  # a dict: method is a keyword of .sel
    capsys.readouterr()
    assert study.main(["--scale", "smoke", "--tau0", "3"]) == 2
    assert "--tau0 3: not a tau0 of scale 'smoke'; allowed: 1, 10" in capsys.readouterr().err
