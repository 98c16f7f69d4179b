"""Files written by gnflow 0.1.0 (before the architecture refactor) still read back in every command.

The files in ``tests/data/v0_1_0`` were written by that version and are never regenerated.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from gnflow.cli import main
from gnflow.config import config_hash
from gnflow.dataset import dataset_result, read_dataset, run_config_of
from gnflow.status import RunStatus

OLD = Path(__file__).parent / "data" / "v0_1_0"


@pytest.mark.parametrize("name", ["run.nc", "ggn.nc"])
def test_old_file_gives_its_config_and_typed_status(name: str) -> None:
    ds = read_dataset(OLD / name)
    config = run_config_of(ds)
    assert config.model.width == ds.sizes["particle"]
    assert dataset_result(ds).status in (RunStatus.COMPLETED, RunStatus.CONVERGED)


def test_info_reads_an_old_file(capsys) -> None:
    assert main(["info", str(OLD / "run.nc")]) == 0
    out = capsys.readouterr().out
    assert "status" in out and "gauss_newton" in out


def test_observe_adds_to_a_copy_of_an_old_file(tmp_path: Path) -> None:
    out = tmp_path / "observed.nc"
    assert main(["-q", "observe", str(OLD / "run.nc"), "spectrum", "kernel_movement", "-o", str(out)]) == 0
    with xr.open_dataset(OLD / "run.nc") as before, xr.open_dataset(out) as after:
        np.testing.assert_array_equal(after["weights"].values, before["weights"].values)
        np.testing.assert_array_equal(after["train_loss"].values, before["train_loss"].values)
        assert np.all(np.isfinite(after["gram_condition_number"].values))
        assert float(after["kernel_movement"].values[0]) == pytest.approx(0.0, abs=1e-12)  # A_0 against itself
        assert float(after["kernel_movement"].values[-1]) > 0.0


@pytest.mark.parametrize("name", ["ggn.nc", "sweep"])
def test_plot_draws_old_files(tmp_path: Path, name: str) -> None:
    figure = tmp_path / "figure.png"
    assert main(["-q", "plot", str(OLD / name), "-o", str(figure)]) == 0
    assert figure.stat().st_size > 10_000


def test_sweep_finds_the_old_runs_done(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "sweep"
    shutil.copytree(OLD / "sweep", folder)
    before = {p.name: p.read_bytes() for p in (folder / "runs").glob("*.nc")}
    for path in (folder / "runs").glob("*.nc"):  # the run ids of the old files are still their config hashes
        assert config_hash(run_config_of(read_dataset(path))) == path.stem
    assert main(["sweep", str(OLD / "grid.toml"), "-o", str(folder)]) == 0
    assert "0 computed, 2 found done" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (folder / "runs").glob("*.nc")} == before
