"""total + a a^T on the CPU by BLAS ``syrk``: half the flops of a general product.

The Gram matrix A = J J^T of the two-layer model is two products a a^T of (sample, particle)
blocks (see :meth:`gnflow.model.Linearization.gram`); they are most of the cost of a Gauss--Newton
evaluation and of a kernel_etd linearization. torch has no symmetric rank-k update, so on the CPU
in float64 gnflow takes numpy's product ``a @ a.T``, which numpy hands to its BLAS as ``dsyrk``:
one triangle, N^2 M multiply-adds instead of the 2 N^2 M of ``torch.mm``, the other triangle a
copy, so the result is exactly symmetric (measured at N = 500, M = 5000, one thread: 36 ms against
91 ms for ``torch.mm``, 68 ms for the three-block split used elsewhere and 48 ms for scipy's
``dsyrk``).

That BLAS has its own thread pool, whose threads and torch's compete for the cores when both have
more than one: at two threads on two cores a GN evaluation at N = 500, M = 5000 took 0.193 s with
``dsyrk`` on two BLAS threads against 0.124 s with torch's split product (the pools spin while the
other works). So ``syrk`` is used only when torch runs one thread (studies, sweep workers, one run
per core), with the BLAS held at one thread; with more torch threads the products stay in torch.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["add_outer_product_syrk", "syrk_applies"]

_state: dict[str, Any] = {"controller": None}


def syrk_applies(a: torch.Tensor) -> bool:
    """Whether ``a a^T`` goes to ``syrk``: a CPU float64 tensor outside autograd, torch at one thread."""
    return (
        a.device.type == "cpu"
        and a.dtype == torch.float64
        and not (torch.is_grad_enabled() and a.requires_grad)
        and torch.get_num_threads() == 1
    )


def _hold_blas_at_one_thread() -> None:
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
    _hold_blas_at_one_thread()
    a_np = a.detach().contiguous().numpy()
    product = torch.from_numpy(a_np @ a_np.T)
    return product if total is None else total.add_(product)
