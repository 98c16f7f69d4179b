"""The report of a study: its claims with their verdicts, and the Markdown file ``report.md``.

A :class:`Claim` states what a paper claims, the numbers measured for it and a verdict; a
comparative claim carries the :class:`gnflow.verdicts.PairedComparison` (or several) that decided
it, whose interval and seed count go into the measured cell. :func:`write_report` writes the
claims table, the measurements, the setup, further sections and the figures, and, when any claim
was decided by paired ratios, the rule (:data:`gnflow.verdicts.VERDICT_RULE`) in a section "How
verdicts are decided". :func:`claims_table` reads the claims table back (from reports of any
version: the verdict cell is returned as written). The names are importable from
:mod:`gnflow.studies` too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gnflow.dataset import atomic_write_text
from gnflow.verdicts import VERDICT_RULE, PairedComparison

__all__ = [
    "VERDICTS",
    "Claim",
    "StudyError",
    "StudyReport",
    "claims_table",
    "table",
    "write_report",
]

#: ``"contradicted"``: the paired-ratio interval excludes 1 against the claim (a comparative claim);
#: ``"not supported"``: a claim that is not a paired comparison (an order of convergence, a trend)
#: failed its stated test.
Verdict = Literal["supported", "contradicted", "not supported", "inconclusive"]
VERDICTS: tuple[str, ...] = ("supported", "contradicted", "not supported", "inconclusive")
VERDICTS_SECTION = "How verdicts are decided"

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
        The numbers measured for it (must contain at least one number unless ``comparison`` is
        given, whose summaries are appended to it in the report).
    verdict:
        One of :data:`VERDICTS`. With a single comparison and no ``qualifier`` it must be the
        comparison's verdict.
    note:
        Why the verdict, in particular what made it inconclusive (optional).
    comparison:
        The paired comparison that decided the claim, or a tuple of them (e.g. one per tau0),
        None for a claim that is not a paired comparison.
    qualifier:
        Written after the verdict in parentheses, e.g. ``"hardware"`` for
        ``inconclusive (hardware)``: a claim the machine that ran it cannot decide.
    """

    statement: str
    measured: str
    verdict: Verdict
    note: str = ""
    comparison: PairedComparison | tuple[PairedComparison, ...] | None = None
    qualifier: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")
        if not _NUMBER.search(self.measured_cell):
            raise ValueError(f"claim {self.statement!r}: the measured text holds no number: {self.measured!r}")
        single = self.comparisons[0] if len(self.comparisons) == 1 else None
        if single is not None and not self.qualifier and single.verdict != self.verdict:
            raise ValueError(
                f"claim {self.statement!r}: verdict {self.verdict!r} differs from its comparison's "
                f"{single.verdict!r}; give the comparison's verdict, or a qualifier saying why not"
            )

    @property
    def comparisons(self) -> tuple[PairedComparison, ...]:
        """The paired comparisons of the claim (empty for a claim that is not one)."""
        if self.comparison is None:
            return ()
        return self.comparison if isinstance(self.comparison, tuple) else (self.comparison,)

    @property
    def measured_cell(self) -> str:
        """The measured cell of the claims table: ``measured`` and each comparison's summary."""
        comparisons = self.comparisons
        parts = [self.measured] if self.measured else []
        if len(comparisons) == 1:
            parts.append(comparisons[0].summary())
        else:
            parts += [f"{c.claim}: {c.summary()}" for c in comparisons]
        return "; ".join(parts)

    @property
    def verdict_cell(self) -> str:
        """The verdict cell: the verdict, and the qualifier in parentheses."""
        return f"{self.verdict} ({self.qualifier})" if self.qualifier else self.verdict


@dataclass
class StudyReport:
    """What a study script returns: claims, measurements, figures and the description of its setting.

    Attributes
    ----------
    title:
        Report title (the paper and the experiment, or what the benchmark measures).
    setup:
        Markdown lines describing the runs of this scale (sizes, horizons, solvers).
    claims:
        The claims with their measurements and verdicts (may be empty for a benchmark).
    figures:
        Figure files (in the output folder) with a caption each.
    sections:
        Further Markdown sections: heading -> lines (tables of measured numbers, caveats).
    measurements:
        Markdown lines of the ``Measurements`` section (the measured tables of a benchmark),
        written right after the claims.
    verdict_note:
        What the study adds to :data:`gnflow.verdicts.VERDICT_RULE` for all of its claims (the seed
        count, how rows combine). A non-empty note writes the section "How verdicts are decided"
        even when the claims carry their comparisons as text, so that the rule is stated once.
    """

    title: str
    setup: list[str]
    claims: list[Claim]
    figures: list[tuple[Path, str]] = field(default_factory=list)
    sections: dict[str, list[str]] = field(default_factory=dict)
    measurements: list[str] = field(default_factory=list)
    verdict_note: str = ""


def write_report(
    path: str | Path,
    report: StudyReport,
    *,
    name: str,
    scale: str,
    wall_time_s: float,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """Write the Markdown report: claims table (claim, measured, verdict), measurements, setup, figures.

    The claims table has one row per claim, ``| k | claim | measured | verdict |``; its verdict
    cell is one of :data:`VERDICTS`, followed by the claim's qualifier in parentheses when it has
    one. When a claim was decided by paired ratios the report has a section "How verdicts are
    decided" with :data:`gnflow.verdicts.VERDICT_RULE`. A report without claims (a benchmark) has
    no claims table and must have measurements.
    """
    path = Path(path)
    if not report.claims and not report.measurements:
        raise StudyError(f"study {name} ({scale}) reported neither claims nor measurements")
    given = ", ".join(f"{k}={v}" for k, v in (options or {}).items())
    command = f"`gnflow study {name} --scale {scale}`"
    by = f"study options {given}; written by `gnflow.studies.run_study`" if given else f"written by {command}"
    lines = [
        f"# {report.title}",
        "",
        f"Study `{name}`, scale `{scale}`; {by} in {wall_time_s:.0f} s of wall-clock time.",
    ]
    if report.claims:
        lines += ["", "## Claims", "", "| # | claim | measured | verdict |", "|---|---|---|---|"]
    for k, claim in enumerate(report.claims, start=1):
        cells = [str(k), claim.statement, claim.measured_cell, claim.verdict_cell]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    notes = [(k, c.note) for k, c in enumerate(report.claims, start=1) if c.note]
    if notes:
        lines += ["", *[f"- Claim {k}: {note}" for k, note in notes]]
    if report.verdict_note or any(c.comparisons for c in report.claims):
        rule = f"{VERDICT_RULE} {report.verdict_note}" if report.verdict_note else VERDICT_RULE
        lines += ["", f"## {VERDICTS_SECTION}", "", rule]
    if report.measurements:
        lines += ["", "## Measurements", "", *report.measurements]
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
    verdict), escaped pipes restored. The verdict cell is returned as written: one of
    :data:`VERDICTS` (``not supported`` in reports written before ``contradicted`` existed),
    possibly followed by a qualifier in parentheses."""
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
