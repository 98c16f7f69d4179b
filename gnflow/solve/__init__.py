"""Integration of a flow: one loop over steps for every method, with saved times, early stopping,
budgets, checkpoints and step statistics.

torchdiffeq 0.2.5 integrates to a list of times and returns only the states there. gnflow drives
the same solver objects ``odeint`` builds one step at a time instead, which gives:

- the number of accepted and rejected steps and of vector-field evaluations (:attr:`Solution.stats`);
- early stopping as soon as an accepted state has train loss <= ratio x initial train loss;
- limits on steps, wall-clock and CPU time, and a user callback that may stop the run;
- partial results: a failure (step-size underflow, non-finite state, singular solve, a spent
  budget, Ctrl-C) ends the run with the trajectory up to it and a failed
  :class:`~gnflow.status.RunResult`.

The pieces: a *stepper* per method takes one step at a time (:mod:`gnflow.solve._steppers`,
registry :data:`STEPPERS`); :func:`~gnflow.solve._loop.integration_loop` drives every stepper
the same way; :class:`Solution` holds the result. Adaptive methods save by the dense output of
their steps (no extra evaluations), fixed-step methods at grid points t = k h (requested times
are rounded to the nearest grid point, so a saved state is exactly the state after k steps).

A :class:`StepSchedule` generalizes the fixed-step grid: step k has its own size h_k and may use
the vector field restricted to a mini-batch of the training samples (:meth:`Flow.restrict
<gnflow.flows.Flow.restrict>`). Discrete Gram--Gauss--Newton is the Euler method on such a
schedule, h_k = b_k / lam with constant damping alpha / lam (see :mod:`gnflow.ggn`).

Long runs hand their position (the stepper's complete state, the saved states and the counters)
to a :class:`CheckpointHook` every so often and later continue from it (``resume=``), taking
exactly the steps the uninterrupted run takes. A :class:`StateSink` (``on_save=``) receives every
saved state as it is saved, for work beside the integration (the run measures its saved states
there: :class:`gnflow.observables.MeasuringAlongside`).
"""

from gnflow._exports import present_under
from gnflow.solve._budget import Budget, ProgressBar, StopWatch
from gnflow.solve._loop import Callback, CheckpointHook, StateSink, StepInfo, integrate, integration_loop
from gnflow.solve._schedule import StepSchedule, save_times
from gnflow.solve._solution import Solution
from gnflow.solve._steppers import STEPPERS, Stepper, make_stepper

__all__ = [
    "STEPPERS",
    "Budget",
    "Callback",
    "CheckpointHook",
    "ProgressBar",
    "Solution",
    "StateSink",
    "StepInfo",
    "StepSchedule",
    "Stepper",
    "StopWatch",
    "integrate",
    "integration_loop",
    "make_stepper",
    "save_times",
]

# the public objects are documented, shown and pickled as gnflow.solve.NAME, where users import them
present_under(__name__, globals(), __all__)
