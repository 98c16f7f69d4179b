"""total + a a^T on the CPU by BLAS ``dsyrk``: half the flops of a general product.

The Gram matrix A = J J^T of the two-layer model is two products a a^T of (sample, particle)
blocks (see :meth:`gnflow.model.Linearization.gram`); they are most of the cost of a Gauss--Newton
evaluation and of a kernel_etd linearization. torch has no symmetric rank-k update, so on the CPU
in float64 gnflow calls the ``dsyrk`` of the BLAS that scipy ships: it computes one triangle,
N^2 M multiply-adds instead of the 2 N^2 M of ``torch.mm`` (measured at N = 500, M = 5000, one
thread: 48 ms against 91 ms for ``torch.mm`` and 68 ms for the three-block split used elsewhere),
and the other triangle is a copy, so the result is exactly symmetric.

That BLAS has its own thread pool, whose threads and torch's compete for the cores when both have
more than one: at two threads on two cores a GN evaluation at N = 500, M = 5000 took 0.193 s with
``dsyrk`` on two BLAS threads against 0.124 s with torch's split product (the pools spin while the
other works). So ``dsyrk`` is used only when torch runs one thread (studies, sweep workers, one run
per core), with its BLAS held at one thread; with more torch threads the products stay in torch.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["add_outer_product_syrk", "syrk_applies"]

_state: dict[str, Any] = {"threads": None, "controller": None}


def syrk_applies(a: torch.Tensor) -> bool:
    """Whether ``a a^T`` goes to ``dsyrk``: a CPU float64 tensor outside autograd, torch at one thread."""
    return (
        a.device.type == "cpu"
        and a.dtype == torch.float64
        and not (torch.is_grad_enabled() and a.requires_grad)
        and torch.get_num_threads() == 1
    )


def _blas() -> Any:
    """scipy's BLAS, its thread pool held at one thread (set again if something changed it)."""
    from scipy.linalg import blas

    if _state["controller"] is None:
        from threadpoolctl import ThreadpoolController

        _state["controller"] = ThreadpoolController().select(user_api="blas")
    if _state["threads"] != 1 or any(lib.num_threads != 1 for lib in _state["controller"].lib_controllers):
        _state["controller"].limit(limits=1)
        _state["threads"] = 1
    return blas


def add_outer_product_syrk(total: torch.Tensor | None, a: torch.Tensor) -> torch.Tensor:
    """total + a a^T for a CPU float64 ``a`` of shape (n, k); ``total`` None starts from zero.

    ``total`` (n, n) must be symmetric (as every result of this function is); it is updated in place.
    """
    blas = _blas()
    n = a.shape[0]
    first = total is None
    if total is None:
        total = torch.empty(n, n, dtype=torch.float64)
    # C-ordered a (n, k) is the Fortran-ordered a^T (k, n): trans = 1 gives (a^T)^T a^T = a a^T,
    # and the transposed view of the C-ordered total is a Fortran array that dsyrk updates in place
    a_t = a.detach().contiguous().numpy().T
    c = total.numpy().T
    blas.dsyrk(1.0, a_t, beta=0.0 if first else 1.0, c=c, trans=1, lower=0, overwrite_c=1)
    # dsyrk wrote the upper triangle of c, i.e. the lower triangle of total: mirror it
    total.tril_()
    total.add_(total.tril(-1).T)
    return total
