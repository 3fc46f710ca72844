"""Atomic outputs: write to a temporary name beside the target, rename into place only on success.

Every temporary file or directory ntk creates beside an output is named
``.<output name>.ntk-<kind>-<pid>@<host>-<random><suffix>`` (kind: ``tmp``, ``parts``, ``raw``, ``old``), so that
the run owning it can be told from its name. A run killed without a chance to clean up (SIGKILL, power loss)
leaves such names behind; the next run writing the same output removes those whose owner process is gone
(:func:`clean_leftovers`; only names of this host, whose owner pid no longer exists). The ``--resume`` state
(``.<output>.ntk-partial/``) is never touched by that cleaning.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import NtkError

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.ntk-(?P<kind>[a-z]+)-(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]*)-[A-Za-z0-9_]+")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]


def temp_prefix(target: str | os.PathLike, kind: str = "tmp") -> str:
    """Prefix (for ``tempfile.mkstemp``/``mkdtemp``) of a temporary beside ``target``, owned by this process."""
    return f".{Path(target).name}.ntk-{kind}-{os.getpid()}@{_host()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def clean_leftovers(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporaries of dead ntk runs in ``directory`` (only those beside ``name`` when given): names made
    by :func:`temp_prefix` on this host whose owner process no longer exists. Returns what was removed."""
    d = Path(directory) if str(directory) else Path(".")
    removed: list[Path] = []
    host = _host()
    try:
        entries = list(os.scandir(d))
    except OSError:
        return removed
    for e in entries:
        m = _LEFTOVER.match(e.name)
        if not m or m["host"] != host or (name is not None and m["name"] != name) or _alive(int(m["pid"])):
            continue
        p = Path(e.path)
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def is_closed_pipe(e: BaseException) -> bool:
    """A write to a pipe whose reader has gone (``| head``): not an error for a shell pipeline."""
    return isinstance(e, BrokenPipeError) or (isinstance(e, OSError) and (
        e.errno == errno.EPIPE or "Broken pipe" in str(e) or "os error 32" in str(e)))


def stream_label(stream) -> str:
    if stream is getattr(sys.stdout, "buffer", None) or stream is sys.stdout:
        return "stdout"
    return str(getattr(stream, "name", "output stream"))


@contextlib.contextmanager
def writing(target: str) -> Iterator[None]:
    """Turn a failed write to ``target`` (disk full, quota, I/O error) into one line naming it; a closed pipe
    goes through unchanged (the CLI ends quietly)."""
    try:
        yield
    except OSError as e:
        if is_closed_pipe(e):
            raise
        reason = e.strerror or re.sub(r"\s*\(os error \d+\)$", "", str(e)) or type(e).__name__
        raise NtkError(f"{target}: cannot write ({reason})") from None


def make_parent(path: str | os.PathLike) -> Path:
    """Create the directory that will hold ``path``; one-line errors for a file in the way, a read-only or
    unwritable location. Returns the parent directory."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    for a in [parent, *parent.parents]:  # the first existing ancestor must be a directory
        if a.exists() or a.is_symlink():
            if not a.is_dir():
                raise NtkError(f"{p}: cannot create the output: {a} is a file, not a directory")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NtkError(f"{p}: cannot create the output directory {parent} ({e.strerror or e})") from None
    if not os.access(parent, os.W_OK):
        ro = _read_only(parent)
        raise NtkError(f"{parent}: directory is not writable{' (read-only file system)' if ro else ''}")
    return parent


def _read_only(d: Path) -> bool:
    try:
        return bool(os.statvfs(d).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _create_error(p: Path, e: OSError) -> NtkError:
    if e.errno == errno.EROFS:
        return NtkError(f"{p.parent}: directory is not writable (read-only file system)")
    return NtkError(f"{p}: cannot create the output ({e.strerror or e})")


_INDEX_SUFFIXES = (".fai", ".gzi", ".tbi", ".csi")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_inputs_as_outputs(outputs: Iterable[str | os.PathLike | None],
                             inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse any output that is one of the inputs (symlinks resolved), or an output directory that holds one."""
    ins = []
    for i in inputs:
        if i is None or str(i) in ("", "-") or not Path(i).exists():
            continue
        ins.append(Path(i))
        ins.extend(Path(f"{i}{x}") for x in _INDEX_SUFFIXES)  # its index files, existing or to be built
    for o in outputs:
        if o is None or str(o) in ("", "-"):
            continue
        out = Path(o)
        ro = Path(os.path.realpath(out))
        for i in ins:
            ri = Path(os.path.realpath(i))
            if same_file(out, i) or ro == ri:
                raise NtkError(f"{o}: the output is the input {i}; choose another output name")
            if ro in ri.parents:
                raise NtkError(f"{o}: the output directory holds the input {i} (it would be replaced); choose "
                               "another output directory")


def check_writable_target(path: str | os.PathLike, force: bool) -> Path:
    p = Path(path)
    if p.exists() and not force:
        raise NtkError(f"{p}: already exists (use --force to overwrite)")
    if p.is_dir():
        raise NtkError(f"{p}: is a directory; give a file name")
    make_parent(p)
    clean_leftovers(p.parent if str(p.parent) else ".", p.name)
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_file(target: str | os.PathLike, kind: str = "tmp", suffix: str = "") -> Path:
    """Create an empty temporary file beside ``target`` (owner-tagged name, usual permissions)."""
    p = Path(target)
    parent = make_parent(p)
    clean_leftovers(parent, p.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(p, kind), suffix=suffix, dir=parent)
    except OSError as e:
        raise _create_error(p, e) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
    return Path(tmp)


def temp_dir(target: str | os.PathLike, kind: str = "tmp") -> Path:
    """Create a temporary directory beside ``target`` (owner-tagged name, usual permissions)."""
    p = Path(target)
    parent = make_parent(p)
    clean_leftovers(parent, p.name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(p, kind), dir=parent))
    except OSError as e:
        raise _create_error(p, e) from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; output directories get the usual permissions
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success rename it to ``path``, else delete it."""
    p = Path(path)
    tmp = temp_file(p, "tmp", ".tmp" + suffix)
    try:
        yield tmp
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_dir(tmp: Path, p: Path) -> None:
    """Move the finished directory ``tmp`` to ``p``, replacing what is there."""
    if p.exists():
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(p, "old"), dir=p.parent))
        os.replace(p, old / p.name)
        os.replace(tmp, p)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, p)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path`` (a directory of outputs)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NtkError(f"{p}: exists and is not a directory")
    if p.exists() and any(p.iterdir()) and not force:
        raise NtkError(f"{p}: output directory is not empty (use --force to overwrite)")
    tmp = temp_dir(p)
    try:
        yield tmp
        replace_dir(tmp, p)
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
