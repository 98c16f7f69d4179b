"""Scripted reproduction studies: a registry, the sweep-backed runner and the claims report.

A study is a folder ``studies/<name>/`` of the source tree holding ``<name>.py`` (the script),
``<name>.toml`` (one table per scale: ``[smoke]``, ``[small]``, ``[paper]``) and ``README.md``.
The script defines ``run(settings, context) -> StudyReport``: it executes its runs through the
sweep engine (:func:`run_grid`, so the paper scale can use dask and GPUs), measures what the
paper claims, draws its figures into ``context.out_dir`` and returns the claims with the numbers
it measured. :func:`run_study` then writes ``report.md``.

Scales: ``smoke`` (tiny, for continuous integration: under two minutes on two cores), ``small``
(a laptop CPU in under an hour) and ``paper`` (the published setting).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from gnflow.dataset import atomic_write_text, dataset_result, read_dataset

__all__ = [
    "SCALES",
    "STUDIES",
    "Claim",
    "StudyContext",
    "StudyError",
    "StudyReport",
    "claims_table",
    "load_study_settings",
    "run_grid",
    "run_study",
    "study_folder",
    "time_to_level",
    "write_report",
]

logger = logging.getLogger(__name__)

Scale = Literal["smoke", "small", "paper"]
Verdict = Literal["supported", "not supported", "inconclusive"]
SCALES: tuple[str, ...] = ("smoke", "small", "paper")
VERDICTS: tuple[str, ...] = ("supported", "not supported", "inconclusive")

#: Study name -> one-line description. The folder is ``studies/<name>/`` of the source tree.
STUDIES: dict[str, str] = {
    "arbel2023": "Arbel, Menegaux, Wolinski (2023): GN vs GD across tau0 and N; hidden learning of slowed GN",
    "cai2019": "Cai et al. (2019): quadratic convergence of full-batch GGN; mini-batch GGN vs SGD and Adam",
    "mean_field_limit": "Convergence of GN and GD trajectories and particle measures as the width M grows",
}

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class StudyError(ValueError):
    """An unknown study or scale, a missing study folder, or a study that produced no result."""


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, what this reproduction measured for it, and the verdict.

    Attributes
    ----------
    statement:
        The claim as the paper makes it.
    measured:
        The numbers measured for it (must contain at least one number).
    verdict:
        ``"supported"``, ``"not supported"`` or ``"inconclusive"``.
    note:
        Why the verdict, in particular what made it inconclusive (optional).
    """

    statement: str
    measured: str
    verdict: Verdict
    note: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")
        if not _NUMBER.search(self.measured):
            raise ValueError(f"claim {self.statement!r}: the measured text holds no number: {self.measured!r}")


@dataclass
class StudyReport:
    """What a study script returns: claims, figures and the description of its setting.

    Attributes
    ----------
    title:
        Report title (the paper and the experiment).
    setup:
        Markdown lines describing the runs of this scale (sizes, horizons, solvers).
    claims:
        The claims with their measurements and verdicts.
    figures:
        Figure files (in the output folder) with a caption each.
    sections:
        Further Markdown sections: heading -> lines (tables of measured numbers, caveats).
    """

    title: str
    setup: list[str]
    claims: list[Claim]
    figures: list[tuple[Path, str]] = field(default_factory=list)
    sections: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyContext:
    """Where and how a study runs.

    Attributes
    ----------
    name, scale:
        The study and its scale.
    out_dir:
        Output folder: figures and ``report.md`` at the top, sweeps in sub-folders.
    executor:
        Sweep executor: ``"serial"`` (in this process), ``"dask"`` or ``"auto"``.
    workers:
        Worker processes of a local dask cluster (None: the sweep engine's default).
    progress:
        Progress bars on stderr: True, False or None (when stderr is a terminal).
    """

    name: str
    scale: str
    out_dir: Path
    executor: str = "serial"
    workers: int | None = None
    progress: bool | None = None


def study_folder(name: str) -> Path:
    """The folder ``studies/<name>/`` of the source tree holding the study's script and TOML."""
    if name not in STUDIES:
        raise StudyError(f"unknown study {name!r}; allowed: {', '.join(STUDIES)}")
    folder = Path(__file__).resolve().parent.parent / "studies" / name
    if not (folder / f"{name}.py").is_file():
        raise StudyError(
            f"study {name!r}: {folder / (name + '.py')} not found; studies run from a gnflow source checkout"
        )
    return folder


def load_study_settings(name: str, scale: str) -> dict[str, Any]:
    """The ``[scale]`` table of ``studies/<name>/<name>.toml``."""
    if scale not in SCALES:
        raise StudyError(f"unknown scale {scale!r}; allowed: {', '.join(SCALES)}")
    path = study_folder(name) / f"{name}.toml"
    try:
        tables = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: invalid TOML: {exc}") from None
    if scale not in tables:
        raise StudyError(f"{path}: no [{scale}] table")
    settings: dict[str, Any] = dict(tables[scale])
    return settings


