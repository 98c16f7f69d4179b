"""Mini-batch training of a ``torch.nn.Module`` regression model, with a history dataset.

One loop serves :class:`~gnflow.ggn.GGN` and first-order ``torch.optim`` optimizers (SGD with
momentum, Adam), so that their curves differ only by the optimizer: same batches (seeded), same
loss L = ||f(X) - y||^2 / (2N), same timing. The history is an xarray Dataset with dimensions
``iteration`` (one entry per optimizer step) and ``epoch`` (0 = before training), written as CF
NetCDF by :func:`gnflow.dataset.write_dataset`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from gnflow.data import DataError, RegressionData
from gnflow.dataset import VariableInfo, apply_variable_attrs, cf_attributes, register_variable
from gnflow.ggn import GGN, RegressionBatch, check_per_sample_model, minibatches
from gnflow.solve._budget import Budget, ProgressBar, StopWatch
from gnflow.status import RunResult

__all__ = ["TrainingHistory", "history_dataset", "mean_half_squared_error", "mlp", "train_module"]

logger = logging.getLogger(__name__)

for _name, _info in {
    "batch_loss": VariableInfo("training loss on the step's mini-batch before the step", "1"),
    "elapsed_s": VariableInfo("cumulative optimizer time after the step", "s", "excludes evaluation of losses"),
    "wall_time_s": VariableInfo(
        "cumulative optimizer time at the end of the epoch", "s", "excludes evaluation of losses"
    ),
    "epoch_time_s": VariableInfo("optimizer time spent in the epoch", "s", "excludes evaluation of losses"),
    "cpu_time_s": VariableInfo(
        "cumulative processor time of the optimizer at the end of the epoch",
        "s",
        "CPU time of this process (all threads) during optimizer steps; less sensitive than wall time to other load",
    ),
    "iteration_train_loss": VariableInfo("training loss L = ||f(X) - y||^2 / (2N) after the step", "1"),
    "iteration_test_loss": VariableInfo("test loss after the step", "1"),
    "iteration_epoch": VariableInfo("epoch the step belongs to (1 = first pass)", "1"),
}.items():
    register_variable(_name, _info)


def mlp(
    input_dim: int, hidden: list[int], activation: str, seed: int, dtype: torch.dtype = torch.float64
) -> torch.nn.Module:
    """A fully connected regression network input_dim -> hidden... -> 1, PyTorch's default
    initialization drawn with ``torch.manual_seed(seed)``.

    ``activation`` is one of ``"tanh"``, ``"silu"``, ``"gelu"``, ``"relu"``.
    """
    layer = {"tanh": torch.nn.Tanh, "silu": torch.nn.SiLU, "gelu": torch.nn.GELU, "relu": torch.nn.ReLU}
    if activation not in layer:
        raise ValueError(f"activation: unknown {activation!r}; allowed: {', '.join(layer)}")
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    width = input_dim
    for h in hidden:
        layers += [torch.nn.Linear(width, h), layer[activation]()]
        width = h
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers).to(dtype)


def mean_half_squared_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> float:
    """L = ||f(X) - y||^2 / (2N) without gradients (NaN for N = 0)."""
    n = int(x.shape[0])
    if n == 0:
        return math.nan
    total = 0.0
    with torch.no_grad():
        for s in range(0, n, chunk):
            r = (model(x[s : s + chunk]).reshape(-1) - y[s : s + chunk]).double()
            total += float(r @ r)
    return total / (2 * n)


@dataclass
class TrainingHistory:
    """What :func:`train_module` measured.

    Attributes
    ----------
    batch_loss, elapsed_s, iteration_epoch:
        Per step (iteration,): mini-batch loss before the step, cumulative optimizer seconds, epoch.
    train_loss, test_loss, wall_time_s, cpu_time_s:
        Per epoch (epoch + 1,), entry 0 before training: losses on all samples, cumulative
        optimizer wall-clock seconds and processor seconds.
    iteration_train_loss, iteration_test_loss:
        Per step, losses on all samples after the step (only with ``evaluate_iterations``).
    epochs, steps_per_epoch:
        The planned schedule (a failure stops it early).
    result:
        Completed, or failed with a reason (divergence, a spent budget).
    """

    batch_loss: list[float]
    elapsed_s: list[float]
    iteration_epoch: list[int]
    train_loss: list[float]
    test_loss: list[float]
    wall_time_s: list[float]
    cpu_time_s: list[float]
    iteration_train_loss: list[float]
    iteration_test_loss: list[float]
    epochs: int
    steps_per_epoch: int
    result: RunResult = field(default_factory=RunResult.completed)

    @property
    def status(self) -> str:
        """The result as text (``completed`` or ``failed: <reason>``), as files store it in ``gnflow_status``."""
        return str(self.result)


def _tensor(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(array, dtype=like.dtype, device=like.device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_module(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: RegressionData,
    *,
    epochs: int,
    batch_size: int,
    batch_order: str = "shuffled",
    seed: int | np.random.SeedSequence = 0,
    evaluate_iterations: bool = False,
    budget: Budget | None = None,
    progress: bool | None = False,
) -> TrainingHistory:
    """Train ``model`` on ``data`` with ``optimizer`` by mini-batches; return the history.

    Parameters
    ----------
    model:
        Regression network returning one value per sample, shape (batch,) or (batch, 1).
    optimizer:
        A :class:`~gnflow.ggn.GGN` (its closure returns the batch) or any ``torch.optim``
        optimizer (its closure computes the batch loss ||r_B||^2 / (2b) and its gradient).
    data:
        Training and test data; converted to the dtype and device of the model's parameters.
    epochs:
        Number of passes over the training set (>= 1).
    batch_size:
        b, in 1..N (the last batch of an epoch holds the remainder).
    batch_order:
        ``"cyclic"`` or ``"shuffled"`` (a new permutation per epoch, from ``seed``).
    seed:
        Seed of the batch order, so that two optimizers can see the same batches.
    evaluate_iterations:
        Also evaluate train and test loss on all samples after every step (costs forward passes,
        which are not counted in the optimizer time).
    budget:
        Limits on optimizer steps and on optimizer wall-clock and processor time (the times of
        the history); a spent budget stops the training as failed, e.g.
        ``Budget(max_steps=10**9, max_cpu_time_s=60, key_prefix="")``. None: no limits.
    progress:
        Show a progress bar over the steps: True, False (default), or None (only on a terminal).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters (none requires grad)")
    if isinstance(optimizer, GGN):
        check_per_sample_model(model)
    n = data.n_train
    if n == 0:
        raise DataError("training data are empty")
    reference = parameters[0]
    x, y = _tensor(data.x_train, reference), _tensor(data.y_train, reference)
    x_test, y_test = _tensor(data.x_test, reference), _tensor(data.y_test, reference)
    per_epoch = math.ceil(n / batch_size) if batch_size >= 1 else 0
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    batches = minibatches(n, batch_size, epochs * per_epoch, batch_order, np.random.default_rng(seq))
    history = TrainingHistory([], [], [], [], [], [], [], [], [], epochs=epochs, steps_per_epoch=per_epoch)
    history.train_loss.append(mean_half_squared_error(model, x, y))
    history.test_loss.append(mean_half_squared_error(model, x_test, y_test))
    history.wall_time_s.append(0.0)
    history.cpu_time_s.append(0.0)
    watch = StopWatch()
    device = reference.device
    bar = ProgressBar(len(batches), type(optimizer).__name__, progress, label="step")
    try:
        for k, index_array in enumerate(batches):
            if budget is not None and (reason := budget.exhausted(k, watch)) is not None:
                history.result = RunResult.failure(reason)
                break
            epoch = k // per_epoch + 1
            index = torch.as_tensor(index_array, device=device)
            xb, yb = x[index], y[index]
            _synchronize(device)
            watch.start()
            try:
                loss = _step(model, optimizer, xb, yb)
            except FloatingPointError as exc:
                history.result = RunResult.failure(f"{exc} (step {k + 1})")
                break
            _synchronize(device)
            watch.stop()
            history.batch_loss.append(loss)
            history.elapsed_s.append(watch.wall_s)
            history.iteration_epoch.append(epoch)
            bar.update(k + 1, f"epoch {epoch}, batch loss {loss:.3e}")
            if evaluate_iterations:
                history.iteration_train_loss.append(mean_half_squared_error(model, x, y))
                history.iteration_test_loss.append(mean_half_squared_error(model, x_test, y_test))
            if not math.isfinite(loss):
                history.result = RunResult.failure(f"non-finite batch loss at step {k + 1}")
                break
            if (k + 1) % per_epoch == 0:
                history.train_loss.append(mean_half_squared_error(model, x, y))
                history.test_loss.append(mean_half_squared_error(model, x_test, y_test))
                history.wall_time_s.append(watch.wall_s)
                history.cpu_time_s.append(watch.cpu_s)
                logger.info(
                    "epoch %d: train loss %.4g, test loss %.4g, %.2f s",
                    epoch,
                    history.train_loss[-1],
                    history.test_loss[-1],
                    watch.wall_s,
                )
    finally:
        bar.close()
    if history.result.failed:
        logger.warning("training stopped: %s", history.result)
    return history


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> float:
    """One optimizer step on the batch; the batch loss before the step."""
    if isinstance(optimizer, GGN):
        return float(optimizer.step(lambda: RegressionBatch(model, xb, yb)))
    b = int(xb.shape[0])

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        out = model(xb)
        if out.shape not in ((b,), (b, 1)):
            raise ValueError(
                f"the model must return one value per sample, shape ({b},) or ({b}, 1); got {tuple(out.shape)}"
            )
        r = out.reshape(b) - yb
        loss = (r @ r) / (2 * b)
        loss.backward()
        return loss

    loss = optimizer.step(closure)  # type: ignore[arg-type]  # torch's stub types closures as -> float
    return float(torch.as_tensor(loss).detach())


