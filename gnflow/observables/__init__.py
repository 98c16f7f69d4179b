"""Observables of trajectories: kernel/feature regime and mean-field measurements.

Each observable reads the saved states of a trajectory dataset and adds documented variables to
it. The same code runs during ``gnflow run`` (``[observe] names = [...]``) and afterwards on any
saved file (``gnflow observe FILE.nc [NAMES ...]`` or :func:`observe`): the data and model are
always rebuilt from the dataset (``x_train``, ``y_train``, ``x_test``, ``y_test``,
``teacher_weights`` and the stored ``gnflow_config``), so both give identical numbers.

Notation: M particles w_i = (u_i, b_i, v_i), N training points, A_t = J J^T the Gram matrix
(empirical NTK) of the trained components at saved time t, r_t = f(X) - y. Observables:

- ``spectrum``: condition number lambda_max / lambda_min of A_t; full spectrum at a few times.
- ``weight_movement``: ||W_t - W_0|| / ||W_0|| overall, hidden (u, b) and output (v) parts.
- ``particle_distance``: quantiles over particles of ||w_i(t) - w_i(0)||.
- ``kernel_movement``: 1 - CKA(A_t, A_0) and ||A_t - A_0||_F / ||A_0||_F.
- ``teacher_alignment``: ||u_i||^2-weighted cosine distance of the hidden features to the nearest
  teacher feature and to the nearest initial feature.
- ``refit``: train and test loss of the output layer refit on the hidden features at t
  (and on the initial features: the random-features baseline).
- ``wasserstein``: W2 between the particle measures at t and at 0, and to the teacher measure.
- ``residual_topk``: fraction of ||r_t||^2 in the top-k eigendirections of A_t.
- ``norm_histogram``: histograms over particles of ||(u_i, b_i)|| and abs(v_i) at every saved time.
- ``regime``: ``"kernel"`` or ``"feature"`` from thresholds on weight and kernel movement.

The measurement pass (:func:`measure`) gives every observable of a saved time the same
:class:`SavedState`: one linearization and at most one eigendecomposition of A_t per saved time,
shared with the built-in variables during a float64 run. During ``gnflow run`` on two CPU threads
the built-in variables are measured while the run integrates (:class:`MeasuringAlongside`).

Adding an observable: one :class:`Observable` subclass, one entry in :data:`OBSERVABLES` (in
``gnflow/observables/_builtin.py``) with its variables documented there.

The definitions, units and costs are in docs/observables.md.
"""

from gnflow._exports import present_under
from gnflow.observables._alongside import MeasuringAlongside, SwitchingAlongside
from gnflow.observables._builtin import OBSERVABLES
from gnflow.observables._measures import (
    centered_kernel_alignment,
    feature_distance,
    refit_output_layer,
    regime_label,
)
from gnflow.observables._observable import Observable, ObservableOutput
from gnflow.observables._observe import (
    add_observables,
    append_history,
    make_observables,
    observe,
    select_observables,
    validate_observable_names,
)
from gnflow.observables._trajectory import (
    Measurement,
    ObservableError,
    SavedState,
    Trajectory,
    measure,
    trajectory_from_dataset,
)

__all__ = [
    "OBSERVABLES",
    "Measurement",
    "MeasuringAlongside",
    "Observable",
    "ObservableError",
    "ObservableOutput",
    "SavedState",
    "SwitchingAlongside",
    "Trajectory",
    "add_observables",
    "append_history",
    "centered_kernel_alignment",
    "feature_distance",
    "make_observables",
    "measure",
    "observe",
    "refit_output_layer",
    "regime_label",
    "select_observables",
    "trajectory_from_dataset",
    "validate_observable_names",
]

# the public objects are documented, shown and pickled as gnflow.observables.NAME, where users import them
present_under(__name__, globals(), __all__)
