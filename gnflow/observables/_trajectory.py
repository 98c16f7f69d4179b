"""The trajectory the measurements read, its saved states, and the one pass over them.

A :class:`Trajectory` holds the model, the data and the particles at the saved times. Its
:class:`SavedState` at time index k computes what the measurements share (linearization, residual,
Gram matrix, spectrum) once, on first use; :func:`measure` walks the saved times in order and hands
each state to every :class:`Measurement`, so that one linearization and at most one
eigendecomposition per saved time serve all of them.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import torch
import xarray as xr

from gnflow._progress import progress_bar
from gnflow.config import RunConfig, available_memory
from gnflow.data import RegressionData, make_run_data
from gnflow.dataset import run_config_of
from gnflow.model import Linearization, ParticleModel

logger = logging.getLogger(__name__)


class ObservableError(ValueError):
    """An observable cannot be computed on this dataset (one-line message)."""


@dataclass(frozen=True, eq=False)
class Trajectory:
    """What the measurements read: model, data and saved states, in one dtype on one device.

    Rebuilt from a dataset (:func:`trajectory_from_dataset`) everything is float64; the built-in
    variables of a float32 run are measured on a trajectory in the run's dtype.

    Attributes
    ----------
    model:
        The particle model of the run (activation, scaling, trained parts).
    t:
        Saved flow times, shape (t,).
    weights:
        Particles at the saved times, shape (t, particle, component).
    x_train, y_train:
        Training inputs (sample, input_dim) and labels (sample,).
    x_test, y_test:
        Test inputs (test_sample, input_dim) and labels (test_sample,), or None without a test set.
    teacher_weights:
        Teacher particles (teacher_particle, component), or None.
    """

    model: ParticleModel
    t: np.ndarray
    weights: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    teacher_weights: torch.Tensor | None

    @property
    def n_times(self) -> int:
        """Number of saved times."""
        return int(self.weights.shape[0])

    @property
    def width(self) -> int:
        """M, the number of particles."""
        return int(self.weights.shape[1])

    @property
    def input_dim(self) -> int:
        """d, the input dimension."""
        return self.model.input_dim

    def state(self, index: int, *, eigenvectors: bool = False) -> SavedState:
        """The saved state at time index ``index`` (see :class:`SavedState` for ``eigenvectors``)."""
        return SavedState(self, index, eigenvectors=eigenvectors)


class SavedState:
    """One saved state of a trajectory; what is derived from it is computed once, on first use.

    One linearization serves the residual, the losses and the Gram matrix, and one
    eigendecomposition of A the spectrum: ``torch.linalg.eigh`` when the state was made with
    ``eigenvectors=True`` (the eigenvalues then come from it), else ``torch.linalg.eigvalsh``.

    Parameters
    ----------
    trajectory:
        The trajectory the state belongs to.
    index:
        Its time index k, 0 <= k < ``trajectory.n_times``.
    eigenvectors:
        Whether a measurement reads :attr:`eigenvectors` (decides eigh over eigvalsh).
    weights:
        The particles at this time, when ``trajectory`` does not hold them yet (states measured
        while the run integrates); default ``trajectory.weights[index]``.
    """

    def __init__(
        self, trajectory: Trajectory, index: int, *, eigenvectors: bool = False, weights: torch.Tensor | None = None
    ) -> None:
        self.trajectory = trajectory
        self.index = index
        self.weights = trajectory.weights[index] if weights is None else weights
        self.with_eigenvectors = eigenvectors

    @cached_property
    def linearization(self) -> Linearization:
        """The model linearized at these weights on the training inputs."""
        return self.trajectory.model.linearize(self.weights, self.trajectory.x_train)

    @cached_property
    def residual(self) -> torch.Tensor:
        """r = f(X) - y on the training data, shape (sample,), in the trajectory's dtype."""
        return self.linearization.predict() - self.trajectory.y_train

    @cached_property
    def train_loss(self) -> float:
        """L = ||r||^2 / (2N) on the training data (accumulated in float64)."""
        r = self.residual.double()
        return float(r @ r) / (2 * int(r.shape[0]))

    @cached_property
    def test_loss(self) -> float:
        """L on the test data; NaN when the trajectory has no test set."""
        traj = self.trajectory
        if traj.x_test is None or traj.y_test is None:
            return float("nan")
        r = (traj.model.predict(self.weights, traj.x_test) - traj.y_test).double()
        return float(r @ r) / (2 * int(r.shape[0]))

    @cached_property
    def gram(self) -> torch.Tensor:
        """A = J J^T of the trained components, shape (sample, sample), float64."""
        return self.linearization.gram()

    @cached_property
    def _eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        values, vectors = torch.linalg.eigh(self.gram)
        return values, vectors

    @cached_property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of A in ascending order, shape (sample,)."""
        if self.with_eigenvectors:
            return self._eigh[0]
        return torch.linalg.eigvalsh(self.gram)

    @property
    def eigenvectors(self) -> torch.Tensor:
        """Orthonormal eigenvectors of A (columns, in the order of :attr:`eigenvalues`), (sample, sample).

        Raises
        ------
        RuntimeError
            When the state was made without ``eigenvectors=True``: the measurement that reads them
            must set ``needs_eigenvectors = True``.
        """
        if not self.with_eigenvectors:
            raise RuntimeError(
                "SavedState.eigenvectors: this pass computes eigenvalues only; "
                "set needs_eigenvectors = True on the measurement that reads them"
            )
        return self._eigh[1]

    @property
    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(:attr:`eigenvalues`, :attr:`eigenvectors`) of A."""
        return self.eigenvalues, self.eigenvectors


