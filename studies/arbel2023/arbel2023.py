"""Arbel, Menegaux, Wolinski (2023), "Rethinking Gauss-Newton for learning over-parameterized
models", on the authors' protocol: discrete GN and GD at lam = 10, GN's step-size sweep and its
continuous limit, the converged gradient flow, across tau0 and N, with verdicts over seeds.

Run with ``gnflow study arbel2023 [--scale smoke|small|medium|paper] [-o DIR]``; the sizes of each
scale are the tables of ``arbel2023.toml``. The arms are described in ``_protocol.py``, the
figures and the study's NetCDF in ``_figures.py``. Every arm runs through the sweep engine
(:func:`gnflow.studies.run_grid`), one folder per group of arms, so the study resumes where it
stopped. The test draw holds ``n_val + n_test`` points: the first ``n_val`` are the validation half,
which alone chooses any time after the fact (the refit time), the rest the test half on which every
reported test loss is measured.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gnflow.studies import (
    Claim,
    GridRun,
    StudyContext,
    StudyReport,
    fmt,
    map_in_workers,
    run_grid,
    table,
    time_to_level,
)


def _sibling(name: str) -> Any:
    """Import ``<name>.py`` of this study's folder (a checkout's studies/ or gnflow/_studies/)."""
    module_name = f"gnflow_study_arbel2023_{name.lstrip('_')}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


logger = logging.getLogger(__name__)
protocol = _sibling("_protocol")
figures = _sibling("_figures")
Arm = protocol.Arm

TITLE = "Arbel, Menegaux, Wolinski (2023) on their protocol: discrete GN and GD at lam = 10, GN's step sweep"
OBSERVE = ["teacher_alignment"]
Key = tuple[str, float, int]  # (arm name, tau0, seed)


def _base(s: dict[str, Any], n_train: int) -> dict[str, Any]:
    output: dict[str, Any] = {"save_test": True}
    if s.get("checkpoint_every_s"):
        output["checkpoint_every_s"] = float(s["checkpoint_every_s"])
    return {
        "data": {"kind": "teacher", "n_train": n_train, "n_test": int(s["n_val"]) + int(s["n_test"])},
        "model": {"width": s["width"]},
        "flow": {"damping": "eigmin", "epsilon": float(s.get("epsilon", 1e-7))},
        "observe": {"names": OBSERVE},
        "solver": {
            "n_save": s["n_save"],
            "save_decades": s["save_decades"],
            "stop_loss_ratio": s["stop_loss_ratio"],
        },
        "output": output,
    }


def _grid(
    context: StudyContext, folder: str, s: dict[str, Any], n: int, points: list[tuple[Any, float, int]]
) -> dict[Key, GridRun]:
    """Run the arms at the (arm, tau0, seed) ``points`` through the sweep engine into ``folder``."""
    if not points:
        return {}
    entries = [
        {**arm.run_entry(s), "name": f"{arm.name} tau0={tau:g} seed={seed}", "model.init_scale": tau, "seed": seed}
        for arm, tau, seed in points
    ]
    runs = run_grid(context, folder, _base(s, n), runs=entries)
    return {(arm.name, tau, seed): r for (arm, tau, seed), r in zip(points, runs, strict=True)}


class Protocol:
    """Every arm at one N: runs, GD's computation rule and the measurements of each run."""

    def __init__(self, context: StudyContext, prefix: str, s: dict[str, Any], n: int, taus: list[float], sweep: bool):
        self.s, self.n, self.taus, self.seeds = s, n, taus, list(s["seeds"])
        self.gn_arms = protocol.gn_arms(s, n, sweep=sweep)
        self.arms: dict[str, Any] = {a.name: a for a in self.gn_arms}
        grid = [(a, t, seed) for a in self.gn_arms for t in taus for seed in self.seeds]
        self.runs = _grid(context, f"{prefix}_gn", s, n, grid)
        lam = float(s["lam"])
        gd = protocol.gd_arm(s, n)
        self.arms["gd"] = gd
        self.runs.update(_grid(context, f"{prefix}_gd", s, n, [(gd, t, seed) for t in taus for seed in self.seeds]))
        converged = [(protocol.converged_gd_arm(s, n, t), t, seed) for t in taus for seed in self.seeds]
        self.runs.update(_grid(context, f"{prefix}_gd_converged", s, n, converged))
        self.arms["gd_flow"] = protocol.converged_gd_arm(s, n, taus[0])
        self.ratio_run = {
            key[1:]: protocol.step_ratio(r.dataset, lam) for key, r in self.runs.items() if key[0] == "gd"
        }
        self.checks: dict[Key, GridRun] = {}
        check_taus = [float(t) for t in s.get("agreement_tau0", []) if float(t) in taus] if sweep else []
        if check_taus:
            self.check_arms = protocol.check_arms(s, n)
            points = [(a, t, self.seeds[0]) for a in self.check_arms for t in check_taus]
            self.checks = _grid(context, f"{prefix}_check", s, n, points)
        self.check_taus = check_taus
        self.measures: dict[Key, Any] = {}
        self.splits: dict[Key, Any] = {}
        n_val, refit_points = int(s["n_val"]), int(s["refit_points"])

        def refit(arm: str) -> bool:
            return arm.startswith("gn") or arm == "gd"

        def budgets(arm: str) -> tuple[float, ...]:
            lam = self.arms[arm].lam
            return () if lam is None else (lam * float(s["sweep_iterations"]),)

        # the splits not cached yet, on the study's workers (each measures the saved states it reads)
        missing = [
            (str(r.path), n_val, refit_points, refit(key[0]), budgets(key[0]))
            for key, r in self.runs.items()
            if not protocol.split_cache(r.path).is_file()
        ]
        map_in_workers(context, protocol.split_file, missing)
        for key, r in self.runs.items():
            split = protocol.split_measurements(r, n_val, refit_points, refit=refit(key[0]), budgets=budgets(key[0]))
            self.splits[key] = split
            self.measures[key] = protocol.measure(r, split)
        first = self.gn_arms[0].name
        self.lazy_limit = [protocol.lazy_limit_test_loss(self.runs[(first, taus[0], k)], n_val) for k in self.seeds]

    def agreement(self) -> list[tuple[str, float, float, float, float, float]]:
        """Per checked method and tau0: (method, tau0, train and test differences between the plain
        iterations and kernel_euler, CPU s of each)."""
        out = []
        for method in ("gd", "gn"):
            for t in self.check_taus:
                seed = self.seeds[0]
                plain = self.checks[(f"check_{method}_euler", t, seed)].dataset
                blocks = self.checks[(f"check_{method}_blocks", t, seed)].dataset
                train, test = protocol.agreement(plain, blocks)
                cpu = [float(d.attrs.get("gnflow_cpu_time_s", math.nan)) for d in (plain, blocks)]
                out.append((method, t, train, test, cpu[0], cpu[1]))
        return out

    def hidden(self, arm: str, tau: float) -> tuple[list[float], list[float]]:
        """Per seed: the refit test loss at the validation-chosen time within the iteration budget
        ``sweep_iterations``, and the network's own test loss at the budget."""
        a = self.arms[arm]
        t_max = (a.lam or 0.0) * float(self.s["sweep_iterations"])
        refit = [
            protocol.measure(self.runs[(arm, tau, k)], self.splits[(arm, tau, k)], t_max=t_max).refit_test
            for k in self.seeds
        ]
        raw = [protocol.budget_state(self.splits[(arm, tau, k)], t_max) for k in self.seeds]
        return refit, raw

    def unstable_gd(self, tau: float) -> list[int]:
        """Seeds whose discrete GD exceeded its stability limit (lam lambda_max(A)/N > 2 at a saved
        state) and ended above 10 x the stop level without diverging: an oscillating, untrained GD."""
        level = 10 * float(self.s["stop_loss_ratio"])
        return [
            k
            for k in self.seeds
            if not self.measures[("gd", tau, k)].diverged
            and self.ratio_run[(tau, k)] > 2
            and self.measures[("gd", tau, k)].final_ratio > level
        ]

    def values(self, arm: str, tau: float, what: str) -> list[float]:
        return [float(getattr(self.measures[(arm, tau, seed)], what)) for seed in self.seeds]

    def iterations_to_level(self, tau: float, arm: str) -> list[float]:
        """Iterations of ``arm`` (t / lam) to the train-loss level both it and GD reached (the stop
        level, or the higher of the two lowest losses); a diverged GD counts its full horizon."""
        lam = float(self.s["lam"])
        out = []
        for seed in self.seeds:
            gn, gd = self.runs[(arm, tau, seed)].dataset, self.runs[("gd", tau, seed)].dataset
            gd_diverged = self.measures[("gd", tau, seed)].diverged
            l0 = float(gn["train_loss"].values[0])
            pair = (gn,) if gd_diverged else (gn, gd)
            lowest = [float(np.nanmin(np.where(np.isfinite(d["train_loss"]), d["train_loss"], np.nan))) for d in pair]
            level = max(float(self.s["stop_loss_ratio"]) * l0, *lowest)
            step = self.arms[arm].lam or lam
            t_gn = time_to_level(gn["t"].values, gn["train_loss"].values, level)
            t_gd = time_to_level(gd["t"].values, gd["train_loss"].values, level)
            if gd_diverged or not math.isfinite(t_gd):
                t_gd = self.arms["gd"].t_end  # diverged or never reached: an upper bound on GN / GD
            out.append((t_gn / step) / (t_gd / lam))
        return out


