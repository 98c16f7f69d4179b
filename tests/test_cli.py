"""The command line: runs, summaries, one-line errors that write nothing."""

import numpy as np
import pytest

from gnflow.cli import main
from gnflow.dataset import read_dataset


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_reduced_paper_setting_converges(tmp_path, capsys):
    # Arbel et al.'s task at reduced size: d=10, M=1000, N=200, tau0=1, GN eigmin, dopri5
    out = tmp_path / "gn.nc"
    code, stdout, _ = run_cli(
        ["run", "--set", "model.width=1000", "--set", "data.n_train=200", "--set", "data.n_test=500", "-o", str(out)],
        capsys,
    )
    assert code == 0
    ds = read_dataset(out)
    assert ds.attrs["gnflow_status"] == "converged"
    loss = ds["train_loss"].values
    assert loss[-1] <= 1e-8 * loss[0]
    assert ds.attrs["gnflow_nfe"] == int(ds["nfe"][-1]) > 0
    assert ds.sizes["particle"] == 1000 and ds.sizes["sample"] == 200 and ds.sizes["input_dim"] == 10
    assert "converged" in stdout and "evaluations" in stdout and str(out) in stdout
    code, stdout, _ = run_cli(["info", str(out)], capsys)
    assert code == 0 and "converged" in stdout and "particle=1000" in stdout


def test_config_file_and_never_overwrite(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(
        "[data]\ninput_dim = 2\nn_train = 10\nn_test = 5\n[model]\nwidth = 20\n"
        '[flow]\nkind = "gradient"\n[solver]\nt_end = 50.0\nn_save = 5\n[output]\npath = "out/r.nc"\n'
    )
    assert run_cli(["run", "c.toml", "-q"], capsys)[0] == 0
    assert run_cli(["run", "c.toml", "-q"], capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r-1.nc", "r.nc"]
    ds = read_dataset(tmp_path / "out" / "r.nc")
    assert ds.attrs["gnflow_flow"] == "gradient" and "damping" not in ds
    code, _, err = run_cli(["run", "c.toml", "-o", "out/r.nc"], capsys)
    assert code == 1 and "exists; pass --overwrite" in err
    assert run_cli(["run", "c.toml", "-q", "-o", "out/r.nc", "--overwrite"], capsys)[0] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "model.widht=3"], "unknown key 'model.widht'"),
        (["--set", "solver.method=rk45"], "solver.method: unknown value 'rk45'; allowed: dopri5"),
        (["--set", "model.width=-4"], "model.width: must be >= 1, got -4"),
        (["--set", "solver.rtol=abc"], "solver.rtol: expected a number, got 'abc'"),
        (["missing.toml"], "config file 'missing.toml' does not exist"),
        (["--set", "data.kind=file", "--set", "data.path=nothere.npz"], "data file 'nothere.npz' does not exist"),
    ],
)
def test_errors_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, _stdout, err = run_cli(["run", *args, "-o", "x.nc"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_failed_run_is_saved_with_its_status(tmp_path, capsys):
    out = tmp_path / "f.nc"
    code, _stdout, _ = run_cli(
        [
            "run",
            "--set",
            "model.width=2",
            "--set",
            "data.input_dim=2",
            "--set",
            "data.n_train=40",
            "--set",
            "flow.damping=constant",
            "--set",
            "flow.epsilon=0",
            "--set",
            "model.output_init=normal",
            "-o",
            str(out),
        ],
        capsys,
    )
    assert code == 1
    ds = read_dataset(out)
    assert ds.attrs["gnflow_status"].startswith("failed: the Gram matrix A is singular")  # rank <= 8 < N = 40
    assert ds.sizes["t"] >= 1 and np.isfinite(ds["train_loss"].values).all()


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("gnflow ")
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "examples:" in capsys.readouterr().out
