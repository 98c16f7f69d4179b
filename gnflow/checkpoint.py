"""Checkpoints of long runs: the solver position written every so often beside the output file.

A checkpoint is a ``torch.save`` file ``NAME.checkpoint.pt`` next to the run's ``NAME.nc``. It
holds the position that :func:`gnflow.solve.integrate` hands to its checkpoint hook (the
stepper's state, the states saved so far, the counters and the clocks) and the :func:`~gnflow.config.config_hash` of
the run, so a checkpoint is only ever resumed by the computation that wrote it. Files are
written atomically (temporary file, then rename): a crash while writing leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import torch

from gnflow import __version__
from gnflow.config import OutputConfig, RunConfig, config_hash
from gnflow.dataset import atomic_write

__all__ = ["CheckpointError", "Checkpointer", "checkpoint_path", "load_checkpoint"]

logger = logging.getLogger(__name__)

FORMAT = 3
"""Layout of the file: 3 = the position (``recorder``, ``stepper``, ``flow``, clocks) serialized
to bytes, with their SHA-256 digest (``position_sha256``) verified on load."""


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be resumed by this run (other config, unreadable file)."""


def checkpoint_path(output: str | Path) -> Path:
    """The checkpoint file of the run writing ``output``: ``NAME.checkpoint.pt`` beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}.checkpoint.pt")


class Checkpointer:
    """The checkpoint hook of one run (see :class:`gnflow.solve.CheckpointHook`).

    Parameters
    ----------
    path:
        Checkpoint file.
    config:
        The run's config; its hash is stored so that only the same computation resumes.
    every_s:
        Write when at least this many wall-clock seconds have passed since the last write
        (0 = no time trigger).
    every_steps:
        Write when at least this many accepted steps have been taken since the last write
        (0 = no step trigger).
    """

    def __init__(self, path: str | Path, config: RunConfig, *, every_s: float = 0.0, every_steps: int = 0) -> None:
        if every_s < 0 or every_steps < 0:
            raise ValueError("every_s and every_steps must be >= 0")
        self.path = Path(path)
        self.config_hash = config_hash(config)
        self.every_s = every_s
        self.every_steps = every_steps
        self.n_written = 0
        self._last_time = time.monotonic()
        self._last_steps: int | None = None

    @classmethod
    def for_output(cls, output: str | Path, config: RunConfig) -> Checkpointer | None:
        """The hook configured by ``config.output`` for a run writing ``output`` (None when off)."""
        settings: OutputConfig = config.output
        if settings.checkpoint_every_s <= 0 and settings.checkpoint_every_steps <= 0:
            return None
        return cls(
            checkpoint_path(output),
            config,
            every_s=settings.checkpoint_every_s,
            every_steps=settings.checkpoint_every_steps,
        )

    def due(self, n_accepted: int) -> bool:
        """Whether a checkpoint is due after ``n_accepted`` accepted steps."""
        if self._last_steps is None:
            self._last_steps = n_accepted - 1  # steps are counted from the start of this call
        if self.every_steps > 0 and n_accepted - self._last_steps >= self.every_steps:
            return True
        return self.every_s > 0 and time.monotonic() - self._last_time >= self.every_s

    def write(self, position: dict[str, Any]) -> None:
        """Write ``position`` atomically to :attr:`path`, with the SHA-256 digest of its bytes."""
        buffer = io.BytesIO()
        torch.save(position, buffer)
        data = buffer.getvalue()
        payload = {
            "format": FORMAT,
            "gnflow_version": __version__,
            "config_hash": self.config_hash,
            "position_sha256": hashlib.sha256(data).hexdigest(),
            "position": data,
        }
        atomic_write(self.path, lambda name: torch.save(payload, name))
        self.n_written += 1
        self._last_time = time.monotonic()
        self._last_steps = int(position["recorder"]["n_accepted"])
        logger.debug("checkpoint at t=%.6g written to %s", position["recorder"]["t"][-1], self.path)

    def remove(self) -> None:
        """Delete the checkpoint file (once the run's output is safely written)."""
        self.path.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (torch's unpickling errors span many lines)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_checkpoint(path: str | Path, config: RunConfig) -> dict[str, Any]:
    """The solver position stored in ``path`` for the run ``config``.

    Raises
    ------
    CheckpointError
        When the file cannot be read, is damaged (its digest does not match) or was written by a
        run with a different config.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(f"{path}: unreadable checkpoint ({_first_line(exc)})") from None
    if not isinstance(payload, dict) or "position" not in payload or not isinstance(payload.get("format"), int):
        raise CheckpointError(f"{path}: not a gnflow checkpoint")
    if payload["format"] != FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {payload['format']} of gnflow {payload.get('gnflow_version', '?')} cannot be "
            f"resumed by this gnflow (format {FORMAT}); rerun without --resume"
        )
    expected = config_hash(config)
    if payload.get("config_hash") != expected:
        raise CheckpointError(
            f"{path}: written by a run with another config (hash {payload.get('config_hash')}, "
            f"this run {expected}); delete it or run without --resume"
        )
    data = payload["position"]
    digest = payload.get("position_sha256")
    if not isinstance(data, bytes) or not isinstance(digest, str) or hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"{path}: damaged checkpoint (the SHA-256 digest of its position does not match)")
    try:
        position = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a digest match makes this unlikely: the file was written so
        raise CheckpointError(f"{path}: unreadable checkpoint position ({_first_line(exc)})") from None
    if not isinstance(position, dict):
        raise CheckpointError(f"{path}: not a gnflow checkpoint")
    return position