@dataclass(frozen=True)
class NoComparison:
    """A row whose ratio is not a number (a run diverged or a level was never reached): reported as
    text, decided inconclusive."""

    text: str
    verdict: str = "inconclusive"
    low: float = math.nan
    high: float = math.nan

    def summary(self) -> str:
        return self.text


def _pc(num: list[float], den: list[float], claim: str, a: str, b: str, seeds: list[int], direction: str) -> Any:
    bad = [
        k
        for k, x, y in zip(seeds, num, den, strict=True)
        if not (math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0)
    ]
    if bad:
        return NoComparison(f"no ratio in {len(bad)}/{len(seeds)} seeds (a run diverged or never reached the level)")
    return protocol.paired_comparison(
        num, den, claim=claim, numerator_label=a, denominator_label=b, seeds=seeds, direction=direction
    )


def _combine(verdicts: list[str]) -> str:
    """A claim over several rows ("at every tau0"): supported when every row is, contradicted when any
    row is, inconclusive otherwise."""
    if verdicts and all(v == "supported" for v in verdicts):
        return "supported"
    return "contradicted" if "contradicted" in verdicts else "inconclusive"


Row = tuple[str, Any, "str | None"]  # (label, PairedComparison or text, the row's verdict if it votes)


def _claim(statement: str, rows: list[Row], note: str) -> tuple[Claim, list[Row]]:
    """A claim from its rows, and the rows for the detail table.

    Each row is (label, PairedComparison, or a text for a row with no comparison, e.g. a discrete
    GD that diverged in every seed; the row's verdict when it votes, None when it is reported only).
    The claim's verdict combines the voting rows (:func:`_combine`); the claims table shows the
    voting rows, the detail table every row; the rule is stated once (``verdict_note``).
    """
    votes = [r for r in rows if r[2] is not None]
    measured = "; ".join(f"{label}: {_summary(pc)}" for label, pc, _ in votes)
    if len(votes) < len(rows):
        measured += f"; {len(rows) - len(votes)} more rows reported, not voted (details below)"
    verdict = _combine([v for _, _, v in votes if v is not None])
    return Claim(statement, measured, verdict, note), rows  # type: ignore[arg-type]


