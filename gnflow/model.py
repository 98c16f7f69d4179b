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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

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


def _silu(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.sigmoid(z)
    return z * s, s * (1.0 + z * (1.0 - s))


def _tanh(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.tanh(z)
    return t, 1.0 - t * t


def _gelu(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # exact (erf) GELU: sigma(z) = z Phi(z), sigma'(z) = Phi(z) + z phi(z)
    cdf = 0.5 * (1.0 + torch.erf(z * _SQRT_HALF))
    pdf = torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    return z * cdf, cdf + z * pdf


def _relu(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positive = z > 0
    return torch.where(positive, z, torch.zeros_like(z)), positive.to(z.dtype)


_ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "silu": _silu,
    "tanh": _tanh,
    "gelu": _gelu,
    "relu": _relu,
}


def activation_and_derivative(name: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma(z) and sigma'(z) elementwise for the named activation."""
    try:
        function = _ACTIVATION_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}") from None
    return function(z)


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
    """

    input_dim: int
    activation: str = "silu"
    scaling: Literal["mean_field", "ntk"] = "mean_field"
    train: Literal["all", "hidden", "output"] = "all"

    def __post_init__(self) -> None:
        if self.input_dim < 1:
            raise ValueError(f"input_dim must be >= 1, got {self.input_dim}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        if self.scaling not in ("mean_field", "ntk"):
            raise ValueError(f"unknown scaling {self.scaling!r}; allowed: mean_field, ntk")
        if self.train not in ("all", "hidden", "output"):
            raise ValueError(f"unknown trainable part {self.train!r}; allowed: all, hidden, output")

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
            raise ValueError(
                f"weights must have shape (particle, {self.n_components}), got {tuple(weights.shape)}"
            )
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"x must have shape (sample, {self.input_dim}), got {tuple(x.shape)}")

    def predict(self, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """f(x) for every row of x: weights (particle, component), x (sample, d) -> (sample,)."""
        self._check(weights, x)
        d = self.input_dim
        # rows in chunks so that the (sample, particle) activations stay below ~2^24 entries
        rows = max(1, (1 << 24) // weights.shape[0])
        out = []
        for start in range(0, x.shape[0], rows):
            z = torch.addmm(weights[:, d], x[start : start + rows], weights[:, :d].T)
            s, _ = activation_and_derivative(self.activation, z)
            out.append(s @ weights[:, d + 1])
        result = torch.cat(out) if out else x.new_zeros(0)
        return self.scale(weights.shape[0]) * result

    def linearize(self, weights: torch.Tensor, x: torch.Tensor) -> Linearization:
        """The network and its derivatives at ``weights`` on the inputs ``x``."""
        self._check(weights, x)
        d = self.input_dim
        z = torch.addmm(weights[:, d], x, weights[:, :d].T)
        s, ds = activation_and_derivative(self.activation, z)
        v = weights[:, d + 1]
        return Linearization(
            model=self,
            x=x,
            s=s,
            t=ds * v,
            v=v,
            scale=self.scale(weights.shape[0]),
        )


@dataclass(frozen=True, eq=False)
class Linearization:
    """Derivatives of f(X) with respect to the trained components, at one state.

    Holds S = sigma(z) and T = sigma'(z) * v, both (sample, particle), so that f(X), J^T c,
    J delta and A = J J^T all reuse the same activations. J is never formed.
    """

    model: ParticleModel
    x: torch.Tensor  # (sample, d)
    s: torch.Tensor  # (sample, particle)
    t: torch.Tensor  # (sample, particle)
    v: torch.Tensor  # (particle,)
    scale: float

    @property
    def n_samples(self) -> int:
        """N, the number of inputs."""
        return int(self.x.shape[0])

    @property
    def width(self) -> int:
        """M, the number of particles."""
        return int(self.s.shape[1])

    def predict(self) -> torch.Tensor:
        """f(X), shape (sample,)."""
        return self.scale * (self.s @ self.v)

    def vjp(self, c: torch.Tensor) -> torch.Tensor:
        """J^T c for c of shape (sample,): result (particle, component), zero on frozen parts."""
        m, d = self.width, self.model.input_dim
        out = torch.zeros(m, d + 2, dtype=self.s.dtype, device=self.s.device)
        c = c.to(self.s.dtype)
        if self.model.trains_hidden:
            tc = self.t * c[:, None]  # (sample, particle)
            out[:, :d] = tc.T @ self.x
            out[:, d] = tc.sum(0)
        if self.model.trains_output:
            out[:, d + 1] = self.s.T @ c
        return out.mul_(self.scale)

    def jvp(self, delta: torch.Tensor) -> torch.Tensor:
        """J delta for delta of shape (particle, component): result (sample,).

        Components that are not trained do not contribute.
        """
        d = self.model.input_dim
        delta = delta.to(self.s.dtype)
        out = torch.zeros(self.n_samples, dtype=self.s.dtype, device=self.s.device)
        if self.model.trains_hidden:
            hidden = torch.addmm(delta[:, d], self.x, delta[:, :d].T)  # (sample, particle)
            out = out + (self.t * hidden).sum(1)
        if self.model.trains_output:
            out = out + self.s @ delta[:, d + 1]
        return self.scale * out

    def gram(self) -> torch.Tensor:
        """A = J J^T, shape (sample, sample), computed in float64.

        A = c^2 [ (T T^T) * (X1 X1^T) + S S^T ] with only the trained parts contributing.
        """
        s = self.s.double()
        a = torch.zeros(self.n_samples, self.n_samples, dtype=torch.float64, device=s.device)
        if self.model.trains_hidden:
            t = self.t.double()
            x = self.x.double()
            a = (t @ t.T) * torch.addmm(torch.ones_like(a), x, x.T)
        if self.model.trains_output:
            a = a + s @ s.T
        return a.mul_(self.scale**2)
