"""File-system conventions shared by every writer of the project."""

from __future__ import annotations

import os


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0o644 for umask 022).

    Atomic writers create their temp file with ``mkstemp`` (mode 0600) and set this before the
    rename, so checkpoints, weights and JSON files are ordinary files for other users and tools.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
