"""``gnflow info`` and the run log tell the truth: the flow and method a run integrated, its model,
its regime after ``gnflow observe``, sweep files, and one summary per run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gnflow.cli import main
from gnflow.config import config_hash, config_to_dict
from gnflow.dataset import read_dataset, run_config_of

OLD = Path(__file__).parent / "data" / "v0_1_0"
SMALL = ["device=cpu", "data.n_train=24", "data.n_test=12", "model.width=16", "model.init_scale=0.5"]
GGN = ["flow.kind=ggn", "flow.batch_size=8", "flow.epochs=2", "model.activation=tanh"]


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _run(tmp_path: Path, name: str, overrides: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[Path, str, str]:
    path = tmp_path / f"{name}.nc"
    assert main(["run", "-o", str(path), *_sets(SMALL + overrides)]) == 0
    captured = capsys.readouterr()
    return path, captured.out, captured.err


def test_ggn_runs_are_logged_and_labeled_as_ggn_by_euler_steps(tmp_path: Path, capsys) -> None:
    path, out, err = _run(tmp_path, "ggn", GGN, capsys)
    ds = read_dataset(path)
    assert ds.attrs["gnflow_flow"].startswith("ggn ") and ds.attrs["gnflow_solver"].startswith("euler ")
    assert ds.attrs["title"].startswith("gnflow ggn ")
    # the log names what the file names, and not the [solver] method GGN does not use
    assert ds.attrs["gnflow_flow"] in err and ds.attrs["gnflow_solver"] in err
    assert "dopri5" not in err + out
    assert main(["info", str(path)]) == 0
    info = capsys.readouterr().out
    lines = {line[2:12].strip(): line[13:] for line in info.splitlines()[1:]}  # "  label      text"
    assert lines["flow"] == ds.attrs["gnflow_flow"] and lines["solver"] == ds.attrs["gnflow_solver"]
    assert "dopri5" not in info


def test_run_prints_one_summary_and_no_raw_statistics(tmp_path: Path, capsys) -> None:
    path, out, err = _run(tmp_path, "gn", [], capsys)
    assert "DampedSolveStats(" not in err + out
    status = read_dataset(path).attrs["gnflow_status"]
    # one summary: the printed one; the log has a line for the start, none repeating the end
    assert sum(line.startswith(status) for line in (out + err).splitlines()) == 1
    assert out.endswith(f"wrote {path}\n") and err.endswith("\n")
    # with -v the end of the run and the solver's work are in the log, in words
    assert main(["run", "-v", "-o", str(tmp_path / "v.nc"), *_sets(SMALL)]) == 0
    err = capsys.readouterr().err
    assert "damped Gram solves:" in err and "Cholesky factorizations" in err and "DampedSolveStats(" not in err


def test_info_shows_the_model_and_the_regime_after_observe(tmp_path: Path, capsys) -> None:
    path, _, _ = _run(tmp_path, "gn", [], capsys)
    config = run_config_of(read_dataset(path))
    assert main(["info", str(path)]) == 0
    before = capsys.readouterr().out
    model = config_to_dict(config)["model"]
    model_line = next(line for line in before.splitlines() if line.split()[:1] == ["model"])
    for key in ("width", "activation", "init_scale", "scaling"):
        shown = f"{model[key]:g}" if isinstance(model[key], float) else str(model[key])
        assert f"{key}={shown}" in model_line, key
    assert f"hash {config_hash(config)}" in before and "regime" not in before
    assert main(["observe", str(path), "regime", "-q"]) == 0
    assert main(["info", str(path)]) == 0
    after = capsys.readouterr().out
    attrs = read_dataset(path).attrs
    regime_line = next(line for line in after.splitlines() if line.split()[:1] == ["regime"])
    assert regime_line.split()[1] == attrs["gnflow_regime"]
    assert f"{attrs['gnflow_regime_kernel_movement']:.6g}" in regime_line
    assert after.endswith("\n") and not after.endswith("\n\n")


def test_info_on_sweep_files(tmp_path: Path, capsys) -> None:
    assert main(["info", str(OLD / "sweep" / "sweep.nc")]) == 0
    out = capsys.readouterr().out
    combined = read_dataset(OLD / "sweep" / "sweep.nc")
    keys = json.loads(combined.attrs["gnflow_grid_keys"])
    for dim, key in keys.items():
        grid_line = next(line for line in out.splitlines() if line.split()[:1] == ["grid"])
        assert key in grid_line and all(f"{v:g}" in grid_line for v in combined[dim].values)
    finals = combined["train_loss_final"].values
    loss_line = next(line for line in out.splitlines() if line.split()[:1] == ["train_loss"])
    assert f"{finals.min():.6g} .. {finals.max():.6g} over {finals.size} runs" in loss_line
    assert f"{combined.attrs['gnflow_runs']} ({combined.attrs['gnflow_failed_runs']} failed)" in out


def test_info_prints_the_stored_config(tmp_path: Path, capsys) -> None:
    path, _, _ = _run(tmp_path, "gn", [], capsys)
    assert main(["info", str(path), "--config"]) == 0
    out = capsys.readouterr().out
    text = out[out.index("\n{") + 1 :]
    assert json.loads(text) == json.loads(read_dataset(path).attrs["gnflow_config"])
