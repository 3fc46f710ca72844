"""Unit tests of the --resume journal (ntk/pipelines/resume.py): identity checks, chunks committed atomically and
replayed in order, whole units with parts, leftovers of a killed run, removal."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ntk.errors import InputError
from ntk.io.atomic import temp_prefix
from ntk.pipelines.resume import CHUNK_BP, JOURNAL, Journal, partial_dir

IDENT = {"kind": "segment", "inputs": {"fasta": {"path": "g.fa", "size": 10}}, "options": {"window": 1200}}


def test_partial_dir_is_hidden_beside_the_output(tmp_path):
    assert partial_dir(tmp_path / "out") == tmp_path / ".out.ntk-partial"
    assert partial_dir("res.vcf.gz") == partial_dir("./res.vcf.gz")
    assert str(partial_dir("res.vcf.gz")) == ".res.vcf.gz.ntk-partial"


def test_new_journal_records_identity_and_chunk_size(tmp_path):
    d = tmp_path / ".o.ntk-partial"
    j = Journal(d, IDENT)
    assert j.chunk_bp == CHUNK_BP and j.done == set() and (j.reused, j.computed) == (0, 0)
    assert json.loads((d / JOURNAL).read_text()) == {**IDENT, "chunk_bp": CHUNK_BP}
    j2 = Journal(tmp_path / "u", IDENT, chunk_bp=7, unit="records")
    assert j2.identity["chunk_records"] == 7


def test_same_identity_reopens_other_identity_is_refused(tmp_path):
    d = tmp_path / "p"
    Journal(d, IDENT, chunk_bp=100)
    Journal(d, dict(IDENT), chunk_bp=100)  # the same run: accepted
    other = {**IDENT, "options": {"window": 2400}}
    with pytest.raises(InputError, match=rf"^--resume: the partial run in {d} was started with a different options "
                                         rf"\(another model, input or options\); delete {d} or run without --resume$"):
        Journal(d, other, chunk_bp=100)
    with pytest.raises(InputError, match="different chunk_bp"):
        Journal(d, IDENT, chunk_bp=200)
    with pytest.raises(InputError, match="different model"):  # a key only one side has
        Journal(d, {**IDENT, "model": "x"}, chunk_bp=100)


def test_identity_with_tuples_reopens(tmp_path):
    """JSON has no tuples: an identity holding tuples (score-variants' --chr-map pairs) must still match the journal
    it wrote (it was refused as 'a different options', so such a run could never resume)."""
    ident = {**IDENT, "options": {"chr_map": sorted({"1": "chr1", "2": "chr2"}.items()), "shape": (3, 4)}}
    d = tmp_path / "p"
    Journal(d, ident, chunk_bp=4, unit="records").save(0, {"x": np.arange(3)})
    j = Journal(d, ident, chunk_bp=4, unit="records")
    assert j.has(0) and j.reused == 1


def test_unreadable_journal(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / JOURNAL).write_text("{not json")
    with pytest.raises(InputError, match=rf"^{d / JOURNAL}: unreadable resume journal \(.*\); delete {d} to start "
                                         r"over$"):
        Journal(d, IDENT)


# -- positions (segment): windows' kept values in chunks of chunk_bp -------------------------------------------
def _pieces():
    rng = np.random.default_rng(0)
    # (global position of the first kept base, chrom, start, values[n, F]); windows arrive in order
    out, g = [], 0
    for chrom, n in (("chr1", 5), ("chr2", 4)):
        for i in range(n):
            v = rng.standard_normal((30, 2)).astype(np.float32)
            out.append((g, chrom, 30 * i, v))
            g += 30
    return out


def test_add_commits_a_chunk_when_the_next_one_starts_and_replays_in_order(tmp_path):
    d = tmp_path / "p"
    j = Journal(d, IDENT, chunk_bp=100)
    pieces = _pieces()
    for g, c, s, v in pieces[:4]:  # windows at 0, 30, 60, 90: all in chunk 0, which may still grow
        j.add(g, c, s, v)
    assert j.done == set()
    j.add(*pieces[4])  # the window at 120 opens chunk 1: chunk 0 is complete and committed
    assert j.done == {0}
    assert sorted(p.name for p in d.iterdir()) == ["chunk-00000000.npz", JOURNAL]
    for g, c, s, v in pieces[5:]:
        j.add(g, c, s, v)
    j.commit()
    j.commit()  # nothing pending: no-op
    assert j.done == {0, 1, 2} and j.computed == 3
    assert [j.chunk_of(g) for g, *_ in pieces] == [0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert j.is_done(0) and j.is_done(299) and not j.is_done(300)

    got = []
    Journal(d, IDENT, chunk_bp=100).replay(lambda c, s, v: got.append((c, s, v)))
    assert [(c, s) for c, s, _ in got] == [(c, s) for _, c, s, _ in pieces]
    for (_, _, v), (_, _, _, w) in zip(got, pieces):
        assert v.dtype == np.float32 and np.array_equal(v, w)  # stored values come back exactly


def test_reopened_journal_knows_finished_chunks(tmp_path):
    d = tmp_path / "p"
    j = Journal(d, IDENT, chunk_bp=100)
    for g, c, s, v in _pieces()[:5]:
        j.add(g, c, s, v)  # chunk 1 is open, never committed (the run is killed here)
    j2 = Journal(d, IDENT, chunk_bp=100)
    assert j2.done == {0} and j2.reused == 1 and j2.computed == 0
    assert j2.is_done(50) and not j2.is_done(120)


# -- whole units (embed, score-variants) ------------------------------------------------------------------------
def test_save_and_load_units_and_parts(tmp_path):
    d = tmp_path / "p"
    j = Journal(d, IDENT, chunk_bp=64, unit="tokens")
    j.save(3, {"rows": np.ones((2, 4), np.float32)}, part=0)
    j.save(3, {"rows": np.zeros((1, 4), np.float32)}, part=1)
    assert not j.has(3)  # parts do not finish a unit
    j.save(3, {"parts": np.array(2)})
    j.save(7, {"results": np.array(json.dumps([[0, "ok", [1.5]]]))})
    assert j.has(3) and j.has(7) and not j.has(4) and j.computed == 2
    j2 = Journal(d, IDENT, chunk_bp=64, unit="tokens")
    assert j2.done == {3, 7} and j2.reused == 2
    assert int(j2.load(3)["parts"]) == 2
    assert np.array_equal(j2.load(3, part=1)["rows"], np.zeros((1, 4), np.float32))
    assert json.loads(str(j2.load(7)["results"])) == [[0, "ok", [1.5]]]
    j.save(9, {"obj": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle"):  # reading back never unpickles
        j.load(9)


def test_leftovers_of_a_killed_run_are_cleaned_and_remove(tmp_path):
    d = tmp_path / "p"
    Journal(d, IDENT)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    half = d / (temp_prefix("chunk-00000004.npz").replace(f"-{os.getpid()}@", f"-{p.pid}@") + "x.tmp.npz")
    half.write_bytes(b"half a chunk")
    j = Journal(d, IDENT)
    assert not half.exists() and j.done == set()  # a half-written chunk is neither kept nor counted
    j.remove()
    assert not d.exists()
    j.remove()  # twice: no error
