"""The two-layer network as a system of particles, with structured derivatives.

Particle i carries w_i = (u_i, b_i, v_i) with u_i in R^d; the state is a tensor ``weights`` of
shape (particle, component) = (M, d + 2) with components ``u0 ... u{d-1}, b, v``. The network is

    f(x) = c(M) * sum_i v_i * sigma(u_i . x + b_i),    c(M) = 1/M (mean field) or 1/sqrt(M) (NTK).

With z = u.x + b, S = sigma(z) and T = sigma'(z) * v (both N x M) and X1 = [X, 1], the Jacobian of
f(X) with respect to particle i is the row block c * [T_ni x_n, T_ni, S_ni]. Every derivative
below is a contraction of S, T and X; the N x P Jacobian is never formed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from gnflow._blas import PRODUCT_MIN_ENTRIES, add_outer_product_syrk, blas_applies, matmul
from gnflow.config import RunConfig

__all__ = [
    "ACTIVATIONS",
    "Linearization",
    "ParticleModel",
    "activation_and_derivative",
    "component_names",
]

ACTIVATIONS = ("silu", "tanh", "gelu", "relu")

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# Each function returns (sigma(z), sigma'(z)) and may overwrite z with sigma'(z): every pass over a
# (sample, particle) block is memory traffic, and fresh large buffers cost page faults, so the
# derivative reuses the buffer of z.


def _silu_(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # sigma = z s, sigma' = s (1 + z - sigma) with s the logistic sigmoid
    s = torch.sigmoid(z)
    value = z * s
    return value, z.sub_(value).add_(1.0).mul_(s)


def _tanh_(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    value = torch.tanh(z)
    return value, torch.mul(value, value, out=z).neg_().add_(1.0)


def _gelu_(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # exact (erf) GELU: sigma(z) = z Phi(z), sigma'(z) = Phi(z) + z phi(z)
    cdf = torch.erf(z * _SQRT_HALF).add_(1.0).mul_(0.5)
    pdf = torch.mul(z, z).mul_(-0.5).exp_().mul_(_INV_SQRT_2PI)
    value = z * cdf
    return value, z.mul_(pdf).add_(cdf)


def _relu_(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    value = torch.clamp_min(z, 0.0)
    return value, torch.gt(z, 0, out=torch.empty_like(z, dtype=torch.bool)).to(z.dtype)


_ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "silu": _silu_,
    "tanh": _tanh_,
    "gelu": _gelu_,
    "relu": _relu_,
}


# sigma alone, as torch's fused and differentiable kernels (predict() is also used under autograd)
_ACTIVATION_VALUES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": torch.nn.functional.silu,
    "tanh": torch.tanh,
    "gelu": torch.nn.functional.gelu,
    "relu": torch.relu,
}

# sigma alone, overwriting its argument where torch has such a kernel (predict() without autograd)
_ACTIVATION_VALUES_: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": lambda z: torch.nn.functional.silu(z, inplace=True),
    "tanh": torch.tanh_,
    "gelu": torch.nn.functional.gelu,
    "relu": torch.relu_,
}

# predict() works on row blocks of ``max(_CACHE_BLOCK_ROWS, 2^16 / particles)`` rows. At M = 5000
# particles (10^4 test points, one thread; studies/performance/parts.py) 16-row blocks cost 1.66 ns
# per (sample, particle) entry for the product, sigma and the reduction together, against 1.92 ns
# at 8 rows, 2.03 at 64 and 2.21 for the earlier addmm form; at M = 1000 the 2^16-entry blocks
# (65 rows) cost 1.73 ns. The fixed rows keep the products efficient at large widths, where 2^16
# entries would be a row or two (M = 20000: 2.27 ns; 64 rows would give 2.12).
_CACHE_BLOCK_ENTRIES = 1 << 16
_CACHE_BLOCK_ROWS = 16

# the activations of a linearization are computed in row blocks of this many entries (512 KiB in
# float64, about one core's L2): 2^16 to 2^18 measured alike, whole arrays twice as slow
_ELEMENTWISE_BLOCK_ENTRIES = 1 << 16


def _activation_pair_(name: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma(z) and sigma'(z); z is overwritten."""
    try:
        function = _ACTIVATION_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}") from None
    return function(z)


