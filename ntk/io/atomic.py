"""Atomic outputs: write to a temporary name beside the target, rename into place only on success."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import NtkError


def check_writable_target(path: str | os.PathLike, force: bool) -> Path:
    p = Path(path)
    if p.exists() and not force:
        raise NtkError(f"{p}: already exists (use --force to overwrite)")
    parent = p.parent if str(p.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise NtkError(f"{parent}: directory is not writable")
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success rename it to ``path``, else delete it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp" + suffix, dir=p.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path`` (a directory of outputs)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NtkError(f"{p}: exists and is not a directory")
    if p.exists() and any(p.iterdir()) and not force:
        raise NtkError(f"{p}: output directory is not empty (use --force to overwrite)")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.tmp-", dir=p.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; output directories get the usual permissions
    try:
        yield tmp
        if p.exists():
            old = p.with_name(f".{p.name}.old-{os.getpid()}")
            os.replace(p, old)
            os.replace(tmp, p)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class AtomicOutput:
    """Context-manager protocol of the streaming writers: ``close()`` (commit) on success, ``abort()`` (remove the
    temporary output) when the ``with`` block raises."""

    def close(self) -> None:  # pragma: no cover - implemented by writers
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - implemented by writers
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