def _summary(pc: Any) -> str:
    return pc if isinstance(pc, str) else pc.summary()


def _detail_table(k: int, rows: list[Row]) -> list[str]:
    """The rows of claim ``k``: ratio, interval, sign count, the row's verdict and whether it votes."""
    body = []
    for label, pc, vote in rows:
        if isinstance(pc, str) or not hasattr(pc, "center"):
            body.append([label, _summary(pc), "", "", vote or "", "yes" if vote else "no"])
            continue
        interval = "no interval" if math.isnan(pc.low) else f"[{fmt(pc.low)}, {fmt(pc.high)}]"
        side = "< 1" if pc.direction == "less" else "> 1"
        body.append(
            [label, fmt(pc.center), interval, f"{pc.n_favour}/{pc.n_seeds} {side}", vote or "", "yes" if vote else "no"]
        )
    head = ["row", "ratio (geo. mean)", "95% interval", "seeds", "row verdict", "votes"]
    return [f"**Claim {k}**", "", *table(head, body), ""]


def _equivalence(pc: Any, tol: float) -> str:
    """'alike' claims: supported when the interval lies inside [1/(1+tol), 1+tol], contradicted when
    it lies wholly outside, inconclusive otherwise."""
    lo, hi = 1 / (1 + tol), 1 + tol
    if not (math.isfinite(pc.low) and math.isfinite(pc.high)):
        return "inconclusive"
    if lo <= pc.low and pc.high <= hi:
        return "supported"
    return "contradicted" if pc.high < lo or pc.low > hi else "inconclusive"


