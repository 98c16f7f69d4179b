"""Products of the two-layer model through numpy's BLAS on the CPU: ``syrk`` for a a^T, and the
skinny products of J delta and J^T c.

The Gram matrix A = J J^T of the two-layer model is two products a a^T of (sample, particle)
blocks (see :meth:`gnflow.model.Linearization.gram`); they are most of the cost of a Gauss--Newton
evaluation and of a kernel_etd linearization. torch has no symmetric rank-k update, so on the CPU
in float64 gnflow takes numpy's product ``a @ a.T``, which numpy hands to its BLAS as ``dsyrk``:
one triangle, N^2 M multiply-adds instead of the 2 N^2 M of ``torch.mm``, the other triangle a
copy, so the result is exactly symmetric (measured at N = 500, M = 5000, one thread: 36 ms against
91 ms for ``torch.mm``, 68 ms for the three-block split used elsewhere and 48 ms for scipy's
``dsyrk``).

The products J delta = rowsum(X1 * (T delta_h)) + S delta_v and J^T c = [T^T (c X1), S^T c] are
a (sample, particle) block against a (particle, d + 1) or (sample, d + 1) matrix: memory-bound
products with a thin side, which numpy's BLAS at one thread computes faster than torch's, J^T c
about twice as fast (``studies/performance/products.py``, ``data/studies/performance/products.md``).
:func:`matmul` takes them there.

That BLAS has its own thread pool, whose threads and torch's compete for the cores when both have
more than one: at two threads on two cores a GN evaluation at N = 500, M = 5000 took 0.193 s with
``dsyrk`` on two BLAS threads against 0.124 s with torch's split product (the pools spin while the
other works). So numpy's BLAS is used only when torch runs one thread (studies, sweep workers, one
run per core), with that BLAS held at one thread; with more torch threads the products stay in torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = [
    "EIGH_MIN",
    "PRODUCT_MIN_ENTRIES",
    "add_outer_product_syrk",
    "blas_applies",
    "eigh",
    "hold_blas_at_one_thread",
    "matmul",
    "torch_only",
]

_state: dict[str, Any] = {"controller": None, "enabled": True}

EIGH_MIN = 256
"""Below this order torch's eigh is as fast (N = 100: 1.7 ms against numpy's 1.9 ms; N = 200: 6.0
against 5.6)."""

PRODUCT_MIN_ENTRIES = 2**19
"""J delta and J^T c go to numpy's BLAS when the (sample, particle) block has at least this many
entries; below, the call's overhead is a visible part (N = 100, M = 1000: J delta 1.0 ms against
0.8 in torch)."""


def blas_applies(*tensors: torch.Tensor) -> bool:
    """Whether products of ``tensors`` go to numpy's BLAS: CPU float64 tensors outside autograd,
    torch at one thread."""
    if not _state["enabled"] or torch.get_num_threads() != 1:
        return False
    grad = torch.is_grad_enabled()
    return all(a.device.type == "cpu" and a.dtype == torch.float64 and not (grad and a.requires_grad) for a in tensors)


def hold_blas_at_one_thread() -> None:
    """numpy's BLAS (and any other loaded) at one thread; set again if something changed it."""
    if _state["controller"] is None:
        from threadpoolctl import ThreadpoolController

        _state["controller"] = ThreadpoolController().select(user_api="blas")
    if any(lib.num_threads != 1 for lib in _state["controller"].lib_controllers):
        _state["controller"].limit(limits=1)


def add_outer_product_syrk(total: torch.Tensor | None, a: torch.Tensor) -> torch.Tensor:
    """total + a a^T for a CPU float64 ``a`` of shape (n, k); ``total`` None starts from zero.

    ``total`` (n, n), if given, is updated in place. numpy's matrix product of an array with its own
    transpose is a BLAS ``syrk`` (one triangle computed, the other copied: exactly symmetric).
    """
    hold_blas_at_one_thread()
    a_np = a.detach().contiguous().numpy()
    product = torch.from_numpy(a_np @ a_np.T)
    return product if total is None else total.add_(product)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b by numpy's BLAS at one thread, for CPU float64 tensors with any strides (a transposed
    view is passed to the BLAS as a transposed operand, not copied). Returns a new tensor."""
    hold_blas_at_one_thread()
    return torch.from_numpy(a.detach().numpy() @ b.detach().numpy())


def eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric ``a``, as ``torch.linalg.eigh``:
    by numpy's LAPACK (``syevd``) for n >= :data:`EIGH_MIN` where :func:`blas_applies` (faster than
    torch's at N = 500 and one thread: ``data/studies/performance/products.md``), else by torch."""
    if a.shape[-1] < EIGH_MIN or not blas_applies(a):
        return torch.linalg.eigh(a)
    hold_blas_at_one_thread()
    values, vectors = np.linalg.eigh(a.detach().numpy())
    return torch.from_numpy(values), torch.from_numpy(vectors)


@contextlib.contextmanager
def torch_only() -> Iterator[None]:
    """Inside the block every product and eigendecomposition stays in torch: the baseline of
    ``studies/performance/products.py``."""
    previous = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = previous
