"""The sections of the run config: one frozen dataclass per TOML table, validated on construction.

Keys whose values are names of implementations (``data.kind``, ``flow.kind``, ``flow.damping``, ``observe.names``) are
checked against the registries of :mod:`gnflow.registry` when a section is built, so the allowed values are those
registered by the modules imported at that time. The annotations are evaluated eagerly (no ``from __future__ import
annotations``): the parser and the generated reference read them as objects, whichever module re-exports the classes.
"""

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from gnflow.config._memory import MemoryTerm, require_memory
from gnflow.config._values import ConfigError, _check_init_from, _require, _require_registered, registered
from gnflow.registry import DAMPING_RULES, DATA_KINDS, FLOW_KINDS, OBSERVABLE_NAMES

__all__ = [
    "ADAPTIVE_METHODS",
    "EXPONENTIAL_METHODS",
    "FIXED_METHODS",
    "KERNEL_EULER_METHODS",
    "SECTIONS",
    "ComputeConfig",
    "DataConfig",
    "FlowConfig",
    "ModelConfig",
    "ObserveConfig",
    "OutputConfig",
    "RunConfig",
    "SolverConfig",
]


Activation = Literal["silu", "tanh", "gelu", "relu"]
Scaling = Literal["mean_field", "ntk"]
OutputInit = Literal["zero", "normal", "sign"]
Trainable = Literal["all", "hidden", "output"]
BatchOrder = Literal["cyclic", "shuffled"]
GGNSave = Literal["epoch", "iteration"]
AdaptiveMethod = Literal["dopri5", "bosh3", "adaptive_heun", "dopri8", "fehlberg2"]
FixedMethod = Literal["euler", "midpoint", "rk4"]
ExponentialMethod = Literal["kernel_exponential", "kernel_etd3", "kernel_etd4"]
KernelEulerMethod = Literal["kernel_euler"]
SolverMethod = Literal[AdaptiveMethod, FixedMethod, ExponentialMethod, KernelEulerMethod, "auto"]
SaveSpacing = Literal["log", "linear"]
EpsilonScaling = Literal["absolute", "per_particle"]
DType = Literal["float64", "float32"]

