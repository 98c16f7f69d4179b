"""The stiff-order-4 trial of ``studies/long_horizon/stiff_order_four.py``: Hochbruck and
Ostermann's five-stage step on the kernel splitting converges at fourth order against a tight
dopri5 reference, and the script writes its paired table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from test_exponential_rk import _fixed_step_errors

from gnflow.exponential_rk import KernelETD4Solver

SCRIPT = Path(__file__).resolve().parents[1] / "studies/long_horizon/stiff_order_four.py"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("stiff_order_four", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["gradient", "gauss_newton"])
def test_hochost4_fixed_steps_converge_at_fourth_order(study, kind) -> None:
    ns = (8, 16, 32)
    both = _fixed_step_errors(kind, {"stiff4": study.HochOst4Solver, "etd4": KernelETD4Solver}, ns)
    errors, etd4 = both["stiff4"], both["etd4"]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    # fourth order: the error falls by 16 per halving (a wrong coefficient drops it to 8 or less)
    assert orders.min() >= 3.6, f"{kind}: errors {errors}, observed orders {orders}"
    # the same fixed steps of kernel_etd4 (another method, same order): errors of the same size
    assert 0.1 < errors[-1] / etd4[-1] < 10.0, (errors, etd4)


def test_smoke_scale_writes_the_paired_table(study, tmp_path: Path) -> None:
    assert study.main(["--scale", "smoke", "--rtol", "1e-4", "--reference", "1e-7", "-o", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "smoke_tau1.json").read_text())
    runs = {r["method"]: r for r in result["runs"]}
    assert set(runs) == {"kernel_etd4", "hochost4"}
    # one more field evaluation per attempted step than kernel_etd4 (4 against 3), one linearization
    for method, fields in (("kernel_etd4", 3), ("hochost4", 4)):
        r = runs[method]
        attempts = r["steps"] + r["rejected"]
        assert r["evaluations"] == 1 + r["steps"] + fields * attempts, (method, r)
        assert 0 < r["weight_error"] < 1e-3 and 0 <= r["test_loss_error"] < 1e-3
    assert "| 0.0001 | hochost4 |" in (tmp_path / "smoke_tau1.md").read_text()
