"""The example configs of examples/ run (at reduced size), and the README, the documentation and the
CLI help name only config files that exist."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from gnflow.cli import build_parser, main
from gnflow.config import load_config
from gnflow.dataset import read_dataset, run_config_of
from gnflow.grid import load_grid

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# Each example keeps what it is about (flow, method, scaling, schedule) and is shrunk to seconds.
SMALL = ["device=cpu", "data.n_train=16", "data.n_test=16", "model.width=12", "solver.n_save=6"]
RUNS = {
    "gn.toml": ["solver.t_end=50.0"],
    "gd.toml": ["solver.t_end=50.0"],
    "long_gd.toml": ["solver.t_end=50.0", "solver.save_decades=2.0"],
    "discrete_gd.toml": ["solver.t_end=500.0", "solver.save_decades=2.0"],
    "ggn.toml": ["flow.batch_size=8", "flow.epochs=2"],
    "checkpointed.toml": ["solver.t_end=50.0"],
}


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def test_every_example_is_run_here() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.toml")) == sorted([*RUNS, "grid.toml"])


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs_at_reduced_size(name: str, tmp_path: Path) -> None:
    overrides = SMALL + RUNS[name]
    out = tmp_path / "run.nc"
    assert main(["run", str(EXAMPLES / name), "-q", "-o", str(out), *_sets(overrides)]) == 0
    ds = read_dataset(out)
    # the file holds the example's own config with the reductions, and the run learned
    assert run_config_of(ds) == load_config(EXAMPLES / name, overrides)
    assert not ds.gnflow.status.failed
    loss = ds["train_loss"].values
    assert np.isfinite(loss).all() and loss[-1] < loss[0]


def test_checkpointed_example_resumes_to_the_uninterrupted_run(tmp_path: Path) -> None:
    example = str(EXAMPLES / "checkpointed.toml")
    overrides = SMALL + RUNS["checkpointed.toml"]
    straight = tmp_path / "straight.nc"
    assert main(["run", example, "-q", "-o", str(straight), *_sets(overrides)]) == 0
    out = tmp_path / "stopped.nc"
    # a wall-time budget spent at once stops the run, which keeps its checkpoint
    stopped = main(["run", example, "-q", "-o", str(out), *_sets([*overrides, "solver.max_wall_time_s=1e-9"])])
    assert stopped == 1 and read_dataset(out).gnflow.status.failed
    checkpoint = out.with_name("stopped.checkpoint.pt")
    assert checkpoint.is_file()
    assert main(["run", example, "-q", "-o", str(out), "--resume", *_sets(overrides)]) == 0
    resumed, reference = read_dataset(out), read_dataset(straight)
    assert not checkpoint.exists()
    np.testing.assert_array_equal(resumed["train_loss"].values, reference["train_loss"].values)
    np.testing.assert_array_equal(resumed["weights"].values, reference["weights"].values)


def test_grid_example_sweeps_at_reduced_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    definition = tomllib.loads((EXAMPLES / "grid.toml").read_text())
    base = definition["base"]
    base.update(device="cpu")
    base["data"].update(n_train=16, n_test=16)
    base["model"].update(width=12)
    base["solver"].update(t_end=20.0, n_save=5)
    small = tmp_path / "grid.toml"
    small.write_text(_to_toml(definition))
    expected = load_grid(small)
    assert main(["sweep", str(small), "--workers", "0", "-q", "-o", str(tmp_path / "sweep")]) == 0
    combined = read_dataset(tmp_path / "sweep" / "sweep.nc")
    assert combined.sizes["model_init_scale"] == len(definition["grid"]["model.init_scale"])
    assert list(combined["model_init_scale"].values) == definition["grid"]["model.init_scale"]
    assert sorted(str(v) for v in combined["run"].values) == sorted(r["name"] for r in definition["runs"])
    assert int(combined.attrs["gnflow_failed_runs"]) == 0 and combined.attrs["gnflow_runs"] == len(expected.runs)
    # gnflow info reads the sweep file: its grid, its runs and their final losses
    assert main(["info", str(tmp_path / "sweep" / "sweep.nc")]) == 0
    info = capsys.readouterr().out
    assert "model.init_scale = " + ", ".join(f"{v:g}" for v in definition["grid"]["model.init_scale"]) in info
    assert f"{len(expected.runs)} (0 failed)" in info
    finals = combined["train_loss_final"].values
    assert f"final {np.nanmin(finals):.6g} .. {np.nanmax(finals):.6g} over {finals.size} runs" in info


def _to_toml(definition: dict) -> str:
    """The grid file's tables written back (only the value types the example uses)."""

    def value(v: object) -> str:
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = [f"[sweep]\nname = {value(definition['sweep']['name'])}", "[base]"]
    lines += [f"{k} = {value(v)}" for k, v in definition["base"].items() if not isinstance(v, dict)]
    for section, table in definition["base"].items():
        if isinstance(table, dict):
            lines.append(f"[base.{section}]")
            lines += [f"{k} = {value(v)}" for k, v in table.items()]
    lines.append("[grid]")
    lines += [f'"{k}" = {value(v)}' for k, v in definition["grid"].items()]
    for run in definition["runs"]:
        lines.append("[[runs]]")
        lines += [f'"{k}" = {value(v)}' for k, v in run.items()]
    return "\n".join(lines) + "\n"


def _help_texts() -> dict[str, str]:
    parser = build_parser()
    texts = {"gnflow --help": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                texts[f"gnflow {name} --help"] = sub.format_help()
    return texts


def _documents() -> dict[str, str]:
    texts = {name: (ROOT / name).read_text() for name in ("README.md", "examples/README.md")}
    texts.update({f"docs/{p.name}": p.read_text() for p in (ROOT / "docs").glob("*.md")})
    texts.update({f"examples/{p.name}": p.read_text() for p in EXAMPLES.glob("*.toml")})
    texts.update(_help_texts())
    return texts


COMMAND = re.compile(r"gnflow (?:run|sweep|config) ([^\s`'\")]+\.toml)")


def test_docs_and_help_name_config_files_that_exist() -> None:
    named: list[tuple[str, str]] = []
    missing = []
    for where, text in _documents().items():
        for match in COMMAND.finditer(text):
            name = match.group(1)
            named.append((where, name))
            placeholder = name.removesuffix(".toml").isupper()  # CONFIG.toml, GRID.toml
            written_here = f"> {name}" in text[: match.start()]  # gnflow config > my.toml, then gnflow run my.toml
            if not (placeholder or written_here or (ROOT / name).is_file()):
                missing.append(f"{where}: {name}")
    assert not missing, missing
    # the README and the help of run and sweep name the shipped examples
    naming_examples = {where for where, name in named if name.startswith("examples/")}
    assert {"README.md", "gnflow run --help", "gnflow sweep --help"} <= naming_examples
