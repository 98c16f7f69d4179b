"""The elementwise functions and closed forms behind :mod:`gnflow.kernels`.

sigma and sigma' of every kernel activation as functions of float64 tensors, the arc-cosine kernels
of relu (Cho and Saul 2009), Williams' arcsine kernel of erf (1998) and the angle of a covariance.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Function = Callable[[torch.Tensor], torch.Tensor]

# sigma alone, as torch's fused kernels (the functions gnflow's model evaluates), and sigma' alone:
# each about seven times cheaper than gnflow.model.activation_and_derivative, which computes both
# into fresh buffers; tests/test_kernels.py checks both tables against it
_VALUES: dict[str, Function] = {
    "silu": torch.nn.functional.silu,
    "tanh": torch.tanh,
    "gelu": torch.nn.functional.gelu,
    "relu": torch.relu,
    "erf": torch.erf,
}


def _silu_derivative(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def _tanh_derivative(z: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.tanh(z) ** 2


def _gelu_derivative(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


# sigma' alone (the same test checks them against the model's pairs)
_DERIVATIVES: dict[str, Function] = {
    "silu": _silu_derivative,
    "tanh": _tanh_derivative,
    "gelu": _gelu_derivative,
    "relu": lambda z: (z > 0).to(z.dtype),
    "erf": lambda z: (2.0 / math.sqrt(math.pi)) * torch.exp(-z * z),
}


def _arc_cosine(order: int, s1: torch.Tensor, s2: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """E[relu(z) relu(z')] (order 1) or E[1{z>0} 1{z'>0}] (order 0), Cho and Saul (2009)."""
    if order == 0:
        return (math.pi - theta) / (2.0 * math.pi)
    return s1 * s2 * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2.0 * math.pi)


def _williams(derivative: bool, var1: torch.Tensor, var2: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """E[erf(z) erf(z')] (Williams 1998) or E[erf'(z) erf'(z')] = 4 / (pi sqrt(det(I + 2 Sigma)))."""
    if derivative:
        det = (1.0 + 2.0 * var1) * (1.0 + 2.0 * var2) - 4.0 * cov * cov
        return 4.0 / (math.pi * torch.sqrt(det))
    argument = 2.0 * cov / torch.sqrt((1.0 + 2.0 * var1) * (1.0 + 2.0 * var2))
    return (2.0 / math.pi) * torch.asin(argument.clamp(-1.0, 1.0))


def _angle(var1: torch.Tensor, var2: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """theta = arccos of the correlation, in [0, pi]."""
    return torch.arccos((cov / torch.sqrt(var1 * var2)).clamp(-1.0, 1.0))
