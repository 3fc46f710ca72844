"""Issue #14, cases 19-20: SIGTERM/SIGINT end a run with one line and exit 128+N, removing its temporary outputs
and keeping the --resume state; the leftovers of a run killed with SIGKILL are removed by the next run on the same
output (only those whose owner process is gone), and --resume still works after them."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import run_ntk

ROOT = Path(__file__).resolve().parents[1]
SEG = ROOT / "tests" / "data" / "golden" / "segment_nt_tiny"
NT_V2 = ROOT / "tests" / "data" / "golden" / "nt_v2_tiny"
SAMPLE_VCF = ROOT / "data" / "sample" / "variants.vcf"
SAMPLE_FA = ROOT / "data" / "sample" / "genome.fa.gz"
RNG = np.random.default_rng(19)
CHUNK = 6000


def dna(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Path:
    fa = tmp_path_factory.mktemp("g") / "g.fa"
    fa.write_text(">a\n" + dna(150000) + "\n>b\n" + dna(30000) + "\n")
    return fa


def start_segment(fa: Path, out: Path, *extra, ignore_sigint: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ntk.cli.main", "segment", fa, "-m", SEG, "-o", out, "--window", "480",
           "--batch-size", "1", "--threads", "1", "-q", *extra]

    def pre():
        if ignore_sigint:  # what a shell does for a background job (`cmd &` in a script, nohup)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    return subprocess.Popen(list(map(str, cmd)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=pre)


def wait_for(cond, p: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None and not cond():
        time.sleep(0.02)
    assert p.poll() is None, f"the run ended before the signal: {p.stderr.read() if p.stderr else ''}"


def temp_entries(d: Path) -> list[str]:
    """ntk's temporary names in ``d`` (``.NAME.ntk-KIND-PID@HOST-...``)."""
    return sorted(e.name for e in d.iterdir() if ".ntk-" in e.name and not e.name.endswith(".ntk-partial"))


def one_line(stderr: str, *words: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ntk: error: "), stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_removes_temporaries_keeps_resume_state(tmp_path, genome, sig):
    out = tmp_path / "out"
    partial = tmp_path / ".out.ntk-partial"
    p = start_segment(genome, out, "--resume", "--resume-chunk-bp", CHUNK)
    wait_for(lambda: len(list(partial.glob("chunk-*.npz"))) >= 2 and temp_entries(tmp_path), p)
    p.send_signal(sig)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 128 + sig, (p.returncode, err)
    one_line(err, f"stopped by {signal.Signals(sig).name}", "--resume")
    assert temp_entries(tmp_path) == [] and not out.exists()
    kept = sorted(x.name for x in partial.iterdir())
    assert len([k for k in kept if k.startswith("chunk-")]) >= 2 and not [k for k in kept if k.startswith(".")]
    # the same command again continues from the kept chunks and finishes
    p = start_segment(genome, out, "--resume", "--resume-chunk-bp", CHUNK)
    err = p.communicate(timeout=600)[1]
    assert p.returncode == 0, err
    info = json.loads((out / "run.json").read_text())
    assert info["resume"]["chunks_reused"] >= 2 and info["bp_scored"] > 0
    assert not partial.exists() and temp_entries(tmp_path) == []


def test_ignored_sigint_stays_ignored(tmp_path, genome):
    out = tmp_path / "out"
    p = start_segment(genome, out, "-r", "b", ignore_sigint=True)
    wait_for(lambda: bool(temp_entries(tmp_path)), p)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=600)[1]
    assert p.returncode == 0, err
    assert (out / "run.json").is_file() and temp_entries(tmp_path) == []


def test_sigterm_during_embed_leaves_nothing(tmp_path):
    fa = tmp_path / "many.fa"
    fa.write_text("".join(f">r{i}\n{dna(3000)}\n" for i in range(400)))
    out = tmp_path / "e.parquet"
    p = subprocess.Popen([sys.executable, "-m", "ntk.cli.main", "embed", str(fa), "-m", str(NT_V2), "-o", str(out),
                          "--threads", "1", "--batch-size", "1", "-q"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(".ntk-parts-" in e.name and any(Path(e).iterdir()) for e in tmp_path.iterdir()), p)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 143, (p.returncode, err)
    one_line(err, "stopped by SIGTERM")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["many.fa", "many.fa.fai"] or \
        sorted(x.name for x in tmp_path.iterdir()) == ["many.fa"]


# -- 20: leftovers of dead runs --------------------------------------------------------------------------------
def test_sigkill_leftovers_removed_by_next_run_and_resume_works(tmp_path, genome):
    out = tmp_path / "out"
    partial = tmp_path / ".out.ntk-partial"
    p = start_segment(genome, out, "--resume", "--resume-chunk-bp", CHUNK)
    wait_for(lambda: len(list(partial.glob("chunk-*.npz"))) >= 2 and temp_entries(tmp_path), p)
    p.kill()
    p.wait()
    left = temp_entries(tmp_path)
    assert left and all(f"-{p.pid}@" in x for x in left)  # the dead run's temporary directory is still there
    p = start_segment(genome, out, "--resume", "--resume-chunk-bp", CHUNK)
    err = p.communicate(timeout=600)[1]
    assert p.returncode == 0, err
    assert json.loads((out / "run.json").read_text())["resume"]["chunks_reused"] >= 2
    assert temp_entries(tmp_path) == [] and not partial.exists()


def dead_pid() -> int:
    q = subprocess.Popen([sys.executable, "-c", "pass"])
    q.wait()
    return q.pid


def test_leftovers_of_dead_runs_removed_for_embed_and_score_variants(tmp_path):
    host = "".join(c if c.isalnum() or c in "_-" else "_" for c in socket.gethostname())[:40]
    dead, alive = dead_pid(), os.getpid()
    fa = tmp_path / "s.fa"
    fa.write_text(f">s1\n{dna(700)}\n>s2\n{dna(500)}\n")
    emb, vcf_out = tmp_path / "e.parquet", tmp_path / "o.vcf"
    made = {
        "dead_parts": tmp_path / f".e.parquet.ntk-parts-{dead}@{host}-abc123",
        "dead_tmp": tmp_path / f".e.parquet.ntk-tmp-{dead}@{host}-x1y2z3.tmp",
        "dead_vcf": tmp_path / f".o.vcf.ntk-tmp-{dead}@{host}-q9w8e7.tmp.vcf",
        "alive": tmp_path / f".e.parquet.ntk-tmp-{alive}@{host}-live00.tmp",  # a running process: kept
        "other_host": tmp_path / f".e.parquet.ntk-tmp-{dead}@elsewhere-zz9.tmp",  # another machine's: kept
    }
    made["dead_parts"].mkdir()
    (made["dead_parts"] / "part-000000.parquet").write_bytes(b"half")
    for k in ("dead_tmp", "dead_vcf", "alive", "other_host"):
        made[k].write_bytes(b"half")
    p = run_ntk("embed", fa, "-m", NT_V2, "-o", emb, "-q")
    assert p.returncode == 0, p.stderr
    assert pl.read_parquet(emb).height == 2
    p = run_ntk("score-variants", SAMPLE_VCF, "-f", SAMPLE_FA, "-m", NT_V2, "-o", vcf_out, "--scores", "cosine", "-q")
    assert p.returncode == 0, p.stderr
    assert not made["dead_parts"].exists() and not made["dead_tmp"].exists() and not made["dead_vcf"].exists()
    assert made["alive"].exists() and made["other_host"].exists()