class Measurement:
    """Something measured at every saved state of a trajectory, in time order.

    Subclasses that read :attr:`SavedState.eigenvectors` set ``needs_eigenvectors = True``.
    """

    needs_eigenvectors: ClassVar[bool] = False

    def update(self, state: SavedState) -> None:
        """Measure one saved state (called once per saved time, in time order)."""


def measure(
    trajectory: Trajectory,
    measurements: Sequence[Measurement],
    *,
    progress: bool | None = False,
    workers: int | None = None,
    start: int = 0,
) -> None:
    """One pass over the saved states of ``trajectory``, updating every measurement at each.

    Each saved time gets one :class:`SavedState`, so the measurements share its linearization and
    its single eigendecomposition (eigh when any of them needs eigenvectors, else eigvalsh).

    With ``workers`` > 1 the states are measured ``workers`` at a time: the measurements update
    the first state in this thread, which shows what they read (its linearization, Gram matrix,
    spectrum, test loss, ...); worker threads then compute those parts of the next states, one
    torch thread each, while the updates still run here in time order. On the CPU this is faster
    than torch's threads inside each state, whose elementwise passes (the test forward pass) gain
    little from a second thread (``docs/performance.md``). The values are those of a serial pass
    at one torch thread. On CUDA the pass is serial (one device runs the states in turn).

    Parameters
    ----------
    trajectory:
        The states to measure.
    measurements:
        Updated in this order at each saved time.
    progress:
        Show a progress bar: True, False, or None (only on a terminal).
    workers:
        States computed at once; None takes torch's thread count (the run's thread budget), 1 is a
        serial pass at torch's thread count. At most as many as fit in half the memory the process
        can still obtain (:func:`state_bytes` each).
    start:
        The first time index measured: the states before it were measured already (by
        :class:`~gnflow.observables.MeasuringAlongside` during the integration).
    """
    if not 0 <= start <= trajectory.n_times:
        raise ValueError(f"start must lie in [0, {trajectory.n_times}] (the saved times), got {start}")
    eigenvectors = any(m.needs_eigenvectors for m in measurements)
    times = progress_bar(
        range(start, trajectory.n_times),
        enabled=progress,
        desc="measuring saved states",
        unit="state",
        leave=False,
    )
    workers = torch.get_num_threads() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    workers = min(workers, _workers_in_memory(trajectory))
    with torch.no_grad():
        # one state leaves nothing to overlap; on CUDA one device runs the states in turn
        if workers == 1 or trajectory.n_times - start < 2 or trajectory.weights.device.type != "cpu":
            for index in times:
                state = trajectory.state(index, eigenvectors=eigenvectors)
                for measurement in measurements:
                    measurement.update(state)
            return
        _measure_in_parallel(trajectory, measurements, iter(times), eigenvectors, workers)


def state_bytes(trajectory: Trajectory) -> int:
    """Bytes one saved state holds while it is measured: its (sample, particle) blocks (activations,
    derivatives and product temporaries), its Gram matrix with a decomposition, a test block."""
    n = int(trajectory.x_train.shape[0])
    chunk = trajectory.model.particle_chunk(n, trajectory.width)
    item = trajectory.weights.element_size()
    return item * 4 * n * chunk + 8 * 3 * n * n + item * (1 << 18)


