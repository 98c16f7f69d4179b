"""Memory bounds: what a run will allocate, estimated from its config before anything is allocated.

A size that comes from a config or from a file (``model.width``, ``data.n_train``, ``data.n_test``,
``solver.n_save``, ``observe.histogram_bins``, the arrays of a NetCDF file) is checked here
against the memory this process can still obtain, so that an impossible request is refused in one
line naming the key and the estimate instead of allocating until the machine gives out.

The memory available is the least of: the kernel's estimate of allocatable memory
(``MemAvailable`` of ``/proc/meminfo``, else the free physical pages of ``os.sysconf``), the room
left under the process's address-space limit (``RLIMIT_AS``), and the room left in its cgroup
(``memory.max``), when these exist.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gnflow.config._sections import RunConfig

__all__ = ["MemoryTerm", "available_memory", "format_bytes", "require_memory", "run_memory_terms"]

logger = logging.getLogger("gnflow.config")

#: Requests below this many bytes are not checked (reading the machine's state costs more than they do).
UNCHECKED_BYTES = 64 << 20


def format_bytes(n_bytes: float) -> str:
    """``n_bytes`` in binary units: ``1.5 GiB``, ``8.0 EiB``."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} EiB"


def _meminfo_available() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _sysconf_available() -> int | None:
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):  # macOS has only the total
        try:
            return int(os.sysconf(pages)) * int(os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, OSError, ValueError):
            continue
    return None


def _address_space_left() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
    except OSError:
        pass
    return max(0, soft - used)


def _cgroup_left() -> int | None:
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes this process can still allocate, or None where the platform says nothing about it."""
    bounds = [b for b in (_meminfo_available() or _sysconf_available(), _address_space_left(), _cgroup_left()) if b]
    return min(bounds) if bounds else None


@dataclass(frozen=True)
class MemoryTerm:
    """One part of an allocation: its size in bytes, the key that sets it and what it is.

    Attributes
    ----------
    n_bytes:
        Estimated size in bytes (a float: estimates of absurd sizes overflow no integer type).
    key:
        The config key (or file variable) that sets the size, with its value, e.g.
        ``data.n_train = 1000000000``.
    what:
        What is allocated, e.g. ``the N x N Gram matrix and its factorizations``.
    """

    n_bytes: float
    key: str
    what: str


def require_memory(
    terms: list[MemoryTerm],
    where: str,
    error: Callable[[str], Exception] = MemoryError,
    *,
    advice: str | Callable[[int], str] = "lower it",
) -> None:
    """Refuse an allocation whose total estimate exceeds :func:`available_memory`.

    Parameters
    ----------
    terms:
        The parts of the allocation; the message names the largest.
    where:
        What needs the memory, e.g. ``the run`` or a file name.
    error:
        Makes the exception from the message (``ConfigError`` for config keys; for files, one that
        puts the file name first).
    advice:
        What to do, at the end of the message; a function of the bytes available makes it (to say
        what size fits, e.g. the largest file that can be read).

    Raises
    ------
    error
        One line: the estimate, the memory available, and the key of the largest part, e.g.
        ``data.n_train = 1000000000: the run needs about 21.7 EiB (the N x N Gram matrix ...: 21.7 EiB),
        more than the 12.3 GiB available; lower it``.
    """
    total = math.fsum(term.n_bytes for term in terms)
    if total < UNCHECKED_BYTES:
        return
    available = available_memory()
    if available is None:
        logger.debug("%s needs about %s; the memory available is unknown on this platform", where, format_bytes(total))
        return
    if total <= available:
        return
    largest = max(terms, key=lambda term: term.n_bytes)
    raise error(
        f"{largest.key}: {where} needs about {format_bytes(total)} of memory ({largest.what}: "
        f"{format_bytes(largest.n_bytes)}), more than the {format_bytes(available)} available; "
        f"{advice(available) if callable(advice) else advice}"
    )


def _saved_states(config: RunConfig, n_train: int) -> tuple[int, str]:
    """How many states the run saves, and the key that says so."""
    flow, solver = config.flow, config.solver
    if flow.kind == "ggn":  # saved per step or per epoch of the mini-batch schedule
        per_epoch = -(-n_train // max(1, min(flow.batch_size, n_train)))
        if flow.iterations is not None:
            steps, key = flow.iterations, f"flow.iterations = {flow.iterations}"
            epochs = -(-steps // per_epoch)
        else:
            epochs = flow.epochs if flow.epochs is not None else 10
            steps, key = epochs * per_epoch, f"flow.epochs = {epochs}"
        saved = (steps if flow.save_every == "iteration" else epochs) + 1
        return saved, f"{key} (flow.save_every = {flow.save_every!r})"
    if solver.save_times is not None:
        return len(solver.save_times) + 1, f"solver.save_times ({len(solver.save_times)} times)"
    return solver.n_save, f"solver.n_save = {solver.n_save}"


def run_memory_terms(
    config: RunConfig,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    input_dim: int | None = None,
    source: str | None = None,
) -> list[MemoryTerm]:
    """The main allocations of the run ``config``, estimated from its sizes.

    Parameters
    ----------
    config:
        The run.
    n_train, n_test, input_dim:
        The sizes of data read from a file or a named data set (default: ``[data]`` of the config,
        the teacher--student task).
    source:
        Where such data came from (named in the messages instead of ``data.n_train``).

    Returns
    -------
    list of MemoryTerm
        Training data and Gram matrix (N x N, factorized and decomposed), test data, particles with
        the solver's stages and the (sample, particle) blocks, and the saved trajectory.
    """
    data, model = config.data, config.model
    n = data.n_train if n_train is None else n_train
    n_t = data.n_test if n_test is None else n_test
    d = data.input_dim if input_dim is None else input_dim
    width, components = model.width, d + 2
    item = 8.0 if config.dtype == "float64" else 4.0
    chunk = config.compute.chunk_size or max(1, config.compute.block_entries // max(n, 1))
    chunk = min(chunk, width)
    saved, saved_key = _saved_states(config, n)
    train_key = f"data.n_train = {n}" if source is None else f"{source} (N = {n})"
    test_key = f"data.n_test = {n_t}" if source is None else f"{source} ({n_t} test samples)"
    return [
        MemoryTerm(
            8.0 * (3 * n * (d + 1) + 4 * n * n),
            train_key,
            "the training data and the N x N Gram matrix with its factors",
        ),
        MemoryTerm(8.0 * 3 * n_t * (d + 1), test_key, "the test inputs and labels"),
        MemoryTerm(
            # the blocks twice: a saved state may be measured beside the integration, or two at a time
            16 * item * width * components + 8.0 * 8 * n * chunk + 8.0 * 2 * n * n,
            f"model.width = {width}",
            "the particles, the solver's stages and the (sample, particle) blocks, with those of a saved "
            "state measured at the same time",
        ),
        MemoryTerm(
            (item + 16.0) * saved * width * components,
            # the factor farther above its default first: the one to lower
            f"model.width = {width} x {saved_key}"
            if width / 5000 >= saved / 201
            else f"{saved_key} x model.width = {width}",
            "the saved trajectory",
        ),
    ]
