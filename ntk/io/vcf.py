"""VCF/BCF in and out through pysam (htslib).

Reading: :class:`VcfReader` opens a file (VCF or BCF, plain or bgzip) or ``-`` (stdin) and yields pysam
records in input order; :func:`split_alts` splits a record into one :class:`Allele` per ALT, classified as a
sequence edit, a symbolic/breakend allele or the ``*`` (spanning deletion) allele.

Writing: :class:`VcfWriter` keeps the input header (samples, every existing line), adds ``##INFO`` lines and
provenance lines (``##ntkVersion``, ``##ntkCommand``), and writes each record unchanged except for the added
INFO values:
- ``-``: plain VCF on stdout, record by record;
- ``*.vcf.gz`` / ``*.vcf.bgz``: bgzip, then a tabix index (``.tbi``) when the records are sorted;
- ``*.vcf``: plain VCF.
File outputs are written under a temporary name and renamed (with their index) only by :meth:`VcfWriter.close`;
:meth:`VcfWriter.abort` (or leaving the ``with`` block by an exception) removes them.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from ..errors import InputError, NtkError
from .atomic import AtomicOutput, atomic_path, check_writable_target, writing

# kinds of ALT allele
SEQUENCE, SYMBOLIC, STAR = "sequence", "symbolic", "star"


@dataclass(frozen=True)
class Allele:
    """One ALT of a record: ``index`` is its 0-based position among the ALTs (the ``Number=A`` slot)."""

    index: int
    ref: str
    alt: str
    kind: str  # SEQUENCE, SYMBOLIC or STAR


def allele_kind(alt: str) -> str:
    """``<DEL>``, breakends (``A[1:10[``, ``]1:10]A``, ``A.``, ``.A``) -> symbolic; ``*`` -> star; else sequence."""
    if alt == "*":
        return STAR
    if alt.startswith("<") or "[" in alt or "]" in alt or (len(alt) > 1 and (alt[0] == "." or alt[-1] == ".")):
        return SYMBOLIC
    return SEQUENCE


def split_alts(rec) -> list[Allele]:
    """One :class:`Allele` per ALT of a pysam record (none when ALT is ``.``)."""
    ref = rec.ref or ""
    return [Allele(i, ref, a, allele_kind(a)) for i, a in enumerate(rec.alts or ())]


class VcfReader:
    """Records of a VCF/BCF (plain or bgzip) file or of ``-`` (stdin), in input order."""

    def __init__(self, path: str | os.PathLike):
        import pysam

        self.path = str(path)
        self.label = "<stdin>" if self.path == "-" else self.path
        if self.path != "-" and not Path(self.path).is_file():
            raise InputError(f"{self.path}: VCF file not found")
        if self.path != "-":
            with open(self.path, "rb") as fh:
                magic = fh.read(18)
            if magic[:2] == b"\x1f\x8b" and not (len(magic) >= 14 and magic[3] & 4 and magic[12:14] == b"BC"):
                raise InputError(f"{self.path}: compressed with plain gzip, not bgzip-compressed: recompress with "
                                 f"`zcat {self.path} | bgzip > OUT.vcf.gz` (or stream it: `zcat {self.path} | ntk "
                                 "... -`)")
        try:
            self._vf = pysam.VariantFile(self.path)
        except (OSError, ValueError) as e:
            raise InputError(f"{self.label}: cannot read as VCF/BCF ({e})") from None
        self.header = self._vf.header
        self.n_read = 0

    @property
    def contigs(self) -> list[str]:
        """Contig names declared by ``##contig`` header lines (may be empty)."""
        return list(self.header.contigs)

    @property
    def samples(self) -> list[str]:
        return list(self.header.samples)

    def __iter__(self) -> Iterator:
        it = iter(self._vf)
        while True:
            try:
                rec = next(it)
            except StopIteration:
                return
            except (OSError, ValueError) as e:
                raise InputError(f"{self.label}: record {self.n_read + 1}: cannot parse ({e})") from None
            self.n_read += 1
            yield rec

    def close(self) -> None:
        self._vf.close()

    def __enter__(self) -> "VcfReader":
        return self

    def __exit__(self, *a) -> None:
        self.close()


@dataclass(frozen=True)
class InfoField:
    """An ``##INFO`` header line."""

    id: str
    number: str  # "A", "1", ...
    type: str  # "Float", "String", "Integer", "Flag"
    description: str

    def header_line(self) -> str:
        desc = self.description.replace('"', "'")
        return f'##INFO=<ID={self.id},Number={self.number},Type={self.type},Description="{desc}">'


def output_mode(path: str) -> str:
    """``w`` (plain VCF) or ``wz`` (bgzip) for an output path."""
    if path == "-" or path.endswith(".vcf"):
        return "w"
    if path.endswith((".vcf.gz", ".vcf.bgz")):
        return "wz"
    raise NtkError(f"-o {path}: use a name ending in .vcf.gz (bgzip + tabix index), .vcf (plain) or '-' (stdout)")


