"""Host reads (host synchronizations on a GPU) per evaluation of the Gauss--Newton and gradient fields.

The fields read device values only through :mod:`gnflow._host`, which counts the reads; inside
``device_paths()`` they take the branches of a GPU run (explicit inverse, Lanczos and CG blocks, no
finiteness check in the gradient field) on CPU tensors, so these CPU tests pin what a GPU
evaluation reads. Steady state: after the first evaluations have warmed the Lanczos start vector.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from problems import small_problem

from gnflow._host import count_host_reads, device_paths, read_bool, read_float, read_values, synchronizes
from gnflow.config import SolverConfig
from gnflow.damping import ConstantDamping, DampedGramSolver, Damping, EigminDamping, RelativeDamping
from gnflow.flows import Flow, FlowError, GaussNewtonFlow, GradientFlow
from gnflow.solve import integrate

T0 = torch.tensor(0.0)


def path_of_states(weights: torch.Tensor, count: int, *, step: float = 1e-3, seed: int = 0) -> list[torch.Tensor]:
    """``count`` states each a small random move from the previous one (as along an integration)."""
    gen = torch.Generator().manual_seed(seed)
    states = [weights]
    for _ in range(count - 1):
        states.append(states[-1] + step * torch.randn(weights.shape, generator=gen, dtype=weights.dtype))
    return states


def reads_per_evaluation(flow: Flow, states: list[torch.Tensor]) -> list[int]:
    counts = []
    for state in states:
        with count_host_reads() as reads:
            flow(T0, state)
        counts.append(reads.count)
    return counts


def test_the_counter_counts_reads_and_their_values() -> None:
    values = torch.arange(5, dtype=torch.float64)
    with count_host_reads() as outer:
        assert read_values(values) == [0.0, 1.0, 2.0, 3.0, 4.0]
        with count_host_reads() as inner:
            assert read_float(values[2]) == 2.0
            assert read_bool(values[0] > 1) is False
        float(values[3])  # a read outside gnflow._host is not counted
    assert (inner.count, inner.values) == (2, 2)
    assert (outer.count, outer.values) == (3, 7)
    with count_host_reads() as after:
        pass
    assert after.count == 0


def test_device_paths_switch_the_device_branches_and_restore_them() -> None:
    x = torch.zeros(3)
    assert not synchronizes(x)
    with device_paths():
        assert synchronizes(x)
    assert not synchronizes(x)


def test_gradient_field_reads_nothing_on_the_device_paths() -> None:
    model, w, x, y = small_problem(n_train=30, width=80)
    flow = GradientFlow(model, x, y)
    states = path_of_states(w, 4)
    with device_paths():
        assert reads_per_evaluation(flow, states) == [0, 0, 0, 0]
    # positive control: on the CPU paths the same field checks its residual, one counted read
    assert reads_per_evaluation(flow, states) == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("tau0", "eps0", "most"),
    [
        (1.0, 1e-9, 2),  # lambda_min(A) ~ 6e-8 > eps0: Lanczos block, then CG block
        (0.1, 1e-7, 1),  # lambda_min(A) < eps0 is certain: eps = p = eps0 and no CG
    ],
)
def test_gauss_newton_eigmin_reads_at_most_twice_in_steady_state(tau0: float, eps0: float, most: int) -> None:
    model, w, x, y = small_problem(n_train=60, width=300, init_scale=tau0)
    states = path_of_states(w, 12)
    flow = GaussNewtonFlow(model, x, y, EigminDamping(eps0))
    with device_paths():
        counts = reads_per_evaluation(flow, states)
    assert max(counts[3:]) == most, counts
    # positive control: the CPU paths read once per Lanczos and CG step and check the residual
    cpu_counts = reads_per_evaluation(GaussNewtonFlow(model, x, y, EigminDamping(eps0)), states)
    assert min(cpu_counts[3:]) > most, cpu_counts
    # the blocks change the work, not the results: the same field and eps along the path as a
    # solver of one-step blocks with the same (explicit) inverse
    one_step = GaussNewtonFlow(model, x, y, EigminDamping(eps0))
    one_step.solver = DampedGramSolver(EigminDamping(eps0), explicit_inverse=True, lanczos_block=1, cg_block=1)
    blocked = GaussNewtonFlow(model, x, y, EigminDamping(eps0))
    for state in states:
        with device_paths():
            field = blocked(T0, state)
        assert torch.equal(field, one_step(T0, state))
        assert torch.equal(blocked.last_epsilon, one_step.last_epsilon)
    assert blocked.solver.stats.lanczos_steps > one_step.solver.stats.lanczos_steps


@pytest.mark.parametrize("damping", [ConstantDamping(1e-4), RelativeDamping(1e-6)])
def test_gauss_newton_with_known_damping_reads_once(damping: Damping) -> None:
    model, w, x, y = small_problem(n_train=40, width=120)
    flow = GaussNewtonFlow(model, x, y, damping)
    with device_paths():
        assert reads_per_evaluation(flow, path_of_states(w, 3)) == [1, 1, 1]


def test_nonfinite_state_still_fails_on_the_device_paths() -> None:
    """The finiteness of the residual travels with the solver's first read."""
    model, w, x, y = small_problem(n_train=30, width=80)
    bad = w.clone()
    bad[0, -1] = float("inf")
    for damping in (EigminDamping(1e-7), ConstantDamping(1e-4)):
        flow = GaussNewtonFlow(model, x, y, damping)
        with device_paths(), pytest.raises(FlowError, match="non-finite network output"):
            flow(T0, bad)


class _CountedGaussNewton(GaussNewtonFlow):
    """The Gauss--Newton field recording the host reads of each evaluation."""

    counts: list[int]

    def __call__(self, t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        with count_host_reads() as reads:
            out = super().__call__(t, weights)
        self.counts.append(reads.count)
        return out


def test_gauss_newton_reads_per_evaluation_along_a_dopri5_run() -> None:
    """Along a whole adaptive run the field reads twice per evaluation past the first."""
    model, w, x, y = small_problem(n_train=60, width=300, input_dim=4)
    flow = _CountedGaussNewton(model, x, y, EigminDamping(1e-9))
    flow.counts = []
    config = SolverConfig(method="dopri5", rtol=1e-6, atol=1e-9, t_end=2e3, n_save=5, stop_loss_ratio=1e-8)
    with device_paths():
        solution = integrate(flow, w, config, progress=False)
    assert solution.status == "converged"
    assert len(flow.counts) > 100
    assert max(flow.counts[1:]) == 2, np.bincount(flow.counts)