def activation_and_derivative(name: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma(z) and sigma'(z) elementwise for the named activation (z is left unchanged).

    sigma(z) is differentiable by autograd; sigma'(z) is computed from a detached copy.
    """
    if name not in _ACTIVATION_VALUES:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
    if z.requires_grad and torch.is_grad_enabled():
        return _ACTIVATION_VALUES[name](z), _activation_pair_(name, z.detach().clone())[1]
    return _activation_pair_(name, z.clone())


def component_names(input_dim: int) -> list[str]:
    """Component labels of a particle: ``u0 ... u{d-1}, b, v``."""
    return [f"u{k}" for k in range(input_dim)] + ["b", "v"]


@dataclass(frozen=True, kw_only=True)
class ParticleModel:
    """The two-layer network f(x) = c(M) sum_i v_i sigma(u_i . x + b_i) on particles.

    Parameters
    ----------
    input_dim:
        d, the input dimension.
    activation:
        sigma: ``"silu"``, ``"tanh"``, ``"gelu"`` or ``"relu"``.
    scaling:
        ``"mean_field"`` (c = 1/M) or ``"ntk"`` (c = 1/sqrt(M)).
    train:
        Which components move under the flows: ``"all"``, ``"hidden"`` (u, b) or ``"output"`` (v).
    chunk_size:
        Particles per chunk of the products over particles (0: automatic, so that one
        (sample, particle) block holds at most ``block_entries`` entries). Results do not depend on
        it beyond rounding; peak memory is O(N * chunk + N^2).
    block_entries:
        Entries of one (sample, particle) block when chunks are chosen automatically, and for the
        row blocks of :meth:`predict` (default 2^24, i.e. 128 MiB in float64).
    """

    input_dim: int
    activation: str = "silu"
    scaling: Literal["mean_field", "ntk"] = "mean_field"
    train: Literal["all", "hidden", "output"] = "all"
    chunk_size: int = 0
    block_entries: int = 1 << 24

    @classmethod
    def from_config(cls, config: RunConfig, input_dim: int) -> ParticleModel:
        """The model of the run ``config`` (``[model]`` and ``[compute]``) on inputs of dimension d.

        This is the one constructor from a config: runs, observables and studies all use it, so
        that a model rebuilt from a file computes exactly what the run computed.
        """
        return cls(
            input_dim=input_dim,
            activation=config.model.activation,
            scaling=config.model.scaling,
            train=config.model.train,
            chunk_size=config.compute.chunk_size,
            block_entries=config.compute.block_entries,
        )

    def __post_init__(self) -> None:
        if self.input_dim < 1:
            raise ValueError(f"input_dim must be >= 1, got {self.input_dim}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        if self.scaling not in ("mean_field", "ntk"):
            raise ValueError(f"unknown scaling {self.scaling!r}; allowed: mean_field, ntk")
        if self.train not in ("all", "hidden", "output"):
            raise ValueError(f"unknown trainable part {self.train!r}; allowed: all, hidden, output")
        if self.chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0 (0 = automatic), got {self.chunk_size}")
        if self.block_entries < 1:
            raise ValueError(f"block_entries must be >= 1, got {self.block_entries}")

    # --- layout of the state --------------------------------------------------------------

    @property
    def n_components(self) -> int:
        """Number of components of a particle, d + 2."""
        return self.input_dim + 2

    @property
    def component_names(self) -> list[str]:
        """Component labels ``u0 ... u{d-1}, b, v``."""
        return component_names(self.input_dim)

    @property
    def trains_hidden(self) -> bool:
        """Whether u and b move."""
        return self.train in ("all", "hidden")

    @property
    def trains_output(self) -> bool:
        """Whether v moves."""
        return self.train in ("all", "output")

    def trainable_mask(self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
        """Mask of shape (component,): 1 where the component is trained, 0 where frozen."""
        mask = torch.zeros(self.n_components, dtype=dtype, device=device)
        if self.trains_hidden:
            mask[: self.input_dim + 1] = 1.0
        if self.trains_output:
            mask[-1] = 1.0
        return mask

    def n_parameters(self, width: int) -> int:
        """P, the number of trained scalars of a network of the given width."""
        per_particle = (self.input_dim + 1 if self.trains_hidden else 0) + (1 if self.trains_output else 0)
        return width * per_particle

    def scale(self, width: int) -> float:
        """c(M): 1/M (mean field) or 1/sqrt(M) (NTK)."""
        return 1.0 / width if self.scaling == "mean_field" else 1.0 / math.sqrt(width)

    # --- initialisation ----------------------------------------------------------------------

    def initial_weights(
        self,
        width: int,
        *,
        init_scale: float,
        output_init: str,
        seed: int | np.random.SeedSequence,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Initial particles, shape (particle, component).

        Hidden weights and biases are N(0, init_scale^2); output weights are 0 (``"zero"``),
        N(0, 1) (``"normal"``) or +-1 (``"sign"``). Particles are drawn one after the other from
        one stream, so the first M particles of a wider network equal the particles of width M.
        Draws use NumPy so that they do not depend on the device.
        """
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        hidden_seq, output_seq = seq.spawn(2)
        d = self.input_dim
        hidden = np.random.default_rng(hidden_seq).standard_normal((width, d + 1)) * init_scale
        rng = np.random.default_rng(output_seq)
        if output_init == "zero":
            output = np.zeros(width)
        elif output_init == "normal":
            output = rng.standard_normal(width)
        elif output_init == "sign":
            output = np.where(rng.random(width) < 0.5, -1.0, 1.0)
        else:
            raise ValueError(f"unknown output_init {output_init!r}; allowed: zero, normal, sign")
        weights = np.concatenate([hidden, output[:, None]], axis=1)
        return torch.as_tensor(weights, dtype=dtype, device=device)

    # --- evaluation -----------------------------------------------------------------------------

    def _check(self, weights: torch.Tensor, x: torch.Tensor) -> None:
        if weights.ndim != 2 or weights.shape[1] != self.n_components:
            raise ValueError(f"weights must have shape (particle, {self.n_components}), got {tuple(weights.shape)}")
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"x must have shape (sample, {self.input_dim}), got {tuple(x.shape)}")

    def predict(self, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """f(x) for every row of x: weights (particle, component), x (sample, d) -> (sample,).

        Rows are taken in blocks that stay in cache (at most ``block_entries`` entries of
        (sample, particle) activations, so memory stays O(block_entries + sample)). The bias is
        part of the product, z = [x, 1] [u, b]^T, as in :meth:`linearize`. Without autograd
        every block is computed in one buffer.
        """
        self._check(weights, x)
        d, width = self.input_dim, weights.shape[0]
        rows = max(1, min(self.block_entries // width, max(_CACHE_BLOCK_ROWS, _CACHE_BLOCK_ENTRIES // width)))
        # (d + 1, particle), a transposed view: the product reads it in place
        hidden, output = weights[:, : d + 1].T, weights[:, d + 1]
        x1 = _with_ones(x)
        if torch.is_grad_enabled() and (weights.requires_grad or x.requires_grad):
            activation = _ACTIVATION_VALUES[self.activation]
            rows = max(1, self.block_entries // width)  # autograd keeps every block: bounded by memory only
            out = [activation(x1[start : start + rows] @ hidden) @ output for start in range(0, x.shape[0], rows)]
            result = torch.cat(out) if out else x.new_zeros(0)
            return self.scale(width) * result
        activation = _ACTIVATION_VALUES_[self.activation]
        # one buffer for every block: fresh (sample, particle) blocks cost page faults (the 10^4
        # test points of a saved state are 625 blocks at M = 5000)
        result = x.new_empty(x.shape[0])
        buffer = x.new_empty(min(rows, x.shape[0]), width)
        for start in range(0, x.shape[0], rows):
            stop = min(start + rows, x.shape[0])
            z = torch.mm(x1[start:stop], hidden, out=buffer[: stop - start])
            torch.mv(activation(z), output, out=result[start:stop])
        return result.mul_(self.scale(width))

    def particle_chunk(self, n_samples: int, width: int) -> int:
        """Particles per chunk of a linearization on ``n_samples`` inputs (at least 1)."""
        if self.chunk_size > 0:
            return min(self.chunk_size, width)
        return max(1, min(width, self.block_entries // max(n_samples, 1)))

    def linearize(self, weights: torch.Tensor, x: torch.Tensor) -> Linearization:
        """The network and its derivatives at ``weights`` on the inputs ``x``.

        When all particles fit in one chunk (see :meth:`particle_chunk`) the activations S and T are
        computed once here and shared by every product; otherwise each product recomputes them chunk
        by chunk, so that memory stays O(N * chunk + N^2) instead of O(N * M).
        """
        self._check(weights, x)
        chunk = self.particle_chunk(x.shape[0], weights.shape[0])
        x1 = _with_ones(x)
        activations = _activations(self, weights, x1) if chunk >= weights.shape[0] else None
        return Linearization(
            model=self,
            x=x,
            x1=x1,
            weights=weights,
            scale=self.scale(weights.shape[0]),
            chunk=chunk,
            cached=activations,
        )


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    """X1 = [X, 1], shape (sample, d + 1)."""
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


def _activations(model: ParticleModel, weights: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S = sigma(z) and T = sigma'(z) * v, both (sample, particle), for the particles in ``weights``.

    x1 = [X, 1]: z = X u + b is then one product, with no separate pass adding the biases.
    """
    d = model.input_dim
    z = x1 @ weights[:, : d + 1].T
    v = weights[:, d + 1]
    # on the CPU the elementwise passes (about six) run block by block, each block staying in
    # cache: on N = 500, M = 5000 that halves their cost against whole-array passes; a GPU takes
    # each pass as one kernel
    rows = max(1, _ELEMENTWISE_BLOCK_ENTRIES // max(z.shape[1], 1))
    if z.is_cuda or rows >= z.shape[0]:
        s, ds = _activation_pair_(model.activation, z)
        return s, ds.mul_(v)
    s = torch.empty_like(z)
    if model.activation == "silu":
        # five passes per block, into S and z directly: sigma(z) = z g and sigma'(z) = g + g (z - z g),
        # g the logistic sigmoid in a scratch block. Through _silu_ (seven passes, two fresh blocks)
        # S and T took 12.9 against 11.0 ms at N = 500, M = 5000, one thread, and a GN evaluation
        # 70.1 against 67.5 ms (studies/performance/parts.py, "activations")
        scratch = torch.empty(min(rows, z.shape[0]), z.shape[1], dtype=z.dtype, device=z.device)
        for start in range(0, z.shape[0], rows):
            block, value = z[start : start + rows], s[start : start + rows]
            g = torch.sigmoid(block, out=scratch[: block.shape[0]])
            torch.mul(block, g, out=value)
            torch.addcmul(g, g, block.sub_(value), out=block).mul_(v)
        return s, z
    for start in range(0, z.shape[0], rows):
        block = z[start : start + rows]
        value, derivative = _activation_pair_(model.activation, block)
        s[start : start + rows] = value
        if derivative is block:
            block.mul_(v)
        else:
            torch.mul(derivative, v, out=block)
    return s, z


@dataclass(frozen=True, eq=False)
class Linearization:
    """Derivatives of f(X) with respect to the trained components, at one state.

    Every product is a contraction of S = sigma(z) and T = sigma'(z) * v, both (sample, particle),
    taken over chunks of ``chunk`` particles; J is never formed. When the whole width is one chunk,
    ``cached`` holds (S, T) so that f(X), J^T c, J delta and A = J J^T reuse the same activations.
    """

    model: ParticleModel
    x: torch.Tensor  # (sample, d)
    x1: torch.Tensor  # (sample, d + 1): [x, 1]
    weights: torch.Tensor  # (particle, component)
    scale: float
    chunk: int
    cached: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def n_samples(self) -> int:
        """N, the number of inputs."""
        return int(self.x.shape[0])

    @property
    def width(self) -> int:
        """M, the number of particles."""
        return int(self.weights.shape[0])

    @property
    def v(self) -> torch.Tensor:
        """Output weights, shape (particle,)."""
        return self.weights[:, self.model.input_dim + 1]

    @property
    def s(self) -> torch.Tensor:
        """S = sigma(z), shape (sample, particle) (all chunks at once: O(N * M) memory)."""
        return self.cached[0] if self.cached is not None else torch.cat([s for _, s, _ in self.chunks()], dim=1)

    @property
    def t(self) -> torch.Tensor:
        """T = sigma'(z) * v, shape (sample, particle) (all chunks at once: O(N * M) memory)."""
        return self.cached[1] if self.cached is not None else torch.cat([t for _, _, t in self.chunks()], dim=1)

    def chunks(self) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """(particle slice, S, T) for consecutive chunks of particles; S, T are (sample, chunk)."""
        if self.cached is not None:
            yield slice(0, self.width), *self.cached
            return
        for start in range(0, self.width, self.chunk):
            part = slice(start, min(start + self.chunk, self.width))
            yield part, *_activations(self.model, self.weights[part], self.x1)

    def predict(self) -> torch.Tensor:
        """f(X), shape (sample,)."""
        out = self.x.new_zeros(self.n_samples)
        for part, s, _ in self.chunks():
            out.addmv_(s, self.v[part])
        return out.mul_(self.scale)

    def vjp(self, c: torch.Tensor) -> torch.Tensor:
        """J^T c for c of shape (sample,): result (particle, component), zero on frozen parts."""
        d = self.model.input_dim
        out = torch.zeros(self.width, d + 2, dtype=self.x.dtype, device=self.x.device)
        c = c.to(self.x.dtype)
        for part, s, t in self.chunks():
            if self.model.trains_hidden:
                # sum_n c_n T_ni [x_n, 1] as one product: (c * X1)^T T, (d + 1, chunk)
                weighted = c[:, None] * self.x1
                if t.numel() >= PRODUCT_MIN_ENTRIES and blas_applies(t, weighted):
                    out[part, : d + 1] = matmul(weighted.T, t).T
                else:
                    out[part, : d + 1] = t.T @ weighted
            if self.model.trains_output:
                out[part, d + 1] = s.T @ c
        return out.mul_(self.scale)

    def jvp(self, delta: torch.Tensor) -> torch.Tensor:
        """J delta for delta of shape (particle, component): result (sample,).

        Components that are not trained do not contribute.
        """
        d = self.model.input_dim
        delta = delta.to(self.x.dtype)
        out = self.x.new_zeros(self.n_samples)
        # sum_i T_ni [x_n, 1] . delta_i = rowsum(X1 * (T delta_h)): a (sample, d + 1) product, no
        # (sample, particle) temporary
        projected: torch.Tensor | None = None
        for part, s, t in self.chunks():
            if self.model.trains_hidden:
                hidden = delta[part, : d + 1]
                if t.numel() >= PRODUCT_MIN_ENTRIES and blas_applies(t, hidden):
                    chunk = matmul(t, hidden)
                    projected = chunk if projected is None else projected.add_(chunk)
                elif projected is None:
                    projected = t @ hidden
                else:
                    projected.addmm_(t, hidden)
            if self.model.trains_output:
                out.addmv_(s, delta[part, d + 1])
        if projected is not None:
            out += (projected * self.x1).sum(1)
        return out.mul_(self.scale)

    def gram(self) -> torch.Tensor:
        """A = J J^T, shape (sample, sample), accumulated in float64 over particle chunks.

        A = c^2 [ (T T^T) * (X1 X1^T) + S S^T ] with only the trained parts contributing. The two
        N x M x N products are the whole cost; they run in float64 whatever the state dtype.
        """
        hidden: torch.Tensor | None = None
        output: torch.Tensor | None = None
        for _, s, t in self.chunks():
            if self.model.trains_hidden:
                hidden = _add_outer_product(hidden, t.to(torch.float64))
            if self.model.trains_output:
                output = _add_outer_product(output, s.to(torch.float64))
        x = self.x.double()
        if hidden is None:
            assert output is not None
            return output.mul_(self.scale**2)
        # (T T^T) * (X1 X1^T) with X1 X1^T = X X^T + 1
        hidden.mul_(torch.addmm(torch.ones_like(hidden), x, x.T))
        if output is not None:
            hidden.add_(output)
        return hidden.mul_(self.scale**2)


def _add_outer_product(total: torch.Tensor | None, a: torch.Tensor) -> torch.Tensor:
    """total + a a^T for a of shape (sample, chunk), allocating total at the first chunk.

    a a^T is symmetric. On the CPU in float64 at one torch thread (outside autograd) it is one BLAS
    ``syrk``, half the flops of a general product (:mod:`gnflow._blas`). Elsewhere (more threads,
    CUDA, autograd), with the samples
    split in two halves only three of the four blocks are products (three quarters of the flops of
    one general product), and the fourth is a transposed copy; small problems use one product.
    """
    if blas_applies(a):
        return add_outer_product_syrk(total, a)
    n = a.shape[0]
    first = total is None
    if total is None:
        total = torch.empty(n, n, dtype=a.dtype, device=a.device)
    beta = 0.0 if first else 1.0
    if n < _SYMMETRIC_SPLIT_MIN:
        return total.addmm_(a, a.T, beta=beta)
    h = n // 2
    top, bottom = a[:h], a[h:]
    total[:h, :h].addmm_(top, top.T, beta=beta)
    total[h:, h:].addmm_(bottom, bottom.T, beta=beta)
    total[h:, :h].addmm_(bottom, top.T, beta=beta)
    total[:h, h:] = total[h:, :h].T
    return total


# below this many samples one general product is as fast as the three blocks
_SYMMETRIC_SPLIT_MIN = 256
