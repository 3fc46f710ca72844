"""ntk score-variants (issue #5): scores against a direct computation through the Python API, statuses,
VCF conventions (bcftools reads the output, order and samples kept, Number=A), stdin/stdout, contig naming,
atomic outputs, and the data/sample run end to end.

The direct computation below re-derives every score from the documented definitions: the reference window is
the window of ``tile(0, contig_length, W, W // 4)`` whose kept part holds the variant's first REF base, the
alternate window is that window with the edit applied and brought back to length W (insertion: drop d//2 nt on
the left, the rest on the right; deletion: add d//2 reference nt on the left, the rest on the right), the mean
embedding is the final-layer output averaged over the DNA tokens, and the LLR masks the token covering the
substitution. Each window is run alone (batch of one, no padding) through ``m(...)``.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import ntk
from ntk.errors import NtkError
from ntk.io.tables import read_parquet_metadata
from ntk.model.tokenizer import reverse_complement
from ntk.pipelines.finetune import build_task_model
from ntk.pipelines.score_variants import score_variants
from ntk.plan.windows import tile

from conftest import GOLDEN, SAMPLE, need_tool, run_ntk

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

RNG = np.random.default_rng(11)
SCORES = ("cosine", "l2", "l1", "dot")


# -- inputs ------------------------------------------------------------------------------------------------------

def random_dna(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    with open(path, "w") as f:
        for name, seq in records.items():
            f.write(f">{name}\n")
            for i in range(0, len(seq), 60):
                f.write(seq[i:i + 60] + "\n")
    return path


def write_vcf(path: Path, contigs: dict[str, int], records: list[tuple], samples: bool = True) -> Path:
    """records: (chrom, pos1, id, ref, alt[, info])."""
    lines = ["##fileformat=VCFv4.2"] + [f"##contig=<ID={c},length={n}>" for c, n in contigs.items()]
    lines += ['##INFO=<ID=KIND,Number=1,Type=String,Description="test case">',
              '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">']
    lines.append("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO" + ("\tFORMAT\ts1\ts2" if samples else ""))
    for r in records:
        chrom, pos, vid, ref, alt = r[:5]
        info = f"KIND={r[5]}" if len(r) > 5 else "."
        lines.append(f"{chrom}\t{pos}\t{vid}\t{ref}\t{alt}\t50\tPASS\t{info}" + ("\tGT\t0/1\t1/1" if samples else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def models():
    ms = {n: ntk.load_model(str(GOLDEN / n), device="cpu", dtype=torch.float32)
          for n in ("nt_v2_tiny", "nt_v1_tiny", "segment_nt_tiny")}
    # + ntk's nucleotide head (it reads the bases of each window: the scorer must hand it the right ids)
    seg = ms["segment_nt_tiny"]
    m = build_task_model(seg, "segment", features=seg.features, nucleotide_head=8)
    with torch.no_grad():
        m.nuc_head.out.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    ms["segment_nt_tiny+nuc"] = m.eval()
    return ms


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    """c1: 2000 nt with a soft-masked stretch and an N run; c2: 4 nt (shorter than a token);
    c3: 2500 nt with an N run (two ACGT runs for SegmentNT)."""
    d = tmp_path_factory.mktemp("genome")
    c1 = random_dna(2000)
    c1 = c1[:300] + c1[300:360].lower() + c1[360:1500] + "N" * 10 + c1[1510:]
    c3 = random_dna(2500)
    c3 = c3[:1200] + "NNNNN" + c3[1205:]
    seqs = {"c1": c1, "c2": "ACGT", "c3": c3}
    return write_fasta(d / "genome.fa", seqs), {k: v.upper() for k, v in seqs.items()}


def token_aligned(seq_len: int, W: int, near: int, offset: int) -> int:
    """A 0-based position close to ``near`` at ``offset`` (mod 6) from the start of its window."""
    for p in range(near, near + 12):
        w = next(w for w in tile(0, seq_len, W, W // 4) if w.keep_start <= p < w.keep_end)
        if (p - w.start) % 6 == offset:
            return p
    raise AssertionError


def other(b: str) -> str:
    return {"A": "C", "C": "G", "G": "T", "T": "A"}[b]


def variant_set(seqs: dict[str, str], W: int) -> list[tuple]:
    """SNVs (clustered, near both contig ends, soft-masked, next to N), insertions, deletions (one at the contig
    end, where the window can only grow to the left), MNVs inside one token and across a token boundary, a
    multi-allelic record."""
    s = seqs["c1"]
    L = len(s)
    recs = []

    def snv(p, kind="snv"):
        recs.append(("c1", p + 1, f"v{len(recs)}", s[p], other(s[p]), kind))

    for p in (4, 600, 606, 650, 700, 320, 1495, 1996):
        snv(p)
    recs.append(("c1", 3, "ins_start", s[2], s[2] + "TT", "insertion"))
    recs.append(("c1", 800, "ins", s[799], s[799] + "GATTACA", "insertion"))
    recs.append(("c1", 1000, "del", s[999:1005], s[999], "deletion"))
    recs.append(("c1", 1990, "del_end", s[1989:1994], s[1989], "deletion"))
    p = token_aligned(L, W, 1100, 2)
    recs.append(("c1", p + 1, "mnv", s[p:p + 2], other(s[p]) + other(s[p + 1]), "mnv"))
    p = token_aligned(L, W, 1150, 5)
    recs.append(("c1", p + 1, "mnv_split", s[p:p + 2], other(s[p]) + other(s[p + 1]), "mnv"))
    recs.append(("c1", 1301, "multi", s[1300], f"{other(s[1300])},{other(other(s[1300]))}", "multiallelic"))
    return sorted(recs, key=lambda r: r[1])


# -- the direct computation ----------------------------------------------------------------------------------------

def windows_of(seq: str, pos0: int, ref: str, alt: str, W: int, lo: int = 0, hi: int | None = None, unit: int = 1):
    hi = len(seq) if hi is None else hi
    w = next(w for w in tile(lo, hi, W, W // 4, unit) if w.keep_start <= pos0 < w.keep_end)
    d = len(alt) - len(ref)
    if d >= 0:
        tl = min(d // 2, pos0 - w.start)
        tr = d - tl
        alt_seq, a0 = seq[w.start + tl:pos0] + alt + seq[pos0 + len(ref):w.end - tr], w.start + tl
    else:
        e = -d
        el = min(e // 2, w.start - lo)
        er = min(e - el, hi - w.end)
        el = min(e - er, w.start - lo)
        alt_seq, a0 = seq[w.start - el:pos0] + alt + seq[pos0 + len(ref):w.end + er], w.start - el
    return w, seq[w.start:w.end], alt_seq, a0


def forward(m, s: str):
    with torch.inference_mode():
        return m(torch.as_tensor(m.tokenizer.tokenize(s)[0], dtype=torch.long)[None])


def mean_embedding(m, s: str) -> np.ndarray:
    return forward(m, s).last_hidden_state[0, 1:].double().mean(0).numpy()


def direct_llr(m, ref_seq: str, alt_seq: str, lo: int, hi: int) -> float | None:
    """Mask the one token covering window positions [lo, hi); log p(alt token) - log p(ref token)."""
    ids, starts, ends = m.tokenizer.tokenize(ref_seq)
    hits = [t for t in range(1, len(ids)) if starts[t] <= lo and hi <= ends[t]]
    if not hits:
        return None
    t = hits[0]
    masked = torch.as_tensor(ids, dtype=torch.long).clone()
    masked[t] = m.tokenizer.mask_id
    with torch.inference_mode():
        logp = torch.log_softmax(m(masked[None]).logits[0, t].double(), -1)
    alt_id = m.tokenizer.token_to_id(alt_seq[starts[t]:ends[t]])
    return float(logp[alt_id] - logp[ids[t]])


def direct(m, seq: str, pos1: int, ref: str, alt: str, W: int, rc: bool = False, llr: bool = True) -> dict:
    pos0 = pos1 - 1
    ref, alt = ref.upper(), alt.upper()
    w, rseq, aseq, _ = windows_of(seq, pos0, ref, alt, W)
    strands = [(rseq, aseq)] + ([(reverse_complement(rseq), reverse_complement(aseq))] if rc else [])
    out = {k: 0.0 for k in SCORES}
    for rs, as_ in strands:
        r, a = mean_embedding(m, rs), mean_embedding(m, as_)
        out["cosine"] += (1 - r @ a / (np.linalg.norm(r) * np.linalg.norm(a))) / len(strands)
        out["l2"] += np.linalg.norm(r - a) / len(strands)
        out["l1"] += np.abs(r - a).sum() / len(strands)
        out["dot"] += (r @ a) / len(strands)
    out["llr"] = None
    if llr and len(ref) == len(alt):
        diff = [i for i in range(len(ref)) if ref[i] != alt[i]]
        lo, hi = pos0 + diff[0] - w.start, pos0 + diff[-1] - w.start + 1
        vals = [direct_llr(m, rseq, aseq, lo, hi)]
        if rc:
            vals.append(direct_llr(m, strands[1][0], strands[1][1], W - hi, W - lo))
        out["llr"] = None if None in vals else float(np.mean(vals))
    return out


def probabilities(m, s: str, rc: bool) -> np.ndarray:
    p = forward(m, s).segment_probabilities[0].numpy()
    if rc:  # reverse-complement strand, flipped back to forward positions, averaged
        p = (p + forward(m, reverse_complement(s)).segment_probabilities[0].numpy()[::-1]) / 2
    return p


def direct_segment(m, seq: str, pos1: int, ref: str, alt: str, W: int, radius: int, lo: int, hi: int,
                   rc: bool = False) -> np.ndarray:
    """Per feature max |p_alt - p_ref| over aligned reference positions within radius (plain loop)."""
    pos0 = pos1 - 1
    w, rseq, aseq, a0 = windows_of(seq, pos0, ref, alt, W, lo, hi, unit=24)
    pr, pa = probabilities(m, rseq, rc), probabilities(m, aseq, rc)
    d = len(alt) - len(ref)
    best = np.zeros(pr.shape[1])
    for r in range(max(w.start, pos0 - radius), min(w.end, pos0 + len(ref) + radius)):
        if pos0 + min(len(ref), len(alt)) <= r < pos0 + len(ref):
            continue  # deleted base
        j = r - a0 + (d if r >= pos0 + len(ref) else 0)
        if 0 <= j < len(aseq):
            best = np.maximum(best, np.abs(pa[j] - pr[r - w.start]))
    return best


def table_rows(path: Path) -> list[dict]:
    return pl.read_parquet(path).to_dicts()


def assert_close(got, want, what):
    if want is None:
        assert got is None, f"{what}: expected missing, got {got}"
    else:
        assert got is not None, f"{what}: missing, expected {want}"
        assert np.isclose(got, want, rtol=2e-4, atol=2e-6), f"{what}: {got} != {want}"


# -- scores equal the direct computation -------------------------------------------------------------------------

@pytest.mark.parametrize("name,rc", [("nt_v2_tiny", False), ("nt_v2_tiny", True), ("nt_v1_tiny", False)])
def test_scores_equal_direct_computation(models, genome, tmp_path, name, rc):
    m = models[name]
    fa, seqs = genome
    W = (m.config.max_tokens - 1) * 6
    recs = variant_set(seqs, W)
    vcf = write_vcf(tmp_path / "in.vcf", {"c1": 2000, "c2": 4, "c3": 2500}, recs)
    summary = score_variants(str(vcf), str(fa), model=m, output=str(tmp_path / "out.vcf.gz"),
                             table=str(tmp_path / "t.parquet"), rc_average=rc, batch_size=5)
    rows = table_rows(tmp_path / "t.parquet")
    assert [(r["pos"], r["id"]) for r in rows] == [(r[1], r[2]) for r in recs for _ in r[4].split(",")]
    i = 0
    seen_llr = seen_llr_missing = 0
    windows = set()
    for rec in recs:
        for alt in rec[4].split(","):
            row = rows[i]
            i += 1
            w, rseq, aseq, _ = windows_of(seqs["c1"], rec[1] - 1, rec[3].upper(), alt, W)
            n_tokens = max(len(m.tokenizer.tokenize(x)[0]) for x in (rseq, aseq))
            if not m.config.rotary and n_tokens > m.config.max_tokens:
                # learned positions: an N-rich window (every N is a token) needs more positions than the model has
                assert row["status"] == "no_context"
                continue
            want = direct(m, seqs["c1"], rec[1], rec[3], alt, W, rc=rc)
            windows.add(w)
            assert row["status"] == "ok", row
            for k in SCORES + ("llr",):
                assert_close(row[k], want[k], f"{name} {rec[2]} {alt} {k}")
            seen_llr += want["llr"] is not None
            seen_llr_missing += want["llr"] is None
    assert seen_llr >= 8 and seen_llr_missing >= 3  # indels and the token-splitting MNV have no llr
    # one reference pass per window (per strand), not per variant
    assert summary.passes["ref"] == len(windows) * (2 if rc else 1) and len(windows) < summary.alleles


def test_vcf_output_matches_table_and_bcftools_reads_it(models, genome, tmp_path):
    need_tool("bcftools")
    m = models["nt_v2_tiny"]
    fa, seqs = genome
    recs = variant_set(seqs, 378)
    vcf = write_vcf(tmp_path / "in.vcf", {"c1": 2000, "c2": 4, "c3": 2500}, recs)
    out = tmp_path / "out.vcf.gz"
    score_variants(str(vcf), str(fa), model=m, output=str(out), table=str(tmp_path / "t.parquet"),
                   command="ntk score-variants test")
    assert Path(str(out) + ".tbi").is_file()
    q = subprocess.run(["bcftools", "query", "-f", "%CHROM %POS %ID %INFO/NTK_COS %INFO/NTK_LLR %INFO/NTK_STATUS "
                        "[%GT ]\\n", str(out)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(q) == len(recs)
    rows = table_rows(tmp_path / "t.parquet")
    k = 0
    for line, rec in zip(q, recs):
        chrom, pos, vid, cos, llr, status, gt1, gt2 = line.split()
        assert (chrom, int(pos), vid, gt1, gt2) == (rec[0], rec[1], rec[2], "0/1", "1/1")
        n = len(rec[4].split(","))
        assert status.split(",") == [r["status"] for r in rows[k:k + n]]
        for got, r in zip(cos.split(","), rows[k:k + n]):
            assert np.isclose(float(got), r["cosine"], rtol=1e-5)
        for got, r in zip(llr.split(","), rows[k:k + n]):
            assert (got == ".") == (r["llr"] is None)
        k += n
    header = subprocess.run(["bcftools", "view", "-h", str(out)], capture_output=True, text=True,
                            check=True).stdout
    for fid in ("NTK_COS", "NTK_L2", "NTK_L1", "NTK_DOT", "NTK_LLR", "NTK_STATUS"):
        assert f"##INFO=<ID={fid},Number=A," in header
    assert "##ntkVersion=" in header and "##ntkCommand=ntk score-variants test" in header
    assert "##ntkPrecision=fp32 (given model)" in header  # the precision it ran in, as in the table's metadata
    assert read_parquet_metadata(tmp_path / "t.parquet")["precision"] == "fp32 (given model)"
    # every input column other than INFO is unchanged
    body = subprocess.run(["bcftools", "view", "-H", str(out)], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    src = [x for x in vcf.read_text().splitlines() if not x.startswith("#")]
    for a, b in zip(body, src):
        fa_, fb = a.split("\t"), b.split("\t")
        assert fa_[:7] + fa_[8:] == fb[:7] + fb[8:]
        assert fa_[7].startswith(fb[7] + ";NTK_COS=")


@pytest.mark.parametrize("name,rc", [("segment_nt_tiny", False), ("segment_nt_tiny", True),
                                     ("segment_nt_tiny+nuc", False)])
def test_segment_scores_equal_direct_computation(models, genome, tmp_path, name, rc):
    m = models[name]
    fa, seqs = genome
    s = seqs["c3"]
    W, R = 936, 150
    runs = [(0, 1200), (1205, 2500)]
    recs = [("c3", 31, "snv_start", s[30], other(s[30])),
            ("c3", 700, "snv", s[699], other(s[699])),
            ("c3", 1190, "snv_n", s[1189], other(s[1189])),  # run [0, 1200) is shorter than W: shifted windows
            ("c3", 1600, "ins", s[1599], s[1599] + "ACGTAC"),
            ("c3", 1800, "del", s[1799:1806], s[1799]),
            ("c3", 2001, "mnv", s[2000:2003], other(s[2000]) + s[2001] + other(s[2002])),
            ("c3", 2301, "multi", s[2300], f"{other(s[2300])},{other(other(s[2300]))}"),
            ("c3", 1202, "in_n", "N", "A")]
    recs.sort(key=lambda r: r[1])
    vcf = write_vcf(tmp_path / "in.vcf", {"c1": 2000, "c2": 4, "c3": 2500}, recs)
    score_variants(str(vcf), str(fa), model=m, output=None, table=str(tmp_path / "t.parquet"), scores="segment",
                   segment_radius=R, rc_average=rc)
    rows = table_rows(tmp_path / "t.parquet")
    feats = m.config.features
    assert [c for c in rows[0] if c.startswith("segment_")] == [f"segment_{f}" for f in feats]
    i = 0
    for rec in recs:
        for alt in rec[4].split(","):
            row = rows[i]
            i += 1
            if rec[2] == "in_n":
                assert row["status"] == "no_context"  # no N-free SegmentNT window holds it
                continue
            lo, hi = next(r for r in runs if r[0] <= rec[1] - 1 < r[1])
            want = direct_segment(m, s, rec[1], rec[3], alt, W, R, lo, hi, rc)
            assert row["status"] == "ok"
            for f, v in zip(feats, want):
                assert_close(row[f"segment_{f}"], float(v), f"{rec[2]} {alt} {f}")
    assert any(row[f"segment_{feats[0]}"] > 1e-4 for row in rows if row["status"] == "ok")


# -- statuses ----------------------------------------------------------------------------------------------------

def test_statuses(models, genome, tmp_path):
    m = models["nt_v2_tiny"]
    fa, seqs = genome
    s = seqs["c1"]
    recs = [("c1", 101, "mismatch", other(s[100]), s[100]),
            ("c1", 201, "del_sym", s[200], "<DEL>"),
            ("c1", 211, "bnd", s[210], f"{s[210]}[c3:100["),
            ("c1", 221, "star", s[220], f"{other(s[220])},*"),
            ("c1", 401, "long", s[400:520], s[400]),
            ("c1", 431, "iupac_alt", s[430], "R"),
            ("c1", 441, "lower", s[440].lower(), other(s[440]).lower()),
            ("c2", 2, "tiny_contig", "C", "A"),
            ("c1", 501, "beyond", s[500], "."),
            ("c1", 1999, "past_end", s[1998:2000] + "A", "A")]
    vcf = write_vcf(tmp_path / "in.vcf", {"c1": 2000, "c2": 4, "c3": 2500}, recs)
    summary = score_variants(str(vcf), str(fa), model=m, output=str(tmp_path / "o.vcf"),
                             table=str(tmp_path / "t.parquet"))
    got = {(r["id"], r["alt"]): r for r in table_rows(tmp_path / "t.parquet")}
    assert got[("mismatch", s[100])]["status"] == "ref_mismatch"
    assert got[("mismatch", s[100])]["cosine"] is None
    assert got[("del_sym", "<DEL>")]["status"] == "symbolic"
    assert got[("bnd", f"{s[210]}[c3:100[")]["status"] == "symbolic"
    assert got[("star", other(s[220]))]["status"] == "ok"
    assert got[("star", "*")]["status"] == "unsupported"
    assert got[("long", s[400])]["status"] == "unsupported"  # edit longer than W/4
    assert got[("iupac_alt", "R")]["status"] == "ok" and got[("iupac_alt", "R")]["llr"] is None
    assert got[("tiny_contig", "A")]["status"] == "no_context"
    assert got[("lower", other(s[440]).lower())]["status"] == "ok"  # VCF alleles keep their case in the table
    assert got[("past_end", "A")]["status"] == "ref_mismatch"
    assert not any(r[0] == "beyond" for r in got)  # ALT '.': no allele, record kept as is
    text = (tmp_path / "o.vcf").read_text()
    assert sum(1 for x in text.splitlines() if not x.startswith("#")) == len(recs)
    assert "NTK_STATUS=ok,unsupported" in text
    assert summary.status["ref_mismatch"] == 2 and summary.status["symbolic"] == 2
    # llr alone: indels and symbolic alleles have no applicable score
    recs2 = [("c1", 800, "ins", s[799], s[799] + "GG"), ("c1", 900, "snv", s[899], other(s[899]))]
    vcf2 = write_vcf(tmp_path / "in2.vcf", {"c1": 2000}, recs2)
    score_variants(str(vcf2), str(fa), model=m, output=None, table=str(tmp_path / "t2.parquet"), scores="llr")
    st = [r["status"] for r in table_rows(tmp_path / "t2.parquet")]
    assert st == ["unsupported", "ok"]


def test_option_errors(models, genome, tmp_path):
    m = models["nt_v2_tiny"]
    fa, seqs = genome
    vcf = write_vcf(tmp_path / "in.vcf", {"c1": 2000}, [("c1", 10, "a", seqs["c1"][9], "A")])
    with pytest.raises(NtkError, match="segment needs a SegmentNT"):
        score_variants(str(vcf), str(fa), model=m, output=None, table=str(tmp_path / "t.parquet"), scores="segment")
    with pytest.raises(NtkError, match="llr needs a model with a masked-LM head"):
        score_variants(str(vcf), str(fa), model=models["segment_nt_tiny"], output="-", scores="llr")
    with pytest.raises(NtkError, match="multiple of 24"):
        score_variants(str(vcf), str(fa), model=models["segment_nt_tiny"], output="-", window=100)
    with pytest.raises(NtkError, match="learned positions"):
        score_variants(str(vcf), str(fa), model=models["nt_v1_tiny"], output="-", window=600)
    with pytest.raises(NtkError, match="unknown score"):
        score_variants(str(vcf), str(fa), model=m, output="-", scores="cosine,foo")


# -- streaming, order, atomic outputs -------------------------------------------------------------------------------

def test_unsorted_input_keeps_order_and_values(models, genome, tmp_path):
    m = models["nt_v2_tiny"]
    fa, seqs = genome
    recs = variant_set(seqs, 378)
    shuffled = [recs[i] for i in RNG.permutation(len(recs))]
    a = write_vcf(tmp_path / "a.vcf", {"c1": 2000}, recs)
    b = write_vcf(tmp_path / "b.vcf", {"c1": 2000}, shuffled)
    score_variants(str(a), str(fa), model=m, output=None, table=str(tmp_path / "a.parquet"))
    logs = []
    score_variants(str(b), str(fa), model=m, output=str(tmp_path / "b.vcf.gz"), table=str(tmp_path / "b.parquet"),
                   chunk_size=4, log=logs.append)
    ra = {(r["id"], r["alt"]): r for r in table_rows(tmp_path / "a.parquet")}
    rb = table_rows(tmp_path / "b.parquet")
    assert [r["id"] for r in rb] == [r[2] for r in shuffled for _ in r[4].split(",")]
    for r in rb:
        for k in SCORES + ("llr",):
            assert_close(r[k], ra[(r["id"], r["alt"])][k], f"{r['id']} {k}")
    assert not Path(str(tmp_path / "b.vcf.gz") + ".tbi").exists() and "not sorted" in logs[0]


def test_failure_leaves_no_output(models, genome, tmp_path):
    m = models["nt_v2_tiny"]
    fa, seqs = genome
    recs = variant_set(seqs, 378) + [("cX", 5, "bad", "A", "C")]
    vcf = write_vcf(tmp_path / "in.vcf", {"c1": 2000}, recs)
    out = tmp_path / "out" / "o.vcf.gz"
    with pytest.raises(NtkError, match=rf"record {len(recs)} \(cX:5\): contig 'cX' is not in the FASTA"):
        score_variants(str(vcf), str(fa), model=m, output=str(out), table=str(tmp_path / "out" / "t.parquet"),
                       chunk_size=3)
    assert list((tmp_path / "out").iterdir()) == []
    out.parent.mkdir(exist_ok=True)
    out.write_text("old")
    with pytest.raises(NtkError, match="already exists"):
        score_variants(str(vcf), str(fa), model=m, output=str(out))


def test_regions_shards_and_reannotation(models, genome, tmp_path):
    m = models["nt_v2_tiny"]
    fa, seqs = genome
    recs = variant_set(seqs, 378)
    vcf = write_vcf(tmp_path / "in.vcf", {"c1": 2000}, recs)
    # exact comparisons below: every run scores in the same chunks of 4 records, so every forward pass runs in the
    # same batch (bit-identical on any CPU); with other chunks, other batches round differently in the last digit
    score_variants(str(vcf), str(fa), model=m, output=str(tmp_path / "all.vcf"), table=str(tmp_path / "all.pq"),
                   chunk_size=4)
    score_variants(str(vcf), str(fa), model=m, output=None, table=str(tmp_path / "r.pq"), regions=["c1:600-801"])
    assert [r["pos"] for r in table_rows(tmp_path / "r.pq")] == [r[1] for r in recs if 600 <= r[1] <= 801]
    parts = []
    for i in (1, 2, 3):
        # shards are cut between scoring chunks (of 4 records here, so that each of the 3 shards gets some)
        score_variants(str(vcf), str(fa), model=m, output=str(tmp_path / f"s{i}.vcf"), shard=(i, 3), chunk_size=4)
        parts.append([x for x in (tmp_path / f"s{i}.vcf").read_text().splitlines() if not x.startswith("#")])
    whole = [x for x in (tmp_path / "all.vcf").read_text().splitlines() if not x.startswith("#")]
    # bit-identical only where the batches are (tests/TOLERANCES.md): the unsharded reference scores in the
    # same 4-record chunks; with 4,096-record chunks the last printed digit can differ on some CPUs
    score_variants(str(vcf), str(fa), model=m, output=str(tmp_path / "all4.vcf"), chunk_size=4)
    whole4 = [x for x in (tmp_path / "all4.vcf").read_text().splitlines() if not x.startswith("#")]
    assert sum(parts, []) == whole4 and all(parts)
    if shutil.which("bcftools"):  # BCF input gives the same records
        subprocess.run(["bcftools", "view", "-Ob", "-o", str(tmp_path / "in.bcf"), str(vcf)], check=True)
        score_variants(str(tmp_path / "in.bcf"), str(fa), model=m, output=str(tmp_path / "bcf.vcf"), chunk_size=4)
        assert [x for x in (tmp_path / "bcf.vcf").read_text().splitlines() if not x.startswith("#")] == whole
    # scoring an already-scored file replaces the values instead of duplicating them
    score_variants(str(tmp_path / "all.vcf"), str(fa), model=m, output=str(tmp_path / "again.vcf"), chunk_size=4)
    again = [x for x in (tmp_path / "again.vcf").read_text().splitlines() if not x.startswith("#")]
    assert again == whole


# -- the CLI: stdin/stdout, chr-prefix mismatch, data/sample end to end --------------------------------------------

def test_cli_stdin_stdout(genome, tmp_path):
    need_tool("bcftools")
    fa, seqs = genome
    recs = variant_set(seqs, 378)
    vcf = write_vcf(tmp_path / "in.vcf", {"c1": 2000}, recs)
    p = run_ntk("score-variants", "-", "-f", fa, "-m", GOLDEN / "nt_v2_tiny", "--scores", "cosine,llr", "-q",
                "--threads", 1,
                input=vcf.read_text())
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    out = tmp_path / "out.vcf"
    out.write_text(p.stdout)
    q = subprocess.run(["bcftools", "query", "-f", "%CHROM %POS %INFO/NTK_COS\\n", str(out)], capture_output=True,
                       text=True, check=True).stdout.splitlines()
    assert [tuple(x.split()[:2]) for x in q] == [(r[0], str(r[1])) for r in recs]
    assert all(x.split()[2] != "." for x in q)
    assert "NTK_L2" not in p.stdout


def test_cli_chr_prefix_mismatch(genome, tmp_path):
    fa, seqs = genome
    s = seqs["c1"]
    fa2 = write_fasta(tmp_path / "g.fa", {"1": s[:1000]})
    vcf = write_vcf(tmp_path / "in.vcf", {"chr1": 1000}, [("chr1", 500, "x", s[499], other(s[499]))])
    out = tmp_path / "o.vcf.gz"
    p = run_ntk("score-variants", vcf, "-f", fa2, "-m", GOLDEN / "nt_v2_tiny", "-o", out, "--threads", 1)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "--chr-map" in p.stderr and "'chr1'" in p.stderr
    assert not out.exists() and p.stdout == ""
    cmap = tmp_path / "map.txt"
    cmap.write_text("chr1\t1\n")
    p = run_ntk("score-variants", vcf, "-f", fa2, "-m", GOLDEN / "nt_v2_tiny", "-o", out, "--chr-map", cmap, "-q",
                "--threads", 1)
    assert p.returncode == 0, p.stderr
    import pysam
    rec = next(iter(pysam.VariantFile(str(out))))
    assert rec.chrom == "chr1" and rec.info["NTK_STATUS"] == ("ok",)  # names are never rewritten


def test_cli_sample_end_to_end(tmp_path):
    need_tool("bcftools")
    fa = tmp_path / "genome.fa.gz"
    shutil.copy(SAMPLE / "genome.fa.gz", fa)  # the .fai/.gzi are built here, not in data/
    out = tmp_path / "scored.vcf.gz"
    p = run_ntk("score-variants", SAMPLE / "variants.vcf", "-f", fa, "-m", GOLDEN / "nt_v2_tiny", "-o", out,
                "--table", tmp_path / "t.parquet", "--threads", 1)
    assert p.returncode == 0, p.stderr
    assert "171 records" in p.stderr and "ref_mismatch 2" in p.stderr
    q = subprocess.run(["bcftools", "query", "-f", "%CHROM %POS %ID %INFO/KIND %INFO/NTK_STATUS %INFO/NTK_COS\\n",
                        str(out)], capture_output=True, text=True, check=True).stdout.splitlines()
    src = subprocess.run(["bcftools", "query", "-f", "%CHROM %POS %ID\\n", str(SAMPLE / "variants.vcf")],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(q) == len(src) == 171
    assert [" ".join(x.split()[:3]) for x in q] == src
    expect = {"snv": "ok", "insertion": "ok", "deletion": "ok", "mnv": "ok", "multiallelic": "ok,ok",
              "symbolic": "symbolic", "breakend": "symbolic", "ref_mismatch": "ref_mismatch"}
    for line in q:
        _, _, _, kind, status, cos = line.split()
        assert status == expect[kind], line
        assert (cos == ".") == (status != "ok" and status != "ok,ok")
    assert Path(str(out) + ".tbi").is_file()
    assert subprocess.run(["bcftools", "view", "-H", "-r", "III", str(out)], capture_output=True, text=True,
                          check=True).stdout.count("\n") == sum(1 for x in src if x.startswith("III "))
    assert len(table_rows(tmp_path / "t.parquet")) == 172


def test_zero_shot_warning_for_the_embedded_model_and_model_cards(genome, tmp_path):
    """The embedded model (and any model whose card says so) gets a one-line warning that its zero-shot scores
    are not informative; a model without such a card does not."""
    fa, seqs = genome
    s = seqs["c3"]
    vcf = write_vcf(tmp_path / "in.vcf", {"c3": len(s)}, [("c3", 2000, "x", s[1999], other(s[1999]))])

    def warnings(*model):
        p = run_ntk("score-variants", vcf, "-f", fa, *model, "--scores", "cosine", "-o", tmp_path / "o.vcf",
                    "--force", "--threads", 1)
        assert p.returncode == 0, p.stderr
        text = " ".join(p.stderr.split())  # rich wraps long lines at the terminal width
        return [w for w in text.split("warning: ")[1:] if "zero-shot scores are not informative" in w]

    got = warnings()  # no --model: the embedded ntk-yeast-tiny
    assert len(got) == 1 and "ntk-yeast-tiny" in got[0]

    def api_warnings(model):  # the Python API logs the same line through `log`
        lines = []
        score_variants(str(vcf), str(fa), model=model, scores="cosine", output=str(tmp_path / "o.vcf"), force=True,
                       log=lines.append)
        return [ln for ln in lines if "zero-shot scores are not informative" in ln]

    assert api_warnings(GOLDEN / "nt_v2_tiny") == []
    carded = tmp_path / "carded"
    shutil.copytree(GOLDEN / "nt_v2_tiny", carded)
    (carded / "README.md").write_text("# my model\n\nZero-shot scores: not informative (trained on 1 Mb).\n")
    got = api_warnings(carded)
    assert len(got) == 1 and "model card (README.md)" in got[0]
