"""The documentation site builds with warnings as errors and covers the code it documents.

The site is built once, from a copy of docs/ beside a link to this package, with one extra topic
page (``performance.md``) and one study folder that no hand-written page mentions: both must appear
in the built site, which is how pages added later join it without edits. Skipped only when the
documentation tools (the ``docs`` extra) are not installed.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gnflow
from gnflow.config import config_fields

ROOT = Path(__file__).resolve().parents[1]
DOCS_TOOLS = ("sphinx", "myst_parser", "pydata_sphinx_theme", "mathjax")  # mathjax: django-static-mathjax


def _text(page: Path) -> str:
    """Visible text of an HTML page (tags removed, whitespace collapsed)."""
    source = re.sub(r"<(script|style)\b.*?</\1>", " ", page.read_text(), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", source)))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in DOCS_TOOLS:
        if importlib.util.find_spec(tool) is None:
            pytest.skip(f"{tool} is not installed (pip install -e '.[docs]')")
    work = tmp_path_factory.mktemp("docs-site")
    shutil.copytree(ROOT / "docs", work / "docs", ignore=shutil.ignore_patterns("_build", "_generated"))
    (work / "gnflow").symlink_to(ROOT / "gnflow", target_is_directory=True)
    (work / "docs" / "performance.md").write_text(
        "# Performance\n\n| case | ratio |\n|---|---|\n| structured Gram | 7.5 |\n"
    )
    study = work / "studies" / "toy_study"
    study.mkdir(parents=True)
    (study / "README.md").write_text(
        "# Toy study\n\nRun [the script](run.py) with [its config](toy.toml), then read\n"
        "![the figure](../../data/studies/toy_study/losses.png) and [the paper](https://arxiv.org/abs/2302.02904).\n"
    )
    out = work / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(work / "docs"), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stdout}\n{result.stderr}"
    assert "WARNING" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    return out


def test_site_has_every_page(site: Path) -> None:
    for page in ("index", "getting_started", "mathematics", "dataset", "config", "cli", "plotting", "studies", "api"):
        assert (site / f"{page}.html").is_file(), page
    assert (site / "_static" / "default_run.png").is_file()


def test_pages_load_mathjax_from_the_site_itself(site: Path) -> None:
    """Math renders offline: no page loads a script from another host, MathJax is in _static/."""
    pages = [p for p in site.rglob("*.html") if "_static" not in p.parts]
    sources = {src for page in pages for src in re.findall(r'<script[^>]*\bsrc="([^"]+)"', page.read_text())}
    assert not [src for src in sources if "//" in src], sources
    assert any(src.endswith("_static/mathjax/tex-chtml.js") for src in sources)
    mathjax = site / "_static" / "mathjax"
    assert (mathjax / "tex-chtml.js").is_file()
    assert (mathjax / "output" / "chtml" / "fonts" / "woff-v2" / "MathJax_Main-Regular.woff").is_file()
    assert (mathjax / "input" / "tex" / "extensions" / "boldsymbol.js").is_file()


def test_new_topic_page_replaces_the_placeholder_and_is_linked(site: Path) -> None:
    index = (site / "index.html").read_text()
    assert 'href="performance.html"' in index
    assert "structured Gram" in _text(site / "performance.html")
    assert not (site / "_generated" / "performance.html").exists()


def test_study_readme_becomes_a_page(site: Path) -> None:
    page = site / "_generated" / "studies" / "toy_study.html"
    assert page.is_file()
    assert "_generated/studies/toy_study.html" in (site / "studies.html").read_text()
    text = _text(page)
    # links to repository files become their paths; the figure a study writes later is named
    assert "studies/toy_study/run.py" in text and "studies/toy_study/toy.toml" in text
    assert "data/studies/toy_study/losses.png" in text
    assert 'href="https://arxiv.org/abs/2302.02904"' in page.read_text()


def _first_column_codes(page: Path) -> list[str]:
    """The code spans that open a table row: the keys/names of the reference tables."""
    pattern = r'<tr[^>]*>\s*<td[^>]*>\s*<p>\s*<code[^>]*>\s*<span class="pre">([^<]+)</span>'
    return [html.unescape(m) for m in re.findall(pattern, page.read_text())]


def test_every_config_key_is_in_the_reference_with_a_description(site: Path) -> None:
    documented = _first_column_codes(site / "config.html")
    keys = [key for key, *_ in config_fields()]
    assert sorted(documented) == sorted(keys)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", (site / "config.html").read_text(), flags=re.S)
    for row in rows[1:]:
        cells = [_cell.strip() for _cell in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)]
        if cells:
            meaning = re.sub(r"<[^>]+>", "", cells[-1]).strip()
            assert meaning not in ("", "—"), f"config key without a description: {cells[0]}"


def test_every_dataset_variable_is_in_the_reference(site: Path) -> None:
    from gnflow.dataset import VARIABLES

    documented = set(_first_column_codes(site / "dataset.html"))
    assert set(VARIABLES) <= documented


def test_every_command_is_in_the_cli_reference(site: Path) -> None:
    import argparse

    from gnflow.cli import build_parser

    page = (site / "cli.html").read_text()
    parser = build_parser()
    commands = [
        name for action in parser._actions if isinstance(action, argparse._SubParsersAction) for name in action.choices
    ]
    assert {"run", "info", "plot"} <= set(commands)
    for name in commands:
        assert f'id="gnflow-{name}"' in page, name


def test_every_public_module_is_in_the_api_reference(site: Path) -> None:
    import pkgutil

    page = (site / "api.html").read_text()
    modules = [
        m.name
        for m in pkgutil.walk_packages(gnflow.__path__, "gnflow.")
        if not any(p.startswith("_") for p in m.name.split("."))
    ]
    assert "gnflow.plot" in modules
    for name in modules:
        assert f'id="module-{name}"' in page, name
    for name in gnflow.__all__:
        obj = getattr(gnflow, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert f'id="{obj.__module__}.{name}"' in page, name


def _public_objects() -> list[tuple[str, object]]:
    """Every class and function that gnflow or one of its public modules exports."""
    import pkgutil

    found: dict[str, object] = {}
    modules = [gnflow] + [
        importlib.import_module(m.name)
        for m in pkgutil.walk_packages(gnflow.__path__, "gnflow.")
        if not any(p.startswith("_") for p in m.name.split("."))
    ]
    for module in modules:
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return sorted(found.items())


def test_every_public_function_and_class_has_a_docstring() -> None:
    objects = _public_objects()
    assert any(name == "gnflow.plot.plot_run" for name, _ in objects)
    missing = [name for name, obj in objects if not (obj.__doc__ or "").strip()]
    assert not missing, f"public objects without a docstring: {missing}"


def test_public_methods_have_docstrings() -> None:
    missing = []
    for name, obj in _public_objects():
        if not inspect.isclass(obj):
            continue
        for attr, member in vars(obj).items():
            if attr.startswith("_"):
                continue
            function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
            if (
                inspect.isfunction(function)
                and function.__module__.startswith("gnflow")
                and not (function.__doc__ or "").strip()
            ):
                missing.append(f"{name}.{attr}")
    assert not missing, f"public methods without a docstring: {missing}"