ADAPTIVE_METHODS: tuple[str, ...] = get_args(AdaptiveMethod)
FIXED_METHODS: tuple[str, ...] = get_args(FixedMethod)
EXPONENTIAL_METHODS: tuple[str, ...] = get_args(ExponentialMethod)
KERNEL_EULER_METHODS: tuple[str, ...] = get_args(KernelEulerMethod)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The ``[data]`` section: where the regression data come from.

    Attributes
    ----------
    kind:
        ``"teacher"`` (the teacher--student task of Arbel et al.), ``"file"`` (user data) or a
        named real data set (``"diabetes"``, ``"concrete"``).
    input_dim:
        Input dimension d of the teacher--student task.
    teacher_width:
        Number of hidden units of the teacher network.
    n_train, n_test:
        Training and test set sizes. Training sets of different sizes drawn with the same seed are
        nested prefixes of one draw.
    noise:
        Standard deviation of Gaussian label noise added to the teacher's outputs (0 = noiseless).
    path:
        ``kind = "file"``: a NetCDF, CSV or ``.npz`` file with ``x``, ``y`` (and optionally ``x_test``, ``y_test``).
    test_fraction:
        Named real data sets (e.g. ``"diabetes"``, ``"concrete"``): fraction of the samples held
        out as the test set by a seeded random split (0 = no test set).
    max_train:
        Named real data sets: use only the first ``max_train`` samples of the (shuffled) training
        split; unset = all of it.
    """

    kind: str = registered(DATA_KINDS, "teacher")
    input_dim: int = 10
    teacher_width: int = 5
    n_train: int = 500
    n_test: int = 10000
    noise: float = 0.0
    path: str | None = None
    test_fraction: float = 0.1
    max_train: int | None = None

    def __post_init__(self) -> None:
        kinds = DATA_KINDS.allowed()
        _require(self.kind in DATA_KINDS, "data.kind", f"unknown data kind {self.kind!r}; allowed: {kinds}")
        _require(self.input_dim >= 1, "data.input_dim", f"must be >= 1, got {self.input_dim}")
        _require(self.teacher_width >= 1, "data.teacher_width", f"must be >= 1, got {self.teacher_width}")
        _require(self.n_train >= 1, "data.n_train", f"must be >= 1, got {self.n_train}")
        _require(self.n_test >= 0, "data.n_test", f"must be >= 0, got {self.n_test}")
        _require(
            math.isfinite(self.noise) and self.noise >= 0,
            "data.noise",
            f"must be a finite number >= 0, got {self.noise}",
        )
        if self.kind == "file":
            _require(self.path is not None and self.path != "", "data.path", 'required when data.kind = "file"')
        _require(
            math.isfinite(self.test_fraction) and 0 <= self.test_fraction < 1,
            "data.test_fraction",
            f"must lie in [0, 1), got {self.test_fraction}",
        )
        if self.max_train is not None:
            _require(self.max_train >= 1, "data.max_train", f"must be >= 1, got {self.max_train}")
        # keys that the data kind does not read are refused, not ignored
        named = self.kind not in ("teacher", "file")
        _require(
            named or self.max_train is None,
            "data.max_train",
            f"applies to named real data sets only, not to data.kind = {self.kind!r}"
            + ("; set the number of training samples with data.n_train" if self.kind == "teacher" else ""),
        )
        for key, default, instead in (
            ("n_train", 500, "keep fewer training samples with data.max_train"),
            ("n_test", 10000, "the test set is data.test_fraction of the samples"),
        ):
            value = getattr(self, key)
            _require(
                not named or value == default,
                f"data.{key}",
                f"does not apply to data.kind = {self.kind!r}, whose size is fixed by the data set ({instead}); "
                f"got {value}",
            )


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The ``[model]`` section: the two-layer network as particles.

    Attributes
    ----------
    width:
        Number of particles (hidden neurons) M.
    activation:
        sigma: one of silu, tanh, gelu, relu.
    scaling:
        ``"mean_field"``: f = (1/M) sum_i v_i sigma(u_i.x + b_i); ``"ntk"``: 1/sqrt(M) instead.
    init_scale:
        tau0: hidden weights and biases start as N(0, tau0^2).
    output_init:
        Output weights v at t = 0: ``"zero"``, ``"normal"`` (N(0, 1)) or ``"sign"`` (+-1, equal probability).
    train:
        Which components move: ``"all"``, ``"hidden"`` (u and b) or ``"output"`` (v: random features).
    init_from:
        Start from a saved state of a run file, not a random draw (``gnflow run --from``): ``"PATH"`` (its last
        state) or ``"PATH@T"`` (the state at flow time T); it must match the run's width, input dimension and
        training data. Flow time restarts at 0. Empty: the draw.
    init_seed:
        Unset: the particles of ``seed``; k: those ``seed = k`` would draw, on the data of ``seed``.
    """

    width: int = 5000
    activation: Activation = "silu"
    scaling: Scaling = "mean_field"
    init_scale: float = 1.0
    output_init: OutputInit = "zero"
    train: Trainable = "all"
    init_from: str = ""
    init_seed: int | None = None

    def __post_init__(self) -> None:
        _require(self.width >= 1, "model.width", f"must be >= 1, got {self.width}")
        _require((self.init_seed or 0) >= 0, "model.init_seed", f"must be >= 0 (or unset), got {self.init_seed}")
        _check_init_from(self.init_from)
        _require(
            math.isfinite(self.init_scale) and self.init_scale > 0,
            "model.init_scale",
            f"must be a finite number > 0, got {self.init_scale}",
        )
        _require(
            not (self.train == "hidden" and self.output_init == "zero"),
            "model.output_init",
            '"zero" with model.train = "hidden" freezes the network at f = 0; use "normal" or "sign"',
        )


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """The ``[flow]`` section: which vector field is integrated.

    Attributes
    ----------
    kind:
        A registered flow (``gnflow.registry.FLOW_KINDS``): ``"gauss_newton"``, ``"gradient"``
        or ``"ggn"`` (discrete Gram--Gauss--Newton: Euler steps of size h = b / lam of the
        Gauss--Newton flow restricted to mini-batches of b samples, with constant damping
        eps = alpha / lam; ``damping``, ``epsilon`` and the solver's method, step size and horizon
        are then not used).
    damping:
        A registered Gauss--Newton damping rule eps(w) (``gnflow.registry.DAMPING_RULES``):
        ``"eigmin"`` (max(eps0, lambda_min(A))), ``"constant"`` (eps0) or ``"relative"``
        (kappa * trace(A) / N).
    epsilon:
        eps0 for eigmin and constant damping, kappa for relative damping.
    epsilon_scaling:
        ``"absolute"``: eps0 as given (the papers' setting); ``"per_particle"``: eps0 / M, which follows
        A ~ 1/M (mean field) so that the GN flow has an M -> infinity limit; eigmin and constant only.
    lam:
        GGN: lam > 0 in w <- w - J_B^T (lam A_B + alpha I)^{-1} r_B.
    alpha:
        GGN: ridge alpha >= 0 (alpha = 0: minimum-norm Gauss--Newton step on the batch).
    batch_size:
        GGN: b, the number of samples per step; must lie in 1..N (b = N: full-batch GGN).
    epochs:
        GGN: number of passes over the training set (default 10 when ``iterations`` is not set).
    iterations:
        GGN: number of steps instead of ``epochs`` (the last epoch may be partial).
    batch_order:
        GGN: ``"cyclic"`` (the same consecutive batches every epoch, as in Cai et al.'s Theorem 2)
        or ``"shuffled"`` (a new random partition every epoch, seeded by the run's seed).
    save_every:
        GGN: save the state after every ``"epoch"`` or every ``"iteration"``.
    """

    kind: str = registered(FLOW_KINDS, "gauss_newton")
    damping: str = registered(DAMPING_RULES, "eigmin")
    epsilon: float = 1e-7
    epsilon_scaling: EpsilonScaling = "absolute"
    lam: float = 1.0
    alpha: float = 0.1
    batch_size: int = 128
    epochs: int | None = None
    iterations: int | None = None
    batch_order: BatchOrder = "cyclic"
    save_every: GGNSave = "epoch"

    def __post_init__(self) -> None:
        _require_registered(self.kind, FLOW_KINDS)
        _require_registered(self.damping, DAMPING_RULES)
        _require(
            math.isfinite(self.epsilon) and self.epsilon >= 0,
            "flow.epsilon",
            f"must be a finite number >= 0, got {self.epsilon}",
        )
        _require(
            self.epsilon_scaling == "absolute" or self.damping in ("eigmin", "constant"),
            "flow.epsilon_scaling",
            f"'per_particle' applies to eigmin and constant damping; {self.damping} damping is scale-free already",
        )
        _require(math.isfinite(self.lam) and self.lam > 0, "flow.lam", f"must be a finite number > 0, got {self.lam}")
        _require(
            math.isfinite(self.alpha) and self.alpha >= 0,
            "flow.alpha",
            f"must be a finite number >= 0, got {self.alpha}",
        )
        _require(self.batch_size >= 1, "flow.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(
            self.epochs is None or self.iterations is None,
            "flow.iterations",
            "give flow.epochs or flow.iterations, not both",
        )
        if self.epochs is not None:
            _require(self.epochs >= 1, "flow.epochs", f"must be >= 1, got {self.epochs}")
        if self.iterations is not None:
            _require(self.iterations >= 1, "flow.iterations", f"must be >= 1, got {self.iterations}")


