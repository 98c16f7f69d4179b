"""Where kernel_etd3 overtakes dopri5 on the gradient flow: the crossover behind ``solver.method = "auto"``.

On the gradient-flow example (``examples/gd.toml``: N = 200, M = 1000, d = 10, teacher-student) at
tau0 in {0.1, 1, 10} and horizons t_end in {1e2, ..., 1e6}, both methods run at the default
tolerances (rtol 1e-6, atol 1e-9) with one torch thread, to t_end (no early stop) or until a CPU
budget. Each row gives the stiffness S = t_end lambda_max(A(0)) / N (an explicit method needs about
S / 3.3 steps), the CPU seconds of each method, their ratio and the distance between their final
weights. ``gnflow.solve.choose_method`` picks kernel_etd3 for gradient flows from the smallest S
at which it was faster at every tau0.

    python studies/long_horizon/auto_crossover.py      # writes data/studies/long_horizon/auto_crossover.{md,json}
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gnflow.config import load_config
from gnflow.experiment import build_experiment
from gnflow.solve import integrate

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tau0", type=float, nargs="*", default=[0.1, 1.0, 10.0])
    parser.add_argument("--t-end", type=float, nargs="*", default=[1e2, 1e3, 1e4, 1e5, 1e6])
    parser.add_argument("--budget-s", type=float, default=120.0)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "data/studies/long_horizon")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for tau0 in args.tau0:
        for t_end in args.t_end:
            config = load_config(
                ROOT / "examples/gd.toml",
                [f"model.init_scale={tau0}", f"solver.t_end={t_end}", "solver.stop_loss_ratio=0.0"],
            )
            experiment = build_experiment(config)
            lam_max = float(
                torch.linalg.eigvalsh(experiment.model.linearize(experiment.weights0, experiment.flow.x).gram())[-1]
            )
            row = {"tau0": tau0, "t_end": t_end, "stiffness": t_end * lam_max / config.data.n_train}
            finals = {}
            for method in ("dopri5", "kernel_etd3"):
                solver = replace(
                    config.solver, method=method, n_save=2, save_spacing="linear", max_cpu_time_s=args.budget_s
                )
                start = time.process_time()
                solution = integrate(experiment.flow, experiment.weights0, solver, progress=False)
                row[f"{method}_cpu_s"] = time.process_time() - start
                row[f"{method}_status"] = solution.status
                row[f"{method}_nfe"] = int(solution.nfe[-1])
                finals[method] = solution.weights[-1]
            change = np.linalg.norm(finals["dopri5"] - experiment.weights0.numpy())
            row["difference"] = float(np.linalg.norm(finals["dopri5"] - finals["kernel_etd3"]) / change)
            row["ratio"] = row["dopri5_cpu_s"] / row["kernel_etd3_cpu_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "auto_crossover.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "# kernel_etd3 against dopri5 on the gradient flow, by horizon",
        "",
        "`python studies/long_horizon/auto_crossover.py`: examples/gd.toml (N = 200, M = 1000), rtol 1e-6, "
        "atol 1e-9, one thread, CPU seconds (a run stopped by the budget of "
        f"{args.budget_s:g} s is marked, its time a lower bound). S = t_end lambda_max(A(0)) / N.",
        "",
        "| tau0 | t_end | S | dopri5 CPU s (nfe) | kernel_etd3 CPU s (nfe) | dopri5 / etd3 | final-weight difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = {m: "" if r[f"{m}_status"] == "completed" else " (stopped)" for m in ("dopri5", "kernel_etd3")}
        lines.append(
            f"| {r['tau0']:g} | {r['t_end']:g} | {r['stiffness']:.3g} | {r['dopri5_cpu_s']:.2f}{mark['dopri5']} "
            f"({r['dopri5_nfe']}) | {r['kernel_etd3_cpu_s']:.2f}{mark['kernel_etd3']} ({r['kernel_etd3_nfe']}) | "
            f"{r['ratio']:.2f} | {r['difference']:.1e} |"
        )
    (args.output / "auto_crossover.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
