"""The exact laws of docs/mathematics.md (section Exact laws), each integrated with every method it holds for.

The laws, their problems, the per-method settings and the oracles are in ``tests/problems.py``;
this file runs the PROBLEMS x METHODS matrix and checks that the catalog is complete.
"""

from __future__ import annotations

import typing

import numpy as np
import pytest
from problems import ADAPTIVE, EXPONENTIAL, FIXED, KERNEL_EULER, METHODS, ORDER, PROBLEMS

from gnflow.config import SolverConfig

MATRIX = [pytest.param(law, method, id=f"{law.name}-{method}") for law in PROBLEMS.values() for method in law.methods]

ADAPTIVE_AND_EXPONENTIAL = ADAPTIVE + EXPONENTIAL

PROMISED = {
    # undamped GN, r(t) = exp(-t/N) r(0), on the nonlinear network
    *(("undamped_gn", m) for m in (*ADAPTIVE_AND_EXPONENTIAL, *FIXED, *KERNEL_EULER)),
    # the eigmin bounds, with every method they hold for
    *(("eigmin_bounds", m) for m in (*ADAPTIVE_AND_EXPONENTIAL, "midpoint", "rk4")),
    *(("eigmin_bounds_random_features", m) for m in METHODS),
    # random features, r(t) = expm(-t A B(A) / N) r(0), B = I (GD) and (A + eps I)^{-1} (GN)
    *(("random_features_gd", m) for m in METHODS),
    *(("random_features_gn", m) for m in METHODS),
    ("undamped_gn_random_features", "euler"),
    # GGN(lam, alpha) = an Euler step (b/lam, alpha/lam); eps = 0: the minimum-norm lstsq step
    ("ggn_euler", "euler"),
    ("euler_least_squares", "euler"),
    # the gradient flow does not increase the loss
    *(("gd_loss_descent", m) for m in METHODS),
}
"""The (law, method) pairs the architecture issue asks the matrix to run."""


@pytest.mark.parametrize(("law", "method"), MATRIX)
def test_exact_law(law, method: str) -> None:
    law.check(law.solve(method))


def test_matrix_runs_every_promised_pair() -> None:
    pairs = {(law.name, method) for law in PROBLEMS.values() for method in law.methods}
    assert not PROMISED - pairs, sorted(PROMISED - pairs)


def test_every_method_is_run_or_excluded_with_a_reason() -> None:
    for law in PROBLEMS.values():
        assert set(law.methods) | set(law.excluded) == set(METHODS), law.name
        assert not set(law.methods) & set(law.excluded), law.name
        assert all(len(reason) > 20 for reason in law.excluded.values()), law.name
        assert law.methods, law.name


def _literal_values(annotation: object) -> set[str]:
    args = typing.get_args(annotation)
    if not args:
        return {annotation} if isinstance(annotation, str) else set()
    return set().union(*(_literal_values(a) for a in args))


def test_catalog_knows_every_method_of_the_solver() -> None:
    annotation = typing.get_type_hints(SolverConfig)["method"]
    # "auto" is not a method of its own: it resolves to one of these (tests/test_method_choice.py)
    assert _literal_values(annotation) == set(METHODS) | {"auto"}
    for method in METHODS:
        assert SolverConfig(method=method).adaptive == (method not in FIXED + KERNEL_EULER), method


@pytest.mark.parametrize(("method", "step"), [("euler", 1 / 25), ("midpoint", 1 / 10), ("rk4", 1 / 8)])
def test_fixed_step_methods_converge_at_their_order_on_the_nonlinear_network(method: str, step: float) -> None:
    # undamped GN, all components trained: the error of the continuous law shrinks like (h/N)^p
    # (rk4 reaches its asymptotic regime from h = N/8 on)
    law = PROBLEMS["undamped_gn"]
    errors = [law.error(law.solve(method, step_size=s * law.problem.n)) for s in (step, step / 2)]
    order = np.log2(errors[0] / errors[1])
    assert abs(order - ORDER[method]) < 0.15, (errors, order)
