"""Untrusted or foreign files: bounded memory, one-line messages naming the file and the attribute
or variable, bad files skipped by ``plot DIR``, attribute text sanitized before it is printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr

from gnflow.cli import main
from gnflow.config import ConfigError
from gnflow.dataset import dataset_config, read_dataset, run_config_of

ROOT = Path(__file__).resolve().parents[1]
OLD = Path(__file__).parent / "data" / "v0_1_0"
GIB = 1 << 30


def _variant(tmp_path: Path, name: str, change) -> Path:
    """A copy of a valid run file with ``change(ds)`` applied."""
    ds = xr.load_dataset(OLD / "run.nc")
    ds = change(ds) or ds
    for var in ds.variables.values():
        var.encoding.clear()
    path = tmp_path / name
    ds.to_netcdf(path, engine="netcdf4")
    return path


def _with_attrs(**attrs):
    def change(ds):
        ds.attrs.update(attrs)
        for key, value in attrs.items():
            if value is None:
                del ds.attrs[key]

    return change


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("gnflow: error: ") and "Traceback" not in err, err
    return err


# --- memory bounded by what the machine has --------------------------------------------------------


def _bomb(path: Path) -> Path:
    """A file of about 50 KB whose weights unpack to 8.9 GiB (zeros compress well)."""
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("t", 2000)
        nc.createDimension("particle", 50_000)
        nc.createDimension("component", 12)
        nc.createVariable(
            "weights", "f8", ("t", "particle", "component"), zlib=True, complevel=9, chunksizes=(1, 50_000, 12)
        )
        nc.createVariable("t", "f8", ("t",))[:] = np.arange(2000.0)
        nc.createVariable("train_loss", "f8", ("t",))[:] = np.geomspace(1.0, 1e-3, 2000)
        nc.setncattr("title", "a small file with large arrays")
        nc.setncattr("gnflow_status", "completed")
    return path


def _limited(args: list[str], limit: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``gnflow ARGS`` in a process whose address space is limited to ``limit`` bytes."""
    code = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
        from gnflow.cli import main
        sys.exit(main({args!r}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_info_on_a_small_file_with_huge_arrays_reads_no_array(tmp_path):
    bomb = _bomb(tmp_path / "bomb.nc")
    assert bomb.stat().st_size < 100_000
    done = _limited(["info", str(bomb)], 3 * GIB, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "train_loss   1 -> 0.001" in done.stdout and "particle=50000" in done.stdout
    assert "flow time  0 .. 1999" in done.stdout


@pytest.mark.parametrize("command", [["plot"], ["observe", "weight_movement", "-o", "out.nc"]])
def test_reading_a_file_too_large_for_memory_is_refused_in_one_line(tmp_path, command):
    bomb = _bomb(tmp_path / "bomb.nc")
    done = _limited([command[0], str(bomb), *command[1:]], 3 * GIB, tmp_path)
    assert done.returncode == 1
    err = done.stderr.strip()
    assert err.count("\n") == 0 and "MemoryError" not in err and "Traceback" not in err, err
    assert f"{bomb}: variable 'weights'" in err and "8.9 GiB" in err and "available" in err
    assert not (tmp_path / "out.nc").exists() and not (tmp_path / "bomb.png").exists()


def test_a_stored_histogram_size_is_bounded(tmp_path, capsys):
    def change(ds):
        config = json.loads(ds.attrs["gnflow_config"])
        config.setdefault("observe", {})["histogram_bins"] = 10_000_000_000
        ds.attrs["gnflow_config"] = json.dumps(config)

    path = _variant(tmp_path, "bins.nc", change)
    assert main(["observe", str(path), "norm_histogram", "-o", str(tmp_path / "o.nc")]) == 1
    err = _one_line_error(capsys)
    assert str(path) in err and "gnflow_config" in err and "observe.histogram_bins = 10000000000" in err
    assert "TiB" in err and not (tmp_path / "o.nc").exists()


def test_a_stored_test_set_size_is_bounded_when_it_is_rebuilt(tmp_path, capsys):
    def change(ds):
        config = json.loads(ds.attrs["gnflow_config"])
        config["data"]["n_test"] = 10_000_000_000
        ds.attrs["gnflow_config"] = json.dumps(config)
        return ds.drop_vars(["x_test", "y_test"])

    path = _variant(tmp_path, "big_test.nc", change)
    assert main(["-q", "observe", str(path), "refit", "-o", str(tmp_path / "o.nc")]) == 0
    err = capsys.readouterr().err  # the refit on the test set is left out, and why is said
    assert "cannot be rebuilt" in err and "data.n_test = 10000000000" in err and "available" in err


# --- malformed files: one line naming the file and the attribute or variable -----------------------


MALFORMED_CONFIGS = {
    "null": "JSON null",
    "[1, 2]": "JSON list",
    "3": "JSON int",
    '"text"': "JSON str",
    "{not json": "not valid JSON",
    '{"model": {"width": "wide"}}': "model.width: expected an integer",
}


@pytest.mark.parametrize(("text", "message"), MALFORMED_CONFIGS.items())
def test_a_malformed_stored_config_gives_one_line(tmp_path, capsys, text, message):
    path = _variant(tmp_path, "bad.nc", _with_attrs(gnflow_config=text))
    with pytest.raises(ValueError, match="gnflow_config"):
        run_config_of(read_dataset(path))
    assert main(["observe", str(path), "weight_movement", "-o", str(tmp_path / "o.nc")]) == 1
    err = _one_line_error(capsys)
    assert f"{path}: attribute gnflow_config" in err and message in err
    if "model.width" in message:  # info prints the stored config as it is: any JSON object
        assert main(["info", str(path), "--config"]) == 0
        assert '"width": "wide"' in capsys.readouterr().out
        return
    assert main(["info", str(path), "--config"]) == 1
    err = _one_line_error(capsys)
    assert f"{path}: attribute gnflow_config" in err and message in err


def test_a_config_attribute_that_is_a_number_gives_one_line():
    ds = xr.Dataset(attrs={"gnflow_config": 3})
    with pytest.raises(ValueError, match=r"attribute gnflow_config is a int \(3\), not the JSON text"):
        dataset_config(ds)
    with pytest.raises(ConfigError, match="attribute gnflow_config: unknown key 'bogus'"):
        run_config_of(xr.Dataset(attrs={"gnflow_config": '{"bogus": 1}'}))


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("empty_t.nc", lambda ds: ds.isel(t=slice(0, 0)), "variable t is empty (no saved times)"),
        (
            "text_loss.nc",
            lambda ds: ds.assign(train_loss=ds["train_loss"].astype(str)),
            "variable train_loss is not numeric",
        ),
        ("no_loss.nc", lambda ds: ds.drop_vars("train_loss"), "not a gnflow trajectory file (no t coordinate"),
    ],
)
def test_malformed_variables_give_one_line(tmp_path, capsys, name, change, message):
    path = _variant(tmp_path, name, change)
    assert main(["plot", str(path), "-o", str(tmp_path / "f.png")]) == 1
    assert f"{path}: {message}" in _one_line_error(capsys)
    assert main(["observe", str(path), "weight_movement", "-o", str(tmp_path / "o.nc")]) == 1
    assert f"{path}: {message}" in _one_line_error(capsys)
    assert main(["info", str(path)]) == 0  # info shows what there is
    assert "sizes" in capsys.readouterr().out


def test_observe_names_the_file_without_weights(tmp_path, capsys):
    path = _variant(tmp_path, "no_weights.nc", lambda ds: ds.drop_vars("weights"))
    assert main(["observe", str(path), "weight_movement", "-o", str(tmp_path / "o.nc")]) == 1
    assert f"{path}: no variable 'weights'" in _one_line_error(capsys)


def test_a_file_that_is_not_netcdf_and_a_directory_give_one_line(tmp_path, capsys):
    (tmp_path / "text.nc").write_text("hello")
    assert main(["info", str(tmp_path / "text.nc")]) == 1
    assert f"{tmp_path / 'text.nc'}: not a readable NetCDF file" in _one_line_error(capsys)
    assert main(["info", str(tmp_path)]) == 1
    assert f"{tmp_path} is a directory" in _one_line_error(capsys)


def test_plot_dir_skips_bad_files_with_a_warning(tmp_path, capsys):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "good.nc").write_bytes((OLD / "run.nc").read_bytes())
    bad = [_variant(folder, f"bad{i}.nc", _with_attrs(gnflow_config=text)) for i, text in enumerate(MALFORMED_CONFIGS)]
    (folder / "text.nc").write_text("not NetCDF")
    out = tmp_path / "compare.png"
    assert main(["plot", str(folder), "-o", str(out), "--dpi", "40"]) == 0
    captured = capsys.readouterr()
    assert "1 runs compared" in captured.out and out.stat().st_size > 1000
    for path in [*bad, folder / "text.nc"]:
        assert str(path) in captured.err
    assert "Traceback" not in captured.err


# --- what is printed ---------------------------------------------------------------------------------


def test_attribute_text_is_sanitized_before_it_is_printed(tmp_path, capsys):
    evil = "run \x1b[31mred\x1b[0m\x07\r\u202e"
    path = _variant(tmp_path, "ansi.nc", _with_attrs(title=evil, gnflow_status="completed\x1b[2J"))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\u202e" not in out
    assert "run \\x1b[31mred\\x1b[0m\\x07\\r\\u202e" in out and "completed\\x1b[2J" in out
    assert main(["plot", str(path), "-o", str(tmp_path / "f.png"), "--dpi", "40"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "completed\\x1b[2J" in out


def test_info_reads_a_combined_sweep_file(capsys):
    assert main(["info", str(OLD / "sweep" / "sweep.nc")]) == 0
    out = capsys.readouterr().out
    assert "train_loss   final" in out and "over 2 runs" in out and "train_loss_final" in out