def history_dataset(
    history: TrainingHistory,
    *,
    optimizer: str,
    model: torch.nn.Module,
    data: RegressionData,
    batch_size: int,
    batch_order: str,
    seed: int,
    attrs: dict[str, str | int | float] | None = None,
) -> xr.Dataset:
    """The history as a CF-1.8 dataset with dimensions ``iteration`` and ``epoch``.

    Steps or epochs that a failure cut off are filled with NaN, so that histories of the same
    schedule always have the same sizes.
    """
    n = data.n_train
    per_epoch = history.steps_per_epoch
    n_epochs = history.epochs
    n_steps = n_epochs * per_epoch

    def padded(values: list[float], size: int) -> np.ndarray:
        out = np.full(size, np.nan)
        out[: len(values)] = values
        return out

    iteration = np.arange(1, n_steps + 1, dtype=np.int32)  # CF 1.8 has no 64-bit integers
    variables: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        "batch_loss": (("iteration",), padded(history.batch_loss, n_steps)),
        "elapsed_s": (("iteration",), padded(history.elapsed_s, n_steps)),
        "iteration_epoch": (("iteration",), (iteration - 1) // per_epoch + 1),
        "train_loss": (("epoch",), padded(history.train_loss, n_epochs + 1)),
        "test_loss": (("epoch",), padded(history.test_loss, n_epochs + 1)),
        "wall_time_s": (("epoch",), padded(history.wall_time_s, n_epochs + 1)),
        "cpu_time_s": (("epoch",), padded(history.cpu_time_s, n_epochs + 1)),
    }
    variables["epoch_time_s"] = (("epoch",), np.concatenate([[0.0], np.diff(variables["wall_time_s"][1])]))
    if history.iteration_train_loss:
        variables["iteration_train_loss"] = (("iteration",), padded(history.iteration_train_loss, n_steps))
        variables["iteration_test_loss"] = (("iteration",), padded(history.iteration_test_loss, n_steps))
    coords = {"iteration": iteration, "epoch": np.arange(n_epochs + 1, dtype=np.int32)}
    ds = xr.Dataset(variables, coords=coords)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ds.attrs = cf_attributes(
        f"gnflow training history: {optimizer} on {data.name}",
        "gnflow train_module",
        references="Cai et al. (2019), Gram-Gauss-Newton Method: Learning Overparameterized Neural Networks "
        "for Regression Problems, arXiv:1905.11675",
        libraries=False,
        gnflow_optimizer=optimizer,
        gnflow_model=" ".join(repr(model).split()),
        gnflow_n_parameters=int(n_parameters),
        gnflow_data=data.name,
        gnflow_n_train=int(n),
        gnflow_n_test=int(data.n_test),
        gnflow_batch_size=int(batch_size),
        gnflow_batch_order=batch_order,
        gnflow_seed=int(seed),
        gnflow_status=history.status,
        **(attrs or {}),
    )
    return apply_variable_attrs(ds)
