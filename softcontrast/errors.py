"""The errors a user can fix, shared by the commands (``softcontrast train``, ``softcontrast evaluate``)."""

from __future__ import annotations

from softcontrast.checkpoints import NoCheckpointError, OutputWriteError

#: Errors a command-line user can fix (flags, data, checkpoints, output directory, a diverged run):
#: the commands print their message as one line and exit with status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, NotADirectoryError, NoCheckpointError, OutputWriteError, FloatingPointError,
)
