"""The result of an integration: the saved states, their counters, a typed result and statistics."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gnflow.status import RunResult

__all__ = ["Solution"]


@dataclass
class Solution:
    """A trajectory at its saved times and how the solver got there.

    Attributes
    ----------
    t:
        Saved flow times, shape (t,).
    weights:
        States at the saved times, shape (t, particle, component).
    nfe, n_accepted, n_rejected:
        Cumulative vector-field evaluations, accepted and rejected steps at each saved time,
        shape (t,) each.
    result:
        How the run ended: completed (reached the horizon), converged (stopped on the loss
        ratio) or failed with a one-line reason (solver failure, step limit or time budget,
        stop requested by the callback, interruption).
    stats:
        Totals of the whole call (at its end, which may lie after the last saved state):
        ``t_reached`` (the flow time of the last accepted step, at most the horizon: where a
        failed run stopped), ``n_steps`` (attempted), ``n_accepted``, ``n_rejected``, ``nfe``, ``max_steps``,
        ``wall_time_s`` and ``cpu_time_s`` (resumed runs include the time before the resume).
    method:
        The solver method.
    epoch:
        Runs with a :class:`~gnflow.solve.StepSchedule` of known N: passes over the training set
        completed at each saved time (samples used / N), shape (t,); None otherwise.
    extra:
        Free-form numbers that callers attach to the solution.
    """

    t: np.ndarray
    weights: torch.Tensor
    nfe: np.ndarray
    n_accepted: np.ndarray
    n_rejected: np.ndarray
    result: RunResult
    stats: Mapping[str, float | int]
    method: str = ""
    epoch: np.ndarray | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """The result as files store it in ``gnflow_status``: ``completed``, ``converged`` or
        ``failed: <reason>``."""
        return str(self.result)

    @property
    def failed(self) -> bool:
        """Whether the run failed."""
        return self.result.failed

    @property
    def wall_time_s(self) -> float:
        """Wall-clock time of the integration in seconds."""
        return float(self.stats["wall_time_s"])


class Recorder:
    """The saved states and the step counters while a run goes on.

    Parameters
    ----------
    on_save:
        Called as ``on_save(index, weights)`` with every state :meth:`save` keeps (its time index
        and the stored copy, not to be modified); states restored by :meth:`load_state_dict` are
        not passed.
    """

    def __init__(self, on_save: Callable[[int, torch.Tensor], None] | None = None) -> None:
        self.on_save = on_save
        self.t: list[float] = []
        self.weights: list[torch.Tensor] = []
        self.nfe: list[int] = []
        self.accepted: list[int] = []
        self.rejected: list[int] = []
        self.epoch: list[float] = []
        self.n_accepted = 0
        self.n_rejected = 0

    @property
    def n_steps(self) -> int:
        """Steps attempted so far."""
        return self.n_accepted + self.n_rejected

    def save(self, t: float, weights: torch.Tensor, nfe: int, epoch: float = math.nan) -> bool:
        """Keep the state at flow time t (unless a later or equal time is kept already)."""
        if self.t and t <= self.t[-1]:
            return False
        self.t.append(float(t))
        self.epoch.append(float(epoch))
        self.weights.append(weights.detach().clone())
        self.nfe.append(int(nfe))
        self.accepted.append(self.n_accepted)
        self.rejected.append(self.n_rejected)
        if self.on_save is not None:
            self.on_save(len(self.t) - 1, self.weights[-1])
        return True

    def state_dict(self) -> dict[str, Any]:
        """Everything recorded, on the CPU."""
        return {
            "t": list(self.t),
            "weights": torch.stack(self.weights).cpu(),
            "nfe": list(self.nfe),
            "accepted": list(self.accepted),
            "rejected": list(self.rejected),
            "n_accepted": self.n_accepted,
            "n_rejected": self.n_rejected,
            "epoch": list(self.epoch),
        }

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device) -> None:
        """Continue from a :meth:`state_dict`."""
        self.t = [float(t) for t in state["t"]]
        self.weights = list(state["weights"].to(device))
        self.nfe = [int(n) for n in state["nfe"]]
        self.accepted = [int(n) for n in state["accepted"]]
        self.rejected = [int(n) for n in state["rejected"]]
        self.n_accepted = int(state["n_accepted"])
        self.n_rejected = int(state["n_rejected"])
        self.epoch = [float(e) for e in state["epoch"]]

    def solution(self, result: RunResult, stats: Mapping[str, float | int], method: str) -> Solution:
        """The :class:`Solution` of what was recorded."""
        epoch = np.asarray(self.epoch, dtype=np.float64)
        return Solution(
            t=np.asarray(self.t, dtype=np.float64),
            weights=torch.stack(self.weights),
            nfe=np.asarray(self.nfe, dtype=np.int64),
            n_accepted=np.asarray(self.accepted, dtype=np.int64),
            n_rejected=np.asarray(self.rejected, dtype=np.int64),
            result=result,
            stats=dict(stats),
            method=method,
            epoch=None if np.isnan(epoch).any() else epoch,
        )