def _study_module(name: str) -> Any:
    path = study_folder(name) / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"gnflow_study_{name}", path)
    if spec is None or spec.loader is None:  # pragma: no cover - importlib failure
        raise StudyError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise StudyError(f"{path} defines no run(settings, context) function")
    return module


def run_study(
    name: str,
    scale: str = "smoke",
    out_dir: str | Path | None = None,
    *,
    executor: str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> Path:
    """Run study ``name`` at ``scale`` and write its figures and ``report.md`` into ``out_dir``.

    Parameters
    ----------
    name:
        A key of :data:`STUDIES`.
    scale:
        ``"smoke"``, ``"small"`` or ``"paper"``.
    out_dir:
        Output folder (default ``data/studies/<name>/<scale>``).
    executor:
        Sweep executor; default ``"serial"`` for smoke and small, ``"auto"`` (dask when
        installed) for paper.
    workers, progress:
        Passed to the sweep engine.

    Returns
    -------
    Path
        The report written.
    """
    settings = load_study_settings(name, scale)
    threads = settings.pop("threads", None)
    if threads is not None:
        import torch

        # runs in this process (serial executor): the thread count of the scale, since
        # oversubscribed BLAS threads on a busy machine cost more than they give
        torch.set_num_threads(int(threads))
    module = _study_module(name)
    out = Path(out_dir) if out_dir is not None else Path("data/studies") / name / scale
    out.mkdir(parents=True, exist_ok=True)
    context = StudyContext(
        name=name,
        scale=scale,
        out_dir=out,
        executor=executor or ("auto" if scale == "paper" else "serial"),
        workers=workers,
        progress=progress,
    )
    start = time.perf_counter()
    report: StudyReport = module.run(settings, context)
    wall = time.perf_counter() - start
    logger.info("study %s (%s) took %.1f s", name, scale, wall)
    return write_report(out / "report.md", report, name=name, scale=scale, wall_time_s=wall)


def write_report(path: str | Path, report: StudyReport, *, name: str, scale: str, wall_time_s: float) -> Path:
    """Write the Markdown report: claims table (claim, measured, verdict), setup, figures.

    The claims table has one row per claim, ``| k | claim | measured | verdict |``; its verdict
    cell is one of ``supported``, ``not supported``, ``inconclusive``.
    """
    path = Path(path)
    lines = [
        f"# {report.title}",
        "",
        f"Study `{name}`, scale `{scale}`; written by `gnflow study {name} --scale {scale}` "
        f"in {wall_time_s:.0f} s of wall-clock time.",
        "",
        "## Claims",
        "",
        "| # | claim | measured | verdict |",
        "|---|---|---|---|",
    ]
    for k, claim in enumerate(report.claims, start=1):
        cells = [str(k), claim.statement, claim.measured, claim.verdict]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    notes = [(k, c.note) for k, c in enumerate(report.claims, start=1) if c.note]
    if notes:
        lines += ["", *[f"- Claim {k}: {note}" for k, note in notes]]
    lines += ["", "## Setup", "", *[f"- {line}" for line in report.setup]]
    for heading, body in report.sections.items():
        lines += ["", f"## {heading}", "", *body]
    if report.figures:
        lines += ["", "## Figures", ""]
        for figure, caption in report.figures:
            rel = Path(os.path.relpath(Path(figure).resolve(), path.parent.resolve())).as_posix()
            lines += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
    text = "\n".join(lines).rstrip() + "\n"
    return atomic_write_text(path, text)


# --- running grids through the sweep engine ---------------------------------------------------


@dataclass(frozen=True)
class GridRun:
    """One finished run of :func:`run_grid`: its label, varied values and trajectory dataset."""

    label: str | None
    values: Mapping[str, Any]
    path: Path
    dataset: xr.Dataset

    def value(self, key: str) -> Any:
        """The run's value of a varied key (``"model.init_scale"``, ``"seed"``)."""
        return self.values[key]


def run_grid(
    context: StudyContext,
    name: str,
    base: Mapping[str, Any],
    *,
    grid: Mapping[str, Sequence[Any]] | None = None,
    runs: Sequence[Mapping[str, Any]] | None = None,
) -> list[GridRun]:
    """Execute a grid of runs with :func:`gnflow.sweep.run_sweep` into ``out_dir/<name>``.

    ``base``, ``grid`` and ``runs`` are the ``[base]``, ``[grid]`` and ``[[runs]]`` tables of a
    sweep study file. Runs with a valid file there are not computed again, so an interrupted
    study continues where it stopped.

    Returns
    -------
    list of GridRun
        Every run of the grid with its dataset read back.

    Raises
    ------
    StudyError
        When some run wrote no file (it raised). Runs whose integration failed (too many steps,
        step-size underflow) are returned with their partial trajectory and status.
    """
    from gnflow.study import study_from_dict
    from gnflow.sweep import run_sweep

    definition: dict[str, Any] = {"study": {"name": f"{context.name}-{name}"}, "base": dict(base)}
    if grid:
        definition["grid"] = {k: list(v) for k, v in grid.items()}
    if runs:
        definition["runs"] = [dict(r) for r in runs]
    study = study_from_dict(definition, name=f"{context.name}-{name}")
    folder = context.out_dir / name
    kwargs: dict[str, Any] = {"executor": context.executor, "progress": context.progress}
    if context.executor != "serial":
        kwargs["workers"] = context.workers
    result = run_sweep(study, folder, **kwargs)
    finished: list[GridRun] = []
    for run in study.runs:
        values = dict(run.values)
        label = study.labels[run.index[0]] if study.labels is not None else None
        path = folder / "runs" / f"{run.run_id}.nc"
        if not path.is_file():
            outcome = result.outcomes.get(run.run_id, {})
            raise StudyError(
                f"run {run.run_id} of {name} wrote no file: {outcome.get('status', 'unknown')} "
                f"(see {result.manifest_path})"
            )
        dataset = read_dataset(path)
        status = dataset_result(dataset)
        if status.failed:
            # a run that ran out of steps or horizon is a measurement too (e.g. a slow gradient
            # flow); the study reports its status and where it stopped
            logger.warning(
                "run %s of %s (%s): %s at t = %.6g",
                run.run_id,
                name,
                label or values,
                status,
                float(dataset["t"].values[-1]),
            )
        finished.append(GridRun(label=label, values=values, path=path, dataset=dataset))
    return finished


def select(runs: Sequence[GridRun], label: str | None = None, **values: Any) -> list[GridRun]:
    """The runs with ``label`` whose varied values match ``values`` (keys with ``__`` for ``.``)."""
    wanted = {k.replace("__", "."): v for k, v in values.items()}
    return [
        r for r in runs if (label is None or r.label == label) and all(r.values.get(k) == v for k, v in wanted.items())
    ]


# --- measurements shared by the studies ---------------------------------------------------------


def time_to_level(t: np.ndarray, loss: np.ndarray, level: float) -> float:
    """First flow time at which ``loss`` reaches ``level`` (log-linear interpolation between saved
    times); ``inf`` when it never does.

    Parameters
    ----------
    t:
        Saved flow times, shape (t,), increasing.
    loss:
        Loss at those times, shape (t,), positive.
    level:
        The loss level.
    """
    t = np.asarray(t, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    below = np.nonzero(np.isfinite(loss) & (loss <= level))[0]
    if below.size == 0:
        return float("inf")
    k = int(below[0])
    if k == 0:
        return float(t[0])
    l0, l1 = np.log(loss[k - 1]), np.log(loss[k])
    frac = (l0 - np.log(level)) / (l0 - l1) if l0 != l1 else 1.0
    return float(t[k - 1] + frac * (t[k] - t[k - 1]))


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (NaN with fewer than two positive points)."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = (xa > 0) & (ya > 0) & np.isfinite(ya)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(xa[keep]), np.log(ya[keep]), 1)[0])


def fmt(value: float, digits: int = 3) -> str:
    """A number for a report: ``g`` format with ``digits`` significant digits; inf/nan spelled."""
    if value is None or not np.isfinite(value):
        return "not reached" if value == float("inf") else "nan"
    return f"{value:.{digits}g}"


def save_study_figure(fig: Any, context: StudyContext, name: str) -> Path:
    """Save a figure as ``out_dir/<name>.png`` (atomically) and close it."""
    import matplotlib.pyplot as plt

    from gnflow.plot import save_figure

    try:
        return save_figure(fig, context.out_dir / f"{name}.png", dpi=110)
    finally:
        plt.close(fig)


def _cell(text: object) -> str:
    """A Markdown table cell: pipes escaped, on one line."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Markdown table lines."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def claims_table(report_text: str) -> list[list[str]]:
    """The rows of the claims table of a report as lists of cells (claim number, claim, measured,
    verdict), escaped pipes restored."""
    rows: list[list[str]] = []
    inside = False
    for line in report_text.splitlines():
        if line.startswith("## "):
            inside = line == "## Claims"
            continue
        if inside and line.startswith("| ") and not line.startswith("| # "):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows.append(cells)
    return rows


StudyFunction = Callable[[dict[str, Any], StudyContext], StudyReport]
