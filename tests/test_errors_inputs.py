"""Issue #14, cases 1-18: bad inputs and faults end as the right output, or one `ntk: error:` line naming the
file/record and the fix, a non-zero exit, no traceback and nothing left behind (hidden files included).

Every case runs the real CLI in a subprocess on real files written here (tiny golden models, no network)."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pysam
import pytest

from conftest import run_ntk

ROOT = Path(__file__).resolve().parents[1]
SEG = ROOT / "tests" / "data" / "golden" / "segment_nt_tiny"
NT_V2 = ROOT / "tests" / "data" / "golden" / "nt_v2_tiny"
SAMPLE_VCF = ROOT / "data" / "sample" / "variants.vcf"
SAMPLE_FA = ROOT / "data" / "sample" / "genome.fa.gz"
RNG = np.random.default_rng(14)
SEG_OPTS = ("-m", SEG, "--window", "480", "--threads", "1", "-q")


def dna(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


def fasta_text(records: list[tuple[str, str]], width: int = 60) -> str:
    return "".join(f">{n}\n" + "".join(s[i:i + width] + "\n" for i in range(0, len(s), width)) for n, s in records)


def one_line_error(p: subprocess.CompletedProcess, *words: str, code: int = 2) -> str:
    """Exit ``code``, exactly one stderr line `ntk: error: ...` holding every word, no traceback."""
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ntk: error: "), p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def listing(d: Path) -> set[str]:
    """Every entry under ``d`` (hidden ones included), relative paths."""
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def ntk_to(stdout_path: str, *args) -> subprocess.CompletedProcess:
    """The CLI with stdout sent to ``stdout_path`` (e.g. /dev/full)."""
    with open(stdout_path, "wb") as out:
        return subprocess.run([sys.executable, "-m", "ntk.cli.main", *map(str, args)], stdout=out,
                              stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("genome")
    fa = d / "g.fa"
    fa.write_text(fasta_text([("chr1", dna(2000)), ("chr2", dna(1500))]))
    return fa


# -- 1, 2: indexes that do not belong to the file ----------------------------------------------------------
def test_stale_bgzip_index_is_refused_then_rebuilt(tmp_path):
    old = fasta_text([("chr1", dna(1200))])
    new = old + fasta_text([("chr2", dna(900))])  # one more contig, same first bytes
    gz = tmp_path / "g.fa.gz"
    (tmp_path / "new.fa").write_text(new)
    (tmp_path / "old.fa").write_text(old)
    pysam.tabix_compress(str(tmp_path / "old.fa"), str(gz))
    pysam.faidx(str(gz))  # .fai + .gzi of the old file
    new_gz = tmp_path / "new.fa.gz"
    pysam.tabix_compress(str(tmp_path / "new.fa"), str(new_gz))
    t = gz.stat().st_mtime
    shutil.copyfile(new_gz, gz)
    os.utime(gz, (t - 100, t - 100))  # like `cp -p`: the new file looks older than its index
    before = listing(tmp_path)
    p = run_ntk("segment", gz, *SEG_OPTS, "-o", tmp_path / "seg")
    one_line_error(p, "g.fa.gz.fai", "does not match", "g.fa.gz", "samtools faidx")
    assert listing(tmp_path) == before
    # the fix the message gives: delete the index; ntk rebuilds it and segments both contigs
    for ext in (".fai", ".gzi"):
        Path(str(gz) + ext).unlink()
    p = run_ntk("segment", gz, *SEG_OPTS, "--bedgraph", "exon")
    assert p.returncode == 0, p.stderr
    assert {ln.split("\t")[0] for ln in p.stdout.splitlines()} == {"chr1", "chr2"}


def test_fai_of_another_fasta_is_refused(tmp_path, genome):
    fa = tmp_path / "g.fa"
    shutil.copy(genome, fa)
    other = tmp_path / "other.fa"
    other.write_text(fasta_text([("chrX", dna(700)), ("chrY", dna(800))]))
    pysam.faidx(str(other))
    shutil.copy(str(other) + ".fai", str(fa) + ".fai")  # newer than g.fa: dates alone would accept it
    before = listing(tmp_path)
    p = run_ntk("segment", fa, *SEG_OPTS, "-o", tmp_path / "seg")
    one_line_error(p, "g.fa.fai does not match", "chrX")
    assert listing(tmp_path) == before


# -- 3, 4, 6, 8, 16: FASTA content ---------------------------------------------------------------------------
def test_duplicate_contig_names_refused_by_every_reader(tmp_path):
    fa = tmp_path / "dup.fa"
    fa.write_text(fasta_text([("chr1", dna(600)), ("chr2", dna(600)), ("chr1", dna(600))]))
    p = run_ntk("segment", fa, *SEG_OPTS, "-o", tmp_path / "seg")
    one_line_error(p, "dup.fa", "duplicate record name 'chr1'")
    assert "fai_insert_index" not in p.stderr  # no htslib warning either
    p = run_ntk("embed", fa, "-m", NT_V2, "-o", tmp_path / "e.parquet", "-q")  # streaming reader
    one_line_error(p, "dup.fa", "line 23", "duplicate record name 'chr1'")
    assert sorted(listing(tmp_path)) == ["dup.fa", "dup.fa.fai"]


def test_header_without_name_in_indexed_fasta(tmp_path):
    fa = tmp_path / "noname.fa"
    fa.write_text(fasta_text([("chr1", dna(600))]) + ">\n" + dna(600) + "\n")
    p = run_ntk("segment", fa, *SEG_OPTS, "-o", tmp_path / "seg")
    one_line_error(p, "noname.fa", "header without a name", "chr1")
    assert not (tmp_path / "seg").exists()


def test_non_utf8_record_name_refused(tmp_path):
    fa = tmp_path / "bad.fa"
    fa.write_bytes(b">chr\xff1\n" + dna(600).encode() + b"\n")
    for args in (("segment", fa, *SEG_OPTS, "-o", tmp_path / "seg"),
                 ("embed", fa, "-m", NT_V2, "-o", tmp_path / "e.parquet", "-q")):
        p = run_ntk(*args)
        one_line_error(p, "bad.fa", "not valid UTF-8", "0xFF", "rename")
    assert not (tmp_path / "seg").exists() and not (tmp_path / "e.parquet").exists()


def test_non_ascii_bytes_in_sequence_named_by_contig_and_position(tmp_path):
    fa = tmp_path / "bytes.fa"
    fa.write_bytes(b">chr1\n" + dna(300).encode() + b"\xff\xfe" + dna(300).encode() + b"\n")
    p = run_ntk("segment", fa, *SEG_OPTS, "-o", tmp_path / "seg")
    one_line_error(p, "bytes.fa", "contig chr1", "0xFF", "position 301")
    p = run_ntk("embed", fa, "-m", NT_V2, "-o", tmp_path / "e.parquet", "-q")
    one_line_error(p, "bytes.fa", "record chr1", "0xFF", "column 301")
    assert sorted(listing(tmp_path)) == ["bytes.fa", "bytes.fa.fai"]


def test_vcf_given_as_fasta(tmp_path):
    p = run_ntk("segment", SAMPLE_VCF, *SEG_OPTS, "-o", tmp_path / "seg")
    one_line_error(p, "variants.vcf", "not a FASTA file", "VCF")
    assert listing(tmp_path) == set()


# -- 5: an output that is an input --------------------------------------------------------------------------
def test_output_that_is_an_input_is_refused(tmp_path, genome):
    fa = tmp_path / "g.fa"
    shutil.copy(genome, fa)
    (tmp_path / "link.fa").symlink_to(fa)
    vcf = tmp_path / "v.vcf"
    shutil.copy(SAMPLE_VCF, vcf)
    keep = {f: f.read_bytes() for f in (fa, vcf)}
    p = run_ntk("embed", fa, "-m", NT_V2, "-o", fa, "--force", "-q")
    one_line_error(p, "the output is the input", "g.fa")
    p = run_ntk("embed", fa, "-m", NT_V2, "-o", tmp_path / "link.fa", "--force", "-q")  # through a symlink
    one_line_error(p, "link.fa", "the output is the input")
    p = run_ntk("embed", fa, "-r", "chr1:1-600", "-m", NT_V2, "-o", str(fa) + ".fai", "--force", "-q")
    one_line_error(p, "g.fa.fai", "the output is the input")
    p = run_ntk("score-variants", vcf, "-f", fa, "-m", NT_V2, "-o", vcf, "--force", "-q")
    one_line_error(p, "v.vcf", "the output is the input")
    p = run_ntk("score-variants", vcf, "-f", fa, "-m", NT_V2, "-o", "-", "--table", vcf, "--force", "-q")
    one_line_error(p, "v.vcf", "the output is the input")
    p = run_ntk("segment", fa, *SEG_OPTS, "-o", tmp_path, "--force")  # the output directory holds the genome
    one_line_error(p, "holds the input", "g.fa")
    assert {f: f.read_bytes() for f in keep} == keep
    assert sorted(listing(tmp_path)) == ["g.fa", "link.fa", "v.vcf"]


# -- 7: shard names that leave the checkpoint directory -------------------------------------------------------
@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_shard_outside_checkpoint_directory_refused(tmp_path, genome, how):
    ck = tmp_path / "ck"
    ck.mkdir()
    shutil.copy(NT_V2 / "config.json", ck / "config.json")
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(NT_V2 / "model.safetensors", outside)
    from safetensors import safe_open
    with safe_open(str(outside), "pt") as f:
        keys = list(f.keys())
    name = {"absolute": str(outside), "dotdot": "../elsewhere.safetensors", "symlink": "inside.safetensors"}[how]
    if how == "symlink":
        (ck / name).symlink_to(outside)
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: name for k in keys}}))
    p = run_ntk("embed", genome, "-m", ck, "-o", tmp_path / "e.parquet", "-q")
    one_line_error(p, "model.safetensors.index.json", "outside the checkpoint directory", "refusing")
    assert not (tmp_path / "e.parquet").exists()


# -- 9, 18: stdout full or closed ------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_disk_full_on_stdout(tmp_path, genome):
    p = ntk_to("/dev/full", "segment", genome, *SEG_OPTS, "-r", "chr1:1-1000", "--bedgraph", "exon")
    one_line_error(p, "stdout: cannot write", "No space left on device")
    p = ntk_to("/dev/full", "score-variants", SAMPLE_VCF, "-f", SAMPLE_FA, "-m", NT_V2, "-q")
    one_line_error(p, "stdout: cannot write", "No space left on device")
    p = ntk_to("/dev/full", "embed", genome, "-m", NT_V2, "-o", "-", "-q")
    one_line_error(p, "stdout: cannot write", "No space left on device")
    assert listing(tmp_path) == set()


def test_closed_pipe_ends_quietly_everywhere(genome):
    """`set -o pipefail; ntk ... | true`: the reader is gone before the first write; every command ends with 0
    and says nothing, like segment and embed always did."""
    exe = f"{sys.executable} -m ntk.cli.main"
    cmds = [f"score-variants {SAMPLE_VCF} -f {SAMPLE_FA} -m {NT_V2} -q",
            f"segment {genome} -m {SEG} --window 480 -q --bedgraph exon",
            f"embed {genome} -m {NT_V2} -o - -q"]
    for c in cmds:
        p = subprocess.run(["bash", "-c", f"set -o pipefail; {exe} {c} | (sleep 0; exit 0) "], capture_output=True,
                           text=True)
        assert p.returncode == 0 and p.stderr == "", (c, p.returncode, p.stderr)


# -- 10, 11: output locations that cannot be created -------------------------------------------------------------
def test_output_below_a_file(tmp_path, genome):
    (tmp_path / "f").write_text("a file\n")
    p = run_ntk("segment", genome, *SEG_OPTS, "-o", tmp_path / "f" / "out")
    one_line_error(p, "f is a file, not a directory")
    p = run_ntk("embed", genome, "-m", NT_V2, "-o", tmp_path / "f" / "e.parquet", "-q")
    one_line_error(p, "f is a file, not a directory")
    assert listing(tmp_path) == {"f"}


def test_read_only_output_location(tmp_path, genome):
    ro = tmp_path / "ro"
    ro.mkdir()
    args = [sys.executable, "-m", "ntk.cli.main", "segment", str(genome), *map(str, SEG_OPTS), "-o", str(ro / "seg")]
    if os.geteuid() != 0:
        ro.chmod(0o555)
        p = subprocess.run(args, capture_output=True, text=True)
        ro.chmod(0o755)
    else:  # root writes through permissions: mount a read-only file system in a private mount namespace
        unshare = shutil.which("unshare")
        probe = subprocess.run([unshare or "unshare", "-m", "true"], capture_output=True) if unshare else None
        if probe is None or probe.returncode != 0:
            pytest.skip("root without mount namespaces: no read-only file system to test on")
        script = f"mount -t tmpfs -o ro none {ro} && exec \"$@\""
        p = subprocess.run([unshare, "-m", "sh", "-c", script, "sh", *args], capture_output=True, text=True)
    one_line_error(p, "ro", "not writable")
    assert listing(tmp_path) == {"ro"}


# -- 12, 13: config.json that cannot describe the weights ---------------------------------------------------------
def _checkpoint(tmp_path: Path, **changes) -> Path:
    ck = tmp_path / "ck"
    shutil.copytree(SEG, ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg.update(changes)
    (ck / "config.json").write_text(json.dumps(cfg))
    return ck


@pytest.mark.parametrize("changes,words", [
    ({"hidden_size": 10**9}, ["config.json", "needs about", "GiB", "available"]),
    ({"hidden_size": 4096, "num_hidden_layers": 48, "intermediate_size": 16384, "num_attention_heads": 32}, []),
    ({"hidden_size": "abc"}, ["config.json", "field 'hidden_size'", "expected int", '"abc"']),
    ({"num_hidden_layers": 2.5}, ["field 'num_hidden_layers'", "expected int"]),
    ({"features": "exon"}, ["field 'features'", "list of strings"]),
])
def test_bad_config_refused_before_allocating(tmp_path, genome, changes, words):
    ck = _checkpoint(tmp_path, **changes)
    p = run_ntk("segment", genome, "-m", ck, "--window", "480", "-q", "-o", tmp_path / "seg")
    line = one_line_error(p, *words)
    if not words:  # 4096 x 48 layers against tiny weights: the shapes (or, on a small machine, the memory)
        assert "weights do not match config.json" in line or "needs about" in line, line
    assert not (tmp_path / "seg").exists()


def test_pretrain_config_too_large(tmp_path, genome):
    from ntk.model.config import PRESETS

    cfg = dict(PRESETS["tiny"][1], hidden_size=10**8)
    (tmp_path / "big.json").write_text(json.dumps(cfg))
    p = run_ntk("pretrain", genome, "--config", tmp_path / "big.json", "-o", tmp_path / "run", "--steps", "1", "-q")
    one_line_error(p, "--config", "big.json", "needs about", "GiB")


# -- 14, 17: VCF --------------------------------------------------------------------------------------------------
def test_plain_gzip_vcf(tmp_path):
    gz = tmp_path / "v.vcf.gz"
    with gzip.open(gz, "wb") as f:
        f.write(SAMPLE_VCF.read_bytes())
    p = run_ntk("score-variants", gz, "-f", SAMPLE_FA, "-m", NT_V2, "-q")
    one_line_error(p, "v.vcf.gz", "not bgzip-compressed", "bgzip")
    assert sorted(listing(tmp_path)) == ["v.vcf.gz"]


def test_vcf_pos_0_gets_a_status(tmp_path):
    lines = SAMPLE_VCF.read_text().splitlines(keepends=True)
    head = [x for x in lines if x.startswith("#")]
    body = [x for x in lines if not x.startswith("#")][:3]
    cols = body[0].split("\t")
    cols[1] = "0"
    vcf = tmp_path / "p0.vcf"
    vcf.write_text("".join(head) + "\t".join(cols) + "".join(body[1:]))
    p = run_ntk("score-variants", vcf, "-f", SAMPLE_FA, "-m", NT_V2, "-q", "--scores", "cosine")
    assert p.returncode == 0, p.stderr
    recs = [x.split("\t") for x in p.stdout.splitlines() if not x.startswith("#")]
    assert [r[1] for r in recs] == ["0", body[1].split("\t")[1], body[2].split("\t")[1]]
    assert "NTK_STATUS=ref_mismatch" in recs[0][7] and "NTK_COS" not in recs[0][7]
    assert all("NTK_STATUS=ok" in r[7] for r in recs[1:])


# -- 15: no network -------------------------------------------------------------------------------------------------
def test_models_download_without_network(tmp_path):
    pytest.importorskip("huggingface_hub")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens
           "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    p = subprocess.run([sys.executable, "-m", "ntk.cli.main", "models", "download", "nt-v2-50m"], capture_output=True,
                       text=True, env=env, timeout=120)
    one_line_error(p, "cannot download", "InstaDeepAI/nucleotide-transformer-v2-50m-multi-species", "--model DIR")
