"""--resume: a segment run killed with SIGKILL partway leaves no output; started again with --resume it computes
only the unfinished chunks and writes what an uninterrupted run writes; a resume with other options refuses."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyBigWig

ROOT = Path(__file__).resolve().parents[1]
SEG = ROOT / "tests" / "data" / "golden" / "segment_nt_tiny"
NTK = Path(sys.executable).parent / "ntk"
RNG = np.random.default_rng(12)
CHUNK = 12000


def dna(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


def run(fa, out, *extra, wait=True):
    cmd = [NTK, "segment", fa, "-m", SEG, "-o", out, "--window", "480", "--batch-size", "1", "--threads", "1",
           "-q", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def test_sigkill_then_resume(tmp_path):
    fa = tmp_path / "g.fa"
    fa.write_text(">a\n" + dna(90000) + "N" * 100 + dna(30000) + "\n>b\n" + dna(20000) + "\n")
    ref = run(fa, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "out"
    partial = tmp_path / ".out.ntk-partial"
    resume = ["--resume", "--resume-chunk-bp", str(CHUNK)]
    p = run(fa, out, *resume, wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and len(list(partial.glob("chunk-*.npz"))) < 3:
        time.sleep(0.02)
    assert p.poll() is None, "the run finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done_before = len(list(partial.glob("chunk-*.npz")))
    assert done_before >= 3
    assert not out.exists()  # nothing final was written

    bad = run(fa, out, *resume, "--threshold", "0.3")  # another option: refused, state kept
    assert bad.returncode == 2 and "--resume" in bad.stderr and "different options" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and partial.is_dir()

    again = run(fa, out, *resume)
    assert again.returncode == 0, again.stderr
    assert not partial.exists()  # partial state removed on success
    n_chunks = -(-140100 // CHUNK)
    info = json.loads((out / "run.json").read_text())["resume"]
    assert info["chunks_reused"] >= done_before
    assert info["chunks_reused"] + info["chunks_computed"] == n_chunks  # every chunk exactly once
    ref = tmp_path / "ref"
    for f in json.loads((ref / "run.json").read_text())["options"]["features"]:
        x, y = pyBigWig.open(str(ref / f"{f}.bw")), pyBigWig.open(str(out / f"{f}.bw"))
        for c, n in x.chroms().items():
            np.testing.assert_array_equal(np.asarray(x.values(c, 0, n)), np.asarray(y.values(c, 0, n)))
    assert gzip.open(ref / "segments.bed.gz").read() == gzip.open(out / "segments.bed.gz").read()
