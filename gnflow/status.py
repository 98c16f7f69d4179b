"""The outcome of a run: a status enumeration and, for failures, the reason.

Every part of gnflow that ends a computation (the integration loop, the training loop, a sweep
run) returns a :class:`RunResult`; callers branch on :attr:`RunResult.status`, never on message
text. Files keep the text form in the ``gnflow_status`` attribute (``completed``,
``converged`` or ``failed: <reason>``): ``str(result)`` writes it and :meth:`RunResult.parse`
reads it back (docs/dataset.md, section Global attributes).
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass

__all__ = ["INTERRUPTED", "RunResult", "RunStatus", "SignalInterrupt", "interruption_reason"]

INTERRUPTED = "interrupted by the user"
"""The reason of a run stopped by Ctrl-C: a sweep stops as a whole on it, not just the run."""

_BY_SIGNAL = "interrupted (signal "


class SignalInterrupt(KeyboardInterrupt):
    """A run interrupted by a signal other than SIGINT (SIGTERM from ``timeout``, Slurm, ``docker stop``).

    Raised in the main thread by the handler that :func:`gnflow.simulation.run` installs, and
    handled like Ctrl-C: the partial trajectory is written with its reason and the checkpoint kept.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def interruption_reason(exc: KeyboardInterrupt) -> str:
    """The failure reason of an interruption: :data:`INTERRUPTED` for Ctrl-C,
    ``interrupted (signal SIGTERM)`` for a :class:`SignalInterrupt`."""
    if isinstance(exc, SignalInterrupt):
        return f"{_BY_SIGNAL}{signal.Signals(exc.signum).name})"
    return INTERRUPTED


class RunStatus(enum.Enum):
    """How a run ended."""

    COMPLETED = "completed"
    """Reached the end of its horizon (t_end, or every planned step)."""
    CONVERGED = "converged"
    """Stopped early because the train loss fell below the requested ratio of its initial value."""
    FAILED = "failed"
    """Stopped on a failure (solver, numerics, budget, interruption); see the reason."""


@dataclass(frozen=True)
class RunResult:
    """A :class:`RunStatus` and, for failures, a one-line reason.

    Attributes
    ----------
    status:
        How the run ended.
    reason:
        Why it failed (empty unless ``status`` is FAILED).
    """

    status: RunStatus
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status is RunStatus.FAILED and not self.reason:
            raise ValueError("a failed run needs a reason")
        if self.status is not RunStatus.FAILED and self.reason:
            raise ValueError(f"only a failed run has a reason, not a {self.status.value} one")
        if "\n" in self.reason:
            raise ValueError("the reason of a failure must be one line")

    @classmethod
    def completed(cls) -> RunResult:
        """The run reached its horizon."""
        return cls(RunStatus.COMPLETED)

    @classmethod
    def converged(cls) -> RunResult:
        """The run stopped on the loss ratio."""
        return cls(RunStatus.CONVERGED)

    @classmethod
    def failure(cls, reason: str) -> RunResult:
        """The run failed for ``reason`` (its first line is kept)."""
        first = reason.strip().splitlines()[0] if reason.strip() else "unknown reason"
        return cls(RunStatus.FAILED, first)

    @classmethod
    def parse(cls, text: str) -> RunResult:
        """The result written as ``text`` (``completed``, ``converged`` or ``failed: <reason>``).

        Raises
        ------
        ValueError
            When ``text`` is none of these forms.
        """
        text = str(text).strip()
        if text == RunStatus.COMPLETED.value:
            return cls.completed()
        if text == RunStatus.CONVERGED.value:
            return cls.converged()
        if text == RunStatus.FAILED.value or text.startswith(f"{RunStatus.FAILED.value}:"):
            return cls.failure(text[len(RunStatus.FAILED.value) :].lstrip(": ") or "unknown reason")
        raise ValueError(f"not a gnflow run status: {text!r}; expected completed, converged or 'failed: <reason>'")

    @property
    def interrupted(self) -> bool:
        """Whether the run failed because it was interrupted (Ctrl-C, SIGTERM), during the
        integration or the measurement of its saved states."""
        return self.interruption_signal is not None

    @property
    def interruption_signal(self) -> int | None:
        """The signal that interrupted the run (SIGINT for Ctrl-C), or None when it was not interrupted."""
        if not self.failed:
            return None
        if self.reason.startswith(INTERRUPTED):
            return int(signal.SIGINT)
        if self.reason.startswith(_BY_SIGNAL):
            name = self.reason[len(_BY_SIGNAL) :].split(")", 1)[0]
            return int(getattr(signal.Signals, name, signal.SIGTERM))
        return None

    @property
    def failed(self) -> bool:
        """Whether the run failed."""
        return self.status is RunStatus.FAILED

    def __str__(self) -> str:
        """The text form, as stored in ``gnflow_status`` (docs/dataset.md)."""
        if self.failed:
            return f"{self.status.value}: {self.reason}"
        return self.status.value
