"""Gram--Gauss--Newton (Cai et al. 2019) as Euler steps of the Gauss--Newton flow.

One GGN(lam, alpha) step on a mini-batch B of b samples,

    w <- w - J_B^T (lam A_B + alpha I)^{-1} r_B,        A_B = J_B J_B^T,  r_B = f(X_B) - y_B,

is one Euler step of size h = b / lam of the Gauss--Newton flow restricted to B,
dw/dt = -J_B^T (A_B + eps I)^{-1} r_B / b, with constant damping eps = alpha / lam:

    h J_B^T (A_B + eps I)^{-1} r_B / b = (1/lam) J_B^T (A_B + (alpha/lam) I)^{-1} r_B
                                       = J_B^T (lam A_B + alpha I)^{-1} r_B.

For the particle model, GGN is therefore not a second implementation: :func:`ggn_flow` builds the
:class:`~gnflow.flows.GaussNewtonFlow` with :class:`~gnflow.damping.ConstantDamping` (as the
registered ``flow.kind = "ggn"``, :class:`GramGaussNewtonFlow`), and :func:`ggn_schedule` the
mini-batches and step sizes that the fixed-step driver of :mod:`gnflow.solve` integrates with the
Euler method. For any ``torch.nn.Module`` regression model,
:class:`GGN` is a ``torch.optim`` optimizer that takes the same step, with the b x b Gram matrix
built from per-sample Jacobians (``torch.func``) in memory-bounded blocks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Self

import numpy as np
import torch
from torch.func import functional_call, jacrev, vjp, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from gnflow.config import ConfigError, FlowConfig, RunConfig
from gnflow.damping import ConstantDamping, Damping, GramSolveError, solve_damped
from gnflow.dataset import VariableInfo, register_variable
from gnflow.flows import Flow, FlowDescription, GaussNewtonFlow, register_flow
from gnflow.model import ParticleModel
from gnflow.solve import StepSchedule

__all__ = [
    "GGN",
    "GramGaussNewtonFlow",
    "RegressionBatch",
    "check_batch_size",
    "check_per_sample_model",
    "ggn_damping",
    "ggn_flow",
    "ggn_iterations",
    "ggn_schedule",
    "ggn_step_size",
    "minibatches",
]

logger = logging.getLogger(__name__)

DEFAULT_EPOCHS = 10

register_variable(
    "iteration",
    VariableInfo("number of optimizer steps taken", "1", "GGN steps (mini-batch Euler steps) since the start"),
)
register_variable(
    "epoch",
    VariableInfo("passes over the training set completed", "1", "samples used by the steps so far divided by N"),
)


# --- the GGN <-> Euler mapping --------------------------------------------------------------


def _check_lam_alpha(lam: float, alpha: float) -> None:
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"GGN: lam must be a finite number > 0, got {lam}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"GGN: alpha must be a finite number >= 0, got {alpha}")


def ggn_step_size(batch_size: int, lam: float) -> float:
    """h = b / lam, the Euler step (flow time) of one GGN step on b samples."""
    _check_lam_alpha(lam, 0.0)
    return batch_size / lam


def ggn_damping(lam: float, alpha: float) -> float:
    """eps = alpha / lam, the constant Gauss--Newton damping of GGN(lam, alpha)."""
    _check_lam_alpha(lam, alpha)
    return alpha / lam


GGN_HINT = "use flow.alpha > 0 (GGN damps the batch Gram matrix with eps = alpha / lam)"
"""What to change when lam A_B + alpha I cannot be solved: GGN's damping is ``flow.alpha``, not ``flow.epsilon``."""