def _workers_in_memory(trajectory: Trajectory) -> int:
    """How many states may be measured at once in half the memory this process can still obtain."""
    available = available_memory()
    if available is None:
        return 1 << 30
    return max(1, available // (2 * state_bytes(trajectory)))


# the parts of a saved state that worker threads may compute ahead (cached properties)
_SHARED_PARTS = ("linearization", "residual", "train_loss", "test_loss", "gram", "_eigh", "eigenvalues")


def _measure_in_parallel(
    trajectory: Trajectory,
    measurements: Sequence[Measurement],
    times: Iterator[int],
    eigenvectors: bool,
    workers: int,
) -> None:
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = trajectory.state(next(times), eigenvectors=eigenvectors)
        for measurement in measurements:
            measurement.update(first)
        parts = [name for name in _SHARED_PARTS if name in first.__dict__]  # what the measurements read
        del first

        def computed(index: int) -> SavedState:
            with torch.no_grad():
                state = trajectory.state(index, eigenvectors=eigenvectors)
                for name in parts:
                    getattr(state, name)
                return state

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gnflow-measure") as pool:
            pending: deque[Future[SavedState]] = deque()
            for index in itertools.islice(times, workers):
                pending.append(pool.submit(computed, index))
            while pending:
                state = pending.popleft().result()
                following = next(times, None)
                if following is not None:
                    pending.append(pool.submit(computed, following))
                for measurement in measurements:
                    measurement.update(state)
    finally:
        torch.set_num_threads(threads_before)


def run_config(ds: xr.Dataset) -> RunConfig:
    """The stored config of ``ds``; :class:`ObservableError` when it has none."""
    try:
        return run_config_of(ds)
    except ValueError as exc:
        raise ObservableError(str(exc)) from None


def _rebuilt_test_data(config: RunConfig, x_train: np.ndarray) -> RegressionData | None:
    """The run's data drawn again from its config, when the file left the test set out."""
    try:
        data = make_run_data(config)
    except (OSError, ValueError) as exc:
        logger.warning("the dataset has no test set and the run's data cannot be rebuilt (%s)", exc)
        return None
    if data.x_train.shape != x_train.shape or not np.array_equal(data.x_train, x_train):
        logger.warning("the dataset has no test set and the rebuilt data do not match its x_train")
        return None
    return data


def trajectory_from_dataset(
    ds: xr.Dataset,
    *,
    data: RegressionData | None = None,
    device: torch.device | str = "cpu",
    need_test: bool = True,
) -> Trajectory:
    """Rebuild model, data and states from a trajectory dataset written by gnflow.

    Parameters
    ----------
    ds:
        A dataset with ``weights``, ``x_train``, ``y_train`` and ``gnflow_config``.
    data:
        The run's data, used only for the test set when ``ds`` does not hold it (during a run
        with ``output.save_test = false``). Without it the test set is drawn again from the
        stored config when ``need_test`` is true.
    device:
        Torch device of the computations (float64 everywhere).
    need_test:
        Whether a missing test set should be rebuilt.
    """
    for name in ("weights", "x_train", "y_train"):
        if name not in ds:
            raise ObservableError(f"the dataset has no {name!r} variable: not a gnflow trajectory")
    config = run_config(ds)
    x_train = np.asarray(ds["x_train"].values, dtype=np.float64)
    model = ParticleModel.from_config(config, x_train.shape[1])

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float64), device=device)

    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    if "x_test" in ds and "y_test" in ds:
        x_test, y_test = ds["x_test"].values, ds["y_test"].values
    elif need_test:
        source = data if data is not None else _rebuilt_test_data(config, x_train)
        if source is not None and source.n_test > 0:
            x_test, y_test = source.x_test, source.y_test
    teacher = ds["teacher_weights"].values if "teacher_weights" in ds else None
    return Trajectory(
        model=model,
        t=np.asarray(ds["t"].values, dtype=np.float64),
        weights=tensor(ds["weights"].transpose("t", "particle", "component").values),
        x_train=tensor(x_train),
        y_train=tensor(ds["y_train"].values),
        x_test=None if x_test is None else tensor(x_test),
        y_test=None if y_test is None else tensor(y_test),
        teacher_weights=None if teacher is None else tensor(teacher),
    )
