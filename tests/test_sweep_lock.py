"""The sweep folder lock: written with its content, held by one process at a time, broken only when
provably stale (same host, dead process) or on request (--break-lock), released only by its holder."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gnflow.cli import main
from gnflow.config import ConfigError
from gnflow.grid import grid_from_dict, load_grid
from gnflow.lock import FolderLock, LockError, LockHolder, process_tag, tag_is_stale
from gnflow.sweep import SweepError, run_sweep

GRID = """
[base]
device = "cpu"
[base.data]
input_dim = 2
teacher_width = 2
n_train = 6
n_test = 4
[base.model]
width = 6
output_init = "normal"
[base.solver]
t_end = 10.0
n_save = 4
[grid]
seed = [1]
"""


def _dead_pid() -> int:
    """The id of a process of this host that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    pid = int(done.stdout)
    assert not _alive(pid)
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stale_lock(path: Path, pid: int) -> None:
    holder = LockHolder.of_this_process()
    path.write_bytes(LockHolder(holder.host, holder.boot, pid, "dead" * 8, holder.since).to_bytes())


def _contender(folder: str, trials: int, barrier, counts, dead_pid: int) -> None:
    """One of several processes that try to take the same lock in every trial at the same time."""
    lock_path = Path(folder) / ".sweep.lock"
    marker = Path(folder) / "holder"
    for trial in range(trials):
        if barrier.wait() == 0 and trial % 2:
            _stale_lock(lock_path, dead_pid)  # every other trial starts from a killed sweep's lock
        barrier.wait()
        lock = FolderLock(lock_path)
        try:
            lock.acquire()
        except LockError:
            pass
        else:
            # a second holder at the same time would find the marker
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            time.sleep(0.002)
            os.unlink(marker)
            with counts.get_lock():
                counts[trial] += 1
            barrier.wait()  # everyone has tried before the holder lets go
            lock.release()
            barrier.wait()
            continue
        barrier.wait()
        barrier.wait()


def test_many_processes_racing_for_the_lock_never_both_hold_it(tmp_path):
    n_processes, trials = 8, 200
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(n_processes, timeout=60)
    counts = context.Array("i", trials)
    dead = _dead_pid()
    workers = [
        context.Process(target=_contender, args=(str(tmp_path), trials, barrier, counts, dead))
        for _ in range(n_processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0] * n_processes  # a second holder fails on the marker
    assert list(counts) == [1] * trials  # exactly one holder per trial, stale lock or not
    assert not (tmp_path / ".sweep.lock").exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_the_lock_exists_only_with_its_content(tmp_path):
    lock = FolderLock(tmp_path / ".sweep.lock")
    holder = lock.acquire()
    assert LockHolder.parse((tmp_path / ".sweep.lock").read_bytes()) == holder
    assert holder.host == socket.gethostname() and holder.pid == os.getpid()
    lock.release()
    assert not (tmp_path / ".sweep.lock").exists()


def test_a_lock_of_another_host_is_respected_and_kept(tmp_path):
    study = load_grid(_write(tmp_path / "g.toml", GRID))
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".sweep.lock"
    foreign = LockHolder("node-elsewhere", "other-boot", 1, "f" * 32, "2026-01-01T00:00:00+00:00")
    lock.write_bytes(foreign.to_bytes())
    with pytest.raises(SweepError) as info:
        run_sweep(study, out, executor="serial", progress=False)
    message = str(info.value)
    assert "pid 1 on host node-elsewhere" in message and "--break-lock" in message and "\n" not in message
    assert lock.read_bytes() == foreign.to_bytes()
    assert not (out / "runs" / f"{study.runs[0].run_id}.nc").exists()


def test_break_lock_takes_a_foreign_lock(tmp_path, capsys):
    grid = _write(tmp_path / "g.toml", GRID)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".sweep.lock").write_bytes(LockHolder("node-elsewhere", "b", 4242, "f" * 32, "x").to_bytes())
    assert main(["sweep", str(grid), "-o", str(out), "--workers", "0", "-q"]) == 1
    assert "node-elsewhere" in capsys.readouterr().err
    assert main(["sweep", str(grid), "-o", str(out), "--workers", "0", "-q", "--break-lock"]) == 0
    assert (out / "sweep.nc").is_file() and not (out / ".sweep.lock").exists()