@dataclass(frozen=True, kw_only=True)
class ObserveConfig:
    """The ``[observe]`` section: extra observables computed at the saved times.

    Attributes
    ----------
    names:
        Observable names; each adds documented variables to the trajectory dataset.
    spectrum_count:
        Number of saved times (first, last and evenly spaced indices between) at which
        ``spectrum`` stores the full Gram spectrum (0: extreme eigenvalues only).
    top_k:
        Numbers k of leading eigendirections of A for the residual fraction ``residual_topk``.
    quantiles:
        Quantile levels (in [0, 1]) of the particle displacements reported by ``weight_movement``.
    histogram_bins:
        Number of bins of the particle-norm histograms of ``norm_histogram``.
    refit_ridge:
        Ridge penalty lambda of ``refit``: minimize ||Phi v - y||^2 + lambda ||v||^2 (units of the
        Gram matrix; 0 = minimum-norm least squares).
    refit_rcond:
        Singular values of the feature matrix below ``refit_rcond`` x the largest are dropped by the
        minimum-norm least-squares refit (used when ``refit_ridge = 0``).
    wasserstein_exact_max:
        ``wasserstein`` solves the exact optimal transport problem when both measures have at most
        this many particles, and uses the sliced Wasserstein-2 distance otherwise.
    wasserstein_projections:
        Number of random directions of the sliced Wasserstein distance.
    regime_weight_threshold:
        A run is in the kernel regime when the final relative hidden-weight movement is below this
        threshold and the final kernel movement is below ``regime_kernel_threshold``.
    regime_kernel_threshold:
        Threshold on the final kernel movement 1 - CKA(A_t, A_0) for the kernel regime.
    """

    names: tuple[str, ...] = registered(OBSERVABLE_NAMES, ())
    spectrum_count: int = 3
    top_k: tuple[int, ...] = (1, 5, 10)
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9, 1.0)
    histogram_bins: int = 40
    refit_ridge: float = 0.0
    refit_rcond: float = 1e-10
    wasserstein_exact_max: int = 1000
    wasserstein_projections: int = 200
    regime_weight_threshold: float = 0.1
    regime_kernel_threshold: float = 0.1

    def __post_init__(self) -> None:
        for name in self.names:
            _require(
                name in OBSERVABLE_NAMES,
                "observe.names",
                f"unknown observable {name!r}; allowed: {', '.join(OBSERVABLE_NAMES) or 'none available'}",
            )
        _require(self.spectrum_count >= 0, "observe.spectrum_count", f"must be >= 0, got {self.spectrum_count}")
        _require(
            len(self.top_k) >= 1 and all(k >= 1 for k in self.top_k),
            "observe.top_k",
            f"must be a non-empty list of integers >= 1, got {list(self.top_k)}",
        )
        _require(
            len(self.quantiles) >= 1 and all(0.0 <= q <= 1.0 for q in self.quantiles),
            "observe.quantiles",
            f"must be a non-empty list of numbers in [0, 1], got {list(self.quantiles)}",
        )
        _require(self.histogram_bins >= 1, "observe.histogram_bins", f"must be >= 1, got {self.histogram_bins}")
        # two histograms of at least two saved times, their edges and centres, and their copies in the dataset
        bins = MemoryTerm(
            8.0 * 16 * self.histogram_bins, f"observe.histogram_bins = {self.histogram_bins}", "the norm histograms"
        )
        require_memory([bins], "norm_histogram", ConfigError)
        _require(
            math.isfinite(self.refit_ridge) and self.refit_ridge >= 0,
            "observe.refit_ridge",
            f"must be a finite number >= 0, got {self.refit_ridge}",
        )
        _require(0 < self.refit_rcond < 1, "observe.refit_rcond", f"must lie in (0, 1), got {self.refit_rcond}")
        _require(
            self.wasserstein_exact_max >= 1,
            "observe.wasserstein_exact_max",
            f"must be >= 1, got {self.wasserstein_exact_max}",
        )
        _require(
            self.wasserstein_projections >= 1,
            "observe.wasserstein_projections",
            f"must be >= 1, got {self.wasserstein_projections}",
        )
        for key in ("regime_weight_threshold", "regime_kernel_threshold"):
            value = getattr(self, key)
            _require(math.isfinite(value) and value > 0, f"observe.{key}", f"must be a finite number > 0, got {value}")