@register_flow
class GramGaussNewtonFlow(GaussNewtonFlow):
    """``flow.kind = "ggn"``: the Gauss--Newton flow with constant damping eps = alpha / lam, run as GGN.

    The vector field is that of :class:`~gnflow.flows.GaussNewtonFlow`; what makes it GGN(lam,
    alpha) is how it is integrated: Euler steps of size b / lam on the mini-batches of
    :meth:`schedule`. Build it with :func:`ggn_flow` or from a config.
    """

    name = "ggn"

    def __init__(
        self, model: ParticleModel, x: torch.Tensor, y: torch.Tensor, damping: Damping, *, allow_tf32: bool = False
    ) -> None:
        super().__init__(model, x, y, damping, allow_tf32=allow_tf32)
        self.solver.hint = GGN_HINT

    def restrict(self, index: torch.Tensor) -> Self:
        """The flow on the batch ``index`` (see :meth:`GaussNewtonFlow.restrict`), whose solver's
        messages name ``flow.alpha``."""
        batch = super().restrict(index)
        batch.solver.hint = GGN_HINT
        return batch

    @classmethod
    def from_config(
        cls, config: FlowConfig, model: ParticleModel, x: torch.Tensor, y: torch.Tensor, *, allow_tf32: bool = False
    ) -> Flow:
        """The flow of GGN(``config.lam``, ``config.alpha``), once 1 <= ``config.batch_size`` <= N is checked."""
        check_batch_size(config.batch_size, int(x.shape[0]))
        return ggn_flow(model, x, y, lam=config.lam, alpha=config.alpha, allow_tf32=allow_tf32)

    @classmethod
    def schedule(cls, config: FlowConfig, n_samples: int, seed: int | np.random.SeedSequence) -> StepSchedule:
        """The Euler steps of the run: :func:`ggn_schedule`."""
        return ggn_schedule(config, n_samples, seed)

    @classmethod
    def describe(cls, config: RunConfig, n_train: int) -> FlowDescription:
        """GGN's hyper-parameters and the Euler step b / lam it takes per batch of b samples."""
        fc = config.flow
        b = min(fc.batch_size, n_train)
        solver_text = f"euler (step_size = b / lam = {ggn_step_size(b, fc.lam):g} per full batch of b = {b})"
        flow_text = (
            f"ggn (lam={fc.lam:g}, alpha={fc.alpha:g}, batch_size={b}, batch_order={fc.batch_order}): Euler steps "
            "of size b/lam of the gauss_newton flow on each batch with constant damping "
            f"alpha/lam = {fc.alpha / fc.lam:g}"
        )
        title = f"gnflow {cls.name} steps of a two-layer network of {config.model.width} particles"
        return FlowDescription(flow=flow_text, solver=solver_text, title=title)


def ggn_flow(
    model: ParticleModel, x: torch.Tensor, y: torch.Tensor, *, lam: float, alpha: float, allow_tf32: bool = False
) -> GramGaussNewtonFlow:
    """The Gauss--Newton flow whose Euler steps of size b / lam on batches are GGN(lam, alpha).

    Parameters
    ----------
    model:
        The particle model.
    x, y:
        All training inputs (sample, d) and labels (sample,); batches restrict them.
    lam, alpha:
        GGN hyper-parameters, lam > 0 and alpha >= 0.
    allow_tf32:
        Allow TF32 matrix products on CUDA (see the ``[compute]`` section).
    """
    return GramGaussNewtonFlow(model, x, y, ConstantDamping(ggn_damping(lam, alpha)), allow_tf32=allow_tf32)


def check_batch_size(batch_size: int, n_samples: int, key: str = "flow.batch_size") -> None:
    """Raise :class:`~gnflow.config.ConfigError` (naming ``key``) unless 1 <= batch_size <= N."""
    if not 1 <= batch_size <= n_samples:
        raise ConfigError(
            f"{key}: must lie in 1..N = 1..{n_samples} (the number of training samples), got {batch_size}"
        )


def ggn_iterations(config: FlowConfig, n_samples: int) -> int:
    """The number of GGN steps: ``iterations``, or ``epochs`` (default 10) x ceil(N / b)."""
    if config.iterations is not None:
        return config.iterations
    epochs = config.epochs if config.epochs is not None else DEFAULT_EPOCHS
    return epochs * math.ceil(n_samples / config.batch_size)


