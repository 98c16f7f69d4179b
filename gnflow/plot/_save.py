"""Writing a figure atomically in one of the supported formats."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from gnflow.dataset import atomic_write

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def save_figure(fig: Figure, path: str | Path, *, dpi: float = 120) -> Path:
    """Write ``fig`` atomically (temporary file in the same folder, then rename).

    The format follows the suffix: one of ``.png``, ``.pdf``, ``.svg``. Returns the path written.
    """
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise ValueError(f"{path}: unsupported figure format; the name must end in {', '.join(FIGURE_SUFFIXES)}")
    return atomic_write(path, lambda name: fig.savefig(name, dpi=dpi, format=path.suffix.lower().lstrip(".")))
