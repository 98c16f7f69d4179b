"""How many CPU threads a run uses: ``compute.threads`` (``--threads``), or free cores by default.

torch's intra-op thread pool defaults to one thread per core. On a machine where other processes
are busy, those threads wait for each other at every parallel region, and a run can take ten
times longer than with one thread (measured: the default run took 39-58 s on a 2-core machine with
one competing process, against 3.3-3.8 s with one thread). So gnflow's default
(``compute.threads = 0``) is

    threads = max(1, min(torch's current setting, cores - busy)),

where ``cores`` is the number of CPUs this process may run on (its affinity mask) and ``busy``
the number of other runnable threads on the machine: the least of five readings, 10 ms apart, of
the running-task count of ``/proc/loadavg`` minus this process's own. Reading the instantaneous
count rather than the one-minute load average makes the rule follow load that has just started
or stopped. On systems without ``/proc/loadavg`` the one-minute load average
(:func:`os.getloadavg`) is used instead, and where neither exists ``busy`` is 0; the choice is
logged. The default never raises the thread count above torch's current setting, so a sweep
worker or a study that has set one thread keeps it. An explicit ``compute.threads = K`` uses K
threads whatever the load.

The number used is stored in the file (attribute ``gnflow_threads``). Results agree to rounding
between thread counts (the order of floating-point reductions may differ), so the key is left out of
the config hash, like the output path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["busy_threads", "resolve_threads", "torch_threads", "usable_cores"]

logger = logging.getLogger(__name__)

_SAMPLES = 5
_SAMPLE_GAP_S = 0.01


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _running_tasks() -> int | None:
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            fields = f.read().split()
        return int(fields[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def busy_threads() -> tuple[int, str]:
    """Other runnable threads on the machine now, and how that was measured (for the log).

    The least of five readings of ``/proc/loadavg``'s running-task count, minus the reading thread
    itself; else the rounded one-minute load average; else 0.
    """
    readings = []
    for k in range(_SAMPLES):
        n = _running_tasks()
        if n is None:
            break
        readings.append(n)
        if k + 1 < _SAMPLES:
            time.sleep(_SAMPLE_GAP_S)
    if readings:
        return max(0, min(readings) - 1), "running tasks of /proc/loadavg"
    if hasattr(os, "getloadavg"):
        try:
            return max(0, round(os.getloadavg()[0])), "one-minute load average"
        except OSError:
            pass
    return 0, "no load information on this system"


def resolve_threads(requested: int) -> int:
    """The number of torch threads for a run with ``compute.threads = requested``.

    Parameters
    ----------
    requested:
        K >= 1: exactly K; 0: free cores, at most torch's current setting (see the module).

    Raises
    ------
    ValueError
        If ``requested`` is negative.
    """
    if requested < 0:
        raise ValueError(f"compute.threads must be >= 0 (0 = free cores), got {requested}")
    if requested > 0:
        return requested
    current = torch.get_num_threads()
    if current <= 1:
        return 1
    busy, how = busy_threads()
    cores = usable_cores()
    threads = max(1, min(current, cores - busy))
    logger.debug("threads: %d (%d usable cores, %d busy by %s, torch had %d)", threads, cores, busy, how, current)
    return threads


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with ``n`` torch intra-op threads, restoring the previous setting after."""
    previous = torch.get_num_threads()
    if n != previous:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
