"""FASTA input: indexed random access (plain or bgzip, via pysam/htslib) and a streaming reader (files or stdin).

- A missing ``.fai`` (and ``.gzi`` for bgzip) is built next to the FASTA, or in a private temp directory
  when that directory is not writable.
- A plain-gzip (not bgzip) FASTA cannot be indexed: it is decompressed once to a temp file (logged).
- An existing index is checked against the file before use (cheap: the header line before each record's
  offset, the bytes after the last record, the ``.gzi``'s last block against the compressed size): an index of
  an older version of the file or of another file is refused with the fix, never used to read wrong bytes.
- Duplicate record names, headers without a name and names that are not UTF-8 are refused (indexed and
  streaming readers alike), as is a file that does not start with a ``>`` header (not FASTA).
- Sequence comes back uppercase; IUPAC ambiguity codes count as N; other characters (any byte) are an error
  naming the file, contig and position.
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
from ..report import default_reporter

_TMP_DIRS: list[str] = []


def _private_tmp() -> Path:
    from .atomic import clean_leftovers, temp_prefix

    clean_leftovers(tempfile.gettempdir())  # private temp dirs of dead runs (owner pid gone)
    d = tempfile.mkdtemp(prefix=temp_prefix("fasta"), dir=tempfile.gettempdir())
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
        shown = repr(raw[i]) if isinstance(raw, str) and not raw[i].isascii() else _show_byte(int(b[i]))
        raise InputError(f"{where}: invalid nucleotide {shown} at position {offset + i + 1}")
    return out.tobytes().decode("ascii")


def _show_byte(c: int) -> str:
    return repr(chr(c)) if 32 <= c < 127 else f"byte 0x{c:02X} (not a nucleotide letter)"


def _decode_name(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: record name {raw!r} is not valid UTF-8 (byte 0x{raw[e.start]:02X}); rename the "
                         "record (names must be UTF-8 text)") from None



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
        _check_fasta_start(src)
        if is_gzip(src) and not is_bgzip(src):
            tmp = _private_tmp() / (src.name[:-3] if src.name.endswith(".gz") else src.name + ".fa")
            default_reporter().log(f"{src} is plain gzip (not bgzip); decompressing to {tmp} for indexed access "
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
        built = not fai.exists() or (needs_gzi and not gzi.exists()) or fai.stat().st_mtime < src.stat().st_mtime
        if built:
            if not os.access(src.parent, os.W_OK):
                d = _private_tmp()
                fai, gzi = d / (src.name + ".fai"), d / (src.name + ".gzi")
            try:
                args = [str(src), "--fai-idx", str(fai)] + (["--gzi-idx", str(gzi)] if needs_gzi else [])
                verbosity = pysam.set_verbosity(0)  # htslib's own warnings (duplicates): ntk reports them itself
                try:
                    pysam.faidx(*args)
                finally:
                    pysam.set_verbosity(verbosity)
            except pysam.SamtoolsError as e:
                raise InputError(f"{self.path}: cannot index FASTA ({str(e).strip()[:300]})") from None
        check_index(self.path, src, fai, gzi if needs_gzi else None, built)
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
        try:
            raw = self._fa.fetch(name, start, end)
        except UnicodeDecodeError as e:  # pysam decodes the bytes as UTF-8: name the first byte that is not ASCII
            raise InputError(f"{self.path}: contig {name}: invalid nucleotide {_show_byte(e.object[e.start])} at "
                             f"position {start + e.start + 1}") from None
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


def scan_acgt_runs(fasta: IndexedFasta, chrom: str, start: int = 0, end: int | None = None, min_length: int = 1,
                   block: int = 1 << 22) -> Iterator[tuple[int, int]]:
    """Maximal ACGT runs of ``chrom[start:end]`` (``end`` None: the contig's end) of at least ``min_length`` nt,
    as absolute (start, end), streaming: the sequence is read ``block`` nt at a time (a whole chromosome is never
    held as one string) and a run that crosses a block boundary comes out as one run. The one ACGT-run scanner
    of ntk (segment's work units, score-variants' window plan, finetune segment's genome windows)."""
    end = fasta.lengths[chrom] if end is None else end
    cur: tuple[int, int] | None = None
    for b in range(start, end, block):
        for s, t in acgt_runs(fasta.fetch(chrom, b, min(b + block, end)), offset=b):
            if cur is not None and s == cur[1]:  # continues across the block boundary
                cur = (cur[0], t)
                continue
            if cur is not None and cur[1] - cur[0] >= min_length:
                yield cur
            cur = (s, t)
    if cur is not None and cur[1] - cur[0] >= min_length:
        yield cur


@dataclass
class FastaRecord:
    name: str
    description: str
    sequence: str
    line: int  # line number of the header


def _open_binary(path: str | os.PathLike) -> tuple[io.BufferedIOBase, str]:
    if str(path) == "-":
        raw = sys.stdin.buffer
        head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
        return (gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw), "<stdin>"
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    if is_gzip(p):
        return gzip.open(p, "rb"), str(p)
    return open(p, "rb"), str(p)


def iter_fasta(path: str | os.PathLike) -> Iterator[FastaRecord]:
    """Stream FASTA records from a file (plain/gzip/bgzip) or '-' (stdin); validate every line. Record names
    must be UTF-8 and unique."""
    fh, label = _open_binary(path)
    name = desc = None
    chunks: list[str] = []
    header_line = 0
    n_records = 0
    seen: dict[str, int] = {}
    try:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip(b"\r\n")
            if line.startswith(b">"):
                if name is not None:
                    n_records += 1
                    yield FastaRecord(name, desc, "".join(chunks), header_line)
                parts = line[1:].strip().split(None, 1)
                if not parts:
                    raise InputError(f"{label}: line {lineno}: FASTA header without a name")
                name = _decode_name(parts[0], f"{label}: line {lineno}")
                desc = parts[1].decode("utf-8", "replace") if len(parts) > 1 else ""
                if name in seen:
                    raise InputError(f"{label}: line {lineno}: duplicate record name {name!r} (first at line "
                                     f"{seen[name]}); names must be unique")
                seen[name] = lineno
                chunks, header_line = [], lineno
            elif not line.strip() or line.startswith(b";"):
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

# ---------------------------------------------------------------------------------------------------
# index checks: an index of another (or an older) file must never be used to read bytes

FULL_CHECK_RECORDS = 50_000  # above this many records only a sample of headers is checked (first, last, spread)
_GAP_READ = 1 << 16  # bytes read between two records: header lines are never this long


def _check_fasta_start(path: Path) -> None:
    """Refuse a file whose first non-blank line is not a ``>`` header (a VCF, BED, ... given as FASTA)."""
    try:
        with (gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")) as fh:
            head = fh.read(4096)
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    for line in head.splitlines():
        if not line.strip() or line.startswith(b";"):
            continue
        if line.startswith(b">"):
            return
        shown = line[:40].decode("ascii", "replace")
        what = " (a VCF file)" if line.startswith(b"##fileformat=VCF") else ""
        raise InputError(f"{path}: not a FASTA file{what}: the first line starts with {shown!r}, not a '>' header")
    if head.strip():
        raise InputError(f"{path}: not a FASTA file: no '>' header at the start")


class _Bgzf:
    """Random reads of uncompressed bytes of a bgzip file through its ``.gzi`` (one block decompressed at a time)."""

    def __init__(self, path: Path, gzi: Path, label: str):
        import struct
        import zlib

        self._zlib, self.path, self.label = zlib, path, label
        self._fh = open(path, "rb")
        self.csize = path.stat().st_size
        raw = gzi.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0] if len(raw) >= 8 else -1
        if n < 0 or len(raw) != 8 + 16 * n:
            raise InputError(f"{gzi}: not a bgzip index (.gzi) file; {self._fix()}")
        pairs = np.frombuffer(raw[8:], dtype="<u8").reshape(-1, 2) if n else np.zeros((0, 2), np.uint64)
        self.coff = np.concatenate(([0], pairs[:, 0])).astype(np.int64)
        self.uoff = np.concatenate(([0], pairs[:, 1])).astype(np.int64)
        self._cache: tuple[int, bytes] | None = None
        # the last block of the index must be the last data block of the file (then only the EOF marker)
        last = int(self.coff[-1])
        if last >= self.csize:
            raise InputError(f"{gzi} does not match {label} (the index lists blocks beyond the end of the file: "
                             f"an index of another or a longer file); {self._fix()}")
        data, bsize = self._block_at(last)
        after = last + bsize
        if after != self.csize and not (self.csize - after == 28 and self._is_eof_block(after)):
            raise InputError(f"{gzi} does not match {label} (the file holds data after the last indexed block: it "
                             f"was changed after indexing); {self._fix()}")
        self.size = int(self.uoff[-1]) + len(data)

    def _fix(self) -> str:
        return (f"delete {self.label}.fai and {self.label}.gzi (ntk rebuilds the index) or run "
                f"`samtools faidx {self.label}`")

    def _is_eof_block(self, off: int) -> bool:
        self._fh.seek(off)
        return self._fh.read(28)[:4] == b"\x1f\x8b\x08\x04"

    def _block_at(self, off: int) -> tuple[bytes, int]:
        self._fh.seek(off)
        head = self._fh.read(18)
        if len(head) < 18 or head[:4] != b"\x1f\x8b\x08\x04" or head[12:14] != b"BC":
            raise InputError(f"{self.label}.gzi does not match {self.label} (no bgzip block at byte {off}); "
                             f"{self._fix()}")
        bsize = int.from_bytes(head[16:18], "little") + 1
        body = self._fh.read(bsize - 18)
        try:
            return self._zlib.decompress(body[:-8], -15), bsize
        except self._zlib.error:
            raise InputError(f"{self.label}: corrupt bgzip block at byte {off}") from None

    def read(self, off: int, n: int) -> bytes:
        out = []
        while n > 0 and off < self.size:
            i = int(np.searchsorted(self.uoff, off, side="right")) - 1
            if self._cache is None or self._cache[0] != i:
                self._cache = (i, self._block_at(int(self.coff[i]))[0])
            block = self._cache[1]
            a = off - int(self.uoff[i])
            piece = block[a:a + n]
            if not piece:
                break
            out.append(piece)
            off += len(piece)
            n -= len(piece)
        return b"".join(out)

    def close(self) -> None:
        self._fh.close()


class _Plain:
    def __init__(self, path: Path):
        self._fh = open(path, "rb")
        self.size = path.stat().st_size

    def read(self, off: int, n: int) -> bytes:
        self._fh.seek(off)
        return self._fh.read(n)

    def close(self) -> None:
        self._fh.close()


def _read_fai(fai: Path, label: str) -> list[tuple[str, int, int, int, int]]:
    rows = []
    try:
        lines = fai.read_bytes().splitlines()
    except OSError as e:
        raise InputError(f"{fai}: cannot read the FASTA index ({e})") from None
    for i, line in enumerate(lines, 1):
        f = line.split(b"\t")
        try:
            name = f[0].decode("utf-8")
            rows.append((name, int(f[1]), int(f[2]), int(f[3]), int(f[4])))
        except UnicodeDecodeError:
            _decode_name(f[0], label)
        except (IndexError, ValueError):
            raise InputError(f"{fai}: line {i}: not a FASTA index line; delete {fai} (ntk rebuilds it)") from None
    return rows


def _gap_records(gap: bytes) -> tuple[list[list], bool]:
    """The '>' header lines in ``gap`` as ``[name or None, followed by sequence lines]``, and whether sequence
    lines come before the first header (bytes of a record the index does not know)."""
    out: list[list] = []
    stray = False
    for line in gap.split(b"\n"):
        if line.startswith(b">"):
            parts = line[1:].split(None, 1)
            out.append([parts[0] if parts else None, False])
        elif line.strip() and not line.startswith(b";"):
            if out:
                out[-1][1] = True
            else:
                stray = True
    return out, stray


def check_index(label: Path, src: Path, fai: Path, gzi: Path | None, built: bool) -> None:
    """Check the ``.fai`` (and ``.gzi``) against the FASTA ``src`` without reading its sequence: the header
    line before every record's offset (only a sample above FULL_CHECK_RECORDS records) names that record and
    no other header hides between two records (a record missing from the index: a duplicate name, or a file
    changed after indexing), and only line ends follow the last record. ``built``: ntk has just built the index
    itself, so a mismatch is a problem of the file (duplicate or empty names), reported as such."""
    reader = _Bgzf(src, gzi, str(label)) if gzi is not None else _Plain(src)
    fix = (f"delete {fai}{' and ' + str(gzi) if gzi else ''} (ntk rebuilds the index) or run "
           f"`samtools faidx {label}`")
    try:
        rows = _read_fai(fai, str(label))
        if not rows:
            return
        names_seen: dict[str, int] = {}
        empty_seen: set[str] = set()  # records without sequence: htslib leaves them out of the index
        for i, r in enumerate(rows):
            if r[0] == "":
                prev = f"after record {rows[i - 1][0]!r}" if i else "first record"
                raise InputError(f"{label}: a '>' header without a name ({prev}); give every record a name")
            if r[0] in names_seen:
                raise InputError(f"{label}: duplicate record name {r[0]!r}; names must be unique")
            names_seen[r[0]] = i
        n = len(rows)
        if n <= FULL_CHECK_RECORDS:
            check = range(n)
        else:
            check = sorted({0, n - 1, *range(0, n, max(1, n // 2000))})

        def seq_end(r) -> int:
            _, length, off, lb, lw = r
            if lb <= 0:
                return off
            return off + (length // lb) * lw + (length % lb)

        for i in check:
            name, _, off, lb, lw = rows[i]
            start = seq_end(rows[i - 1]) if i else 0
            if off < start or off > reader.size:
                raise InputError(f"{fai} does not match {label} (record {name!r} at byte {off} lies outside the "
                                 f"file or overlaps the previous record: an index of another file); {fix}")
            a = max(start, off - _GAP_READ)
            gap = reader.read(a, off - a)
            heads, stray = _gap_records(gap)
            if not gap.endswith(b"\n") or not heads or heads[-1] != [name.encode("utf-8"), False]:
                if built and heads and heads[-1][0] is None:
                    raise InputError(f"{label}: a '>' header without a name (before byte {off}); give every "
                                     "record a name")
                raise InputError(f"{fai} does not match {label} (no header '>{name}' before byte {off}: an index "
                                 f"of another file, or the file changed after indexing); {fix}")
            _check_hidden(heads[:-1], names_seen, empty_seen, label, fai, fix)
            if stray or off - start > _GAP_READ:
                raise InputError(f"{fai} does not match {label} (unindexed bytes before record {name!r}: the file "
                                 f"changed after indexing, or the index is of another file); {fix}")
            if lb > 0 and rows[i][1] > lb and reader.read(off + lb, lw - lb) not in (b"\n", b"\r\n"):
                raise InputError(f"{fai} does not match {label} (record {name!r} has no line end after {lb} bases "
                                 f"at byte {off + lb}); {fix}")
        tail_start = seq_end(rows[-1])
        if tail_start > reader.size:
            raise InputError(f"{fai} does not match {label} (the file ends before the last indexed record "
                             f"{rows[-1][0]!r}: it changed after indexing, or the index is of another file); {fix}")
        tail = reader.read(tail_start, _GAP_READ)
        heads, stray = _gap_records(tail)
        _check_hidden(heads, names_seen, empty_seen, label, fai, fix)
        if stray or len(tail) == _GAP_READ:
            raise InputError(f"{fai} does not match {label} (the file continues after the last indexed record "
                             f"{rows[-1][0]!r}: it changed after indexing, or the index is of another file); {fix}")
    finally:
        reader.close()


def _check_hidden(heads: list, names: dict[str, int], empty: set[str], label: Path, fai: Path, fix: str) -> None:
    """Headers found between two indexed records: records the index left out. Only an empty record (no sequence
    line before the next header) may be missing from an index; its name must still be unique."""
    for h, has_sequence in heads:
        if h is None:
            raise InputError(f"{label}: a '>' header without a name; give every record a name")
        name = _decode_name(h, str(label))
        if name in names or name in empty:
            raise InputError(f"{label}: duplicate record name {name!r}; names must be unique")
        if has_sequence:
            raise InputError(f"{fai} does not match {label} (record {name!r} is not in the index: the file "
                             f"changed after indexing); {fix}")
        empty.add(name)
