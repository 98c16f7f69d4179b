"""Progress bars: where they show by default, and which tqdm draws them.

``progress=None`` (the default of :func:`gnflow.simulate`, sweeps, the measurement pass and
``gnflow plot``) shows a bar when stderr is a terminal or when gnflow runs in a Jupyter kernel;
``True`` and ``False`` force it. In a notebook with ``ipywidgets`` the bar is tqdm's widget,
otherwise tqdm's text bar on stderr, so that importing gnflow never warns about a missing
``IProgress`` (which ``tqdm.auto`` does in a kernel without ipywidgets).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from tqdm.std import tqdm as _text_tqdm

__all__ = ["in_notebook", "progress_bar"]


def in_notebook() -> bool:
    """Whether this process is a Jupyter (IPython) kernel."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_bar(iterable: Any = None, *, enabled: bool | None, **kwargs: Any) -> Any:
    """A tqdm bar (``kwargs`` are tqdm's), shown when ``enabled``, or by default in a terminal or a
    notebook (see the module)."""
    notebook = in_notebook()
    if enabled is None:
        disable: bool | None = False if notebook else None  # None: tqdm's own test, stderr is a TTY
    else:
        disable = not enabled
    if notebook and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as widget_tqdm

        return widget_tqdm(iterable, disable=disable, **kwargs)
    return _text_tqdm(iterable, disable=disable, **kwargs)
