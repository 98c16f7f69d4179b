"""Whole runs on CUDA against the same runs on the CPU (skipped without a GPU).

The GPU paths differ from the CPU ones in where they synchronise (the gradient field does not
check its residual on the device; the Gauss--Newton solver reads Lanczos and Cholesky status back),
so every flow kind and integrator is run end to end on both devices from the same seed, and the
trajectories must agree to float64 rounding amplified by the solver's adaptivity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gnflow.config import config_from_dict
from gnflow.simulation import simulate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

BASE = {
    "seed": 3,
    "dtype": "float64",
    "data": {"n_train": 40, "n_test": 100, "input_dim": 4},
    "model": {"width": 300},
}

CASES = {
    "gauss_newton dopri5": {"flow": {"kind": "gauss_newton"}, "solver": {"t_end": 400.0, "n_save": 9}},
    "gradient kernel_exponential": {
        "flow": {"kind": "gradient"},
        "solver": {"method": "kernel_exponential", "t_end": 1e4, "n_save": 9, "rtol": 1e-8, "atol": 1e-11},
    },
    "gradient dopri5": {"flow": {"kind": "gradient"}, "solver": {"t_end": 200.0, "n_save": 9}},
    "ggn": {"flow": {"kind": "ggn", "batch_size": 16}, "solver": {"t_end": 20.0, "step_size": 1.0, "n_save": 5}},
}


@pytest.mark.parametrize("case", list(CASES))
def test_cuda_run_matches_cpu_run(case: str) -> None:
    runs = {}
    for device in ("cpu", "cuda"):
        config = config_from_dict({**BASE, **CASES[case], "device": device})
        runs[device] = simulate(config, progress=False)
    cpu, gpu = runs["cpu"], runs["cuda"]
    assert gpu.attrs["gnflow_device"].startswith("cuda")
    assert gpu.attrs["gnflow_status"] == cpu.attrs["gnflow_status"]
    np.testing.assert_allclose(gpu["t"], cpu["t"])
    # different rounding moves the adaptive steps by O(rtol) of the local error: losses agree to
    # 1e-5 relative, or to 1e-10 of the initial loss once they are that far converged
    for name in ("train_loss", "test_loss"):
        np.testing.assert_allclose(gpu[name], cpu[name], rtol=1e-5, atol=1e-10 * float(cpu[name][0]))
    weights = cpu["weights"].values
    moved = float(np.abs(weights[-1] - weights[0]).max())
    difference = float(np.abs(gpu["weights"].values - weights).max())
    assert difference <= 1e-6 * max(moved, 1e-12)
