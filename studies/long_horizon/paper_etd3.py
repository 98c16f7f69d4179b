"""kernel_etd3 at the paper's size: CPU seconds and linearizations of the long gradient flow.

Integrates the teacher-student gradient flow of ``long_horizon.toml`` at the paper's size
(N = 500, M = 5000, 10^4 test points, seed 1) to t = 2e7 with ``solver.method = "kernel_etd3"`` at
rtol 1e-5 (atol 1e-8, the tolerance of the long-horizon study's kernel_exponential runs), one torch
thread, and writes ``data/studies/long_horizon/paper/kernel_etd3_paper.json``.

    python studies/long_horizon/paper_etd3.py            # about 4 + 6 CPU minutes (tau0 = 1, 0.1)
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import work_precision as wp

from gnflow.config import config_from_dict
from gnflow.experiment import build_experiment
from gnflow.solve import integrate

OUT = Path("data/studies/long_horizon/paper/kernel_etd3_paper.json")


def main() -> int:
    torch.set_num_threads(1)
    results = {}
    for tau0 in (1.0, 0.1):
        config = config_from_dict(wp.base_config("paper", "gradient", tau0, None))
        experiment = build_experiment(config)
        rtol = 1e-5
        solver = replace(config.solver, method="kernel_etd3", rtol=rtol, atol=rtol * 1e-3)
        start = time.process_time()
        solution = integrate(experiment.flow, experiment.weights0, solver, progress=False)
        cpu = time.process_time() - start
        weights = torch.as_tensor(solution.weights[-1])
        record = {
            "tau0": tau0,
            "rtol": rtol,
            "status": solution.status,
            "t": float(solution.t[-1]),
            "cpu_s": cpu,
            "nfe": int(solution.nfe[-1]),
            "linearizations": 1 + int(solution.n_accepted[-1]),
            "steps": int(solution.n_accepted[-1]),
            "rejected": int(solution.n_rejected[-1]),
            "train_loss": experiment.flow.train_loss(weights),
            "test_loss": wp._test_loss(experiment, weights),
        }
        print(json.dumps(record), flush=True)
        results[f"{tau0}|{rtol}"] = record
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
