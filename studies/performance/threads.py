"""Threads benchmark: the default run, idle and beside one competing process, per thread setting.

Each case runs ``gnflow run`` (the embedded default run) as a fresh process and times it from
start to exit, so the figure is what a user waits for. The settings are gnflow's default
(``compute.threads = 0``: free cores), one thread, and every core (``--threads`` = the core
count, torch's own default). The competing process is one CPU-bound Python loop started before
the run and stopped after it. Cases are interleaved over ``--repeats`` rounds so that drift of the
machine falls on all settings alike; the report gives each case's median and its ratio to the
idle median of the same setting, and the goal (loaded default at most 1.5x its idle time).

    python studies/performance/threads.py                       # writes data/studies/performance/threads.{md,json}
    python studies/performance/threads.py --repeats 1 -o /tmp/t # a quick look

Run it on an otherwise idle machine (``uptime``): the idle cases are the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 1.5


def _gnflow() -> list[str]:
    return [sys.executable, "-m", "gnflow"]


def _spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _run(threads: int | None, out: Path) -> tuple[float, int]:
    cmd = [*_gnflow(), "run", "-o", str(out), "--quiet"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    import xarray as xr

    with xr.open_dataset(out) as ds:
        used = int(ds.attrs.get("gnflow_threads", -1))
    out.unlink()
    return wall, used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-o", "--output", type=Path, default=Path("data/studies/performance"))
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    settings = {"default (0: free cores)": None, "1 thread": 1, f"{cores} threads (all cores)": cores}
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    times: dict[tuple[str, str], list[float]] = {}
    used: dict[tuple[str, str], set[int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for load in ("idle", "1 competing process"):
                for name, threads in settings.items():
                    spinner = _spinner() if load != "idle" else None
                    try:
                        if spinner is not None:
                            time.sleep(0.5)  # the competitor is running before the run starts
                        wall, n = _run(threads, Path(tmp) / f"r{k}.nc")
                    finally:
                        if spinner is not None:
                            spinner.kill()
                            spinner.wait()
                    times.setdefault((load, name), []).append(wall)
                    used.setdefault((load, name), set()).add(n)
                    print(f"round {k + 1}: {load:20s} {name:26s} {wall:7.2f} s ({n} thread(s))", flush=True)
    rows = []
    for (load, name), walls in times.items():
        idle = statistics.median(times[("idle", name)])
        med = statistics.median(walls)
        rows.append(
            {
                "load": load,
                "setting": name,
                "threads_used": sorted(used[(load, name)]),
                "median_s": med,
                "min_s": min(walls),
                "max_s": max(walls),
                "ratio_to_idle": med / idle,
            }
        )
    default_ratio = next(r["ratio_to_idle"] for r in rows if r["load"] != "idle" and r["setting"].startswith("default"))
    verdict = "met" if default_ratio <= GOAL else "not met"
    lines = [
        "# Threads benchmark: the default run, idle and beside one competing process",
        "",
        f"`python studies/performance/threads.py --repeats {args.repeats}` on {cores} cores; "
        f"one-minute load average before: {load_before:.2f}. Whole-process wall time of "
        "`gnflow run` (the embedded default run), median over the rounds; the competing process is one "
        "CPU-bound Python loop.",
        "",
        "| load | setting | threads used | median s | min–max s | / idle median of the setting |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['load']} | {r['setting']} | {', '.join(map(str, r['threads_used']))} | "
            f"{r['median_s']:.2f} | {r['min_s']:.2f}–{r['max_s']:.2f} | {r['ratio_to_idle']:.2f} |"
        )
    lines += [
        "",
        f"Goal: the default setting beside one competing process takes at most {GOAL}x its idle "
        f"time. Measured: {default_ratio:.2f}x, goal {verdict}.",
        "",
    ]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "threads.md").write_text("\n".join(lines), encoding="utf-8")
    (args.output / "threads.json").write_text(
        json.dumps({"cores": cores, "load_before": load_before, "repeats": args.repeats, "rows": rows}, indent=2)
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
