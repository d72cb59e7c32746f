"""Files replaced whole: a reader sees the old content or the new, never a partial file."""

from __future__ import annotations

import os
from pathlib import Path


def replace_text(path: Path, text: str) -> Path:
    """Write ``text`` beside ``path``, fsync it, then rename it over ``path`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