class VcfWriter(AtomicOutput):
    """Annotated copy of an input VCF: the input header plus ``info`` fields and ``extra_lines``.

    Records are written as text (``str(record)`` with the new INFO entries appended), so every input field,
    sample column and INFO entry is kept exactly as it was (pysam's own writer would add ``END`` to symbolic
    records); existing entries with the ids written here are replaced. Floats are written like bcftools
    (``%g``, 6 significant digits); ``None`` is written as ``.`` (missing)."""

    def __init__(self, path: str, template_header, info: Sequence[InfoField], extra_lines: Sequence[str] = (),
                 force: bool = False):
        import pysam

        self.path = str(path)
        mode = output_mode(self.path)
        header = template_header.copy()
        self._replace: set[str] = set()
        for f in info:
            if f.id in header.info:
                old = header.info[f.id]
                if str(old.number) != f.number or str(old.type) != f.type:
                    raise InputError(f"the input VCF already declares INFO/{f.id} as Number={old.number},"
                                     f"Type={old.type}; ntk writes Number={f.number},Type={f.type} (remove it "
                                     f"first, e.g. `bcftools annotate -x INFO/{f.id}`)")
                self._replace.add(f.id)
                continue
            header.add_line(f.header_line())
        for line in extra_lines:
            header.add_line(line)
        self._stack = contextlib.ExitStack()
        self.index_path: Path | None = None
        self.indexed = mode == "wz"
        self._label = "stdout" if self.path == "-" else self.path
        if self.path == "-":
            self._tmp = "-"
            self._fh = sys.stdout.buffer
        else:
            check_writable_target(self.path, force)
            suffix = ".vcf.gz" if self.indexed else ".vcf"
            self._tmp = str(self._stack.enter_context(atomic_path(self.path, suffix=suffix)))
            try:
                self._fh = pysam.BGZFile(self._tmp, "wb") if self.indexed else open(self._tmp, "wb")
            except OSError as e:
                self._stack.close()
                raise NtkError(f"{self.path}: cannot open for writing ({e})") from None
        # the header goes out with the first record (or at close): an error before any record leaves stdout empty
        self._header_text: str | None = str(header)
        self.n_written = 0
        self._closed = False

    def _write_header(self) -> None:
        if self._header_text is not None:
            with writing(self._label):
                self._fh.write(self._header_text.encode())
            self._header_text = None

    @staticmethod
    def _format(v) -> str:
        if v is None:
            return "."
        if isinstance(v, float):
            return f"{v:.6g}" if math.isfinite(v) else "."
        return str(v)

    def write(self, rec, values: Mapping[str, Sequence | None] | None = None) -> None:
        """Write one input record with ``values`` (INFO id -> tuple per ALT, ``None`` entries missing; a ``None``
        or empty tuple writes nothing for that id)."""
        self._write_header()
        line = str(rec)
        if values:
            cols = line.rstrip("\n").split("\t", 8)
            info = [] if cols[7] == "." else cols[7].split(";")
            if self._replace:
                info = [x for x in info if x.split("=", 1)[0] not in self._replace]
            for key, val in values.items():
                if val is not None and len(val):  # ``KEY=`` with no value is not VCF: an empty tuple writes nothing
                    info.append(f"{key}={','.join(self._format(v) for v in val)}")
            cols[7] = ";".join(info) if info else "."
            line = "\t".join(cols) + "\n"
        with writing(self._label):
            self._fh.write(line.encode())
        self.n_written += 1

    def close(self) -> bool:
        """Finish the file; index ``.vcf.gz`` outputs (returns False when records were unsorted and no index
        could be built); rename into place."""
        import pysam

        if self._closed:
            return True
        self._write_header()
        self._closed = True
        if self.path == "-":
            with writing(self._label):
                self._fh.flush()
            return True
        with writing(self._label):
            self._fh.close()
        ok = True
        if self.indexed:
            idx = Path(self.path + ".tbi")
            tmp_idx = Path(self._tmp + ".tbi")
            try:
                pysam.tabix_index(self._tmp, preset="vcf", force=True, index=str(tmp_idx))
            except Exception:  # htslib refuses unsorted input
                ok = False
                tmp_idx.unlink(missing_ok=True)
            if ok:
                os.replace(tmp_idx, idx)
            else:
                idx.unlink(missing_ok=True)  # never leave a stale index beside a new file
            self.index_path = idx if ok else None
        self._stack.close()  # renames the temp file into place
        return ok

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.path == "-":
            with contextlib.suppress(Exception):
                self._fh.flush()
            return
        with contextlib.suppress(Exception):
            self._fh.close()
        Path(self._tmp + ".tbi").unlink(missing_ok=True)
        err = RuntimeError("aborted")
        self._stack.__exit__(type(err), err, None)  # atomic_path deletes the temp file

