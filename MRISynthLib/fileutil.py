"""Atomic output files: write under a temporary name beside the target, rename on success."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


@contextmanager
def atomic_output(path, suffix: str = ""):
    """Yield a temporary path in ``path``'s folder; on success move it onto ``path``
    (with ordinary file permissions), on any error remove it. Nothing half-written is
    ever left at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix or "-" + path.name, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