def minibatches(
    n_samples: int, batch_size: int, n_steps: int, order: str, rng: np.random.Generator | None = None
) -> list[np.ndarray]:
    """Sample indices of ``n_steps`` consecutive mini-batches, epoch after epoch.

    Each epoch partitions 0..N-1 into ceil(N / b) batches of b consecutive entries of an ordering
    (the last batch holds the remainder): the identity ordering every epoch for ``"cyclic"`` (the
    schedule of Cai et al.'s Theorem 2), a fresh permutation drawn from ``rng`` every epoch for
    ``"shuffled"``.
    """
    check_batch_size(batch_size, n_samples, key="batch_size")
    if order not in ("cyclic", "shuffled"):
        raise ValueError(f"unknown batch order {order!r}; allowed: cyclic, shuffled")
    if order == "shuffled" and rng is None:
        raise ValueError('batch order "shuffled" needs a random generator')
    starts = range(0, n_samples, batch_size)
    batches: list[np.ndarray] = []
    identity = np.arange(n_samples)
    while len(batches) < n_steps:
        ordering = identity if order == "cyclic" else rng.permutation(n_samples)  # type: ignore[union-attr]
        batches.extend(ordering[s : s + batch_size] for s in starts)
    return batches[:n_steps]


def ggn_schedule(config: FlowConfig, n_samples: int, seed: int | np.random.SeedSequence) -> StepSchedule:
    """The Euler steps of a GGN run: batches, step sizes h_k = b_k / lam and saved steps.

    Full-batch GGN (b = N) uses all samples in their natural order at every step (the batch
    field is then the Gauss--Newton flow itself). States are saved after every iteration or at
    the end of every epoch (``config.save_every``), and always after the last step.
    """
    check_batch_size(config.batch_size, n_samples)
    n_steps = ggn_iterations(config, n_samples)
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    if config.batch_size == n_samples:
        sizes = np.full(n_steps, n_samples)
        batches: tuple[np.ndarray, ...] | None = None
    else:
        rng = np.random.default_rng(seq)
        batch_list = minibatches(n_samples, config.batch_size, n_steps, config.batch_order, rng)
        sizes = np.asarray([len(b) for b in batch_list])
        batches = tuple(batch_list)
    if config.save_every == "iteration":
        save = np.ones(n_steps, dtype=bool)
    else:
        per_epoch = math.ceil(n_samples / config.batch_size)
        save = (np.arange(1, n_steps + 1) % per_epoch) == 0
        save[-1] = True
    step_sizes = sizes / config.lam
    return StepSchedule(step_sizes=step_sizes, save=save, batches=batches, n_samples=n_samples)


# --- GGN for torch.nn.Module regression models ------------------------------------------------


class RegressionBatch(NamedTuple):
    """What a :class:`GGN` closure returns: the model and one mini-batch.

    The fields are ``model`` (the regression network; f(w, x) must depend on one sample x only),
    ``x`` (inputs of the batch, shape (batch, ...)) and ``y`` (targets, shape (batch,) or
    (batch, 1)).
    """

    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor


def check_per_sample_model(model: torch.nn.Module) -> None:
    """Refuse models whose output for one sample depends on the other samples of the batch.

    GGN's Gram matrix is built from the per-sample Jacobians of f(w, x); batch normalization in
    training mode couples the samples of a batch and breaks that assumption.
    """
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.training:
            label = name or type(module).__name__
            raise ValueError(
                f"GGN: {type(module).__name__} layer {label!r} is in training mode, so the output for one "
                "sample depends on the rest of the batch; GGN needs f(w, x) per sample: put it in eval "
                "mode (model.eval()) or use GroupNorm/LayerNorm"
            )


