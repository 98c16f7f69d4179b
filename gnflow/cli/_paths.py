"""Output paths of the ``gnflow`` commands and the one-line error they raise."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from gnflow.dataset import free_path

logger = logging.getLogger("gnflow.cli")

EXIT_ERROR = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def default_config_text() -> str:
    """The TOML text of the embedded default run."""
    return resources.files("gnflow").joinpath("default_run.toml").read_text()


def _new_file_path(
    explicit: str | None, default: str | Path, overwrite: bool, suffixes: Sequence[str], what: str
) -> Path:
    """The file a command writes: ``-o`` as given, which must not exist unless ``overwrite``; or
    ``default``, moved to the first free ``stem-K.suffix`` beside an existing file unless
    ``overwrite``. The name must end in one of ``suffixes``."""
    path = Path(explicit) if explicit is not None else Path(default)
    if path.suffix.lower() not in suffixes:
        raise CommandError(f"-o {path}: the output must be {what} ending in {', '.join(suffixes)}", EXIT_USAGE)
    if explicit is not None:
        if path.exists() and not overwrite:
            raise CommandError(f"{path} exists; pass --overwrite to replace it or choose another -o")
        return path
    if overwrite:
        return path
    free = free_path(path)
    if free != path:
        logger.info("%s exists; writing %s instead (use --overwrite to replace)", path, free)
    return free


def _output_path(explicit: str | None, configured: str, overwrite: bool) -> Path:
    return _new_file_path(explicit, configured, overwrite, (".nc",), "a NetCDF file")


def _figure_path(explicit: str | None, default: Path, overwrite: bool) -> Path:
    from gnflow.plot import FIGURE_SUFFIXES

    return _new_file_path(explicit, default, overwrite, FIGURE_SUFFIXES, "a figure")
