"""Unit tests of ntk/io/tables.py: Parquet written whole or streamed (schema cast, key-value metadata, stdout),
the streaming .npy and TSV writers; every writer leaves nothing behind when aborted."""
from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest

from ntk.io.tables import (NpyStreamWriter, ParquetStreamWriter, TsvStreamWriter, read_parquet_metadata,
                           write_parquet)

DF = pl.DataFrame({"chrom": ["chr1", "chr2"], "start": [0, 10], "score": [0.5, None]})
SCHEMA = {"chrom": pl.String, "start": pl.Int64, "score": pl.Float32, "note": pl.String}


def _names(d):
    return sorted(p.name for p in d.iterdir())


# -- write_parquet / read_parquet_metadata ------------------------------------------------------------------------
def test_write_parquet_round_trip_with_metadata(tmp_path):
    out = tmp_path / "sub" / "t.parquet"  # the parent is created
    write_parquet(DF, out, metadata={"ntk_version": "0.1", "n": 3})
    assert pl.read_parquet(out).equals(DF)
    assert read_parquet_metadata(out) == {"ntk_version": "0.1", "n": "3"}  # values as strings, no ARROW:schema
    assert _names(tmp_path / "sub") == ["t.parquet"]  # no temp left
    write_parquet(DF.head(1), out)  # replaces atomically; no metadata
    assert pl.read_parquet(out).equals(DF.head(1))
    assert read_parquet_metadata(out) == {}


def test_write_parquet_to_stdout(capsysbinary, tmp_path):
    write_parquet(DF, "-", metadata={"k": "v"})
    data = capsysbinary.readouterr().out
    assert data[:4] == b"PAR1" and data[-4:] == b"PAR1"
    assert pl.read_parquet(io.BytesIO(data)).equals(DF)


def test_write_parquet_failure_leaves_nothing(tmp_path):
    bad = pl.DataFrame({"x": [object()]}, strict=False)  # an Object column cannot be written as Parquet
    with pytest.raises(pl.exceptions.ComputeError, match="Object"):
        write_parquet(bad, tmp_path / "t.parquet")
    assert _names(tmp_path) == []


# -- ParquetStreamWriter ----------------------------------------------------------------------------------------
def test_parquet_stream_writer_casts_to_schema_and_fills_missing_columns(tmp_path):
    out = tmp_path / "s.parquet"
    with ParquetStreamWriter(out, SCHEMA, metadata={"a": 1}, row_group_size=2) as w:
        w.write(DF)
        assert [p.name for p in tmp_path.iterdir() if p.name != "s.parquet"] != []  # parts in a private temp dir
        assert not out.exists()  # appears only on close
        w.write(pl.DataFrame({"start": [99], "chrom": ["chr3"], "note": ["x"]}))  # other column order, no score
        w.write(DF.head(0))  # empty frames are skipped
    assert w.rows == 3
    got = pl.read_parquet(out)
    assert got.schema == pl.Schema(SCHEMA)
    assert got.to_dicts() == [{"chrom": "chr1", "start": 0, "score": 0.5, "note": None},
                              {"chrom": "chr2", "start": 10, "score": None, "note": None},
                              {"chrom": "chr3", "start": 99, "score": None, "note": "x"}]
    assert read_parquet_metadata(out) == {"a": "1"}
    assert _names(tmp_path) == ["s.parquet"]
    with pytest.raises(RuntimeError, match="writer is closed"):
        w.write(DF)


def test_parquet_stream_writer_no_frames_writes_the_schema(tmp_path):
    out = tmp_path / "e.parquet"
    with ParquetStreamWriter(out, SCHEMA):
        pass
    got = pl.read_parquet(out)
    assert got.height == 0 and got.schema == pl.Schema(SCHEMA)


def test_parquet_stream_writer_stdout(capsysbinary):
    with ParquetStreamWriter("-", SCHEMA) as w:
        w.write(DF)
    got = pl.read_parquet(io.BytesIO(capsysbinary.readouterr().out))
    assert got["chrom"].to_list() == ["chr1", "chr2"] and got.schema == pl.Schema(SCHEMA)


def test_parquet_stream_writer_error_leaves_nothing(tmp_path):
    out = tmp_path / "s.parquet"
    with pytest.raises(ValueError, match="boom"):
        with ParquetStreamWriter(out, SCHEMA) as w:
            w.write(DF)
            raise ValueError("boom")
    assert _names(tmp_path) == []


# -- NpyStreamWriter --------------------------------------------------------------------------------------------
def test_npy_stream_writer_round_trip(tmp_path):
    out = tmp_path / "m.npy"
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 3, 2)) for n in (4, 0, 7)]
    with NpyStreamWriter(out, (3, 2)) as w:
        for p in parts:
            w.write(p)  # float64 in, float32 out
        assert not out.exists()
    assert w.rows == 11
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (11, 3, 2)
    assert np.array_equal(got, np.concatenate(parts).astype(np.float32))
    assert _names(tmp_path) == ["m.npy"]


def test_npy_stream_writer_zero_rows_and_shape_mismatch(tmp_path):
    out = tmp_path / "z.npy"
    with NpyStreamWriter(out, (5,)) as w:
        with pytest.raises(ValueError, match=r"rows of shape \(4,\) do not match \(5,\)"):
            w.write(np.zeros((2, 4)))
    assert np.load(out).shape == (0, 5)


def test_npy_stream_writer_abort_leaves_nothing(tmp_path):
    with pytest.raises(KeyError):
        with NpyStreamWriter(tmp_path / "m.npy", (2,)) as w:
            w.write(np.ones((3, 2)))
            raise KeyError("x")
    assert _names(tmp_path) == []


# -- TsvStreamWriter --------------------------------------------------------------------------------------------
def test_tsv_stream_writer_header_once_nulls_as_dot(tmp_path):
    out = tmp_path / "t.tsv"
    with TsvStreamWriter(out) as w:
        w.write(DF)
        w.write(DF.tail(1))
        assert not out.exists()
    assert w.rows == 3
    assert out.read_text() == "chrom\tstart\tscore\nchr1\t0\t0.5\nchr2\t10\t.\nchr2\t10\t.\n"
    assert _names(tmp_path) == ["t.tsv"]


def test_tsv_stream_writer_abort_leaves_nothing(tmp_path):
    (tmp_path / "t.tsv").write_text("old")
    with pytest.raises(OSError):
        with TsvStreamWriter(tmp_path / "t.tsv") as w:
            w.write(DF)
            raise OSError("disk")
    assert _names(tmp_path) == ["t.tsv"] and (tmp_path / "t.tsv").read_text() == "old"  # the old file stays