def test_a_stale_lock_of_this_host_is_broken_without_asking(tmp_path, caplog):
    _stale_lock(tmp_path / ".sweep.lock", _dead_pid())
    with caplog.at_level("WARNING", logger="gnflow.lock"):
        FolderLock(tmp_path / ".sweep.lock").acquire()
    assert "removed the stale lock" in caplog.text


@pytest.mark.parametrize("content", [b"", b"garbage", f"{socket.gethostname()}".encode()])
def test_a_lock_without_a_holder_is_not_taken_for_stale(tmp_path, content):
    # an empty file is what a lock of earlier versions looked like between its creation and its write
    (tmp_path / ".sweep.lock").write_bytes(content)
    with pytest.raises(LockError, match=r"not a lock of this gnflow.*--break-lock"):
        FolderLock(tmp_path / ".sweep.lock").acquire()
    assert (tmp_path / ".sweep.lock").read_bytes() == content
    FolderLock(tmp_path / ".sweep.lock").acquire(break_lock=True)


def test_a_lock_of_an_earlier_version_is_read(tmp_path):
    (tmp_path / ".sweep.lock").write_text(f"{socket.gethostname()} {os.getpid()}")
    with pytest.raises(LockError, match=f"pid {os.getpid()} on host"):
        FolderLock(tmp_path / ".sweep.lock").acquire()
    (tmp_path / ".sweep.lock").write_text(f"{socket.gethostname()} {_dead_pid()}")
    FolderLock(tmp_path / ".sweep.lock").acquire()


def test_release_removes_only_its_own_lock(tmp_path, caplog):
    first = FolderLock(tmp_path / ".sweep.lock")
    first.acquire()
    second = FolderLock(tmp_path / ".sweep.lock")
    taken = second.acquire(break_lock=True)  # the first sweep's lock is broken while it runs
    with caplog.at_level("WARNING", logger="gnflow.lock"):
        first.release()
    assert "no longer this process's lock" in caplog.text
    assert LockHolder.parse((tmp_path / ".sweep.lock").read_bytes()) == taken
    second.release()
    assert not (tmp_path / ".sweep.lock").exists()


def test_process_tags_prove_staleness_only_on_this_host():
    host, pid = process_tag().split("-")
    assert int(pid) == os.getpid() and not tag_is_stale(process_tag())
    assert tag_is_stale(f"{host}-{_dead_pid()}")
    assert not tag_is_stale(f"00000000-{_dead_pid()}")  # another host: its process may be alive
    assert not tag_is_stale("abc123")  # a name without a tag (earlier versions)


@pytest.mark.parametrize("name", ["../../escape", "a/../..", "/abs", "a//b", "..", ".", "", "-rf", "x\x1b[J", ".h"])
def test_grid_names_must_be_file_names(tmp_path, name):
    with pytest.raises(ConfigError, match=r"sweep\.name: .* is not a file name"):
        grid_from_dict({"sweep": {"name": name}, "grid": {"seed": [1]}}, name="g")
    assert not any(tmp_path.parent.glob("escape"))


def test_grid_names_may_name_folders_below_the_output_folder():
    for name in ("init-scale", "arbel2023-tau0_gd_euler/tau0=0.1_seed=1", "N=500"):
        assert grid_from_dict({"sweep": {"name": name}, "grid": {"seed": [1]}}, name="g").name == name


def test_a_grid_name_escaping_the_output_folder_is_refused_by_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    grid = _write(tmp_path / "g.toml", '[sweep]\nname = "../../escape"\n' + GRID)
    assert main(["sweep", str(grid), "--workers", "0"]) == 2
    assert "is not a file name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [grid]


def test_study_grid_names_are_file_names(tmp_path):
    from gnflow.studies import StudyContext, run_grid

    context = StudyContext(name="arbel2023", scale="smoke", out_dir=tmp_path / "study", progress=False)
    with pytest.raises(ConfigError, match="is not a file name"):
        run_grid(context, "..", {"device": "cpu"})
    assert not (tmp_path / "study").exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
