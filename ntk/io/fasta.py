"""FASTA input: indexed random access (plain or bgzip, via pysam/htslib) and a streaming reader (files or stdin).

- A missing ``.fai`` (and ``.gzi`` for bgzip) is built next to the FASTA, or in a private temp directory
  when that directory is not writable.
- A plain-gzip (not bgzip) FASTA cannot be indexed: it is decompressed once to a temp file (logged).
- Sequence comes back uppercase; IUPAC ambiguity codes count as N; other characters are an error naming
  the file, contig and position.
"""
from __future__ import annotations

import atexit
import gzip
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

_TMP_DIRS: list[str] = []


def _private_tmp() -> Path:
    d = tempfile.mkdtemp(prefix="ntk-")
    _TMP_DIRS.append(d)
    return Path(d)


@atexit.register
def _cleanup() -> None:
    for d in _TMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(18)


def is_gzip(path: Path) -> bool:
    return _magic(path)[:2] == b"\x1f\x8b"


def is_bgzip(path: Path) -> bool:
    m = _magic(path)
    # gzip with FEXTRA and the 'BC' subfield
    return len(m) >= 14 and m[:2] == b"\x1f\x8b" and (m[3] & 4) and m[12:14] == b"BC"


# byte lookup: uppercase ACGT kept, N/IUPAC -> N, other letters/characters invalid
_UPPER = np.zeros(256, dtype=np.uint8)
for _c in "ACGTN":
    _UPPER[ord(_c)] = ord(_c)
    _UPPER[ord(_c.lower())] = ord(_c)
for _c in "RYSWKMBDHV":
    _UPPER[ord(_c)] = ord("N")
    _UPPER[ord(_c.lower())] = ord("N")


def normalise_sequence(raw: str | bytes, where: str = "", offset: int = 0) -> str:
    """Uppercase, IUPAC ambiguity -> N; raise InputError on any other character (1-based position)."""
    b = np.frombuffer(raw.encode("ascii", "replace") if isinstance(raw, str) else raw, dtype=np.uint8)
    out = _UPPER[b]
    bad = np.flatnonzero(out == 0)
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{where}: invalid nucleotide {chr(b[i])!r} at position {offset + i + 1}")
    return out.tobytes().decode("ascii")


@dataclass
class Contig:
    name: str
    length: int


