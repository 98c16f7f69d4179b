"""``gnflow config``: the resolved TOML round-trips to the same config hash; a missing config file
points to examples/ and gnflow config; --set overrides name the output of a run."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest

from gnflow.cli import default_config_text, main
from gnflow.cli._config_command import MAX_NAME_SUFFIX, config_to_toml
from gnflow.config import config_fields, config_from_dict, config_hash, config_to_dict, load_config
from gnflow.dataset import read_dataset, run_config_of

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

TINY = """
seed = 5
device = "cpu"

[data]
input_dim = 2
teacher_width = 2
n_train = 6
n_test = 10

[model]
width = 8

[solver]
method = "euler"
step_size = 0.5
t_end = 5.0
n_save = 4
save_spacing = "linear"

[output]
path = "{path}"
"""


def _body(text: str) -> str:
    """The TOML without its comment header."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def test_config_prints_the_default_run_with_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    default = config_from_dict(tomllib.loads(default_config_text()))
    assert config_from_dict(tomllib.loads(text)) == default
    assert f"config hash {config_hash(default)}" in text
    printed = tomllib.loads(text)
    written = set()
    for key, value in printed.items():
        written |= {f"{key}.{k}" for k in value} if isinstance(value, dict) else {key}
    absent = {key for key, _, default_value, _ in config_fields() if default_value is None}
    assert written == {key for key, *_ in config_fields()} - absent


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model.init_scale=0.01", "flow.epsilon=1e-12", "solver.rtol=3.3e-7"],
        ['observe.names=["regime", "refit"]', "solver.save_times=[0.0, 0.5, 2.0]", "dtype=float32"],
        ["flow.kind=ggn", "flow.epochs=3", "flow.batch_order=shuffled", "output.save_test=false"],
        ['output.path=data/runs/a "quoted" \\\\ name.nc', "data.noise=0.25"],
    ],
)
def test_printed_config_fed_back_gives_the_same_hash(
    overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = EXAMPLES / "gd.toml"
    assert main(["config", str(example), *[a for item in overrides for a in ("--set", item)]]) == 0
    text = capsys.readouterr().out
    printed = tmp_path / "printed.toml"
    printed.write_text(text)
    expected = load_config(example, overrides)
    assert load_config(printed) == expected
    assert config_hash(load_config(printed)) == config_hash(expected)
    assert load_config(printed).output.path == expected.output.path  # not in the hash, kept all the same
    # printing the printed file gives the same TOML again
    assert main(["config", str(printed)]) == 0
    assert _body(capsys.readouterr().out) == _body(text)


def test_config_to_toml_writes_what_tomllib_reads_back() -> None:
    config = load_config(None, ["solver.t_end=1e300", "solver.atol=5e-324", "model.activation=tanh"])
    assert config_from_dict(tomllib.loads(config_to_toml(config))) == config
    assert config_to_dict(config_from_dict(tomllib.loads(config_to_toml(config)))) == config_to_dict(config)


@pytest.mark.parametrize("command", ["run", "config"])
def test_missing_config_points_to_examples_and_gnflow_config(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([command, "nothere.toml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "config file 'nothere.toml' does not exist" in err
    assert f"{EXAMPLES}/" in err and "gnflow config" in err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(path=(tmp_path / "out" / "run.nc").as_posix()))
    return path


def test_overrides_name_the_output_by_what_they_change(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", str(tiny_config), "-q", "--set", "model.init_scale=0.5", "--set", "flow.kind=gradient"]) == 0
    named = out / "run-init_scale=0.5-flow.kind=gradient.nc"
    assert run_config_of(read_dataset(named)) == load_config(
        tiny_config, ["model.init_scale=0.5", "flow.kind=gradient"]
    )
    # keys that do not change what is computed, and values equal to the file's, leave the name alone
    assert main(["run", str(tiny_config), "-q", "--set", "solver.max_wall_time_s=100", "--set", "seed=5"]) == 0
    assert (out / "run.nc").is_file()
    # the same overrides again: the name is taken, so the next free one
    assert main(["run", str(tiny_config), "-q", "--set", "model.init_scale=0.5", "--set", "flow.kind=gradient"]) == 0
    assert named.with_name(f"{named.stem}-1.nc").is_file()
    # too long a description: the config hash, as sweeps name their runs
    many = "observe.quantiles=[" + ", ".join(f"0.{k:02d}" for k in range(1, 40)) + "]"
    assert main(["run", str(tiny_config), "-q", "--set", many]) == 0
    config = load_config(tiny_config, [many])
    assert len(many) > MAX_NAME_SUFFIX and (out / f"run-{config_hash(config)}.nc").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["run.nc", named.name, f"{named.stem}-1.nc", f"run-{config_hash(config)}.nc"]
    )


def test_history_records_the_command_line(tiny_config: Path, tmp_path: Path) -> None:
    args = ["run", str(tiny_config), "-q", "--set", "model.init_scale=0.25", "-o", str(tmp_path / "h.nc")]
    assert main(args) == 0
    history = read_dataset(tmp_path / "h.nc").attrs["history"]
    assert history.endswith(" " + shlex.join(["gnflow", *args]))
    assert main(["observe", str(tmp_path / "h.nc"), "weight_movement", "-q"]) == 0
    lines = read_dataset(tmp_path / "h.nc").attrs["history"].splitlines()
    assert len(lines) == 2 and lines[0] == history
    assert shlex.join(["gnflow", "observe", str(tmp_path / "h.nc"), "weight_movement", "-q"]) in lines[1]


def test_a_run_started_from_a_file_is_named_after_the_file_without_its_extension() -> None:
    from gnflow.cli._config_command import override_output_path

    base = load_config(None)
    for source, expected in (("data/runs/gd.nc", "init_from=data_runs_gd"), ("runs/a.nc@5", "init_from=runs_a_5")):
        config = load_config(None, [f"model.init_from={source}"])
        name = override_output_path(config, base).name
        assert name.endswith(f"-{expected}.nc") and ".nc.nc" not in name, name
