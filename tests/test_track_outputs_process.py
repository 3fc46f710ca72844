"""Issue #19: segment's track writers in worker processes (``io/track_outputs``, ``writers="process"``) write
byte-identical files to the in-process writers, report a failing or dead worker as an error (never a hang), and
leave no process behind (abort, a killed parent, SIGTERM through the CLI)."""
from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_ntk
from ntk.errors import NtkError
from ntk.io.track_outputs import TrackOutputs, choose_writers

ROOT = Path(__file__).resolve().parents[1]
SEG = ROOT / "tests" / "data" / "golden" / "segment_nt_tiny"
FEATS = ["exon", "intron", "promoter"]
SIZES = [("a", 120_000), ("b", 1), ("c", 45_000)]


def chunks(seed: int = 0, dtype=np.float32) -> list[tuple[str, int, np.ndarray]]:
    """Chunks in genome order: varied lengths (one larger than a ring buffer's first size), gaps, a value run
    above the threshold crossing chunk ends, contigs skipped."""
    rng = np.random.default_rng(seed)
    out = []
    for c, n in SIZES:
        if n < 10:
            continue
        s = 0
        while s < n:
            k = min(int(rng.choice([300, 1700, 5000, 70_000])), n - s)
            v = rng.random((k, len(FEATS))).astype(dtype)
            v[k // 3: k // 2, 0] = 0.9  # a segment of the first feature
            out.append((c, s, v))
            s += k + (int(rng.integers(1, 50)) if rng.random() < 0.3 else 0)
    return out


def write(out: Path, items, **kw) -> TrackOutputs:
    out.mkdir()
    t = TrackOutputs(out, SIZES, FEATS, 0.6, 3, zoom_levels=4, merge_gap=2, **kw)
    try:
        for c, s, v in items:
            t.add(c, s, v)
        t.close()
    except BaseException:
        t.abort()
        raise
    return t


def children(pid: int) -> list[int]:
    """The track writer processes started by ``pid``."""
    p = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    out = []
    for c in p.stdout.split():
        try:
            if b"_worker_main" in Path(f"/proc/{c}/cmdline").read_bytes():
                out.append(int(c))
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by a dead parent's init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("processes,dtype", [(1, np.float32), (2, np.float32), (4, np.float64)])
def test_process_writers_write_the_same_bytes(tmp_path, processes, dtype):
    items = chunks(processes, dtype)
    a = write(tmp_path / "thread", items, writers="thread")
    b = write(tmp_path / "process", items, writers="process", processes=processes)
    assert a.writers == "thread" and b.writers == "process"
    names = [f"{f}.bw" for f in FEATS] + ["segments.bed.gz", "segments.bed.gz.tbi"]
    assert sorted(p.name for p in (tmp_path / "process").iterdir()) == sorted(names)
    for n in names:
        assert (tmp_path / "thread" / n).read_bytes() == (tmp_path / "process" / n).read_bytes(), n
    assert a.bp_written == b.bp_written == sum(v.shape[0] for _, _, v in items)
    assert a.segments.n_segments == b.segments.n_segments > 0
    assert len(gzip.decompress((tmp_path / "process" / "segments.bed.gz").read_bytes()).splitlines()) == \
        b.segments.n_segments
    assert children(os.getpid()) == []


def test_bigwigs_only_and_bedgraph_in_parent(tmp_path):
    import io
    items = chunks(7)
    bufs = [io.BytesIO(), io.BytesIO()]
    for w, buf in zip(("thread", "process"), bufs):
        (tmp_path / w).mkdir()
        t = TrackOutputs(tmp_path / w, SIZES, FEATS, 0.5, 1, bedgraph_index=1, bedgraph_stream=buf,
                         segments=False, writers=w)
        for c, s, v in items:
            t.add(c, s, v)
        t.close()
        assert t.segments is None
    assert bufs[0].getvalue() == bufs[1].getvalue() and bufs[0].getvalue()
    for f in FEATS:
        assert (tmp_path / "thread" / f"{f}.bw").read_bytes() == (tmp_path / "process" / f"{f}.bw").read_bytes()
    assert not (tmp_path / "process" / "segments.bed.gz").exists()


def test_worker_error_is_raised_in_the_caller(tmp_path):
    (tmp_path / "o").mkdir()
    t = TrackOutputs(tmp_path / "o", SIZES, FEATS, 0.5, 1, writers="process", processes=2)
    v = np.zeros((100, 3), np.float32)
    t.add("c", 1000, v)
    t.flush()
    t.add("a", 0, v)  # out of genome order: the worker's BigWigWriter refuses it, as in-process
    with pytest.raises(ValueError, match="out of genome order"):
        t.flush()
        t.close()
    t.abort()
    assert children(os.getpid()) == []


def test_unwritable_output_fails_at_the_first_chunk(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    t = TrackOutputs(blocker / "sub", SIZES, FEATS, 0.5, 1, writers="process")  # workers start meanwhile
    with pytest.raises(NtkError, match="cannot create BigWig file"):
        t.add("a", 0, np.zeros((10, 3), np.float32))
        t.close()
    t.abort()
    assert children(os.getpid()) == []


def test_dead_worker_is_an_error_not_a_hang(tmp_path):
    (tmp_path / "o").mkdir()
    t = TrackOutputs(tmp_path / "o", SIZES, FEATS, 0.5, 1, writers="process", processes=2)
    t.add("a", 0, np.zeros((10, 3), np.float32))
    t.flush()
    victim = children(os.getpid())[0]
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(NtkError, match=rf"track writer process {victim} \(writing .*\) was killed by signal 9"):
        for s in range(10, 100_000, 1000):  # the ring of buffers fills up within a few chunks
            t.add("a", s, np.zeros((1000, 3), np.float32))
            t.flush()
        t.close()
    t.abort()
    assert children(os.getpid()) == []


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    code = ("import sys, time, numpy as np; from pathlib import Path; from ntk.io.track_outputs import TrackOutputs;"
            f"t = TrackOutputs(Path(sys.argv[1]), {SIZES!r}, {FEATS!r}, 0.5, 1, writers='process', processes=2);"
            "t.add('a', 0, np.zeros((100, 3), np.float32)); t.flush(); print('ready', flush=True); time.sleep(600)")
    (tmp_path / "o").mkdir()
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "o")], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "ready"
    workers = children(p.pid)
    assert len(workers) == 2
    p.kill()
    p.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.05)
    assert not any(alive(w) for w in workers)