@dataclass(frozen=True, kw_only=True)
class SolverConfig:
    """The ``[solver]`` section: integration of the flow in flow time t.

    Attributes
    ----------
    method:
        Adaptive (dopri5, bosh3, adaptive_heun, dopri8, fehlberg2) or fixed-step (euler,
        midpoint, rk4) torchdiffeq method, ``"kernel_exponential"``: adaptive steps that are
        exact for the linearized (kernel) model, for long-horizon gradient flows
        (:mod:`gnflow.exponential`), ``"kernel_etd3"`` and ``"kernel_etd4"``: exponential Runge--Kutta steps
        of third and fourth order on the same splitting (:mod:`gnflow.exponential_rk`), ``"auto"``: chosen
        from the flow and the horizon (:mod:`gnflow.method_choice`), or ``"kernel_euler"``: the Euler iterations of step
        ``step_size``, taken in adaptive blocks that are exact for the linearized model, for
        long runs of the discrete methods (:mod:`gnflow.kernel_euler`).
    rtol, atol:
        Relative and absolute tolerances of the adaptive methods (kernel_exponential included)
        and of kernel_euler's blocks.
    step_size:
        Step size h of the fixed-step methods and of kernel_euler (flow time).
    t_end:
        Final flow time.
    n_save:
        Number of saved times (including t = 0 and t_end) when ``save_times`` is not given.
    save_spacing:
        ``"log"``: t = 0 followed by log-spaced times over ``save_decades`` decades up to t_end;
        ``"linear"``: equally spaced from 0 to t_end.
    save_decades:
        Number of decades covered by log-spaced saved times.
    save_times:
        Explicit saved times (increasing, within [0, t_end]); overrides n_save and save_spacing.
    stop_loss_ratio:
        Stop when train loss <= ratio * initial train loss (0 = never stop early).
    max_steps:
        Maximum number of solver steps (accepted and rejected) before the run fails.
    max_wall_time_s:
        Wall-clock budget of one integration call in seconds (0 = unlimited): once spent, the
        run stops before its next step and fails with the trajectory so far. A resumed run gets
        the budget afresh.
    max_cpu_time_s:
        Processor-time budget (this process, all threads) of one integration call in seconds
        (0 = unlimited); less sensitive than wall time to other load on the machine.
    first_step:
        First step size of adaptive methods (default: torchdiffeq's estimate; for
        kernel_exponential N / lambda_max(A) at t = 0).
    """

    method: SolverMethod = "dopri5"
    rtol: float = 1e-6
    atol: float = 1e-9
    step_size: float = 10.0
    t_end: float = 10000.0
    n_save: int = 201
    save_spacing: SaveSpacing = "log"
    save_decades: float = 4.0
    save_times: tuple[float, ...] | None = None
    stop_loss_ratio: float = 1e-8
    max_steps: int = 1_000_000
    max_wall_time_s: float = 0.0
    max_cpu_time_s: float = 0.0
    first_step: float | None = None

    def __post_init__(self) -> None:
        _require(
            math.isfinite(self.rtol) and self.rtol > 0, "solver.rtol", f"must be a finite number > 0, got {self.rtol}"
        )
        _require(
            self.rtol < 1,
            "solver.rtol",
            f"must be < 1 (a relative error of 1 or more means no accuracy; allowed: 0 < rtol < 1), got {self.rtol}",
        )
        _require(
            math.isfinite(self.atol) and self.atol > 0, "solver.atol", f"must be a finite number > 0, got {self.atol}"
        )
        _require(
            math.isfinite(self.step_size) and self.step_size > 0,
            "solver.step_size",
            f"must be a finite number > 0, got {self.step_size}",
        )
        _require(
            math.isfinite(self.t_end) and self.t_end > 0,
            "solver.t_end",
            f"must be a finite number > 0, got {self.t_end}",
        )
        _require(self.n_save >= 2, "solver.n_save", f"must be >= 2, got {self.n_save}")
        _require(
            math.isfinite(self.save_decades) and self.save_decades > 0,
            "solver.save_decades",
            f"must be a finite number > 0, got {self.save_decades}",
        )
        if self.save_times is not None:
            times = self.save_times
            _require(len(times) >= 1, "solver.save_times", "must hold at least one time")
            _require(
                all(math.isfinite(t) and 0 <= t <= self.t_end for t in times),
                "solver.save_times",
                f"every time must lie in [0, solver.t_end = {self.t_end}]",
            )
            _require(
                all(b > a for a, b in itertools.pairwise(times)),
                "solver.save_times",
                "must be strictly increasing",
            )
        _require(
            math.isfinite(self.stop_loss_ratio) and 0 <= self.stop_loss_ratio < 1,
            "solver.stop_loss_ratio",
            f"must lie in [0, 1), got {self.stop_loss_ratio}",
        )
        _require(self.max_steps >= 1, "solver.max_steps", f"must be >= 1, got {self.max_steps}")
        for key in ("max_wall_time_s", "max_cpu_time_s"):
            value = getattr(self, key)
            _require(
                math.isfinite(value) and value >= 0,
                f"solver.{key}",
                f"must be a finite number of seconds >= 0 (0 = unlimited), got {value}",
            )
        if self.first_step is not None:
            _require(
                math.isfinite(self.first_step) and self.first_step > 0,
                "solver.first_step",
                f"must be a finite number > 0, got {self.first_step}",
            )

    @property
    def adaptive(self) -> bool:
        """Whether the method chooses its own step sizes (kernel_exponential does)."""
        return self.method in ADAPTIVE_METHODS or self.method in EXPONENTIAL_METHODS or self.method == "auto"


