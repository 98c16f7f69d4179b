"""model.init_from / gnflow run --from: a run started from a saved state continues the trajectory
(Euler steps: bit for bit), records its source, and refuses files that do not fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gnflow.cli import main
from gnflow.config import ConfigError, config_from_dict, config_to_dict
from gnflow.dataset import file_sha256, read_dataset, run_config_of
from gnflow.simulation import run, simulate


def _values(path: Path, **solver) -> dict:
    return {
        "seed": 2,
        "data": {"input_dim": 3, "teacher_width": 2, "n_train": 12, "n_test": 20},
        "model": {"width": 15, "output_init": "normal"},
        "flow": {"kind": "gradient"},
        "solver": {
            "method": "euler",
            "step_size": 1.0,
            "t_end": 20.0,
            "save_spacing": "linear",
            "n_save": 21,
            "stop_loss_ratio": 0.0,
            **solver,
        },
        "output": {"path": str(path)},
    }


@pytest.fixture
def source(tmp_path):
    ds, path = run(config_from_dict(_values(tmp_path / "a.nc")), progress=False)
    return ds, Path(path)


def test_a_run_from_a_saved_state_continues_the_iterations_bit_for_bit(source, tmp_path):
    ds_a, path = source
    values = _values(tmp_path / "b.nc", t_end=10.0, n_save=11)
    values["model"]["init_from"] = f"{path}@10"
    ds_b = simulate(config_from_dict(values), progress=False)
    np.testing.assert_array_equal(ds_b["weights"].values, ds_a["weights"].values[10:])
    np.testing.assert_array_equal(ds_b["train_loss"].values, ds_a["train_loss"].values[10:])
    assert ds_b.attrs["gnflow_init_from"] == str(path) and ds_b.attrs["gnflow_init_from_t"] == 10.0
    assert ds_b.attrs["gnflow_init_from_sha256"] == file_sha256(path)
    # without @T: the last saved state
    values["model"]["init_from"] = str(path)
    last = simulate(config_from_dict(values), progress=False)
    np.testing.assert_array_equal(last["weights"].values[0], ds_a["weights"].values[-1])


def test_run_from_without_a_config_uses_the_files_own(source, tmp_path):
    ds_a, path = source
    out = tmp_path / "longer.nc"
    assert main(["run", "--from", str(path), "--set", "solver.t_end=30", "-o", str(out), "-q"]) == 0
    ds = read_dataset(out)
    np.testing.assert_array_equal(ds["weights"].values[0], ds_a["weights"].values[-1])
    config = config_to_dict(run_config_of(ds))
    assert config["solver"]["t_end"] == 30.0 and config["model"]["init_from"] == str(path)
    assert config["data"] == config_to_dict(run_config_of(ds_a))["data"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"model": {"width": 16, "output_init": "normal"}},
            r"holds 15 particles of 5 components; this run has model.width = 16",
        ),
        ({"seed": 3}, r"was trained on other data \(x_train differs\)"),
        ({"at": "@7.5"}, r"has no saved state at t = 7.5; its 21 saved times run from 0 to 20"),
        ({"at": "@later"}, r'the time after "@" must be a flow time >= 0'),
    ],
)
def test_a_file_that_does_not_fit_is_refused_in_one_line(source, tmp_path, change, message):
    _, path = source
    values = _values(tmp_path / "c.nc")
    at = change.pop("at", "")
    values.update(change)
    values["model"] = {**values["model"], "init_from": f"{path}{at}"}
    with pytest.raises(ConfigError, match=message):
        simulate(config_from_dict(values), progress=False)


def test_a_missing_source_is_named(tmp_path):
    values = _values(tmp_path / "c.nc")
    values["model"]["init_from"] = str(tmp_path / "nope.nc")
    with pytest.raises(ConfigError, match=r"model.init_from: .*nope.nc is not a file"):
        simulate(config_from_dict(values), progress=False)
    values["model"]["init_from"] = str(tmp_path)
    with pytest.raises(ConfigError, match="is a directory"):
        simulate(config_from_dict(values), progress=False)
