"""The documentation renders its math without a network: MathJax is served by the site itself.

``docs/conf.py`` points ``mathjax_path`` at ``_static/mathjax/tex-chtml.js`` and the local
extension ``docs/_ext/local_mathjax.py`` copies MathJax 3 there from the ``django-static-mathjax``
package (docs and test extras). These checks are fast: the configuration is read without Sphinx,
and a one-page site is built instead of the whole documentation (``tests/test_docs.py`` builds
that and checks its pages too). Those that need Sphinx or the MathJax package skip, saying which,
when it is not installed.
"""

from __future__ import annotations

import importlib.util
import re
import runpy
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _local_mathjax() -> ModuleType:
    """The docs' local extension, loaded from its file (docs/_ext is not on sys.path)."""
    spec = importlib.util.spec_from_file_location("local_mathjax", DOCS / "_ext" / "local_mathjax.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _conf() -> dict:
    """The settings of docs/conf.py (it puts the source tree and docs/_ext on sys.path: undone)."""
    saved = list(sys.path)
    try:
        return runpy.run_path(str(DOCS / "conf.py"))
    finally:
        sys.path[:] = saved


def _mathjax_installed() -> ModuleType:
    module = _local_mathjax()
    if module.mathjax_source() is None:
        pytest.skip("django-static-mathjax is not installed (pip install -e '.[docs]')")
    return module


def _is_remote(path: str) -> bool:
    return "//" in path


def test_conf_serves_mathjax_from_the_site() -> None:
    conf = _conf()
    assert "local_mathjax" in conf["extensions"]
    assert not _is_remote(conf["mathjax_path"]), conf["mathjax_path"]
    assert conf["mathjax_path"] == _local_mathjax().LOCAL_PATH
    assert isinstance(conf.get("mathjax3_config"), dict)  # the copied MathJax is version 3


def test_copy_step_provides_the_file_mathjax_path_names(tmp_path: Path) -> None:
    local_mathjax = _mathjax_installed()
    static = tmp_path / "_static"
    local_mathjax.copy_mathjax(static)
    assert (static / _conf()["mathjax_path"]).is_file()
    fonts = static / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert (fonts / "MathJax_Main-Regular.woff").is_file()
    assert (static / "mathjax" / "input" / "tex" / "extensions" / "boldsymbol.js").is_file()
    assert (static / "mathjax" / "LICENSE").is_file()
    size = sum(f.stat().st_size for f in static.rglob("*") if f.is_file())
    assert size < 4e6, f"{size} bytes copied: only the files the pages need should be"


def test_missing_package_falls_back_to_the_cdn_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sphinx", reason="sphinx is not installed (pip install -e '.[docs]')")
    local_mathjax = _local_mathjax()
    monkeypatch.setattr(local_mathjax, "mathjax_source", lambda: None)
    warnings: list[str] = []
    from sphinx.util import logging

    monkeypatch.setattr(logging.SphinxLoggerAdapter, "warning", lambda self, msg, *a, **k: warnings.append(msg % a))
    config = SimpleNamespace(mathjax_path=local_mathjax.LOCAL_PATH)
    local_mathjax._config_inited(None, config)
    assert config.mathjax_path == local_mathjax.CDN_URL
    assert warnings and "django-static-mathjax" in warnings[0]


def test_built_page_loads_only_the_local_mathjax(tmp_path: Path) -> None:
    pytest.importorskip("sphinx", reason="sphinx is not installed (pip install -e '.[docs]')")
    _mathjax_installed()
    conf = _conf()
    source = tmp_path / "src"
    source.mkdir()
    (source / "conf.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(DOCS / '_ext')!r})\n"
        "extensions = ['sphinx.ext.mathjax', 'local_mathjax']\n"
        f"mathjax_path = {conf['mathjax_path']!r}\n"
        f"mathjax3_config = {conf['mathjax3_config']!r}\n"
    )
    (source / "index.rst").write_text("Math\n====\n\nThe loss :math:`L = \\frac{1}{2N} \\|r\\|^2`.\n")
    out = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(source), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    page = (out / "index.html").read_text()
    scripts = re.findall(r'<script[^>]*\bsrc="([^"]+)"', page)
    assert "_static/mathjax/tex-chtml.js" in scripts
    assert not [src for src in scripts if _is_remote(src)], scripts
    assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file()
