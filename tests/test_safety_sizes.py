"""Sizes refused before they are allocated, messages that name the file, the key and the knob, keys
that do not apply refused, files written with ordinary permissions, stale temporary files cleaned."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gnflow.checkpoint import Checkpointer
from gnflow.cli import main
from gnflow.config import ConfigError, DataConfig, config_from_dict, require_memory, run_memory_terms
from gnflow.dataset import atomic_write, dataset_result, remove_stale_temporaries
from gnflow.grid import load_grid
from gnflow.lock import process_tag
from gnflow.simulation import run
from gnflow.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def _values(path, **sections):
    values = {
        "seed": 1,
        "device": "cpu",
        "data": {"input_dim": 3, "teacher_width": 2, "n_train": 12, "n_test": 10},
        "model": {"width": 12, "output_init": "normal"},
        "flow": {"kind": "gauss_newton", "damping": "constant", "epsilon": 1e-4},
        "solver": {"method": "dopri5", "t_end": 50.0, "n_save": 12, "rtol": 1e-7, "atol": 1e-10},
        "output": {"path": str(path)},
    }
    for name, changes in sections.items():
        values[name] = {**values[name], **changes}
    return values


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(done.stdout)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("gnflow: error: ") and "Traceback" not in err, err
    return err


# --- sizes estimated before anything is allocated ---------------------------------------------------


SIZES = [
    (["model.width=1000000000"], "model.width = 1000000000"),
    (["data.n_train=1000000000"], "data.n_train = 1000000000"),
    (["solver.n_save=100000000"], "solver.n_save = 100000000"),
    (["data.n_test=10000000000"], "data.n_test = 10000000000"),
    (
        ["flow.kind=ggn", "flow.iterations=1000000000", "flow.save_every=iteration", "flow.batch_size=4"],
        "flow.iterations = 1000000000",
    ),
]


@pytest.mark.parametrize(("overrides", "key"), SIZES)
def test_impossible_sizes_are_refused_before_allocation_with_the_key(tmp_path, overrides, key):
    args = ["run", "--set", "model.width=50", "--set", "data.n_train=20", "--set", "data.n_test=10"]
    for item in overrides:
        args += ["--set", item]
    code = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({3 * GIB}, {3 * GIB}))
        from gnflow.cli import main
        sys.exit(main({[*args, "-o", "x.nc"]!r}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    err = done.stderr.strip()
    assert done.returncode == 2, err
    assert err.count("\n") == 0 and "Traceback" not in err and "MemoryError" not in err, err
    assert err.startswith("gnflow: error: ") and "the run needs about" in err
    assert key in err and "needs about" in err and "iB" in err and "available" in err
    assert list(tmp_path.iterdir()) == []


def test_the_default_run_and_the_papers_sizes_are_not_refused():
    import tomllib

    from gnflow.cli import default_config_text

    default = config_from_dict(tomllib.loads(default_config_text()))
    paper = config_from_dict({"data": {"n_train": 2000, "n_test": 10000}, "model": {"width": 5000}})
    for config in (default, paper):
        require_memory(run_memory_terms(config), "the run", ConfigError)
    assert sum(term.n_bytes for term in run_memory_terms(paper)) < 2 * GIB


def test_a_data_file_too_large_for_memory_is_refused(tmp_path, monkeypatch):
    import gnflow.config._memory as memory

    x = np.zeros((1000, 3))
    np.savez(tmp_path / "d.npz", x=x, y=x[:, 0])
    monkeypatch.setattr(memory, "UNCHECKED_BYTES", 0)
    monkeypatch.setattr(memory, "available_memory", lambda: 10_000)
    config = config_from_dict(_values(tmp_path / "r.nc", data={"kind": "file", "path": str(tmp_path / "d.npz")}))
    with pytest.raises(
        ValueError,
        match=r"d\.npz: array 'x\.npy': reading its arrays needs about .* than the 9\.8 KiB available",
    ):
        run(config, progress=False)
    assert not (tmp_path / "r.nc").exists()


def _memory_of(monkeypatch, available: int) -> None:
    import gnflow.config._memory as memory

    monkeypatch.setattr(memory, "UNCHECKED_BYTES", 0)
    monkeypatch.setattr(memory, "available_memory", lambda: available)


def test_a_csv_file_too_large_for_memory_is_refused_from_its_size_before_it_is_read(tmp_path, monkeypatch):
    from gnflow.data import DataError, load_data_file

    path = tmp_path / "huge.csv"
    with open(path, "wb") as stream:
        stream.truncate(1 << 40)  # 1 TiB, sparse: no disk used, and reading it would take hours
    _memory_of(monkeypatch, 10 * GIB)
    opened = []
    monkeypatch.setattr(Path, "open", lambda *args, **kwargs: opened.append(args) or pytest.fail("read"))
    with pytest.raises(DataError) as caught:
        load_data_file(path)
    message = str(caught.value)
    assert message == (
        f"{path}: a CSV file of 1.0 TiB: parsing it needs about 10.0 TiB of memory (up to 10 bytes of memory "
        "per byte of the file: 10.0 TiB), more than the 10.0 GiB available; CSV files up to 1024.0 MiB can be "
        "read with this memory; save the data as .npz or .nc (their arrays are checked at their exact size)"
    )
    assert opened == []


def test_a_huge_csv_file_is_refused_in_one_line_under_an_address_space_limit(tmp_path):
    with open(tmp_path / "huge.csv", "wb") as stream:
        stream.truncate(1 << 40)
    code = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({3 * GIB}, {3 * GIB}))
        from gnflow.cli import main
        sys.exit(main(["run", "--set", "data.kind=file", "--set", "data.path=huge.csv", "-o", "x.nc"]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    err = done.stderr.strip()
    assert done.returncode == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("gnflow: error: huge.csv: a CSV file of 1.0 TiB: parsing it needs about 10.0 TiB")
    assert "CSV files up to " in err and "can be read with this memory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.csv"]


def test_a_csv_row_too_long_for_memory_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    from gnflow.data import DataError, load_data_file

    path = tmp_path / "wide.csv"
    path.write_text("y\n" + "1," * (3 << 19) + "1\n")  # one row of 3 MiB: the file check passes
    _memory_of(monkeypatch, 100 << 20)
    with pytest.raises(DataError) as caught:
        load_data_file(path)
    assert str(caught.value).startswith(
        f"{path}: the row at line 2 (1048576 characters so far): parsing it needs about 128.0 MiB of memory"
    )
    assert str(caught.value).endswith(
        "more than the 100.0 MiB available; split the row, or save the data as .npz or .nc"
    )


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("y\n" + "1\n" * 100_000, 100_000),
        ("x,y\n" + "1,2\n" * 100_000, 200_000),
        ("x,y,split\n" + "1,2,test\n" * 50_000, 100_000),
    ],
)
def test_parsing_a_csv_file_stays_within_its_memory_estimate(tmp_path, text, numbers):
    import tracemalloc

    from gnflow.data import CSV_BYTES_PER_FILE_BYTE, _read_csv

    path = tmp_path / "dense.csv"
    path.write_text(text)
    tracemalloc.start()
    try:
        arrays = _read_csv(path)  # the parse, as for a file of one column 'y' too (refused after it)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(array.size for array in arrays.values()) == numbers
    assert peak <= CSV_BYTES_PER_FILE_BYTE * (path.stat().st_size + 1), peak


MALFORMED_CSV = [
    (
        "latin1.csv",
        "x,y\n1,2\n# M\u00fcller\n".encode("latin-1"),
        "latin1.csv: not UTF-8 text (byte 0xfc at offset 11); save the CSV file as UTF-8",
    ),
    ("empty.csv", b"", "empty.csv: empty CSV file"),
    ("header.csv", b"x,y\n\n", "header.csv: CSV has a header but no data rows"),
    ("noy.csv", b"a,b\n1,2\n", "noy.csv: CSV needs a header row with a 'y' column"),
    ("ragged.csv", b"x,y\n1,2\n3\n", "ragged.csv: line 3 has 1 field, the header 2: every CSV row must have 2 fields"),
    ("text.csv", b"x,y\n1,2\n3,abc\n", "text.csv: line 3, column 'y': non-numeric CSV value 'abc'"),
    ("blank.csv", b"x,y\n1,2\n,4\n", "blank.csv: line 3, column 'x': an empty CSV value"),
    ("split.csv", b"x,y,split\n1,2,valid\n", "split.csv: line 2: 'split' values must be train or test, got 'valid'"),
    (
        "field.csv",
        b"x,y\n" + b"1" * 200_000 + b",2\n",
        "field.csv: line 2: malformed CSV (field larger than field limit (131072))",
    ),
    ("nul.csv", b"\0" * 4096, "nul.csv: CSV needs a header row with a 'y' column"),
]


@pytest.mark.parametrize(("name", "content", "message"), MALFORMED_CSV, ids=[case[0] for case in MALFORMED_CSV])
def test_a_malformed_csv_file_gives_one_line_naming_the_file_and_the_problem(
    tmp_path, capsys, monkeypatch, name, content, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(content)
    assert main(["run", "--set", "data.kind=file", "--set", f"data.path={name}", "-o", "x.nc"]) == 2
    assert _one_line_error(capsys).startswith(f"gnflow: error: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_csv_files_with_any_line_ending_a_byte_order_mark_and_quotes_are_read(tmp_path):
    from gnflow.data import load_data_file

    for ending in ("\n", "\r\n", "\r"):
        text = ending.join(['\ufeff"x 1","y",split', "1.5,2,train", '"3",4e-1,test', "", "5,-6,train"]) + ending
        (tmp_path / "d.csv").write_text(text, newline="")
        data = load_data_file(tmp_path / "d.csv")
        np.testing.assert_array_equal(data.x_train, [[1.5], [5.0]])
        np.testing.assert_array_equal(data.y_train, [2.0, -6.0])
        np.testing.assert_array_equal(data.x_test, [[3.0]])
        np.testing.assert_array_equal(data.y_test, [0.4])


def test_a_data_path_that_is_no_regular_file_is_called_so(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkfifo(tmp_path / "pipe.csv")
    assert main(["run", "--set", "data.kind=file", "--set", "data.path=pipe.csv", "-o", "x.nc"]) == 2
    assert "data file 'pipe.csv' is not a regular file" in _one_line_error(capsys)


# --- messages that name the file -------------------------------------------------------------------


def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_bytes(b"seed = 2\n# caf\xe9\n")
    assert main(["run", "bad.toml"]) == 2
    err = _one_line_error(capsys)
    assert "config file bad.toml: not UTF-8 text (byte 0xe9 at offset 14)" in err
    (tmp_path / "grid.toml").write_bytes(b"[grid]\nseed = [1] # \xff\n")
    with pytest.raises(ConfigError, match=r"sweep grid file .*grid\.toml: not UTF-8 text"):
        load_grid(tmp_path / "grid.toml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml", "grid.toml"]


def test_a_csv_file_that_is_not_utf8_names_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.csv").write_bytes("x,y\n1,2\n3,4\n5,6\n# M\u00fcller\n".encode("latin-1"))
    assert main(["run", "--set", "data.kind=file", "--set", "data.path=d.csv", "-o", "x.nc"]) == 2
    assert "d.csv: not UTF-8 text (byte 0xfc" in _one_line_error(capsys)


def test_a_directory_is_called_a_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder.toml").mkdir()
    assert main(["run", "folder.toml"]) == 2
    assert "config file 'folder.toml' is a directory" in _one_line_error(capsys)
    assert main(["run", "--set", "data.kind=file", "--set", "data.path=folder.toml", "-o", "x.nc"]) == 2
    assert "data file 'folder.toml' is a directory" in _one_line_error(capsys)
    assert main(["sweep", "folder.toml"]) == 2
    assert "sweep grid file 'folder.toml' is a directory" in _one_line_error(capsys)


# --- singular Gram matrices: say singular, and name the knob --------------------------------------


def _singular_data(tmp_path: Path) -> str:
    x = np.random.default_rng(3).normal(size=(6, 3))
    x = np.concatenate([x, x])  # every training point twice: A has rank 6 of 12
    np.savez(tmp_path / "twice.npz", x=x, y=np.sin(x[:, 0]))
    return str(tmp_path / "twice.npz")


@pytest.mark.parametrize("damping", ["constant", "eigmin"])
def test_undamped_gauss_newton_on_singular_data_says_singular(tmp_path, damping):
    data = {"kind": "file", "path": _singular_data(tmp_path)}
    config = config_from_dict(_values(tmp_path / "r.nc", data=data, flow={"damping": damping, "epsilon": 0.0}))
    ds, _ = run(config, progress=False)
    result = dataset_result(ds)
    assert result.failed
    assert "the Gram matrix A is singular" in result.reason and "semi-definite" not in result.reason
    assert 'use flow.damping = "eigmin" or flow.epsilon > 0' in result.reason


def test_ggn_on_singular_batches_names_flow_alpha(tmp_path):
    data = {"kind": "file", "path": _singular_data(tmp_path)}
    flow = {"kind": "ggn", "lam": 1.0, "alpha": 0.0, "batch_size": 12, "epochs": 2}
    ds, _ = run(config_from_dict(_values(tmp_path / "r.nc", data=data, flow=flow)), progress=False)
    result = dataset_result(ds)
    assert result.failed and "singular" in result.reason
    assert "flow.alpha > 0" in result.reason and "flow.epsilon" not in result.reason


# --- keys that the data kind does not read -------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kind": "teacher", "max_train": 40}, "data.max_train: applies to named real data sets only"),
        ({"kind": "file", "path": "d.npz", "max_train": 40}, "data.max_train: applies to named real data sets only"),
        ({"kind": "diabetes", "n_train": 40}, "data.n_train: does not apply to data.kind = 'diabetes'"),
        ({"kind": "concrete", "n_test": 100}, "data.n_test: does not apply to data.kind = 'concrete'"),
    ],
)
def test_data_keys_that_do_not_apply_are_refused(values, message):
    import gnflow.realdata  # noqa: F401  (registers the named data sets)

    with pytest.raises(ConfigError, match=message):
        DataConfig(**values)


def test_named_data_sets_take_max_train():
    import gnflow.realdata  # noqa: F401

    assert DataConfig(kind="diabetes", max_train=40).max_train == 40


TINY_GRID = (
    '[base]\ndevice = "cpu"\n[base.model]\nwidth = 4\noutput_init = "normal"\n'
    "[base.data]\nn_train = 4\nn_test = 2\ninput_dim = 2\n[base.solver]\nt_end = 1.0\n"
    "n_save = 3\n[grid]\nseed = [1]\n"
)

# --- permissions and stale temporary files -----------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_checkpoints_and_manifests_have_ordinary_permissions(tmp_path, umask):
    previous = os.umask(umask)
    try:
        config = config_from_dict(_values(tmp_path / "r.nc"))
        hook = Checkpointer(tmp_path / "r.checkpoint.pt", config)
        hook.write({"recorder": {"n_accepted": 1, "t": [0.0]}})
        grid = tmp_path / "g.toml"
        grid.write_text(TINY_GRID)
        result = run_sweep(load_grid(grid), tmp_path / "sweep", executor="serial", progress=False)
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    for path in (tmp_path / "r.checkpoint.pt", result.manifest_path, result.combined_path):
        assert path.stat().st_mode & 0o777 == expected, path


def test_stale_temporary_files_of_killed_writers_are_removed(tmp_path):
    host = process_tag().split("-")[0]
    dead, alive = _dead_pid(), os.getpid()
    names = {
        f".r.nc.{host}-{dead}.a1b2c3d4.tmp": False,  # this host, process gone: removed
        f".r.nc.{host}-{alive}.a1b2c3d4.tmp": True,  # a live writer's
        f".r.nc.0badcafe-{dead}.a1b2c3d4.tmp": True,  # another host's, recent
        ".r.nc.k2j3h4g5.tmp": True,  # an earlier version's, recent: nothing proves it stale
        f".r.nc.{host}-{dead}.a1b2c3.tmp": True,  # not a name that mkstemp makes
        f".other.nc.{host}-{dead}.a1b2c3d4.tmp": True,  # another file's
    }
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    atomic_write(tmp_path / "r.nc", lambda name: Path(name).write_bytes(b"done"))
    assert (tmp_path / "r.nc").read_bytes() == b"done"
    assert {name: (tmp_path / name).exists() for name in names} == names
    assert remove_stale_temporaries(tmp_path / "other.nc") == [tmp_path / f".other.nc.{host}-{dead}.a1b2c3d4.tmp"]
    (tmp_path / f".r.nc.{host}-{dead}.x9y8z7w6.tmp").write_bytes(b"partial")
    (tmp_path / f".s.nc.{host}-{dead}.x9y8z7w6.tmp").write_bytes(b"partial")
    assert len(remove_stale_temporaries(tmp_path)) == 2  # a folder: the stale files of all its files
    names[f".other.nc.{host}-{dead}.a1b2c3d4.tmp"] = False
    assert {name: (tmp_path / name).exists() for name in names} == names


def _aged(path: Path, hours: float) -> Path:
    then = time.time() - hours * 3600
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def test_temporary_files_of_earlier_versions_are_removed_only_after_a_day_and_only_by_their_exact_name(tmp_path):
    from gnflow.lock import UNOWNED_STALE_SECONDS

    assert UNOWNED_STALE_SECONDS == 24 * 3600
    host = process_tag().split("-")[0]
    names = {
        (".r.nc.k2j3h4g5.tmp", 25): False,  # an earlier version's, a day old: removed
        (".r.nc.a_9zz0b1.tmp", 25): False,
        (f".r.nc.0badcafe-{_dead_pid()}.a1b2c3d4.tmp", 25): False,  # another host's (or boot's), a day old
        (".r.nc.m4n5p6q7.tmp", 23): True,  # not yet a day
        (f".r.nc.{host}-{os.getpid()}.a1b2c3d4.tmp", 25): True,  # a live writer's, however old
        (".r.nc.k2j3h4g.tmp", 25): True,  # 7 characters: not mkstemp's
        (".r.nc.K2J3H4G5.tmp", 25): True,  # upper case: not mkstemp's
        ("r.nc.k2j3h4g5.tmp", 25): True,  # no leading dot
        (".r.nc.k2j3h4g5.tmp.bak", 25): True,
        (".r.nc.k2j3h4g5.TMP", 25): True,
        (".rr.nc.k2j3h4g5.tmp", 25): True,  # another file's (removed for the folder below)
        ("data.tmp", 25): True,
    }
    for name, hours in names:
        (tmp_path / name).write_bytes(b"partial")
        _aged(tmp_path / name, hours)
    (tmp_path / "target").write_bytes(b"keep")
    os.symlink(tmp_path / "target", tmp_path / ".r.nc.linkname.tmp")
    _aged(tmp_path / ".r.nc.linkname.tmp", 25)
    (tmp_path / ".r.nc.foldernm.tmp").mkdir()
    _aged(tmp_path / ".r.nc.foldernm.tmp", 25)
    atomic_write(tmp_path / "r.nc", lambda name: Path(name).write_bytes(b"done"))
    assert {name: (tmp_path / name).exists() for name, _ in names} == {name: keep for (name, _), keep in names.items()}
    assert (tmp_path / ".r.nc.linkname.tmp").is_symlink() and (tmp_path / "target").read_bytes() == b"keep"
    assert (tmp_path / ".r.nc.foldernm.tmp").is_dir()
    assert remove_stale_temporaries(tmp_path) == [tmp_path / ".rr.nc.k2j3h4g5.tmp"]  # a folder: every file's


def test_checkpoints_sweeps_and_write_checks_remove_temporary_files_of_earlier_versions(tmp_path):
    from gnflow.dataset import check_writable

    config = config_from_dict(_values(tmp_path / "r.nc"))
    old = tmp_path / ".r.checkpoint.pt.abcdefgh.tmp"
    old.write_bytes(b"partial")
    _aged(old, 25)
    Checkpointer(tmp_path / "r.checkpoint.pt", config).write({"recorder": {"n_accepted": 1, "t": [0.0]}})
    assert not old.exists() and (tmp_path / "r.checkpoint.pt").exists()
    probe = tmp_path / ".gnflow-write-test.abcdefgh.tmp"
    probe.write_bytes(b"")
    _aged(probe, 25)
    check_writable(tmp_path)
    assert not probe.exists()
    runs = tmp_path / "sweep" / "runs"
    runs.mkdir(parents=True)
    for name in (".abc123.nc.abcdefgh.tmp", ".abc123.nc.ijklmnop.tmp"):
        (runs / name).write_bytes(b"partial")
    _aged(runs / ".abc123.nc.abcdefgh.tmp", 25)
    grid = tmp_path / "g.toml"
    grid.write_text(TINY_GRID)
    run_sweep(load_grid(grid), tmp_path / "sweep", executor="serial", progress=False)
    assert not (runs / ".abc123.nc.abcdefgh.tmp").exists() and (runs / ".abc123.nc.ijklmnop.tmp").exists()


def test_temporary_files_of_a_lock_taken_by_a_killed_process_are_removed(tmp_path):
    import dataclasses
    import socket

    from gnflow.lock import FolderLock, LockHolder

    me = LockHolder.of_this_process()
    dead = dataclasses.replace(me, pid=_dead_pid()).to_bytes()
    other = dataclasses.replace(me, host="elsewhere").to_bytes()
    names = {
        (f".sweep.lock.{'a' * 32}.tmp", dead, 0): False,  # this host, process gone
        (f".sweep.lock.{'b' * 32}.tmp", me.to_bytes(), 0): True,  # a live process is taking it now
        (f".sweep.lock.{'c' * 32}.tmp", other, 0): True,  # another host's, recent
        (f".sweep.lock.{'d' * 32}.tmp", other, 25): False,  # another host's, a day old
        (f".sweep.lock.{'e' * 32}.tmp", b"", 0): True,  # killed before writing, recent
        (f".sweep.lock.{'f' * 32}.tmp", b"", 25): False,
        (f".sweep.lock.{'g' * 32}.tmp", dead, 25): True,  # not a token of a lock
        (f".sweep.lock.{'a' * 31}.tmp", dead, 25): True,
    }
    for name, content, hours in names:
        (tmp_path / name).write_bytes(content)
        _aged(tmp_path / name, hours)
    assert me.host == socket.gethostname()
    with FolderLock(tmp_path / ".sweep.lock").held():
        pass
    assert {name: (tmp_path / name).exists() for name, _, _ in names} == {
        name: keep for (name, _, _), keep in names.items()
    }