def _claims(s: dict[str, Any], p: Protocol, by_n: dict[int, Protocol]) -> list[tuple[Claim, list[Row]]]:
    """The seven claims, each with the rows of its detail table."""
    seeds, lam = p.seeds, float(s["lam"])
    paper = p.gn_arms[0].name
    claims = []
    rows: list[Row] = []
    for t in p.taus:
        pc = _pc(p.iterations_to_level(t, paper), [1.0] * len(seeds), "faster", "GN", "GD", seeds, "less")
        rows.append((f"tau0={t:g}", pc, pc.verdict))
    claims.append(
        _claim(
            f"GN reaches the training optimum faster than GD at every tau0 (iterations of the discrete methods at "
            f"lam = {lam:g}: the paper's protocol). Ratio: GN iterations / GD iterations to a common train-loss level.",
            rows,
            "Combined over tau0: supported when every tau0 is, contradicted when any is. A diverged GD "
            "counts its whole horizon (the ratio is then an upper bound).",
        )
    )
    rows = []
    for t in p.taus:
        t_gn = [
            time_to_level(
                p.runs[("gn_flow", t, k)].dataset["t"].values,
                p.runs[("gn_flow", t, k)].dataset["train_loss"].values,
                float(s["stop_loss_ratio"]) * float(p.runs[("gn_flow", t, k)].dataset["train_loss"].values[0]) * 10,
            )
            for k in seeds
        ]
        t_gd = [
            time_to_level(
                p.runs[("gd_flow", t, k)].dataset["t"].values,
                p.runs[("gd_flow", t, k)].dataset["train_loss"].values,
                float(s["stop_loss_ratio"]) * float(p.runs[("gd_flow", t, k)].dataset["train_loss"].values[0]) * 10,
            )
            for k in seeds
        ]
        t_gd = [x if math.isfinite(x) else float(s["gd_t_end"]) for x in t_gd]
        pc = _pc(t_gn, t_gd, "faster (flows)", "GN flow", "GD flow", seeds, "less")
        rows.append((f"tau0={t:g}", pc, pc.verdict))
    claims.append(
        _claim(
            "The continuous GN flow reaches 10 x the stop level (1e-7 L0) in less flow time than the converged "
            "gradient flow at every tau0 (not the paper's protocol: its lam -> 0 limits).",
            rows,
            "A gradient flow that never reached the level counts its horizon gd_t_end.",
        )
    )
    tol = float(s["alike_tolerance"])
    rows = []
    for t in [t for t in s["large_tau0"] if t in p.taus]:
        gn, gd = p.values(paper, t, "final_test"), p.values("gd", t, "final_test")
        n_div = sum(not math.isfinite(x) for x in gd)
        unstable = p.unstable_gd(t)
        label = f"tau0={t:g} GN/GD(lam={lam:g})"
        if n_div:
            # divergence is reported as such; the ratio is not a number then
            rows.append((label, f"discrete GD diverged in {n_div}/{len(seeds)} seeds", "inconclusive"))
        elif unstable:
            # an iteration beyond its stability limit that never converged is not a trained GD: its
            # ratio is reported, the row does not vote
            pc = _pc(gn, gd, "alike", "GN", "GD", seeds, "less")
            worst = max(p.ratio_run[(t, k)] for k in unstable)
            final = max(p.measures[("gd", t, k)].final_ratio for k in unstable)
            rows.append(
                (
                    f"{label} [not voted: discrete GD unstable and unconverged in {len(unstable)}/{len(seeds)} "
                    f"seeds, lam lambda_max(A)/N up to {worst:.3g} > 2, final L/L0 up to {final:.2g}]",
                    pc,
                    "inconclusive",
                )
            )
        else:
            pc = _pc(gn, gd, "alike", "GN", "GD", seeds, "less")
            rows.append((label, pc, _equivalence(pc, tol)))
        pc_flow = _pc(gn, p.values("gd_flow", t, "final_test"), "alike", "GN", "GD flow", seeds, "less")
        rows.append((f"tau0={t:g} GN/converged GD flow", pc_flow, None))
        pc_rf = _pc(gn, p.values(paper, t, "rf_test"), "alike", "GN", "RF", seeds, "less")
        rows.append((f"tau0={t:g} GN/RF", pc_rf, None))
        pc_lazy = _pc(p.values(paper, t, "rf_test"), p.lazy_limit, "alike", "RF", "lazy limit", seeds, "less")
        rows.append((f"tau0={t:g} RF (M = {s['width']})/kernel limit (M, tau0 -> inf)", pc_lazy, None))
    claims.append(
        _claim(
            f"At large tau0 (kernel regime) GN (lam = {lam:g}) and GD generalize alike (test-loss ratio).",
            rows,
            f"'Alike' (equivalence): supported when the interval lies inside [1/{1 + tol:g}, {1 + tol:g}], "
            "contradicted when wholly outside, inconclusive otherwise. A discrete GD that diverged, or that ended "
            "unconverged (above 10 x the stop level) after exceeding its stability limit lam lambda_max(A)/N > 2, "
            "makes its row inconclusive: it is not a trained GD (its ratio is shown; the converged-flow row beside "
            "it). Verdict from the GN/GD(lam) rows.",
        )
    )
    rows = []
    for t in [t for t in s["small_tau0"] if t in p.taus]:
        gd = p.values("gd", t, "final_test")
        for arm in p.gn_arms:
            pc = _pc(p.values(arm.name, t, "final_test"), gd, "worse", arm.label, "GD", seeds, "greater")
            rows.append((f"tau0={t:g} {arm.label} / GD(lam={lam:g})", pc, pc.verdict if arm.role == "paper" else None))
    claims.append(
        _claim(
            f"At small tau0 (feature regime) GN at lam = {lam:g} generalizes worse than GD (test-loss ratio > 1); the "
            "smaller steps, the paper's h/N and the GN flow are separate rows.",
            rows,
            f"Verdict from the GN lam = {lam:g} rows only (h/N = {lam / p.n:.3g} at N = {p.n}); the other rows "
            "are reported, not voted. Smaller steps stop at the fixed budget of sweep_iterations iterations.",
        )
    )
    rows = []
    budget = float(s["sweep_iterations"])
    for t in [t for t in s["hidden_tau0"] if t in p.taus]:
        fast, gd = p.values(paper, t, "final_test"), p.values("gd", t, "final_test")
        for arm in [a for a in p.gn_arms if a.role in ("paper", "sweep")]:
            refit, raw = p.hidden(arm.name, t)
            votes = arm.lam == min(a.lam for a in p.gn_arms if a.role in ("paper", "sweep"))
            own = _pc(refit, raw, "hidden", "refit", "raw", seeds, "less")
            over_fast = _pc(refit, fast, "hidden", "refit", "fast GN", seeds, "less")
            over_gd = _pc(refit, gd, "hidden", "refit", "GD", seeds, "less")
            head = f"tau0={t:g} {arm.label}: refit"
            rows += [
                (f"{head} / own test", own, own.verdict if votes else None),
                (f"{head} / GN lam={lam:g} final", over_fast, over_fast.verdict if votes else None),
                (f"{head} / GD final", over_gd, None),
            ]
    claims.append(
        _claim(
            "Slowed GN (the smallest lam, small tau0) learns good features under an under-fitted output layer: the "
            "refit of its features beats its own test loss and the fast GN's (hidden learning).",
            rows,
            f"All arms at the same budget of {budget:g} iterations; the refit time is chosen on the "
            "validation half among the saved times within the budget. Verdict: refit/own and refit/fast GN of the "
            "smallest lam; the GD row is reported.",
        )
    )
    rows = []
    for t in [t for t in s["small_tau0"] if t in p.taus]:
        pc = _pc(
            p.values("gn_flow", t, "final_test"), p.values(paper, t, "final_test"), "slow", "flow", "lam", seeds, "less"
        )
        rows.append((f"tau0={t:g} GN flow / GN lam={lam:g}", pc, pc.verdict))
    claims.append(
        _claim(
            "Slowing GN down (lam -> 0: the GN flow) improves its test loss at small tau0.",
            rows,
            "Both converged (stop level or horizon); test half.",
        )
    )
    rows = []
    for n, q in by_n.items():
        qa = q.gn_arms[0].name
        for t in q.taus:
            pc = _pc(q.iterations_to_level(t, qa), [1.0] * len(seeds), "faster", "GN", "GD", seeds, "less")
            rows.append((f"N={n} tau0={t:g}", pc, pc.verdict))
    claims.append(
        _claim(
            f"GN is faster than GD at every training-set size N as well (iterations at lam = {lam:g}).",
            rows,
            "Combined over N and tau0 as claim 1.",
        )
    )
    return claims


