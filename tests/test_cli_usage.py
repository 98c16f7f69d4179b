"""Everyday behaviour of the command line: version, help with examples, verbosity options,
output files that are never replaced silently, and a summary at the end of each command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import gnflow
from gnflow.cli import build_parser, main
from gnflow.dataset import read_dataset

TINY_RUN = """
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


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return {
        name: sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
    }


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_RUN.format(path=(tmp_path / "out" / "run.nc").as_posix()))
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gnflow {gnflow.__version__}"


def test_every_command_has_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "examples:" in capsys.readouterr().out
    commands = _commands()
    assert {"run", "info", "plot"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: gnflow {name}")
        assert "examples:" in text and f"gnflow {name}" in text.split("examples:")[1], name
        assert "--quiet" in text and "--verbose" in text, name


def test_verbosity_options_before_or_after_the_command() -> None:
    parser = build_parser()
    for argv in (["-q", "info", "f.nc"], ["info", "f.nc", "-q"], ["info", "-q", "f.nc"]):
        args = parser.parse_args(argv)
        assert args.quiet and not args.verbose, argv
    args = parser.parse_args(["info", "f.nc", "--verbose", "--debug"])
    assert args.verbose and args.debug and not args.quiet
    args = parser.parse_args(["info", "f.nc"])
    assert not (args.quiet or args.verbose or args.debug)


def test_quiet_and_verbose_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["-q", "info", "f.nc", "-v"])
    assert exit_info.value.code == 2
    assert "--quiet and --verbose" in capsys.readouterr().err


def test_run_never_overwrites_without_permission(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "out" / "run.nc"
    assert main(["run", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"wrote {first}"
    assert "train loss" in out and "evaluations" in out
    content = first.read_bytes()

    # the configured (default) path exists: the next run goes beside it
    assert main(["run", str(config_file), "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert first.read_bytes() == content
    assert (tmp_path / "out" / "run-1.nc").is_file()

    # an explicit -o that exists is refused, and replaced only with --overwrite
    assert main(["run", str(config_file), "-o", str(first)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert first.read_bytes() == content
    assert main(["run", str(config_file), "-o", str(first), "--overwrite", "--set", "seed=6"]) == 0
    assert (
        read_dataset(first).attrs["gnflow_config"] != read_dataset(tmp_path / "out" / "run-1.nc").attrs["gnflow_config"]
    )

    # --overwrite with the default path replaces the configured file itself
    assert main(["run", str(config_file), "--overwrite", "-q"]) == 0
    assert not (tmp_path / "out" / "run-2.nc").exists()


def test_info_summarizes_a_file(config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(config_file), "-q"]) == 0
    path = tmp_path / "out" / "run.nc"
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}:") and "train_loss" in out and "status" in out


def test_errors_are_one_line_and_exit_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nwidht = 3\n")
    assert main(["run", str(bad)]) == 2
    assert main(["info", str(tmp_path / "missing.nc")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("gnflow: error: ") for line in errors)
    assert "widht" in errors[0]
