"""torchrun --nproc-per-node 2 --no-python ntk segment ... (CPU, gloo) gives the same OUTDIR as one process."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyBigWig
import pytest

ROOT = Path(__file__).resolve().parents[1]
SEG = ROOT / "tests" / "data" / "golden" / "segment_nt_tiny"
BIN = Path(sys.executable).parent
RNG = np.random.default_rng(11)


def dna(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


@pytest.mark.skipif(not (BIN / "torchrun").exists(), reason="torchrun is not installed in this environment")
def test_torchrun_two_ranks_equal_one_process(tmp_path):
    fa = tmp_path / "g.fa"
    fa.write_text(">a\n" + dna(3000) + "NNNNN" + dna(2000) + "\n>b\n" + dna(50) + "\n>c\n" + dna(4000) + "\n")
    args = [fa, "-m", SEG, "--window", "480", "--batch-size", "2", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun gives each rank one thread: same arithmetic
    one = subprocess.run([BIN / "ntk", "segment", *args, "-o", tmp_path / "one"], capture_output=True, text=True,
                         env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([BIN / "torchrun", "--nproc-per-node", "2", "--no-python", BIN / "ntk", "segment", *args,
                          "-o", tmp_path / "two"], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.fa", "g.fa.fai", "one", "two"]  # parts removed
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
    for f in json.loads((tmp_path / "one" / "run.json").read_text())["options"]["features"]:
        x, y = pyBigWig.open(str(tmp_path / "one" / f"{f}.bw")), pyBigWig.open(str(tmp_path / "two" / f"{f}.bw"))
        for c, n in x.chroms().items():
            np.testing.assert_array_equal(np.asarray(x.values(c, 0, n)), np.asarray(y.values(c, 0, n)))
    assert gzip.open(tmp_path / "one" / "segments.bed.gz").read() == \
        gzip.open(tmp_path / "two" / "segments.bed.gz").read()
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["merged_from"] == 2
