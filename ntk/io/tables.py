"""Tables out: atomic Parquet files (polars) with key-value schema metadata, written whole or streamed in
row groups, and a streaming ``.npy`` matrix writer for people who want a dense array.

- :func:`write_parquet` writes one DataFrame atomically (temp file + rename).
- :class:`ParquetStreamWriter` takes DataFrames as they are produced (each becomes a part file in a private
  temp directory beside the target, so memory stays flat) and, on success, streams the parts into the final
  file with polars' streaming engine; on failure nothing is left behind.
- :class:`NpyStreamWriter` appends float32 rows and writes a standard ``.npy`` (header with the final shape).
- :func:`read_parquet_metadata` returns the key-value metadata a file was written with.

``path == "-"`` writes the finished file to stdout (binary).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import polars as pl

from .atomic import AtomicOutput, atomic_path, temp_dir, writing, temp_file, temp_prefix


def _metadata(metadata: Mapping[str, object] | None) -> dict[str, str] | None:
    if not metadata:
        return None
    return {str(k): str(v) for k, v in metadata.items()}


def _copy_to_stdout(path: Path) -> None:
    with open(path, "rb") as f, writing("stdout"):
        shutil.copyfileobj(f, sys.stdout.buffer, 1 << 22)
        sys.stdout.buffer.flush()


def write_parquet(df: pl.DataFrame, path: str | os.PathLike, metadata: Mapping[str, object] | None = None,
                  row_group_size: int | None = None) -> None:
    """Write ``df`` to ``path`` atomically (zstd), with ``metadata`` as Parquet key-value metadata."""
    if str(path) == "-":
        with tempfile.TemporaryDirectory(prefix="ntk-") as d:
            tmp = Path(d) / "out.parquet"
            df.write_parquet(tmp, metadata=_metadata(metadata), row_group_size=row_group_size)
            _copy_to_stdout(tmp)
        return
    with atomic_path(path) as tmp:
        df.write_parquet(tmp, metadata=_metadata(metadata), row_group_size=row_group_size)


def read_parquet_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Key-value metadata of a Parquet file (without polars' internal ``ARROW:schema`` entry)."""
    md = pl.read_parquet_metadata(path)
    return {k: v for k, v in md.items() if k != "ARROW:schema"}


class ParquetStreamWriter(AtomicOutput):
    """Stream DataFrames into one Parquet file; every :meth:`write` call holds at most one frame in memory.

    Use as a context manager: the file appears at ``path`` only when the block exits without an exception.
    Every frame is cast to ``schema`` (so an all-null column keeps its declared type)."""

    def __init__(self, path: str | os.PathLike, schema: Mapping[str, pl.DataType],
                 metadata: Mapping[str, object] | None = None, row_group_size: int | None = None):
        self.path = str(path)
        self.schema = pl.Schema(schema)
        self.metadata = _metadata(metadata)
        self.row_group_size = row_group_size
        if self.path == "-":
            self._dir = Path(tempfile.mkdtemp(prefix=temp_prefix("stdout", "parts"), dir=tempfile.gettempdir()))
        else:
            self._dir = temp_dir(self.path, "parts")
        self._parts: list[Path] = []
        self.rows = 0
        self._closed = False

    def write(self, df: pl.DataFrame) -> None:
        if self._closed:
            raise RuntimeError("writer is closed")
        if df.height == 0:
            return
        df = df.select([pl.col(c).cast(t) if c in df.columns else pl.lit(None, dtype=t).alias(c)
                        for c, t in self.schema.items()])
        part = self._dir / f"part-{len(self._parts):06d}.parquet"
        df.write_parquet(part, compression="uncompressed", statistics=False)
        self._parts.append(part)
        self.rows += df.height

    def close(self) -> None:
        """Combine the parts into the final file (atomically) and remove the temp directory."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._parts:
                lf = pl.scan_parquet(self._parts)
            else:
                lf = pl.DataFrame(schema=self.schema).lazy()
            if self.path == "-":
                out = self._dir / "out.parquet"
                lf.sink_parquet(out, metadata=self.metadata, row_group_size=self.row_group_size)
                _copy_to_stdout(out)
            else:
                with atomic_path(self.path) as tmp:
                    lf.sink_parquet(tmp, metadata=self.metadata, row_group_size=self.row_group_size)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def abort(self) -> None:
        self._closed = True
        shutil.rmtree(self._dir, ignore_errors=True)



class NpyStreamWriter(AtomicOutput):
    """Append float32 rows of a fixed trailing shape; on success write ``path`` as a standard ``.npy`` file.

    Rows go to a raw temp file as they come; :meth:`close` writes the header (whose shape is only known at
    the end) followed by the raw bytes, into a temp name that is renamed into place."""

    def __init__(self, path: str | os.PathLike, row_shape: tuple[int, ...], dtype=np.float32):
        self.path = Path(path)
        self.row_shape = tuple(int(x) for x in row_shape)
        self.dtype = np.dtype(dtype)
        self._raw_path = temp_file(self.path, "raw", ".raw")
        self._raw = open(self._raw_path, "wb")
        self.rows = 0
        self._closed = False

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} do not match {self.row_shape}")
        self._raw.write(rows.tobytes())
        self.rows += rows.shape[0]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._raw.close()
        try:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as out:
                header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                          "shape": (self.rows, *self.row_shape)}
                np.lib.format.write_array_header_1_0(out, header)
                with open(self._raw_path, "rb") as raw:
                    shutil.copyfileobj(raw, out, 1 << 22)
        finally:
            self._raw_path.unlink(missing_ok=True)

    def abort(self) -> None:
        self._closed = True
        self._raw.close()
        self._raw_path.unlink(missing_ok=True)



class TsvStreamWriter(AtomicOutput):
    """Append DataFrames to one tab-separated file (header once, nulls as ``.``); renamed into place on success."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._stack = contextlib.ExitStack()
        self._fh = open(self._stack.enter_context(atomic_path(self.path)), "wb")
        self._header = True
        self.rows = 0
        self._closed = False

    def write(self, df: pl.DataFrame) -> None:
        df.write_csv(self._fh, separator="\t", include_header=self._header, null_value=".")
        self._header = False
        self.rows += df.height

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._fh.close()
            self._stack.close()  # renames into place

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._fh.close()
            err = RuntimeError("aborted")
            self._stack.__exit__(type(err), err, None)  # atomic_path removes the temp file