def _arm_table(p: Protocol) -> list[str]:
    rows = []
    names = [a.name for a in p.gn_arms] + ["gd", "gd_flow"]
    for name in names:
        arm = p.arms[name]
        for t in p.taus:
            tests = p.values(name, t, "final_test")
            finite = [x for x in tests if math.isfinite(x) and x > 0]
            geo = float(np.exp(np.mean(np.log(finite)))) if finite else float("nan")
            status = sorted({str(p.measures[(name, t, k)].status).split(":")[0] for k in p.seeds})
            ratio = ""
            if name == "gd":
                at0 = [protocol.step_ratio(p.runs[("gd", t, k)].dataset.isel(t=[0]), p.arms["gd"].lam) for k in p.seeds]
                ratio = f"{fmt(max(at0), 2)} / {fmt(max(p.ratio_run[(t, k)] for k in p.seeds), 2)}"
            rows.append(
                [
                    arm.label,
                    arm.solver_method,
                    f"{t:g}",
                    fmt(geo),
                    fmt(float(np.max(p.values(name, t, "final_ratio"))), 2),
                    "/".join(status),
                    str(sum(p.measures[(name, t, k)].diverged for k in p.seeds)),
                    fmt(sum(p.values(name, t, "cpu_s")), 3),
                    ratio,
                ]
            )
    return table(
        [
            "arm",
            "computed by",
            "tau0",
            "test loss (geo. mean)",
            "max final L/L0",
            "status",
            "diverged",
            "CPU s (all seeds)",
            "GD: lam lambda_max(A) / N at t = 0 / max over t (max over seeds)",
        ],
        rows,
    )