def _trainable(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [p for p in params if p.requires_grad]


class GGN(torch.optim.Optimizer):
    """Mini-batch Gram--Gauss--Newton: w <- w - J_B^T (lam A_B + alpha I)^{-1} r_B.

    Parameters
    ----------
    params:
        The parameters to train (``model.parameters()``); other parameters of the model stay
        fixed. One parameter group only: the step couples all parameters.
    lam:
        lam > 0. GGN(lam, alpha) is an Euler step of size h = b / lam of the Gauss--Newton flow on
        the batch with damping eps = alpha / lam.
    alpha:
        Ridge alpha >= 0; alpha = 0 is the minimum-norm Gauss--Newton step (needs A_B invertible).
    max_jacobian_elements:
        Memory bound: the per-sample Jacobian blocks held at once have at most this many entries
        (blocks over parameter tensors and over samples; a smaller bound costs more passes).

    Attributes
    ----------
    last_gram:
        A_B of the last step, (batch, batch) float64, for diagnostics (conditioning, spectrum).

    Notes
    -----
    ``step(closure)`` calls ``closure()``, which returns a :class:`RegressionBatch`
    ``(model, x, y)``; nothing needs a backward pass beforehand. The Gram matrix
    A_B = J_B J_B^T (b x b) is accumulated in float64 from per-sample Jacobians
    (``vmap(jacrev(functional_call))``) and solved by Cholesky in float64; J_B^T c is one
    vector--Jacobian product of the batched model. ``step`` returns the batch loss
    ||r_B||^2 / (2b) before the step.

    Examples
    --------
    >>> opt = GGN(model.parameters(), lam=1.0, alpha=0.1)  # doctest: +SKIP
    >>> for x, y in batches:  # doctest: +SKIP
    ...     loss = opt.step(lambda: RegressionBatch(model, x, y))
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lam: float = 1.0,
        alpha: float = 0.1,
        *,
        max_jacobian_elements: int = 1 << 24,
    ) -> None:
        _check_lam_alpha(lam, alpha)
        if max_jacobian_elements < 1:
            raise ValueError(f"GGN: max_jacobian_elements must be >= 1, got {max_jacobian_elements}")
        given: list[Any] = list(params)
        tensors = [t for g in given for t in (g["params"] if isinstance(g, dict) else [g])]
        if not _trainable(tensors):
            raise ValueError("GGN: the model has no trainable parameters (none given, or none requires grad)")
        super().__init__(given, {"lam": lam, "alpha": alpha})
        if len(self.param_groups) != 1:
            raise ValueError("GGN: one parameter group only (the Gauss-Newton step couples all parameters)")
        self.max_jacobian_elements = int(max_jacobian_elements)
        self.last_gram: torch.Tensor | None = None

    @property
    def lam(self) -> float:
        """lam of the (single) parameter group."""
        return float(self.param_groups[0]["lam"])

    @property
    def alpha(self) -> float:
        """alpha of the (single) parameter group."""
        return float(self.param_groups[0]["alpha"])

    def _named_trainable(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        own = {id(p) for p in _trainable(self.param_groups[0]["params"])}
        named: dict[str, torch.Tensor] = {name: p for name, p in model.named_parameters() if id(p) in own}
        if len(named) != len(own):
            raise ValueError("GGN: some optimized parameters are not parameters of the model returned by the closure")
        return named

    @torch.no_grad()
    def step(self, closure: Callable[[], RegressionBatch | Sequence[Any]]) -> torch.Tensor:  # type: ignore[override]
        """Take one GGN step on the batch returned by ``closure``; return ||r_B||^2 / (2b)."""
        if closure is None:
            raise ValueError("GGN.step needs a closure returning (model, x, y)")
        model, x, y = closure()
        check_per_sample_model(model)
        trainable = self._named_trainable(model)
        b = int(x.shape[0]) if x.ndim >= 1 else 0
        if b == 0:
            raise ValueError("GGN: empty batch (0 samples)")
        y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
        if y.ndim != 1 or y.shape[0] != b:
            raise ValueError(f"GGN: targets must have shape ({b},) or ({b}, 1), got {tuple(y.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("GGN: the batch inputs x hold non-finite values (NaN or inf)")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("GGN: the batch targets y hold non-finite values (NaN or inf)")
        fixed = {**dict(model.named_buffers()), **{n: p for n, p in model.named_parameters() if n not in trainable}}

        def f_batch(p: Mapping[str, torch.Tensor]) -> torch.Tensor:
            return _per_sample_output(functional_call(model, {**fixed, **p}, (x,)), b)

        with torch.enable_grad():
            outputs, pullback = vjp(f_batch, {n: p.detach() for n, p in trainable.items()})[:2]
        residual = outputs.detach() - y.to(outputs.dtype)
        if not bool(torch.isfinite(residual).all()):
            raise FloatingPointError("GGN: non-finite model output: the parameters have diverged")
        gram = per_sample_gram(model, trainable, fixed, x, self.max_jacobian_elements, outputs=outputs.detach())
        self.last_gram = gram
        lam, alpha = self.lam, self.alpha
        g = residual.double() / b
        try:
            direction = solve_damped(gram, g, ggn_damping(lam, alpha))
        except GramSolveError:
            raise GramSolveError(
                "GGN: lam A_B + alpha I is not positive definite (the batch Gram matrix is singular); use alpha > 0"
            ) from None
        (update,) = pullback(direction.to(outputs.dtype))
        h = ggn_step_size(b, lam)
        for name, p in trainable.items():
            p.add_(update[name].to(p.dtype), alpha=-h)
        return (residual.double() @ residual.double()) / (2 * b)


def _per_sample_output(out: torch.Tensor, b: int) -> torch.Tensor:
    if out.shape not in ((b,), (b, 1)):
        raise ValueError(
            f"GGN: the model must return one value per sample, shape ({b},) or ({b}, 1); got {tuple(out.shape)}"
        )
    return out.reshape(b)


def _parameter_blocks(trainable: Mapping[str, torch.Tensor], b: int, budget: int) -> list[list[str]]:
    """Consecutive parameter tensors grouped so that b x (group size) <= budget where possible."""
    blocks: list[list[str]] = []
    size = 0
    for name, p in trainable.items():
        if blocks and size + p.numel() <= max(1, budget // b):
            blocks[-1].append(name)
            size += p.numel()
        else:
            blocks.append([name])
            size = p.numel()
    return blocks


def per_sample_gram(
    model: torch.nn.Module,
    trainable: Mapping[str, torch.Tensor],
    fixed: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    max_jacobian_elements: int,
    *,
    outputs: torch.Tensor | None = None,
) -> torch.Tensor:
    """A = J J^T (b x b, float64) from per-sample Jacobians, in memory-bounded blocks.

    J (b x P) is never held whole: parameters are split into blocks of tensors and samples into
    chunks so that one Jacobian block holds at most ``max_jacobian_elements`` entries;
    A = sum over parameter blocks of J_p J_p^T, and a block too large for all samples at once is
    accumulated chunk pair by chunk pair (recomputing Jacobian rows instead of storing them).
    With ``outputs`` (the batched forward pass), the per-sample outputs are checked against it:
    a model whose output for one sample depends on the batch is refused.
    """
    b = int(x.shape[0])
    gram = torch.zeros(b, b, dtype=torch.float64, device=x.device)
    for names in _parameter_blocks(trainable, b, max_jacobian_elements):
        block = {n: trainable[n].detach() for n in names}
        others = {**fixed, **{n: p.detach() for n, p in trainable.items() if n not in block}}

        def f_single(
            p: Mapping[str, torch.Tensor], x_i: torch.Tensor, others: Mapping[str, torch.Tensor] = others
        ) -> tuple[torch.Tensor, torch.Tensor]:
            value = functional_call(model, {**others, **p}, (x_i.unsqueeze(0),)).reshape(())
            return value, value

        jac_fn = vmap(jacrev(f_single, has_aux=True), in_dims=(None, 0))

        def rows(index: slice, jac_fn: Any = jac_fn, names: list[str] = names, block: dict = block) -> torch.Tensor:
            with torch.enable_grad():
                jac, values = jac_fn(block, x[index])
            if outputs is not None:
                expected = outputs[index]
                if not torch.allclose(values, expected, rtol=1e-4, atol=1e-6 * (1 + float(expected.abs().max()))):
                    raise ValueError(
                        "GGN: the model's output for one sample changes with the rest of the batch; "
                        "GGN needs f(w, x) per sample"
                    )
            return torch.cat([jac[n].reshape(values.shape[0], -1) for n in names], dim=1).double()

        n_params = sum(block[n].numel() for n in names)
        chunk = max(1, min(b, max_jacobian_elements // max(1, n_params)))
        chunks = [slice(s, min(s + chunk, b)) for s in range(0, b, chunk)]
        if len(chunks) == 1:
            jac_rows = rows(chunks[0])
            gram += jac_rows @ jac_rows.T
            continue
        for i, a in enumerate(chunks):
            rows_a = rows(a)
            gram[a, a] += rows_a @ rows_a.T
            for c in chunks[i + 1 :]:
                off_diagonal = rows_a @ rows(c).T
                gram[a, c] += off_diagonal
                gram[c, a] += off_diagonal.T
    return gram