def test_choose_writers(tmp_path, monkeypatch):
    big, small = [("a", 3_000_000)], [("a", 1000)]
    monkeypatch.delenv("NTK_TRACK_WRITERS", raising=False)
    assert choose_writers(None, None, big) == "thread"  # bedGraph only
    assert choose_writers(None, tmp_path, small) == "thread"
    assert choose_writers(None, tmp_path, big, 14) == ("process" if len(os.sched_getaffinity(0)) >= 2 else "thread")
    assert choose_writers(None, tmp_path, big, 500) == "thread"  # NTv3 tracks: hundreds of outputs
    monkeypatch.setenv("NTK_TRACK_WRITERS", "process")
    assert choose_writers(None, tmp_path, small) == "process"
    assert choose_writers("thread", tmp_path, big) == "thread"
    monkeypatch.setenv("NTK_TRACK_WRITERS", "gpu")
    with pytest.raises(NtkError, match="NTK_TRACK_WRITERS"):
        choose_writers(None, tmp_path, small)


# -- through the CLI ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    fa = tmp_path_factory.mktemp("g") / "g.fa"
    seq = lambda n: "".join(rng.choice(list("ACGT"), n))  # noqa: E731
    fa.write_text(f">a\n{seq(120000)}NNNN{seq(9000)}\n>b\n{seq(30000)}\n")
    return fa


def segment(genome: Path, out: Path, writers: str, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ntk.cli.main", "segment", genome, "-m", SEG, "-o", out, "--window", "480",
           "--threads", "1", "-q", *extra]
    return subprocess.Popen(list(map(str, cmd)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NTK_TRACK_WRITERS": writers, "OMP_NUM_THREADS": "1"})


def test_cli_segment_same_outputs_with_process_writers(tmp_path, genome):
    runs = {w: segment(genome, tmp_path / w, w) for w in ("thread", "process")}
    for w, p in runs.items():
        err = p.communicate(timeout=600)[1]
        assert p.returncode == 0, (w, err)
    for f in [f"{x}.bw" for x in FEATS] + ["segments.bed.gz"]:
        a, b = (tmp_path / w / f for w in ("thread", "process"))
        if a.exists() or b.exists():
            assert a.read_bytes() == b.read_bytes(), f


def test_cli_sigterm_stops_the_workers_and_removes_temporaries(tmp_path, genome):
    out = tmp_path / "out"
    p = segment(genome, out, "process", "--batch-size", "1")
    deadline = time.time() + 120
    while time.time() < deadline and len(children(p.pid)) < 1:
        time.sleep(0.02)
    workers = children(p.pid)
    assert workers, p.stderr.read()
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 143, err
    assert err.strip().startswith("ntk: error: stopped by SIGTERM") and "Traceback" not in err
    assert not out.exists() and [e.name for e in tmp_path.iterdir()] == []
    assert not any(alive(w) for w in workers)


def test_cli_killed_worker_is_one_error_line(tmp_path, genome):
    out = tmp_path / "out"
    p = segment(genome, out, "process", "--batch-size", "1")
    deadline = time.time() + 120
    while time.time() < deadline and not children(p.pid):
        time.sleep(0.02)
    os.kill(children(p.pid)[0], signal.SIGKILL)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ntk: error: ") and "track writer process" in lines[0], err
    assert "killed by signal 9" in lines[0]
    assert not out.exists() and [e.name for e in tmp_path.iterdir()] == []


def test_run_ntk_help_still_works():
    assert run_ntk("segment", "--help").returncode == 0
