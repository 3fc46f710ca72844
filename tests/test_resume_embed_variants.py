"""--resume for embed and score-variants: a run killed with SIGKILL partway leaves no output; started again with
--resume it computes only the unfinished chunks of records and writes what an uninterrupted run writes (Parquet
rows, VCF records in input order, same values); a resume with other options refuses with one line."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from ntk.model import load_model
from ntk.pipelines.embed import Embedder, fasta_inputs

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
NTK = Path(sys.executable).parent / "ntk"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def dna(rng, n: int, alphabet: str = "ACGT") -> str:
    return "".join(rng.choice(list(alphabet), n))


def ntk(*args, wait=True):
    cmd = [str(NTK), *map(str, args), "--threads", "1"]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)


def kill_after(cmd: list, partial: Path, units: int) -> int:
    """Start ``cmd``, SIGKILL it once ``partial`` holds ``units`` committed chunks; return how many it held."""
    p = ntk(*cmd, wait=False)
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None and len(list(partial.glob("chunk-*.npz"))) < units:
        time.sleep(0.01)
    assert p.poll() is None, "the run finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = len(list(partial.glob("chunk-*.npz")))
    assert done >= units
    return done


def resume_counts(stderr: str) -> tuple[int, int]:
    m = re.search(r"--resume: (\d+) chunks reused, (\d+) computed", stderr)
    assert m, stderr
    return int(m[1]), int(m[2])


def test_embed_sigkill_then_resume(tmp_path):
    rng = np.random.default_rng(3)
    fa = tmp_path / "s.fa"
    with open(fa, "w") as f:
        for i in range(160):  # one record longer than two chunks: a unit with several blocks
            n = 9000 if i == 7 else int(rng.integers(0, 1500))
            f.write(f">r{i}\n{dna(rng, n, 'ACGTACGTACGTN')}\n")
    base = ["embed", fa, "-m", GOLDEN / "nt_v2_tiny", "--chunk-tokens", 400, "--batch-size", 1, "--layer", "-1,2"]
    ref = ntk(*base, "-o", tmp_path / "ref.parquet", "-q")
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "out.parquet"
    partial = tmp_path / ".out.parquet.ntk-partial"
    done = kill_after([*base, "-o", out, "--resume", "-q"], partial, 2)
    assert not out.exists()  # nothing final was written

    bad = ntk(*base, "--pool", "max", "-o", out, "--resume")  # another option: refused, state kept
    assert bad.returncode == 2 and "--resume" in bad.stderr and "different" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and partial.is_dir()

    again = ntk(*base, "-o", out, "--resume")
    assert again.returncode == 0, again.stderr
    assert not partial.exists()  # partial state removed on success
    reused, computed = resume_counts(again.stderr)
    assert reused >= done and computed >= 1
    emb = Embedder(load_model(GOLDEN / "nt_v2_tiny"), layers="-1,2", chunk_tokens=400, batch_size=1)
    units = sum(done for _, _, done in emb.run_units(fasta_inputs(str(fa)), skip=lambda k: True))  # no model run
    assert reused + computed == units > 10  # every unit exactly once
    a, b = pl.read_parquet(tmp_path / "ref.parquet"), pl.read_parquet(out)
    assert a.height == 160 and a.equals(b)  # same rows, same order, same values


def write_inputs(tmp_path: Path, rng) -> tuple[Path, Path]:
    seqs = {"c1": dna(rng, 6000), "c2": dna(rng, 300) + "N" * 50 + dna(rng, 3000)}
    fa = tmp_path / "g.fa"
    fa.write_text("".join(f">{c}\n{s}\n" for c, s in seqs.items()))
    lines = ["##fileformat=VCFv4.2", *(f"##contig=<ID={c},length={len(s)}>" for c, s in seqs.items()),
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for c, s in seqs.items():
        for pos in sorted(rng.choice(np.arange(10, len(s) - 10), 60, replace=False)):
            r = s[pos - 1]
            others = [b for b in "ACGT" if b != r]
            alt = {0: others[0], 1: f"{others[0]},{others[1]}", 2: r + "GT", 3: "<DEL>"}[int(rng.integers(0, 4))]
            lines.append(f"{c}\t{pos}\t.\t{r}\t{alt}\t.\tPASS\t.")
    vcf = tmp_path / "in.vcf"
    vcf.write_text("\n".join(lines) + "\n")
    return fa, vcf


def test_score_variants_sigkill_then_resume(tmp_path):
    fa, vcf = write_inputs(tmp_path, np.random.default_rng(5))
    base = ["score-variants", vcf, "-f", fa, "-m", GOLDEN / "nt_v2_tiny", "--chunk-size", 4, "--batch-size", 1,
            "--scores", "cosine,l2,llr"]
    ref = ntk(*base, "-o", tmp_path / "ref.vcf", "--table", tmp_path / "ref.parquet", "-q")
    assert ref.returncode == 0, ref.stderr

    out, tab = tmp_path / "out.vcf", tmp_path / "out.parquet"
    partial = tmp_path / ".out.vcf.ntk-partial"
    done = kill_after([*base, "-o", out, "--table", tab, "--resume", "-q"], partial, 3)
    assert not out.exists() and not tab.exists()

    bad = ntk(*base, "--window", 240, "-o", out, "--table", tab, "--resume")
    assert bad.returncode == 2 and "--resume" in bad.stderr and "different" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and partial.is_dir()

    again = ntk(*base, "-o", out, "--table", tab, "--resume")
    assert again.returncode == 0, again.stderr
    assert not partial.exists()
    reused, computed = resume_counts(again.stderr)
    assert reused >= done and computed >= 1 and reused + computed == 30  # 120 records in chunks of 4

    def body(p):
        return [x for x in p.read_text().splitlines() if not x.startswith("##ntkCommand")]
    assert body(out) == body(tmp_path / "ref.vcf")  # same records, same order, same INFO values
    assert pl.read_parquet(tab).equals(pl.read_parquet(tmp_path / "ref.parquet"))