class IndexedFasta:
    """Random access to a FASTA by contig name and 0-based half-open coordinates."""

    def __init__(self, path: str | os.PathLike):
        import pysam

        self.path = Path(path)
        if str(path) == "-":
            raise InputError("an indexed FASTA is needed here: stdin ('-') cannot be used as the reference")
        if not self.path.is_file():
            raise InputError(f"{self.path}: FASTA file not found")
        if self.path.stat().st_size == 0:
            raise InputError(f"{self.path}: FASTA file is empty (no sequences)")
        src = self.path
        if is_gzip(src) and not is_bgzip(src):
            tmp = _private_tmp() / (src.name[:-3] if src.name.endswith(".gz") else src.name + ".fa")
            from rich.console import Console
            Console(stderr=True).log(f"{src} is plain gzip (not bgzip); decompressing to {tmp} for indexed access "
                                     "(use `bgzip` to avoid this)")
            try:
                with gzip.open(src, "rb") as fi, open(tmp, "wb") as fo:
                    shutil.copyfileobj(fi, fo, 1 << 22)
            except (OSError, EOFError) as e:
                raise InputError(f"{src}: corrupt gzip file ({e})") from None
            src = tmp
        fai = Path(str(src) + ".fai")
        gzi = Path(str(src) + ".gzi")
        kwargs = {}
        needs_gzi = is_bgzip(src)
        if not fai.exists() or (needs_gzi and not gzi.exists()) or fai.stat().st_mtime < src.stat().st_mtime:
            if not os.access(src.parent, os.W_OK):
                d = _private_tmp()
                fai, gzi = d / (src.name + ".fai"), d / (src.name + ".gzi")
            try:
                args = [str(src), "--fai-idx", str(fai)] + (["--gzi-idx", str(gzi)] if needs_gzi else [])
                pysam.faidx(*args)
            except pysam.SamtoolsError as e:
                raise InputError(f"{self.path}: cannot index FASTA ({str(e).strip()[:300]})") from None
        kwargs["filepath_index"] = str(fai)
        if needs_gzi:
            kwargs["filepath_index_compressed"] = str(gzi)
        try:
            self._fa = pysam.FastaFile(str(src), **kwargs)
        except (OSError, ValueError) as e:
            raise InputError(f"{self.path}: cannot open FASTA ({e})") from None
        self.fai_path = fai
        self.contigs = [Contig(n, int(ln)) for n, ln in zip(self._fa.references, self._fa.lengths)]
        if not self.contigs:
            raise InputError(f"{self.path}: FASTA holds no sequences")
        self.lengths = {c.name: c.length for c in self.contigs}

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.contigs]

    def __contains__(self, name: str) -> bool:
        return name in self.lengths

    def fetch(self, name: str, start: int = 0, end: int | None = None) -> str:
        """Uppercase sequence of ``name[start:end]`` (0-based half-open)."""
        if name not in self.lengths:
            raise InputError(f"{self.path}: no contig {name!r}")
        n = self.lengths[name]
        end = n if end is None else end
        if start < 0 or end > n or start > end:
            raise InputError(f"{self.path}: {name}:{start + 1}-{end} is outside the contig (length {n})")
        raw = self._fa.fetch(name, start, end)
        return normalise_sequence(raw, f"{self.path}: contig {name}", start)

    def close(self) -> None:
        self._fa.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def acgt_runs(seq: str, offset: int = 0, min_length: int = 1) -> list[tuple[int, int]]:
    """Maximal runs of A/C/G/T (uppercase input) as (start, end), shifted by ``offset``."""
    b = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
    ok = (b == 65) | (b == 67) | (b == 71) | (b == 84)
    if not ok.size:
        return []
    d = np.diff(np.concatenate(([0], ok.view(np.int8), [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return [(int(s) + offset, int(e) + offset) for s, e in zip(starts, ends) if e - s >= min_length]


@dataclass
class FastaRecord:
    name: str
    description: str
    sequence: str
    line: int  # line number of the header


def _open_text(path: str | os.PathLike) -> tuple[io.TextIOBase, str]:
    if str(path) == "-":
        raw = sys.stdin.buffer
        head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
        stream = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw
        return io.TextIOWrapper(stream, encoding="ascii", errors="replace"), "<stdin>"
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    if is_gzip(p):
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="ascii", errors="replace"), str(p)
    return open(p, encoding="ascii", errors="replace"), str(p)


def iter_fasta(path: str | os.PathLike) -> Iterator[FastaRecord]:
    """Stream FASTA records from a file (plain/gzip/bgzip) or '-' (stdin); validate every line."""
    fh, label = _open_text(path)
    name = desc = None
    chunks: list[str] = []
    header_line = 0
    n_records = 0
    try:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if line.startswith(">"):
                if name is not None:
                    n_records += 1
                    yield FastaRecord(name, desc, "".join(chunks), header_line)
                parts = line[1:].strip().split(None, 1)
                if not parts:
                    raise InputError(f"{label}: line {lineno}: FASTA header without a name")
                name, desc = parts[0], (parts[1] if len(parts) > 1 else "")
                chunks, header_line = [], lineno
            elif not line.strip() or line.startswith(";"):
                continue
            else:
                if name is None:
                    raise InputError(f"{label}: line {lineno}: sequence before the first '>' header (not FASTA?)")
                s = line.strip()
                try:
                    chunks.append(normalise_sequence(s, f"{label}: line {lineno} (record {name})"))
                except InputError as e:
                    raise InputError(str(e).replace(" at position ", " at column ")) from None
        if name is not None:
            n_records += 1
            yield FastaRecord(name, desc, "".join(chunks), header_line)
    except (OSError, EOFError) as e:
        raise InputError(f"{label}: cannot read ({e})") from None
    finally:
        if str(path) != "-":
            fh.close()
    if n_records == 0:
        raise InputError(f"{label}: no FASTA records found")
