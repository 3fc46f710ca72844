"""ntk score-variants with NTv3: statuses (SNV, MNV, indel, multi-allelic, mismatch, symbolic), llr equal to an
independent computation through the Python API (single-base masked, window centred on the variant), track /
element deltas, the long table and the compact INFO summary."""
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import ntk
from ntk.errors import NtkError
from ntk.pipelines.score_variants import score_variants

from conftest import run_ntk

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
POST = ROOT / "tests" / "data" / "golden" / "ntv3_post_tiny"
PRE = ROOT / "tests" / "data" / "golden" / "ntv3_pre_tiny"
ID = {"A": 6, "T": 7, "C": 8, "G": 9, "N": 10}
COMP = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}
W = 64


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    rng = np.random.default_rng(7)
    seq = "".join(rng.choice(list("ACGT"), 300))
    d = tmp_path_factory.mktemp("g")
    (d / "g.fa").write_text(">c\n" + seq + "\n")
    return d / "g.fa", seq


def other(b):
    return "C" if b != "C" else "G"


def write_vcf(path, records):
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=c,length=300>", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    lines += [f"c\t{p}\tv{k}\t{r}\t{a}\t.\t.\t." for k, (p, r, a) in enumerate(records)]
    path.write_text("\n".join(lines) + "\n")


def window(seq, pos0, ref_len):
    s = pos0 + ref_len // 2 - W // 2
    return s, "".join(seq[p] if 0 <= p < len(seq) else "N" for p in range(s, s + W))


def masked_llr(m, win, t, ref_base, alt_base, species):
    ids = torch.tensor([[ID[c] for c in win]])
    ids[0, t] = 2  # <mask>
    with torch.inference_mode():
        logp = torch.log_softmax(m(ids, species_ids=species).logits[0, t].double(), -1)
    return float(logp[ID[alt_base]] - logp[ID[ref_base]])


@pytest.mark.parametrize("name", ["pre", "post"])
def test_statuses_and_llr_match_python_api(tmp_path, genome, name):
    fa, seq = genome
    m = ntk.load_model(PRE if name == "pre" else POST)
    species = "mouse" if name == "post" else None
    sid = None if species is None else m.species_id(species)
    snv = (100, seq[99], other(seq[99]))
    mnv = (150, seq[149:151], other(seq[149]) + other(seq[150]))
    ins = (200, seq[199], seq[199] + "GA")
    dele = (220, seq[219:222], seq[219])
    multi = (10, seq[9], ",".join(b for b in "ACGT" if b != seq[9]))  # near the contig start: N padding
    bad = (250, other(seq[249]), "A")
    sym = (260, seq[259], "<DEL>")
    recs = [snv, mnv, ins, dele, multi, bad, sym]
    vcf = tmp_path / "v.vcf"
    write_vcf(vcf, recs)
    s = score_variants(str(vcf), str(fa), model=m, scores="llr,cosine", window=W, output=None,
                       table=str(tmp_path / "t.parquet"), species=species)
    t = pl.read_parquet(tmp_path / "t.parquet")
    assert t["status"].to_list() == ["ok"] * 7 + ["ref_mismatch", "symbolic"]
    assert s.status == {"ok": 7, "ref_mismatch": 1, "symbolic": 1}
    llr = t["llr"].to_list()
    assert llr[2] is None and llr[3] is None and t["cosine"][2] is not None  # indels: no llr, distances yes
    # SNV: the base at the window centre masked
    start, win = window(seq, 99, 1)
    assert abs(llr[0] - masked_llr(m, win, 99 - start, snv[1], snv[2], sid)) < 1e-5
    # MNV: the sum of the single-base masked LLRs of its two changed bases, each masked on its own
    start, win = window(seq, 149, 2)
    want = sum(masked_llr(m, win, 149 + i - start, mnv[1][i], mnv[2][i], sid) for i in range(2))
    assert abs(llr[1] - want) < 1e-5
    # multi-allelic near the contig start: one masked pass shared by the three ALTs
    start, win = window(seq, 9, 1)
    assert start < 0 and win.startswith("N" * -start)
    for k, alt in enumerate(multi[2].split(",")):
        assert abs(llr[4 + k] - masked_llr(m, win, 9 - start, seq[9], alt, sid)) < 1e-5
    # llr alone on an indel: unsupported
    write_vcf(vcf, [ins])
    score_variants(str(vcf), str(fa), model=m, scores="llr", window=W, output=None,
                   table=str(tmp_path / "u.parquet"), species=species)
    assert pl.read_parquet(tmp_path / "u.parquet")["status"].to_list() == ["unsupported"]
    # POS 0 (a telomere in VCF) gets a status, as for the other families, instead of reading before the contig
    write_vcf(vcf, [(0, "A", "C")])
    score_variants(str(vcf), str(fa), model=m, scores="llr", window=W, output=None,
                   table=str(tmp_path / "p0.parquet"), species=species)
    assert pl.read_parquet(tmp_path / "p0.parquet")["status"].to_list() == ["ref_mismatch"]


