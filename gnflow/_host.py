"""Host reads of tensor values in the vector fields, and a count of them.

On a GPU, reading a tensor's value on the host (``.item()``, ``float(t)``, ``bool(t)``,
``.tolist()``, ``.cpu()``) waits for all the work queued before it: a host synchronization, which
costs the latency of the device queue (tens of microseconds to milliseconds) whatever the size of
the value. The Gauss--Newton and gradient fields read values only through :func:`read_values`
and the thin wrappers :func:`read_float`, :func:`read_int` and :func:`read_bool`, so that
:func:`count_host_reads` can count their reads per evaluation; the reads are counted on every
device, so that CPU tests pin the number a GPU run would make.

The fields take a few branches by device: on a device the damped solve applies an explicit
inverse and runs its Lanczos and CG iterations in blocks (:class:`~gnflow.damping.DampedGramSolver`),
and the gradient field skips its finiteness check. :func:`device_paths` makes them take the device
branches on CPU tensors too, so that a count made on the CPU is the count of the device run.

A host value sent to the device (:func:`to_device`) is copied without waiting for the device.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "HostReads",
    "count_host_reads",
    "device_paths",
    "read_bool",
    "read_float",
    "read_int",
    "read_values",
    "synchronizes",
    "to_device",
]


@dataclass
class HostReads:
    """Host reads counted inside one :func:`count_host_reads` block.

    Attributes
    ----------
    count:
        Number of reads (each one host synchronization on a GPU).
    values:
        Number of scalars they brought to the host.
    """

    count: int = 0
    values: int = 0


class _State(threading.local):
    def __init__(self) -> None:
        self.counters: list[HostReads] = []
        self.device_paths = False


_state = _State()


@contextmanager
def count_host_reads() -> Iterator[HostReads]:
    """Count the host reads of the fields made inside the block (in this thread).

    Example::

        with count_host_reads() as reads:
            flow(t, weights)
        reads.count  # host synchronizations of one evaluation on a GPU
    """
    counter = HostReads()
    _state.counters.append(counter)
    try:
        yield counter
    finally:
        _state.counters.remove(counter)


@contextmanager
def device_paths(enabled: bool = True) -> Iterator[None]:
    """Take the branches of a GPU run on CPU tensors inside the block (in this thread)."""
    previous = _state.device_paths
    _state.device_paths = enabled
    try:
        yield
    finally:
        _state.device_paths = previous


def synchronizes(tensor: torch.Tensor) -> bool:
    """Whether a host read of ``tensor`` is a host synchronization (a non-CPU device), or the
    block asks for the device branches (:func:`device_paths`)."""
    return tensor.device.type != "cpu" or _state.device_paths


def read_values(tensor: torch.Tensor) -> list[float]:
    """The entries of ``tensor`` (any shape, flattened) as Python floats: one host read.

    Values that are needed together are concatenated into one tensor and read by one call.
    """
    values = tensor.detach().reshape(-1).double().tolist()
    for counter in _state.counters:
        counter.count += 1
        counter.values += len(values)
    return values


def read_float(tensor: torch.Tensor) -> float:
    """The value of the one-element ``tensor``: one host read."""
    (value,) = read_values(tensor)
    return value


def read_int(tensor: torch.Tensor) -> int:
    """The integer value of the one-element ``tensor``: one host read."""
    return int(read_float(tensor))


def read_bool(tensor: torch.Tensor) -> bool:
    """The truth value of the one-element ``tensor``: one host read."""
    return read_float(tensor) != 0.0


def to_device(values: np.ndarray | Sequence[float], device: torch.device) -> torch.Tensor:
    """Host values as a float64 tensor on ``device``, copied without waiting for the device."""
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64))
    if tensor.device == device:
        return tensor
    return tensor.to(device, non_blocking=True)
