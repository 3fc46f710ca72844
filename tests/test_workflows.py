"""workflows/: the Snakefile segments a small genome in 3 shards and merges them (snakemake --cores 2); the SLURM
array and merge scripts, run as SLURM would run them (array task ids in the environment), do the same."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyBigWig
import pytest

ROOT = Path(__file__).resolve().parents[1]
SEG = ROOT / "tests" / "data" / "golden" / "segment_nt_tiny"
BIN = Path(sys.executable).parent
RNG = np.random.default_rng(13)
SNAKEMAKE = shutil.which("snakemake", path=str(BIN)) or shutil.which("snakemake")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("wf")
    seq = "".join(RNG.choice(list("ACGT"), 9000))
    (d / "g.fa").write_text(f">a\n{seq[:5000]}NNNN{seq[5000:8000]}\n>b\n{seq[8000:]}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run([BIN / "ntk", "segment", d / "g.fa", "-m", SEG, "-o", d / "ref", "--window", "480",
                          "--threads", "1", "-q"], capture_output=True, text=True, env=env)
    assert ref.returncode == 0, ref.stderr
    return d, env


def same_as_ref(ref: Path, out: Path) -> None:
    def names(d):  # snakemake marks directory outputs with a hidden .snakemake_timestamp
        return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))
    assert names(out) == names(ref)
    for f in json.loads((ref / "run.json").read_text())["options"]["features"]:
        x, y = pyBigWig.open(str(ref / f"{f}.bw")), pyBigWig.open(str(out / f"{f}.bw"))
        for c, n in x.chroms().items():
            np.testing.assert_array_equal(np.asarray(x.values(c, 0, n)), np.asarray(y.values(c, 0, n)))
    assert gzip.open(ref / "segments.bed.gz").read() == gzip.open(out / "segments.bed.gz").read()


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed (pip install -e '.[dev]')")
def test_snakefile_shards_and_merges(setup):
    d, env = setup
    p = subprocess.run([SNAKEMAKE, "-s", ROOT / "workflows" / "Snakefile", "--cores", "2", "--directory", d,
                        "--config", f"genome={d / 'g.fa'}", f"model={SEG}", "shards=3", "out=seg",
                        f"ntk={BIN / 'ntk'}", "extra=--window 480", "threads=1"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(x.name for x in (d / "seg.parts").iterdir() if x.is_dir() and x.name != "logs") == \
        ["1of3", "2of3", "3of3"]
    same_as_ref(d / "ref", d / "seg")


def test_slurm_scripts_as_array_tasks(setup):
    d, env = setup
    slurm = ROOT / "workflows" / "slurm"
    env = {**env, "GENOME": str(d / "g.fa"), "MODEL": str(SEG), "OUT": str(d / "sl"), "N": "2",
           "NTK": str(BIN / "ntk"), "EXTRA": "--window 480", "SLURM_CPUS_PER_TASK": "1"}
    for i in (1, 2):  # what sbatch --array=1-2 runs: the script with SLURM_ARRAY_TASK_ID set
        p = subprocess.run(["bash", slurm / "segment_array.sbatch"], capture_output=True, text=True,
                           env={**env, "SLURM_ARRAY_TASK_ID": str(i)}, cwd=d)
        assert p.returncode == 0, p.stderr
    p = subprocess.run(["bash", slurm / "merge.sbatch"], capture_output=True, text=True, env=env, cwd=d)
    assert p.returncode == 0, p.stderr
    assert not (d / "sl.parts").exists()
    same_as_ref(d / "ref", d / "sl")
    assert subprocess.run(["bash", "-n", slurm / "submit.sh"]).returncode == 0
