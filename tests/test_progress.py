"""Progress bars show by default in a terminal or a Jupyter kernel, never warn about IProgress, and
importing gnflow loads neither POT nor tqdm.auto."""

from __future__ import annotations

import subprocess
import sys
import types

from tqdm.std import tqdm as text_tqdm

import gnflow._progress as progress


def _fake_kernel(monkeypatch, kernel: bool) -> None:
    shell = types.SimpleNamespace(config={"IPKernelApp": {}} if kernel else {"TerminalIPythonApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))


def test_outside_a_kernel_the_bar_follows_the_terminal(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not progress.in_notebook()
    bar = progress.progress_bar(range(3), enabled=None)
    assert isinstance(bar, text_tqdm) and bar.disable  # pytest's stderr is not a terminal
    assert not progress.progress_bar(range(3), enabled=True).disable


def test_in_a_kernel_the_bar_shows_by_default_and_without_widgets_is_text(monkeypatch):
    _fake_kernel(monkeypatch, kernel=True)
    monkeypatch.setattr(progress.importlib.util, "find_spec", lambda name: None)
    assert progress.in_notebook()
    bar = progress.progress_bar(range(3), enabled=None)
    assert type(bar) is text_tqdm and not bar.disable
    assert progress.progress_bar(range(3), enabled=False).disable
    _fake_kernel(monkeypatch, kernel=False)  # a terminal IPython is not a kernel
    assert not progress.in_notebook()


def test_import_gnflow_leaves_pot_and_tqdm_auto_unloaded():
    names = "('ot', 'sklearn', 'tqdm.auto', 'matplotlib')"
    code = f"import sys, gnflow; print(sorted(m for m in {names} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert "IProgress" not in out.stderr