def test_llr_rc_average(tmp_path, genome):
    fa, seq = genome
    m = ntk.load_model(POST)
    snv = (120, seq[119], other(seq[119]))
    vcf = tmp_path / "v.vcf"
    write_vcf(vcf, [snv])
    score_variants(str(vcf), str(fa), model=m, scores="llr", window=W, output=None, rc_average=True,
                   table=str(tmp_path / "t.parquet"), species="human")
    got = pl.read_parquet(tmp_path / "t.parquet")["llr"][0]
    start, win = window(seq, 119, 1)
    t = 119 - start
    rc = "".join(COMP[c] for c in reversed(win))
    sid = m.species_id("human")
    want = (masked_llr(m, win, t, snv[1], snv[2], sid) + masked_llr(m, rc, W - 1 - t, COMP[snv[1]], COMP[snv[2]], sid)) / 2
    assert abs(got - want) < 1e-5


def test_track_and_element_deltas(tmp_path, genome):
    fa, seq = genome
    m = ntk.load_model(POST)
    snv = (140, seq[139], other(seq[139]))
    dele = (180, seq[179:181], seq[179])
    vcf = tmp_path / "v.vcf"
    write_vcf(vcf, [snv, dele, (250, other(seq[249]), "A")])
    R = 5
    score_variants(str(vcf), str(fa), model=m, scores="tracks,elements", window=W, segment_radius=R,
                   output=str(tmp_path / "o.vcf"), table=str(tmp_path / "t.parquet"), species="human")
    t = pl.read_parquet(tmp_path / "t.parquet")
    assert t.columns[-6:] == ["target_kind", "target", "log2_ratio", "max_abs_delta", "ref_sum", "alt_sum"]
    first = t.filter(pl.col("id") == "v0")
    assert first["target"].to_list() == ["h_track1", "h_track2", "h_track3", "exon", "intron", "splice_donor"]
    assert t.filter(pl.col("id") == "v2")["target"].to_list() == [None]  # ref_mismatch: one row, no target
    # independent computation for the SNV: positions pos-R .. pos+R of the reference and alternate windows
    start, win = window(seq, 139, 1)
    alt_win = win[:139 - start] + snv[2] + win[139 - start + 1:]
    sid = m.species_id("human")
    with torch.inference_mode():
        ro = m(torch.tensor([[ID[c] for c in win]]), species_ids=sid)
        ao = m(torch.tensor([[ID[c] for c in alt_win]]), species_ids=sid)
    c0 = ro.crop[0]
    rows = slice(139 - R - start - c0, 139 + 1 + R - start - c0)
    rt, at = ro.bigwig_tracks_logits[0, rows].double().numpy(), ao.bigwig_tracks_logits[0, rows].double().numpy()
    lfc = np.log2((at.sum(0) + 1) / (rt.sum(0) + 1))
    tr = first.filter(pl.col("target_kind") == "track")
    np.testing.assert_allclose(tr["log2_ratio"].to_numpy(), lfc, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tr["max_abs_delta"].to_numpy(), np.abs(at - rt).max(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tr["ref_sum"].to_numpy(), rt.sum(0), rtol=1e-5)
    rp, ap = ro.bed_probabilities[0, rows].double().numpy(), ao.bed_probabilities[0, rows].double().numpy()
    el = first.filter(pl.col("target_kind") == "element")
    np.testing.assert_allclose(el["max_abs_delta"].to_numpy(), np.abs(ap - rp).max(0), rtol=1e-4, atol=1e-6)
    # the deletion is scored too (positions aligned through the edit)
    assert t.filter(pl.col("id") == "v1").height == 6 and t.filter(pl.col("id") == "v1")["status"][0] == "ok"
    # compact INFO: the track with the largest |log2 ratio|
    body = [ln for ln in (tmp_path / "o.vcf").read_text().splitlines() if not ln.startswith("#")]
    k = int(np.argmax(np.abs(lfc)))
    assert f"NTK_TRACK_MAX_ID=h_track{k + 1}" in body[0] and "NTK_ELEM_MAX_ID=" in body[0]
    assert "NTK_TRACK_MAX_LFC" not in body[2] and "NTK_STATUS=ref_mismatch" in body[2]
    header = (tmp_path / "o.vcf").read_text()
    assert "##INFO=<ID=NTK_TRACK_MAX_LFC" in header and "species=human" in header


def test_errors(tmp_path, genome):
    fa, seq = genome
    vcf = tmp_path / "v.vcf"
    write_vcf(vcf, [(100, seq[99], other(seq[99]))])
    pre = ntk.load_model(PRE)
    with pytest.raises(NtkError, match="post-trained"):
        score_variants(str(vcf), str(fa), model=pre, scores="tracks", window=W, output=None,
                       table=str(tmp_path / "t.parquet"))
    with pytest.raises(NtkError, match="multiple of 8"):
        score_variants(str(vcf), str(fa), model=pre, window=60, output=None, table=str(tmp_path / "t.parquet"))
    with pytest.raises(NtkError, match="radius"):
        score_variants(str(vcf), str(fa), model=ntk.load_model(POST), species="human", scores="elements", window=W,
                       segment_radius=50, output=None, table=str(tmp_path / "t.parquet"))
    p = run_ntk("score-variants", vcf, "-f", fa, "-m", POST, "--window", "64", "-o", tmp_path / "o.vcf")
    assert p.returncode == 2 and "--species is required" in p.stderr and "human, mouse, arabidopsis" in p.stderr
    p = run_ntk("score-variants", vcf, "-f", fa, "-m", POST, "--species", "arabidopsis", "--scores", "tracks",
                "--window", "64", "-o", tmp_path / "o.vcf")
    assert p.returncode == 2 and "no BigWig tracks" in p.stderr
    assert not (tmp_path / "o.vcf").exists()
