"""Sphinx configuration of the gnflow documentation.

Build with warnings as errors (what CI does):

    sphinx-build -W -b html docs docs/_build/html

The built site needs no network: MathJax is copied into it (``_ext/local_mathjax.py``).

The reference pages (config keys, dataset variables, command line, API, studies) are generated
from the code at build time by the local extension ``_ext/gnflow_docs.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # document this source tree, not another installed copy
sys.path.insert(0, str(DOCS / "_ext"))

import local_mathjax  # noqa: E402

import gnflow  # noqa: E402

project = "gnflow"
author = "gnflow developers"
copyright = "gnflow developers"
release = gnflow.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "local_mathjax",
    "gnflow_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated/include", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# MathJax 3 is served by the site itself, so the math renders offline: _ext/local_mathjax.py copies
# it from the django-static-mathjax package (docs extra) into _static/mathjax/ of the build; a
# relative mathjax_path is resolved inside _static/. myst-parser adds its processHtmlClass option
# to the MathJax 3 config.
mathjax_path = local_mathjax.LOCAL_PATH  # "mathjax/tex-chtml.js"
mathjax3_config: dict = {"options": {}}

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

html_theme = "pydata_sphinx_theme"
html_title = f"gnflow {release}"
html_static_path = ["_static"]
html_css_files = ["gnflow.css"]  # a wider content column, for --help output and code blocks
html_theme_options = {
    "navigation_with_keys": False,
    "show_prev_next": True,
    "secondary_sidebar_items": ["page-toc"],
}
html_last_updated_fmt = None
