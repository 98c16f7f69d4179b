"""kernel_etd3 and kernel_etd4 at the paper's size: CPU seconds and linearizations of the long gradient flow.

Integrates the teacher-student gradient flow of ``long_horizon.toml`` at the paper's size
(N = 500, M = 5000, 10^4 test points, seed 1) to t = 2e7 with ``solver.method = "kernel_etd3"`` at
rtol 1e-5 (atol 1e-8, the tolerance of the long-horizon study's kernel_exponential runs), one torch
thread, and writes ``data/studies/long_horizon/paper/kernel_etd3_paper.json``: one record per tau0
and rtol, kept across invocations (a finished pair whose weights file exists is not run again), and
the final weights of each run beside it (``kernel_etd3_paper_<tau0>_<rtol>.npy``, not committed).
Where a tau0 has runs at two tolerances, the record of the looser one gets
``difference_to_tighter``: the distance of its final weights to the tighter run's, relative to the
tighter run's weight change (an estimate of its error when the tighter run is several times more
accurate), and ``distances``: the same distance to every other run of its tau0 whose weights file
exists, merged into the distances recorded before (so that a checkout without the weights files
keeps them).
``--method kernel_etd4`` runs the fourth-order method (records keyed ``kernel_etd4|tau0|rtol``,
weights ``kernel_etd4_paper_<tau0>_<rtol>.npy``), ``--method dopri5`` the baseline
(``dopri8`` and ``bosh3`` the other explicit methods of the work-precision diagrams,
``kernel_exponential`` the first-order kernel method with step doubling, ``rk4`` fixed steps at
the fractions ``--rtol`` of its stability limit), whose error at this size is measured the same
way (about 75 CPU minutes at tau0 = 1 and rtol 1e-6; ``--budget-s`` stops a run there). Several
invocations may run at once (one per core): each merges its record into the file.

Every invocation ends by writing ``work_precision_paper_gradient.{md,png,nc}`` beside the JSON
(:func:`summarize`): every run with weights against the kernel_etd3 run at the smallest rtol of its
tau0.

    python studies/long_horizon/paper_etd3.py                        # rtol 1e-5: about 4 + 6 CPU minutes
    python studies/long_horizon/paper_etd3.py --rtol 1e-6 --tau0 1   # the tolerance of dopri5's accuracy
    python studies/long_horizon/paper_etd3.py --method kernel_etd4 --rtol 1e-5 1e-6
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import work_precision as wp

from gnflow.config import config_from_dict
from gnflow.experiment import build_experiment
from gnflow.solve import integrate
from gnflow.studies import source_commit

OUT = Path("data/studies/long_horizon/paper/kernel_etd3_paper.json")


METHODS = ("kernel_etd3", "kernel_etd4", "kernel_exponential", "dopri5", "dopri8", "bosh3", "rk4")
"""The methods measured; for rk4 the ``--rtol`` values are fractions of its stability limit, set
with the final weights of the tightest kernel_etd3 run of the tau0 (``work_precision.rk4_rate``)."""


def _key(method: str, tau0: float, rtol: float) -> str:
    return f"{tau0}|{rtol:g}" if method == "kernel_etd3" else f"{method}|{tau0}|{rtol:g}"


def _method(record: dict) -> str:
    return record.get("method", "kernel_etd3")


def _weights_path(tau0: float, rtol: float, method: str = "kernel_etd3", directory: Path = OUT.parent) -> Path:
    return directory / f"{method}_paper_{tau0:g}_{rtol:g}.npy"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tau0", type=float, nargs="*", default=[1.0, 0.1])
    parser.add_argument("--rtol", type=float, nargs="*", default=[1e-5], help="atol = rtol * 1e-3")
    parser.add_argument("--method", choices=METHODS, default="kernel_etd3")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=0.0,
        help="CPU seconds before a run stops (0: none); a stopped run keeps no weights",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = _load()
    for tau0 in args.tau0:
        config = config_from_dict(wp.base_config("paper", "gradient", tau0, None))
        experiment = build_experiment(config)
        for rtol in args.rtol:
            key = _key(args.method, tau0, rtol)
            if key in results and _weights_path(tau0, rtol, args.method).exists():
                continue
            if args.method == "rk4":  # rtol: the fraction of the stability limit
                rate = wp.rk4_rate(experiment, _tightest_kernel_etd3_weights(results, tau0, experiment))
                n_steps = math.ceil(config.solver.t_end * rate / (rtol * 2.78))
                solver = replace(
                    config.solver, method="rk4", step_size=config.solver.t_end / n_steps, max_steps=n_steps + 10
                )
            else:
                solver = replace(config.solver, method=args.method, rtol=rtol, atol=rtol * 1e-3)
            solver = replace(solver, max_cpu_time_s=args.budget_s)
            start = time.process_time()
            solution = integrate(experiment.flow, experiment.weights0, solver, progress=False)
            cpu = time.process_time() - start
            weights = torch.as_tensor(solution.weights[-1])
            finished = solution.status in ("completed", "converged")
            if finished:  # a stopped or failed run's last saved state is not the flow's state at t_end
                np.save(_weights_path(tau0, rtol, args.method), weights.numpy())
            record = {
                "method": args.method,
                "tau0": tau0,
                "rtol": rtol,
                "status": solution.status,
                "t": float(solution.stats["t_reached"]),
                "cpu_s": cpu,
                "nfe": int(solution.stats["nfe"]),
                "linearizations": wp._linearizations(
                    args.method,
                    int(solution.stats["nfe"]),
                    int(solution.stats["n_accepted"]),
                    int(solution.stats["n_rejected"]),
                ),
                "steps": int(solution.stats["n_accepted"]),
                "rejected": int(solution.stats["n_rejected"]),
                "train_loss": experiment.flow.train_loss(weights) if finished else math.nan,
                "test_loss": wp._test_loss(experiment, weights) if finished else math.nan,
                "gnflow": source_commit(),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "load_average": list(os.getloadavg()),
            }
            print(json.dumps(record), flush=True)
            results = _store({key: _carry_distances(results.get(key), record)})
        results = _load()  # with the records other invocations wrote meanwhile
        w0 = experiment.weights0.numpy()
        runs = [r for r in results.values() if r["tau0"] == tau0]

        def distance(a: dict, b: dict, tau0: float = tau0, w0: np.ndarray = w0) -> float | None:
            paths = _weights_path(tau0, a["rtol"], _method(a)), _weights_path(tau0, b["rtol"], _method(b))
            if not all(p.exists() for p in paths):
                return None
            return _relative_distance(np.load(paths[0]), np.load(paths[1]), w0)

        for name in METHODS:
            done = sorted((r for r in runs if _method(r) == name), key=lambda r: -r["rtol"])
            for loose, tight in itertools.pairwise(done):
                d = distance(loose, tight)
                if d is not None:
                    loose["difference_to_tighter"] = d
                    loose["tighter_rtol"] = tight["rtol"]
        for r in runs:
            others = {_key(_method(o), tau0, o["rtol"]): distance(r, o) for o in runs if o is not r}
            # merged: distances recorded when other weights files existed (another checkout) are kept
            r["distances"] = r.get("distances", {}) | {k: v for k, v in others.items() if v is not None}
        results = _store({_key(_method(r), r["tau0"], r["rtol"]): r for r in runs})
    if OUT.exists():
        for path in summarize(_load()):
            print(f"wrote {path}")
    return 0


def _tightest_kernel_etd3_weights(results: dict, tau0: float, experiment) -> torch.Tensor:
    runs = [r for r in results.values() if r["tau0"] == tau0 and _method(r) == "kernel_etd3"]
    paths = [_weights_path(tau0, r["rtol"]) for r in sorted(runs, key=lambda r: r["rtol"])]
    paths = [p for p in paths if p.exists()]
    if not paths:
        raise SystemExit(f"--method rk4: needs the weights of a kernel_etd3 run at tau0 = {tau0:g} (run it first)")
    return torch.from_numpy(np.load(paths[0])).reshape(experiment.weights0.shape)


def _carry_distances(earlier: dict | None, record: dict) -> dict:
    """``record`` with the distances of ``earlier``, a record of the same key, when both are the same run.

    A key is rerun when its weights file is missing (another checkout); the rerun's distances can only
    be measured to the weights files that exist now. When it took the same steps to the same test
    loss (relative 1e-10; a rerun differs only by rounding), the distances measured from the earlier
    run's weights stay valid and are kept (those measured now are merged over them), and the earlier
    run's CPU seconds, commit and date are kept in ``earlier_runs``. Otherwise the earlier run is kept
    whole in ``earlier_runs`` (``different_run``), with its own distances and test loss.
    """
    if not earlier:
        return record
    same = earlier.get("steps") == record["steps"] and abs(earlier["test_loss"] / record["test_loss"] - 1.0) < 1e-10
    if not same:
        # another run of the same key (other rounding, other code): kept whole beside the new one,
        # its distances its own
        kept = {k: earlier[k] for k in ("cpu_s", "gnflow", "date", "steps", "test_loss", "distances") if k in earlier}
        return record | {"earlier_runs": [*earlier.get("earlier_runs", []), kept | {"different_run": True}]}
    # the same run timed again: its earlier timings stay beside the new one (the machine's speed varies)
    earlier_runs = [
        *earlier.get("earlier_runs", []),
        {key: earlier[key] for key in ("cpu_s", "gnflow", "date", "rerun_under_contention") if key in earlier},
    ]
    return record | {"distances": dict(earlier.get("distances", {})), "earlier_runs": earlier_runs}


def _initial_weights(tau0: float) -> np.ndarray:
    return build_experiment(config_from_dict(wp.base_config("paper", "gradient", tau0, None))).weights0.numpy()


def _relative_distance(weights: np.ndarray, reference: np.ndarray, w0: np.ndarray) -> float:
    """||weights - reference|| / ||reference - w0||: a distance relative to the weight change."""
    return float(np.linalg.norm(weights - reference) / np.linalg.norm(reference - w0))


def _load() -> dict:
    return json.loads(OUT.read_text()) if OUT.exists() else {}


def _store(records: dict) -> dict:
    """Merge ``records`` into the JSON file as it is now and return its contents.

    Another invocation (another tau0 or method, on the other core) may have written since this one
    read it; the file is replaced atomically, so a concurrent reader never sees half of it.
    """
    results = _load()
    results.update(records)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    partial = OUT.with_suffix(".json.partial")
    partial.write_text(json.dumps(results, indent=1))
    partial.replace(OUT)
    return results


def summarize(
    results: dict, directory: Path = OUT.parent, initial_weights: Callable[[float], np.ndarray] = _initial_weights
) -> list[Path]:
    """The paper-size work-precision table, figure and NetCDF of every finished run.

    Per tau0 there are two references. The weight errors are measured against the kernel_etd3 run
    at the smallest rtol: the distance of a run's final weights to the reference's, relative to the
    reference's weight change from ``initial_weights(tau0)``, from the weights files where both
    exist and otherwise from the distance recorded in the run's record when they did (the weights
    files are not committed); a run with neither has no weight error (NaN). The test-loss errors
    (relative differences of the final test loss, from the records) are measured against the run
    of either kernel_etd method at the smallest rtol, the most accurate run of the tau0. A reference
    has no error against itself (NaN); a run that is both references is left out. Writes
    ``work_precision_paper_gradient.{nc,md,png}``.
    """
    import xarray as xr

    rows = []
    weight_refs: dict[float, dict] = {}
    loss_refs: dict[float, dict] = {}
    for tau0 in sorted({r["tau0"] for r in results.values()}):
        runs = [r for r in results.values() if r["tau0"] == tau0]
        etd3 = [r for r in runs if _method(r) == "kernel_etd3"]
        if not etd3:
            continue
        ref = weight_refs[tau0] = min(etd3, key=lambda r: r["rtol"])
        loss_ref = loss_refs[tau0] = min(
            (r for r in runs if _method(r) in ("kernel_etd3", "kernel_etd4")), key=lambda r: (r["rtol"], _method(r))
        )
        ref_key, ref_path = (
            _key("kernel_etd3", tau0, ref["rtol"]),
            _weights_path(tau0, ref["rtol"], directory=directory),
        )
        w0 = initial_weights(tau0)
        for r in runs:
            if r is ref and r is loss_ref:
                continue
            path = _weights_path(tau0, r["rtol"], _method(r), directory)
            if r is ref:
                error = float("nan")
            elif path.exists() and ref_path.exists():
                error = _relative_distance(np.load(path), np.load(ref_path), w0)
            else:
                error = (r.get("distances") or {}).get(ref_key, float("nan"))
            loss_error = float("nan") if r is loss_ref else abs(r["test_loss"] / loss_ref["test_loss"] - 1.0)
            rows.append(
                {
                    "tau0": tau0,
                    "method": _method(r),
                    "setting": r["rtol"],
                    "status": r["status"],
                    "t_reached": r["t"],
                    "t_end": wp.SCALES["paper"]["t_end"],
                    "cpu_time_s": r["cpu_s"],
                    "nfe": r["nfe"],
                    "linearizations": r["linearizations"],
                    "n_accepted": r["steps"],
                    "n_rejected": r["rejected"],
                    "test_loss": r["test_loss"],
                    "train_loss": r["train_loss"],
                    "weight_error": error,
                    "test_loss_error": loss_error,
                    "measured": wp.measured_at(r),
                }
            )
    if not rows:
        return []
    rows.sort(key=lambda r: (r["tau0"], r["method"], -r["setting"]))
    ds = xr.Dataset(
        {k: ("run", np.array([r[k] for r in rows])) for k in rows[0]},
        coords={"run": np.arange(len(rows))},
        attrs={
            "title": "gnflow work-precision table (paper: N = 500, M = 5000, gradient flow to t = 2e7)",
            "Conventions": "CF-1.8",
            "reference": "weights: kernel_etd3 at rtol "
            + ", ".join(f"{r['rtol']:g} (tau0 = {tau0:g})" for tau0, r in weight_refs.items())
            + "; test loss: "
            + ", ".join(f"{_method(r)} at rtol {r['rtol']:g} (tau0 = {tau0:g})" for tau0, r in loss_refs.items())
            + "; atol = rtol * 1e-3",
        },
    )
    ds["method"] = ds["method"].astype(str)
    ds["status"] = ds["status"].astype(str)
    ds["measured"] = ds["measured"].astype(str)
    stem = directory / "work_precision_paper_gradient"
    ds.to_netcdf(stem.with_suffix(".nc"))
    return [stem.with_suffix(".nc"), wp.report(ds, stem.with_suffix(".md")), wp.plot(ds, stem.with_suffix(".png"))]


if __name__ == "__main__":
    raise SystemExit(main())