def _agreement_table(s: dict[str, Any], p: Protocol) -> list[str]:
    tol = float(s["agreement_tolerance"])
    rows = []
    for method, t, train, test, cpu_plain, cpu_blocks in p.agreement():
        step = float(s["lam"]) if method == "gd" else float(min(s["lam_sweep"]))
        verdict = "agree" if max(train, test) <= tol else "DIFFER"
        rows.append(
            [
                f"{method.upper()} lam={step:.3g}",
                f"{t:g}",
                fmt(train, 2),
                fmt(test, 2),
                fmt(cpu_plain, 3),
                fmt(cpu_blocks, 3),
                f"{verdict} (tolerance {tol:g})",
            ]
        )
    return table(
        [
            "method",
            "tau0",
            "max rel. diff. train loss",
            "max rel. diff. test loss",
            "CPU s iterations",
            "CPU s kernel_euler",
            "",
        ],
        rows,
    )


#: The published sizes (Arbel et al. 2023): training points, particles, test points, GN's iteration cap.
PAPER_SIZES = {"n_train": 500, "width": 5000, "n_test": 10000, "gn_iterations": 2000000}


def _size_differences(s: dict[str, Any], lam: float) -> list[str]:
    """The setup lines for sizes that differ from the published ones (empty at the paper's sizes)."""
    names = {"n_train": "N", "width": "M", "n_test": "test points", "gn_iterations": "GN's iteration cap"}
    diffs = [f"{names[k]} = {s[k]:g} (paper: {v:g})" for k, v in PAPER_SIZES.items() if float(s[k]) != v]
    if not diffs:
        return []
    line = "Sizes that differ from the paper's: " + "; ".join(diffs) + "."
    n = int(s["n_train"])
    if n != PAPER_SIZES["n_train"]:
        line += (
            f" The step's effect scales with lam / N: lam = {lam:g} is h/N = {lam / n:.3g} here against "
            f"{lam / PAPER_SIZES['n_train']:.3g} in the paper, so the paper's h/N is its own arm "
            f"(lam = {float(s['paper_h_over_n']) * n:.3g}); the verdicts use lam = {lam:g}."
        )
    return [line]


