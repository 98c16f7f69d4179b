"""The trajectory dataset: schema, round trip, CF-1.8 compliance, atomic writes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from gnflow.config import config_from_dict, config_from_json
from gnflow.dataset import read_dataset, to_attr, write_dataset
from gnflow.simulation import simulate

TINY = {
    "data": {"input_dim": 3, "n_train": 20, "n_test": 30},
    "model": {"width": 30},
    "solver": {"t_end": 200.0, "n_save": 11, "stop_loss_ratio": 0.0},
}


@pytest.fixture(scope="module")
def tiny_run():
    return simulate(config_from_dict(TINY), progress=False)


def test_schema(tiny_run):
    ds = tiny_run
    assert ds["weights"].dims == ("t", "particle", "component")
    assert ds.sizes["component"] == 5 and ds.sizes["particle"] == 30 and ds.sizes["t"] == 11
    assert [str(n) for n in ds["component_name"].values] == ["u0", "u1", "u2", "b", "v"]
    for name in ("train_loss", "test_loss", "gram_eigmin", "gram_eigmax", "damping", "nfe"):
        assert ds[name].dims == ("t",)
    assert ds["x_train"].dims == ("sample", "input_dim") and ds["y_test"].dims == ("test_sample",)
    for name in ds.variables:
        assert {"long_name", "units"} <= set(ds[name].attrs), name
    attrs = ds.attrs
    assert attrs["Conventions"] == "CF-1.8"
    for key in ("title", "history", "source", "references", "gnflow_flow", "gnflow_solver", "gnflow_wall_time_s"):
        assert key in attrs
    assert attrs["gnflow_status"] == "completed"
    assert "torchdiffeq" in attrs["source"] and "torch" in attrs["source"]
    assert config_from_json(attrs["gnflow_config"]) == config_from_dict(TINY)
    assert int(ds["nfe"][-1]) == attrs["gnflow_nfe"] > 0
    # losses are consistent with the stored weights and data
    import torch

    from gnflow.model import ParticleModel

    model = ParticleModel(input_dim=3)
    w_end = torch.as_tensor(ds["weights"].values[-1])
    r = model.predict(w_end, torch.as_tensor(ds["x_test"].values)).numpy() - ds["y_test"].values
    assert float(ds["test_loss"][-1]) == pytest.approx(r @ r / (2 * 30), rel=1e-12)


def test_round_trip_is_identical(tiny_run, tmp_path):
    path = write_dataset(tiny_run, tmp_path / "run.nc")
    back = read_dataset(path)
    xr.testing.assert_identical(back, tiny_run)
    assert not [p for p in tmp_path.iterdir() if p.name != "run.nc"]  # no temporary file left
    assert path.stat().st_mode & 0o044  # readable by others like any new file, not private


def _checker() -> str | None:
    exe = Path(sys.executable).parent / "compliance-checker"
    return str(exe) if exe.exists() else shutil.which("compliance-checker")


@pytest.mark.skipif(_checker() is None, reason="compliance-checker is not installed")
def test_cf_compliance(tiny_run, tmp_path):
    path = write_dataset(tiny_run, tmp_path / "run.nc")
    report = tmp_path / "report.json"
    result = subprocess.run(
        [_checker(), "--test=cf:1.8", "-f", "json_new", "-o", str(report), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    data = json.loads(report.read_text())
    messages = [
        msg
        for res in data.values()
        for check in res["cf:1.8"]["all_priorities"]
        if check["value"][0] < check["value"][1]
        for msg in check["msgs"]
    ]
    assert result.returncode == 0, messages


def test_atomic_write_keeps_the_old_file_on_failure(tiny_run, tmp_path):
    path = write_dataset(tiny_run, tmp_path / "run.nc")
    before = path.read_bytes()
    broken = tiny_run.copy()
    broken.attrs["bad"] = {"not": "serializable"}  # netCDF4 rejects dict attributes
    with pytest.raises(TypeError):
        write_dataset(broken, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.nc"]


def test_undocumented_variable_is_refused(tiny_run, tmp_path):
    ds = tiny_run.assign(mystery=("t", np.zeros(tiny_run.sizes["t"])))
    with pytest.raises(ValueError, match="variable 'mystery' has no long_name/units"):
        write_dataset(ds, tmp_path / "x.nc")


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path / "none.nc")
    (tmp_path / "junk.nc").write_text("not netcdf")
    with pytest.raises(ValueError, match="not a readable NetCDF file"):
        read_dataset(tmp_path / "junk.nc")


def test_to_attr():
    assert to_attr(True) == 1
    assert to_attr(np.float32(1.5)) == 1.5
    assert to_attr({"b": 1, "a": [1, 2]}) == '{"a": [1, 2], "b": 1}'
    assert to_attr(Path("a/b")) == "a/b"
