"""Sphinx extension that generates the reference parts of the gnflow documentation.

Everything that the code already states is generated from the code at build time, so the pages
cannot drift from it:

- the config reference from :func:`gnflow.config.config_fields` and the section docstrings;
- the dataset variables from :data:`gnflow.dataset.VARIABLES`, with their dimensions and the
  global attributes taken from a tiny run made during the build;
- the command-line reference from :func:`gnflow.cli.build_parser`;
- the API reference from the public modules of the package;
- one page per study folder ``studies/<name>/README.md``;
- the table of contents of the topic pages: every ``docs/*.md`` that is not a core page is listed,
  so a new page needs no edit elsewhere; a placeholder stands in for ``performance.md`` until
  that page exists.

Generated files go to ``docs/_generated/`` (not tracked): pages under it are documents, the
fragments under ``_generated/include/`` are pulled into the hand-written pages with ``{include}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import pkgutil
import re
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"
FRAGMENTS = GENERATED / "include"

#: Hand-written pages with a fixed place in the table of contents; every other docs/*.md is a
#: topic page and is listed automatically.
CORE_PAGES = ("index", "getting_started", "mathematics", "dataset", "config", "cli", "plotting", "studies", "api")

#: Meaning of the global attributes of a trajectory file (docs/dataset.md, as gnflow.run writes them).
ATTRIBUTE_DOCS = {
    "Conventions": "CF conventions version the file follows",
    "title": "one-line description of the run",
    "institution": "producer of the file",
    "source": "versions of gnflow, torch, torchdiffeq and Python that wrote the file",
    "history": "UTC time and command that created the file (later tools append lines)",
    "references": "the papers the flows come from",
    "date_created": "UTC creation time (ISO 8601)",
    "gnflow_version": "gnflow version that wrote the file",
    "gnflow_config": "the full resolved run config as a JSON string (read it with `gnflow.dataset.dataset_config`)",
    "gnflow_flow": "the flow and its damping",
    "gnflow_solver": "the ODE method and its tolerances or step size",
    "gnflow_status": "`completed` (reached t_end), `converged` (stopped on the loss ratio) or `failed: <reason>`",
    "gnflow_wall_time_s": "wall-clock time of the integration, seconds",
    "gnflow_init_from": "the file a run started from (model.init_from), when it did",
    "gnflow_init_from_t": "flow time of the start state in that file",
    "gnflow_init_from_sha256": "SHA-256 of that file when the run started",
    "gnflow_threads": "torch CPU threads the run used (compute.threads, or the free cores)",
    "gnflow_cpu_time_s": "processor time of the integration (this process, all threads), seconds",
    "gnflow_nfe": "total number of vector-field evaluations",
    "gnflow_steps": "total number of accepted solver steps",
    "gnflow_rejected_steps": "total number of rejected solver steps",
    "gnflow_device": "torch device of the run",
    "gnflow_dtype": "dtype of the state (Gram solves are float64 always)",
    "gnflow_data": "where the data came from",
}


def _write(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (keeps incremental builds incremental)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def _cell(text: Any) -> str:
    """Text for one cell of a Markdown table."""
    return " ".join(str(text).split()).replace("|", "\\|")


# --- config reference ---------------------------------------------------------------------------


def _attribute_docs(cls: type) -> dict[str, str]:
    """Descriptions of the ``Attributes`` section of a NumPy docstring, by attribute name."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    docs: dict[str, str] = {}
    try:
        start = next(
            k
            for k, line in enumerate(lines[:-1])
            if line.strip() == "Attributes" and set(lines[k + 1].strip()) == {"-"}
        )
    except StopIteration:
        return docs
    names: list[str] = []
    text: list[str] = []

    def flush() -> None:
        for name in names:
            docs[name] = " ".join(text)

    for line in lines[start + 2 :]:
        if line and not line[0].isspace():
            if line.rstrip().endswith("-" * 3):
                break
            flush()
            names = [n.strip() for n in line.split(":")[0].split(",") if n.strip()]
            text = []
        elif line.strip():
            text.append(line.strip())
    flush()
    return docs


