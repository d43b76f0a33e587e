"""Atomic file writes shared by the detector's per-process reports and the CLI's report/HTML."""

from __future__ import annotations

import os
import tempfile


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write through a temporary file in the same directory, then ``os.replace``: readers see the old file
    or the new one, never half of one. Missing parent directories are created. Raises OSError when the path
    cannot be written."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)  # `--report out/r.json` in a fresh checkout
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
