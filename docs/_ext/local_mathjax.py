"""Sphinx extension that serves MathJax from the built site, so that its math renders offline.

``sphinx.ext.mathjax`` links MathJax from a CDN by default; without a network every formula stays
TeX source. This extension copies MathJax 3 from the Python package ``django-static-mathjax``
(the ``docs`` extra; it installs the top-level package ``mathjax`` with MathJax's files under
``mathjax/static/mathjax/``) into ``_static/mathjax/`` of the built site, and ``conf.py`` points
``mathjax_path`` there. Only what the pages need is copied (about 2 MB): the ``tex-chtml.js``
bundle, the TeX extensions it loads on demand (``\\boldsymbol``, ``\\cancel``, ...), the CHTML
web fonts and MathJax's license.

When the package is missing the build warns (an error under ``-W``) and falls back to the CDN, so
an online build without the docs extra still shows math.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

#: ``mathjax_path`` of the site: relative, so Sphinx resolves it inside the built ``_static/``.
LOCAL_PATH = "mathjax/tex-chtml.js"
#: The same MathJax component from the CDN, used only when the package is not installed.
CDN_URL = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"
#: What the site needs, relative to MathJax's ``es5/`` folder (and to ``_static/mathjax/``).
FILES = ("tex-chtml.js",)
FOLDERS = ("input/tex/extensions", "output/chtml/fonts/woff-v2")


def mathjax_source() -> Path | None:
    """MathJax's ``es5/`` folder in the installed ``django-static-mathjax``, or None."""
    try:
        spec = importlib.util.find_spec("mathjax")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        es5 = Path(location) / "static" / "mathjax" / "es5"
        if (es5 / FILES[0]).is_file():
            return es5
    return None


def copy_mathjax(static: Path, source: Path | None = None) -> Path:
    """Copy the MathJax files the pages use into ``static/mathjax/``; return that folder."""
    source = source or mathjax_source()
    if source is None:
        raise FileNotFoundError("MathJax is not installed: pip install django-static-mathjax (the docs extra)")
    target = static / "mathjax"
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(source / name, target / name)
    for folder in FOLDERS:
        shutil.copytree(source / folder, target / folder, dirs_exist_ok=True)
    license_file = source.parent / "LICENSE"
    if license_file.is_file():
        shutil.copy2(license_file, target / "LICENSE")
    return target


def _config_inited(app: Any, config: Any) -> None:
    from sphinx.util import logging

    if "://" in config.mathjax_path or config.mathjax_path.startswith("//"):
        return  # a remote MathJax chosen on purpose: nothing to copy
    if mathjax_source() is None:
        logging.getLogger(__name__).warning(
            "MathJax for offline pages is not installed (pip install -e '.[docs]' installs "
            "django-static-mathjax); the pages load it from %s instead",
            CDN_URL,
        )
        config.mathjax_path = CDN_URL


def _build_finished(app: Any, exception: BaseException | None) -> None:
    if exception is not None or app.builder.format != "html" or "://" in app.config.mathjax_path:
        return
    copy_mathjax(Path(app.outdir) / "_static")


def setup(app: Any) -> dict[str, Any]:
    """Register the copy step with Sphinx (after ``sphinx.ext.mathjax`` has its config values)."""
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("config-inited", _config_inited)
    app.connect("build-finished", _build_finished)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