def _toml_value(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(json.dumps(v) for v in value) + "]`"
    return f"`{value!r}`"


def config_sections() -> list[tuple[str, type]]:
    """(section name, dataclass) of the run config: ``""`` for the top level, then each table."""
    from gnflow.config import RunConfig

    hints = typing.get_type_hints(RunConfig)
    sections: list[tuple[str, type]] = [("", RunConfig)]
    for f in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            sections.append((f.name, hints[f.name]))
    return sections


def config_reference() -> str:
    """Markdown tables of every config key: type and allowed values, default, description.

    Keys that take registered names (``flow.kind``, ``flow.damping``, ``data.kind``,
    ``observe.names``) list what the registries of :mod:`gnflow.registry` hold once ``gnflow`` is
    imported, as :func:`gnflow.config.config_fields` reports them.
    """
    import gnflow  # noqa: F401  (imports every module that registers a flow, damping, data kind or observable)
    from gnflow.config import config_fields

    docs = {section: _attribute_docs(cls) for section, cls in config_sections()}
    summaries = {section: inspect.cleandoc(cls.__doc__ or "").splitlines()[0] for section, cls in config_sections()}
    rows_by_section: dict[str, list[str]] = {}
    for key, type_name, default, section in config_fields():
        name = key.split(".", 1)[1] if section else key
        description = docs.get(section, {}).get(name, "")
        rows_by_section.setdefault(section, []).append(
            f"| `{key}` | {_cell(type_name)} | {_toml_value(default)} | {_cell(description) or '—'} |"
        )
    out: list[str] = []
    for section, _ in config_sections():
        title = "Top-level keys" if not section else f"`[{section}]`"
        out += [f"## {title}", "", _cell(summaries[section]), ""]
        out += ["| key | type and allowed values | default | meaning |", "|---|---|---|---|"]
        out += rows_by_section.get(section, [])
        out.append("")
    return "\n".join(out)


# --- dataset reference --------------------------------------------------------------------------


def sample_dataset() -> Any:
    """A tiny run with every registered observable, written and read back like a user's file."""
    from gnflow.config import config_from_dict, observable_names
    from gnflow.dataset import read_dataset
    from gnflow.simulation import run

    config = config_from_dict(
        {
            "seed": 1,
            "device": "cpu",
            "data": {"input_dim": 2, "teacher_width": 2, "n_train": 6, "n_test": 8},
            "model": {"width": 4, "output_init": "zero"},
            "observe": {"names": list(observable_names())},
            "solver": {"method": "euler", "step_size": 0.5, "t_end": 1.0, "n_save": 3, "save_spacing": "linear"},
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        _, path = run(config, path=Path(folder) / "sample.nc", progress=False)
        return read_dataset(path)


def dataset_reference(ds: Any) -> dict[str, str]:
    """Fragments ``variables.md``, ``attributes.md`` and ``dataset_repr.md`` from VARIABLES and ``ds``."""
    import xarray as xr

    from gnflow.dataset import VARIABLES

    rows = ["| variable | dimensions | long_name | units | description, comment |", "|---|---|---|---|---|"]
    for name, info in VARIABLES.items():
        if name in ds.variables:
            dims = ", ".join(f"`{d}`" for d in ds[name].dims)
        else:
            dims = "(depends on the option that adds it)"
        notes = "; ".join(text for text in (info.description, info.comment) if text)
        rows.append(f"| `{name}` | {dims} | {_cell(info.long_name)} | `{info.units}` | {_cell(notes) or '—'} |")
    undocumented = sorted(str(n) for n in ds.variables if str(n) not in VARIABLES)
    for name in undocumented:
        attrs = ds[name].attrs
        notes = "; ".join(str(attrs[key]) for key in ("description", "comment") if attrs.get(key))
        rows.append(
            f"| `{name}` | {', '.join(f'`{d}`' for d in ds[name].dims)} | {_cell(attrs.get('long_name', ''))} "
            f"| `{attrs.get('units', '')}` | {_cell(notes) or '—'} |"
        )
    attributes = ["| attribute | meaning | example |", "|---|---|---|"]
    for key, value in ds.attrs.items():
        example = str(value)
        example = example if len(example) <= 60 else example[:57] + "..."
        attributes.append(f"| `{key}` | {_cell(ATTRIBUTE_DOCS.get(key, '—'))} | {_cell(example.replace('`', ''))} |")
    dims = ["| dimension | size in this example | meaning |", "|---|---|---|"]
    meaning = {
        "t": "saved flow times",
        "particle": "hidden neurons of the student (M)",
        "component": "components of a particle: u0..u{d-1}, b, v (d + 2)",
        "sample": "training points (N)",
        "test_sample": "test points",
        "input_dim": "input dimension d",
        "teacher_particle": "hidden neurons of the teacher (teacher–student data only)",
    }
    for name, size in ds.sizes.items():
        dims.append(f"| `{name}` | {size} | {_cell(meaning.get(str(name), '—'))} |")
    with xr.set_options(display_width=100, display_max_rows=40):
        text = repr(ds)
    return {
        "variables.md": "\n".join(rows) + "\n",
        "attributes.md": "\n".join(attributes) + "\n",
        "dimensions.md": "\n".join(dims) + "\n",
        "dataset_repr.md": "```text\n" + text + "\n```\n",
    }


# --- command line -------------------------------------------------------------------------------


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def cli_reference() -> str:
    """``--help`` of ``gnflow`` and of each of its commands, as Markdown sections."""
    import argparse

    from gnflow.cli import build_parser

    with _columns(100):
        parser = build_parser()
        out = ["## `gnflow`", "", "```text", parser.format_help().rstrip(), "```", ""]
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in actions:
            for name, sub in action.choices.items():
                out += [f"## `gnflow {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


# --- API ----------------------------------------------------------------------------------------


def public_modules() -> list[str]:
    """The modules of the gnflow package that are documented (not private, not ``__main__``)."""
    import gnflow

    names = []
    for module in pkgutil.walk_packages(gnflow.__path__, "gnflow."):
        parts = module.name.split(".")
        if any(p.startswith("_") for p in parts):
            continue
        names.append(module.name)
    return sorted(names)


def api_reference() -> str:
    """The top-level names with links, then ``automodule`` of every public module."""
    import gnflow

    out = ["## The `gnflow` namespace", "", "| name | defined in | summary |", "|---|---|---|"]
    for name in gnflow.__all__:
        obj = getattr(gnflow, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        module = obj.__module__
        summary = inspect.cleandoc(obj.__doc__ or "").split("\n\n")[0]
        out.append(f"| {{py:obj}}`{name} <{module}.{name}>` | `{module}` | {_cell(summary)} |")
    out.append("")
    for module_name in public_modules():
        importlib.import_module(module_name)
        # autodoc emits reStructuredText, so it runs inside eval-rst rather than as a MyST directive
        out += [f"## `{module_name}`", "", "```{eval-rst}", f".. automodule:: {module_name}", "   :members:", "```", ""]
    return "\n".join(out)


# --- studies and topic pages --------------------------------------------------------------------

_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _study_page(name: str, readme: Path) -> str:
    """The README of ``studies/<name>`` with links rewritten for the documentation site.

    Links to web pages and anchors are kept. A link to a file of the repository becomes its path
    in code style (the site does not host those files); an image that exists is embedded from its
    place in the repository, one that does not (figures a study writes into data/) is named.
    """
    folder = readme.parent

    def rewrite(match: re.Match[str]) -> str:
        bang, text, target = match.groups()
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            return match.group(0)
        resolved = (folder / target).resolve()
        try:
            shown = resolved.relative_to(ROOT).as_posix()
        except ValueError:
            shown = target
        if bang:
            if resolved.is_file():
                return f"![{text}]({os.path.relpath(resolved, GENERATED / 'studies')})"
            return f"*(figure `{shown}`, written when the study is run)*"
        return f"{text} (`{shown}`)" if text and text != shown else f"`{shown}`"

    text = _LINK.sub(rewrite, readme.read_text())
    if not re.match(r"^#\s", text.lstrip()):
        text = f"# Study `{name}`\n\n{text}"
    return text


def write_generated() -> None:
    """Write every generated page and fragment under docs/_generated."""
    FRAGMENTS.mkdir(parents=True, exist_ok=True)
    _write(FRAGMENTS / "config_reference.md", config_reference())
    _write(FRAGMENTS / "cli_reference.md", cli_reference())
    _write(FRAGMENTS / "api_reference.md", api_reference())
    for name, text in dataset_reference(sample_dataset()).items():
        _write(FRAGMENTS / name, text)

    studies = sorted(p for p in (ROOT / "studies").glob("*/README.md")) if (ROOT / "studies").is_dir() else []
    wanted = {f"{p.parent.name}.md" for p in studies}
    study_dir = GENERATED / "studies"
    study_dir.mkdir(parents=True, exist_ok=True)
    for stale in study_dir.glob("*.md"):
        if stale.name not in wanted:
            stale.unlink()
    for readme in studies:
        _write(study_dir / f"{readme.parent.name}.md", _study_page(readme.parent.name, readme))
    if studies:
        entries = "\n".join(f"_generated/studies/{p.parent.name}" for p in studies)
        toc = f"```{{toctree}}\n:maxdepth: 1\n\n{entries}\n```\n"
    else:
        toc = "No study folder (`studies/<name>/README.md`) is present in this source tree.\n"
    _write(FRAGMENTS / "studies_toc.md", toc)

    topics = sorted(p.stem for p in DOCS.glob("*.md") if p.stem not in CORE_PAGES)
    placeholder = GENERATED / "performance.md"
    if "performance" not in topics:
        _write(
            placeholder,
            "# Performance\n\n"
            "The benchmark table (vector-field evaluations per second and memory of the Gauss–Newton\n"
            "and gradient flows, as ratios against a baseline measured in the same run) appears here\n"
            "once `docs/performance.md` is part of the source tree.\n",
        )
        topics.append("_generated/performance")
    elif placeholder.exists():
        placeholder.unlink()
    _write(
        FRAGMENTS / "topics_toc.md", "```{toctree}\n:maxdepth: 2\n:caption: Topics\n\n" + "\n".join(topics) + "\n```\n"
    )


def _builder_inited(app: Any) -> None:
    write_generated()


def setup(app: Any) -> dict[str, Any]:
    """Register the generator with Sphinx."""
    app.connect("builder-inited", _builder_inited)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