@dataclass(frozen=True, kw_only=True)
class ComputeConfig:
    """The ``[compute]`` section: how the vector field is computed (never what it is).

    Attributes
    ----------
    chunk_size:
        Particles per chunk of the products over particles (0: automatic, so that one
        (sample, particle) block holds at most ``block_entries`` entries). Peak memory of a field
        evaluation is O(N * chunk + N^2) instead of O(N * M); results agree to rounding.
    block_entries:
        Entries of one (sample, particle) block for the automatic chunk size and for predictions on
        large test sets (default 2^24: 128 MiB per block in float64).
    allow_tf32:
        On CUDA with ``dtype = "float32"``, let the float32 products (activations, J^T c) use TF32
        tensor cores (about 3 significant digits fewer). Gram matrices and solves stay float64.
    threads:
        torch CPU threads (``--threads``); 0: the free cores, at most torch's setting
        (:mod:`gnflow.threads`); not in the config hash; the file's ``gnflow_threads``.
    """

    chunk_size: int = 0
    block_entries: int = 1 << 24
    allow_tf32: bool = False
    threads: int = 0

    def __post_init__(self) -> None:
        _require(self.chunk_size >= 0, "compute.chunk_size", f"must be >= 0 (0 = automatic), got {self.chunk_size}")
        _require(self.block_entries >= 1, "compute.block_entries", f"must be >= 1, got {self.block_entries}")
        _require(self.threads >= 0, "compute.threads", f"must be >= 0 (0 = the free cores), got {self.threads}")


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    """The ``[output]`` section: where and what the run writes.

    Attributes
    ----------
    path:
        NetCDF file written by ``gnflow run``.
    save_test:
        Store the test inputs and labels in the file (set false for very large test sets).
    checkpoint_every_s:
        Write the solver position to a checkpoint file beside ``path`` (``NAME.checkpoint.pt``)
        at most every this many seconds of wall-clock time (0 = never); ``gnflow run --resume``
        continues from it.
    checkpoint_every_steps:
        Also write it every this many accepted solver steps (0 = never).
    """

    path: str = "data/runs/run.nc"
    save_test: bool = True
    checkpoint_every_s: float = 0.0
    checkpoint_every_steps: int = 0

    def __post_init__(self) -> None:
        _require(self.path != "", "output.path", "must not be empty")
        _require(self.path.endswith(".nc"), "output.path", f"must name a NetCDF file ending in .nc, got {self.path!r}")
        _require(
            math.isfinite(self.checkpoint_every_s) and self.checkpoint_every_s >= 0,
            "output.checkpoint_every_s",
            f"must be a finite number of seconds >= 0 (0 = never), got {self.checkpoint_every_s}",
        )
        _require(
            self.checkpoint_every_steps >= 0,
            "output.checkpoint_every_steps",
            f"must be an integer >= 0 (0 = never), got {self.checkpoint_every_steps}",
        )


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One run: the whole TOML run file.

    Attributes
    ----------
    seed:
        Seed of every random draw (teacher, data, initial particles).
    device:
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:K"``.
    dtype:
        State dtype (``"float64"`` or ``"float32"``); Gram solves and spectra are float64 always.
    """

    seed: int = 1
    device: str = "auto"
    dtype: DType = "float64"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    observe: ObserveConfig = field(default_factory=ObserveConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "seed", f"must be an integer >= 0, got {self.seed}")
        device = self.device
        ok = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
        _require(ok, "device", f'unknown device {device!r}; allowed: "auto", "cpu", "cuda", "cuda:K"')


#: The tables of the run file, in order: section name -> dataclass.
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "flow": FlowConfig,
    "observe": ObserveConfig,
    "solver": SolverConfig,
    "compute": ComputeConfig,
    "output": OutputConfig,
}