def run(s: dict[str, Any], context: StudyContext) -> StudyReport:
    """Execute every arm, decide the claims over seeds, draw the figures and write the study's NetCDF."""
    n_main = int(s["n_train"])
    taus = [float(t) for t in s["tau0"]]
    main = Protocol(context, "tau0", s, n_main, taus, sweep=True)
    by_n: dict[int, Protocol] = {}
    for n in s["n_grid"]:
        n_taus = [float(t) for t in s["n_grid_tau0"]]
        if n == n_main and set(n_taus) <= set(taus):
            by_n[n] = main
            continue
        by_n[n] = Protocol(context, f"n{n}", s, int(n), n_taus, sweep=False)
    decided = _claims(s, main, by_n)
    claims = [claim for claim, _ in decided]
    figs = figures.draw(s, context, main, by_n)
    lam = float(s["lam"])
    setup = [
        "Teacher-student task of docs/mathematics.md (d = 10, teacher of 5 SiLU units, noiseless labels), "
        f"N = {n_main}, M = "
        f"{s['width']} particles, mean-field scaling, v = 0 at t = 0, seeds {main.seeds}. The test draw holds "
        f"{int(s['n_val']) + int(s['n_test'])} points: the first {s['n_val']} validate (choose refit times), the "
        f"other {s['n_test']} test (every reported test loss).",
        f"GN (the paper's): Euler steps h = lam = {lam:g} of the GN flow with eigmin damping, eps0 = "
        f"{float(s.get('epsilon', 1e-7)):g} (h/N = {lam / n_main:.3g}); at most {s['gn_iterations']:g} iterations. "
        f"Step sweep lam in {list(s['lam_sweep'])} at a fixed budget of {s['sweep_iterations']:g} iterations; the "
        f"paper's h/N = {s['paper_h_over_n']:g} as its own arm where it differs from lam; the GN flow (dopri5, "
        f"t_end = {s['gn_t_end_per_n']:g} N) as the lam -> 0 limit. GN lam = {lam:g} by {s['gn_method']}, the "
        f"sweep by {s['sweep_method']}.",
        f"GD (the paper's): lam = {lam:g} up to {s['gd_iterations']:g} iterations "
        f"(t = {lam * float(s['gd_iterations']):g}), computed by {s['gd_discrete_method']} (kernel_euler: the Euler "
        f"iterations in blocks exact for the linearized model, local tolerance rtol = {s['discrete_rtol']:g}; its "
        "agreement with the plain iterations is the table 'Agreement' below); a non-finite loss is reported as "
        f"divergence. The converged gradient flow (t_end = {s['gd_t_end']:g}) is a separate arm.",
        f"All runs stop at {s['stop_loss_ratio']:g} x the initial train loss. Refit: minimum-norm least squares of the "
        f"output layer on the training set at {s['refit_points']} saved times; at t = 0 it is the random-features "
        "baseline. Its limit M -> infinity, tau0 -> infinity (the lazy regime) is the minimum-norm interpolant of "
        "the closed-form kernel of gnflow.kernels.large_scale_limit_kernel (arc-cosine of order 1 of (x, 1) for "
        "silu): the 'kernel limit' line of the tau0 figure.",
        "Remaining differences from the authors' code: float64 throughout (they use float32 with a float64 "
        "Gram solve); lambda_min(A) by Lanczos (they use a full SVD); the refit time is chosen on a validation "
        "half (they have no validation set, and never call their refit); the step-size grid and the "
        "budget of the sweep are ours (the paper's are not recoverable); the long discrete runs (GD, the GN "
        "sweep) are computed in kernel_euler blocks, not one iteration at a time.",
        *_size_differences(s, lam),
    ]
    details = [line for k, (_, rows) in enumerate(decided, start=1) for line in _detail_table(k, rows)]
    sections = {"Claims in detail (every row; only voting rows decide)": details}
    sections["Arms (test half, over seeds)"] = _arm_table(main)
    if main.check_taus:
        sections[
            f"Agreement: plain iterations against kernel_euler ({s['agreement_iterations']:g} iterations, seed "
            f"{main.seeds[0]})"
        ] = _agreement_table(s, main)
    for n, q in by_n.items():
        if q is not main:
            sections[f"Arms at N = {n}"] = _arm_table(q)
    note = (
        f"Every claim here has {len(main.seeds)} seeds, paired by seed. A claim over several rows (tau0, N, "
        "arms) combines the rows that vote, as its note says: supported when every voting row is, contradicted "
        "when any is, inconclusive otherwise."
    )
    return StudyReport(title=TITLE, setup=setup, claims=claims, figures=figs, sections=sections, verdict_note=note)
