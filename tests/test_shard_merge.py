"""--shard I/N + ntk merge: N parts merged equal one unsharded run (segment, embed, score-variants), with uneven
inputs (a contig shorter than a window, an N run at a shard cut, more shards than contigs); merge refuses a
missing, duplicated or foreign part with one error line."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyBigWig
import pytest

from ntk.cli.main import main
from ntk.pipelines.engine import shard_block as weighted_block, shard_span as bp_range

ROOT = Path(__file__).resolve().parents[1]
SEG = ROOT / "tests" / "data" / "golden" / "segment_nt_tiny"
NT_V2 = ROOT / "tests" / "data" / "golden" / "nt_v2_tiny"
NT_V1 = ROOT / "tests" / "data" / "golden" / "nt_v1_tiny"
RNG = np.random.default_rng(10)


def dna(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


def ntk(monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["ntk", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().err


def write_fasta(path: Path, recs: dict[str, str]) -> Path:
    path.write_text("".join(f">{k}\n" + "".join(v[i:i + 60] + "\n" for i in range(0, len(v), 60))
                            for k, v in recs.items()))
    return path


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Path:
    # 15,000 bp: 3 shards cut at 5,000 (inside c1's N run 4,900-5,200) and 10,000 (inside c3);
    # c2 is shorter than a window; soft-masked and IUPAC stretches in c1
    c1 = dna(4900) + "N" * 300 + dna(2500).lower() + "RYK" + dna(1700)
    recs = {"c1": c1, "c2": dna(100), "c3": dna(15000 - len(c1) - 100)}
    return write_fasta(tmp_path_factory.mktemp("g") / "g.fa", recs)


def bigwig_values(d: Path, feature: str) -> dict[str, np.ndarray]:
    bw = pyBigWig.open(str(d / f"{feature}.bw"))
    try:
        return {c: np.asarray(bw.values(c, 0, n), dtype=np.float64) for c, n in bw.chroms().items()}
    finally:
        bw.close()


def assert_same_segment_dirs(a: Path, b: Path) -> None:
    feats = json.loads((a / "run.json").read_text())["options"]["features"]
    for f in feats:
        va, vb = bigwig_values(a, f), bigwig_values(b, f)
        assert va.keys() == vb.keys()
        for c in va:
            np.testing.assert_array_equal(va[c], vb[c], err_msg=f"{f} {c}")  # NaN == NaN, values exact
    assert gzip.open(a / "segments.bed.gz").read() == gzip.open(b / "segments.bed.gz").read()
    assert (b / "segments.bed.gz.tbi").is_file()


def test_partitions_are_contiguous_and_balanced():
    w = [5, 1, 1, 1, 9, 2, 2, 3, 0, 4]
    blocks = [weighted_block(w, (i, 4)) for i in range(1, 5)]
    assert blocks[0][0] == 0 and blocks[-1][1] == len(w)
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    loads = [sum(w[lo:hi]) for lo, hi in blocks]
    assert max(loads) - min(loads) <= max(w)
    assert [weighted_block([3], (i, 5)) for i in range(1, 6)].count((0, 1)) == 1  # more shards than items
    assert [bp_range(15000, (i, 3)) for i in (1, 2, 3)] == [(0, 5000), (5000, 10000), (10000, 15000)]


@pytest.mark.parametrize("n,batch", [(3, "1"), (7, "3")])
def test_segment_shards_merge_to_unsharded(monkeypatch, capsys, genome, tmp_path, n, batch):
    common = ["-m", SEG, "--window", "480", "--batch-size", batch, "--threshold", "0.52", "-q"]
    code, err = ntk(monkeypatch, capsys, "segment", genome, "-o", tmp_path / "one", *common)
    assert code == 0, err
    parts = []
    for i in range(1, n + 1):
        parts.append(tmp_path / f"part{i}")
        code, err = ntk(monkeypatch, capsys, "segment", genome, "-o", parts[-1], "--shard", f"{i}/{n}", *common)
        assert code == 0, err
        assert (parts[-1] / "shard.json").is_file()
    spans = [json.loads((p / "shard.json").read_text())["spans"] for p in parts]
    if n == 3:  # the cut at 5,000 falls in c1's N run: shard 1 ends at the run, shard 2 starts after it
        assert spans[0][-1] == ["c1", 0, 4900] and spans[1][0][:2] == ["c1", 5200]
    else:  # 7 shards for 3 contigs: c2 (shorter than a window) and both sides of each cut still covered
        assert sum(1 for s in spans if s) >= 5
    code, err = ntk(monkeypatch, capsys, "merge", *reversed(parts), "-o", tmp_path / "merged")
    assert code == 0, err
    assert_same_segment_dirs(tmp_path / "one", tmp_path / "merged")
    info = json.loads((tmp_path / "merged" / "run.json").read_text())
    one = json.loads((tmp_path / "one" / "run.json").read_text())
    assert info["n_windows"] == one["n_windows"] and info["bp_scored"] == one["bp_scored"]
    assert info["n_segments"] == one["n_segments"] and "--shard" not in info["command"]
    assert not (tmp_path / "merged" / "shard.json").exists()


def test_merge_refuses_missing_duplicated_foreign(monkeypatch, capsys, genome, tmp_path):
    fa = write_fasta(tmp_path / "r.fa", {f"r{i}": dna(n) for i, n in enumerate([300, 40, 900, 2000, 60, 700])})
    parts = {}
    for tag, model, i in (("a", NT_V2, 1), ("b", NT_V2, 2), ("c", NT_V2, 3), ("x", NT_V1, 3)):
        parts[tag] = tmp_path / f"{tag}.parquet"
        code, err = ntk(monkeypatch, capsys, "embed", fa, "-m", model, "-o", parts[tag], "--shard", f"{i}/3",
                        "--chunk-tokens", "200", "-q")
        assert code == 0, err
    out = tmp_path / "m.parquet"
    cases = {
        "missing": ([parts["a"], parts["c"]], "missing part: shard 2/3"),
        "duplicated": ([parts["a"], parts["b"], parts["b"], parts["c"]], "shard 2/3 given twice"),
        "foreign": ([parts["a"], parts["b"], parts["x"]], "foreign part: comes from another model"),
        "not a part": ([parts["a"], fa], "not a shard part of ntk"),
    }
    for what, (given, message) in cases.items():
        code, err = ntk(monkeypatch, capsys, "merge", *given, "-o", out)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("ntk: error:"), (what, err)
        assert message in lines[0], (what, err)
        assert not out.exists()
    code, err = ntk(monkeypatch, capsys, "merge", parts["c"], parts["a"], parts["b"], "-o", out)
    assert code == 0, err


def test_embed_shards_merge_to_unsharded(monkeypatch, capsys, tmp_path):
    lengths = [5, 300, 2000, 0, 1500, 40, 700, 3000, 90, 900, 200, 1200, 12, 800, 600, 1000, 400, 1300, 250, 64]
    recs = {f"r{i}": ("N" * n if i == 5 else dna(n)) for i, n in enumerate(lengths)}
    fa = write_fasta(tmp_path / "e.fa", recs)
    common = ["-m", NT_V2, "--chunk-tokens", "300", "-q"]
    code, err = ntk(monkeypatch, capsys, "embed", fa, "-o", tmp_path / "one.parquet", *common)
    assert code == 0, err
    parts = [tmp_path / f"p{i}.parquet" for i in (1, 2, 3)]
    for i, p in enumerate(parts, 1):
        code, err = ntk(monkeypatch, capsys, "embed", fa, "-o", p, "--shard", f"{i}/3", *common)
        assert code == 0, err
    sizes = [pl.read_parquet(p).height for p in parts]
    assert sum(sizes) == len(lengths) and min(sizes) >= 1  # contiguous, every shard has work
    code, err = ntk(monkeypatch, capsys, "merge", *parts, "-o", tmp_path / "m.parquet")
    assert code == 0, err
    one, merged = pl.read_parquet(tmp_path / "one.parquet"), pl.read_parquet(tmp_path / "m.parquet")
    assert merged["name"].to_list() == list(recs)  # input order
    assert one.equals(merged)  # embeddings bit-identical


def test_score_variants_shards_merge_to_unsharded(monkeypatch, capsys, genome, tmp_path):
    seqs = {}
    name = None
    for line in genome.read_text().splitlines():
        if line.startswith(">"):
            name = line[1:]
            seqs[name] = []
        else:
            seqs[name].append(line)
    seqs = {k: "".join(v) for k, v in seqs.items()}
    recs = []
    for chrom, pos in [("c1", 100), ("c1", 800), ("c1", 4950), ("c1", 6000), ("c2", 50), ("c3", 10),
                       ("c3", 900), ("c3", 2000), ("c3", 3000), ("c3", 5000)]:
        ref = seqs[chrom][pos - 1]
        alts = [b for b in "ACGT" if b != ref.upper()]
        alt = ",".join(alts[:2]) if pos % 2 == 0 else alts[0]  # multi-allelic records weigh more
        recs.append(f"{chrom}\t{pos}\t.\t{ref}\t{alt}\t50\tPASS\t.")
    vcf = tmp_path / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n" + "".join(f"##contig=<ID={c},length={len(s)}>\n" for c, s in seqs.items())
                   + "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + "\n".join(recs) + "\n")
    common = ["-f", genome, "-m", NT_V2, "--window", "300", "--chunk-size", "2", "-q"]
    code, err = ntk(monkeypatch, capsys, "score-variants", vcf, "-o", tmp_path / "one.vcf.gz",
                    "--table", tmp_path / "one.parquet", *common)
    assert code == 0, err
    for i in (1, 2, 3):
        code, err = ntk(monkeypatch, capsys, "score-variants", vcf, "-o", tmp_path / f"p{i}.vcf.gz",
                        "--table", tmp_path / f"p{i}.parquet", "--shard", f"{i}/3", *common)
        assert code == 0, err
    code, err = ntk(monkeypatch, capsys, "merge", *(tmp_path / f"p{i}.vcf.gz" for i in (3, 1, 2)),
                    "-o", tmp_path / "m.vcf.gz")
    assert code == 0, err
    code, err = ntk(monkeypatch, capsys, "merge", *(tmp_path / f"p{i}.parquet" for i in (1, 2, 3)),
                    "-o", tmp_path / "m.parquet")
    assert code == 0, err

    def body(p):
        return [x for x in gzip.open(p, "rt").read().splitlines() if not x.startswith("##ntkCommand")]
    assert body(tmp_path / "one.vcf.gz") == body(tmp_path / "m.vcf.gz")  # one header, records in order
    assert (tmp_path / "m.vcf.gz.tbi").is_file()
    assert pl.read_parquet(tmp_path / "one.parquet").equals(pl.read_parquet(tmp_path / "m.parquet"))
