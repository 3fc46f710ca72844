#!/usr/bin/env python
"""Run segment, tracks, embed and score-variants on data/sample/ from two git refs and compare their outputs.

A refactor of the inference jobs must not change what they write. This script checks that: each ref (a commit,
branch or tag; ``WORKTREE`` = the working tree as it is, uncommitted changes included) is checked out into a
temporary ``git worktree add --detach`` (removed afterwards), and every case below runs in a fresh subprocess
with ``PYTHONPATH`` pointing at that tree, on the same inputs (data/sample/, the tiny golden test models and the
embedded default model of each tree). Then, file by file:

- BigWig: every chromosome's intervals and values, exactly (pyBigWig);
- BED / bedGraph / TSV / stdout text: byte-equal after decompression;
- Parquet: frames equal, dtypes included, exact values (NaN = NaN), and the key-value metadata;
- VCF: header lines (``##ntkCommand``/``##ntkVersion``/``##fileDate`` left out) and every record line;
- ``.npy``: shape, dtype and values exactly;
- run.json and shard manifests (``*.json``): equal once times, versions and the command line are left out;
- tabix/bgzip indexes are not compared (they follow from the compressed bytes); the file lists must match.

Paths of a tree and of its output directory are replaced by placeholders before comparing text, JSON and
metadata. Prints one row per compared file and exits 1 on any difference (or a case that fails in one tree).

    python scripts/compare_outputs.py                      # 4e3e2a2 (main before issue 16) vs the working tree
    python scripts/compare_outputs.py --a main --b WORKTREE --only segment,embed
    python scripts/compare_outputs.py --a HEAD --b HEAD    # a self-check: must report no difference
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
GOLDEN = ROOT / "tests" / "data" / "golden"
BASE_REF = "4e3e2a2"  # main when issue 16 (one engine for segment/embed/score-variants) started
WORKTREE = "WORKTREE"

IGNORED_JSON_KEYS = {"timings_s", "ntk_version", "command", "seconds", "date", "time", "torch", "numpy"}
IGNORED_VCF_HEADERS = ("##ntkCommand", "##ntkVersion", "##fileDate", "##bcftools")
INDEX_SUFFIXES = (".tbi", ".csi", ".gzi", ".fai")


# ---------------------------------------------------------------------------------------------------
# the cases: (name, [argv after `ntk`], stdout file or None); paths relative to the case's output dir

def cases(inputs: Path) -> list[tuple[str, list[str], str | None]]:
    g = str(inputs / "genome.fa.gz")
    vcf = str(inputs / "variants.vcf")
    post = str(inputs / "ntv3_post_tiny")
    pre = str(inputs / "ntv3_pre_tiny")
    seg = ["-r", "I:1-60000", "-r", "III:1000-40000", "-q"]
    genes = str(inputs / "genes.bed")
    recs = str(inputs / "records.fa")
    n3 = ["-m", post, "--species", "human", "--window", "1024", "-r", "I:20001-50000", "-q"]
    return [
        # segment: embedded SegmentNT-type default model
        ("segment", ["segment", g, *seg, "-o", "seg", "--bedgraph", "exon"], "seg.exon.bedgraph"),
        ("segment-regions-bed", ["segment", g, "-R", genes, "--rc-average", "-q", "-o", "segR"], None),
        ("segment-shard1", ["segment", g, *seg, "--shard", "1/2", "-o", "segS1"], None),
        ("segment-shard2", ["segment", g, *seg, "--shard", "2/2", "-o", "segS2"], None),
        ("segment-merge", ["merge", "segS1", "segS2", "-o", "segM", "-q"], None),
        ("segment-resume", ["segment", g, *seg, "--resume", "--resume-chunk-bp", "20000", "-o", "segRes"], None),
        # NTv3 post-trained golden model: BED-element head (segment) and BigWig head (tracks)
        ("ntv3-segment", ["segment", g, *n3, "-o", "n3seg"], None),
        ("ntv3-tracks", ["tracks", g, *n3, "-o", "n3tr"], None),
        ("ntv3-tracks-shard1", ["tracks", g, *n3, "--shard", "1/2", "-o", "n3trS1"], None),
        ("ntv3-tracks-shard2", ["tracks", g, *n3, "--shard", "2/2", "-o", "n3trS2"], None),
        ("ntv3-tracks-merge", ["merge", "n3trS1", "n3trS2", "-o", "n3trM", "-q"], None),
        # embed
        ("embed-regions", ["embed", "-R", genes, "--reference", g, "-o", "emb.parquet", "-q"], None),
        ("embed-fasta", ["embed", recs, "--chunk-tokens", "1500", "-o", "embF.parquet", "-q"], None),
        ("embed-layers-max", ["embed", recs, "--layer", "-1", "--layer", "2", "--pool", "max", "--rc-average",
                              "-o", "embL.parquet", "-q"], None),
        ("embed-pool-none", ["embed", recs, "--pool", "none", "-o", "embT.parquet", "-q"], None),
        ("embed-npy", ["embed", recs, "--format", "npy", "-o", "embN.npy", "-q"], None),
        ("embed-stdout", ["embed", "-r", "I:1001-4000", "-r", "III:5000-5600", "--reference", g, "-o", "-", "-q"],
         "embStdout.parquet"),
        ("embed-shard1", ["embed", recs, "--chunk-tokens", "1500", "--shard", "1/2", "-o", "embS1.parquet", "-q"],
         None),
        ("embed-shard2", ["embed", recs, "--chunk-tokens", "1500", "--shard", "2/2", "-o", "embS2.parquet", "-q"],
         None),
        ("embed-merge", ["merge", "embS1.parquet", "embS2.parquet", "-o", "embM.parquet", "-q"], None),
        ("embed-resume", ["embed", recs, "--chunk-tokens", "1500", "--resume", "-o", "embRes.parquet", "-q"], None),
        ("embed-ntv3", ["embed", recs, "-m", pre, "--window", "512", "-o", "embN3.parquet", "-q"], None),
        ("embed-ntv3-none", ["embed", "-R", genes, "--reference", g, "-m", post, "--species", "mouse", "--pool",
                             "none", "--window", "1024", "-o", "embN3T.parquet", "-q"], None),
        # score-variants
        ("variants", ["score-variants", vcf, "--reference", g, "-o", "var.vcf.gz", "--table", "var.parquet", "-q"],
         None),
        ("variants-stdout", ["score-variants", vcf, "--reference", g, "--window", "1536", "--scores", "cosine,llr",
                             "-r", "I:1-200000", "-q"], "varStdout.vcf"),
        ("variants-shard1", ["score-variants", vcf, "--reference", g, "--window", "768", "--chunk-size", "40",
                             "--shard", "1/2", "-o", "varS1.vcf.gz", "--table", "varS1.parquet", "-q"], None),
        ("variants-shard2", ["score-variants", vcf, "--reference", g, "--window", "768", "--chunk-size", "40",
                             "--shard", "2/2", "-o", "varS2.vcf.gz", "--table", "varS2.parquet", "-q"], None),
        ("variants-merge", ["merge", "varS1.vcf.gz", "varS2.vcf.gz", "-o", "varM.vcf.gz", "-q"], None),
        ("variants-merge-table", ["merge", "varS1.parquet", "varS2.parquet", "-o", "varM.parquet", "-q"], None),
        ("variants-resume", ["score-variants", vcf, "--reference", g, "--window", "768", "--chunk-size", "40",
                             "--resume",
                             "--table", "varRes.parquet", "-o", "varRes.vcf", "-q"], None),
        ("variants-ntv3", ["score-variants", vcf, "--reference", g, "-m", post, "--species", "human", "--window",
                           "512", "-o", "varN3.vcf.gz", "--table", "varN3.parquet", "-q"], None),
    ]


def make_inputs(d: Path) -> None:
    """Copies of the sample genome, VCF and NTv3 golden models, genes.bed (8 genes of chr I, both strands) and
    records.fa (short, long, N-containing, empty, all-N, lowercase records); written once, read by both trees,
    outside either tree (so that paths in the outputs are the same)."""
    for f in ("genome.fa.gz", "genome.fa.gz.fai", "genome.fa.gz.gzi", "variants.vcf"):
        if (SAMPLE / f).is_file():
            shutil.copy(SAMPLE / f, d / f)
    for m in ("ntv3_post_tiny", "ntv3_pre_tiny"):
        shutil.copytree(GOLDEN / m, d / m)
    seqs: dict[str, list[str]] = {}
    name = None
    with gzip.open(SAMPLE / "genome.fa.gz", "rt") as fh:
        for line in fh:
            if line.startswith(">"):
                name = line[1:].split()[0]
                seqs[name] = []
            else:
                seqs[name].append(line.strip())
    genome = {k: "".join(v) for k, v in seqs.items()}
    genes = []
    with gzip.open(SAMPLE / "genes.gtf.gz", "rt") as fh:
        for line in fh:
            f = line.rstrip("\n").split("\t")
            if len(f) > 8 and f[2] == "gene" and f[0] == "I":
                gid = f[8].split('gene_id "', 1)[1].split('"', 1)[0]
                genes.append(f"{f[0]}\t{int(f[3]) - 1}\t{f[4]}\t{gid}\t0\t{f[6]}\n")
            if len(genes) == 8:
                break
    (d / "genes.bed").write_text("".join(genes))
    c1, c3 = genome["I"], genome["III"]
    recs = [("short", c1[5000:5100]), ("with_n", c1[7000:7300] + "N" * 40 + c1[7300:7500]),
            ("long", c3[20000:32000]), ("empty", ""), ("all_n", "N" * 50),
            ("lower", c1[9000:9700].lower()), ("iupac", c1[12000:12200] + "RYKM" + c1[12200:12400])]
    recs += [(f"r{i}", c1[30000 + 997 * i: 30000 + 997 * i + 150 + 61 * i]) for i in range(12)]
    (d / "records.fa").write_text("".join(f">{n}\n{s}\n" for n, s in recs))


# ---------------------------------------------------------------------------------------------------
# running a ref

def checkout(ref: str, where: Path) -> Path:
    if ref == WORKTREE:
        return ROOT
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(where), ref], check=True)
    return where


def run_tree(tree: Path, out: Path, todo, log) -> dict[str, tuple[int, str, float]]:
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    status = {}
    for name, argv, stdout in todo:
        t = time.perf_counter()
        with open(out / stdout, "wb") if stdout else open(os.devnull, "wb") as so:
            p = subprocess.run([sys.executable, "-m", "ntk.cli.main", *argv], cwd=out, env=env, stdout=so,
                               stderr=subprocess.PIPE)
        dt = time.perf_counter() - t
        err = p.stderr.decode(errors="replace").strip().splitlines()
        status[name] = (p.returncode, err[-1] if err else "", dt)
        log(f"  {name:22s} rc={p.returncode} {dt:5.1f} s" + (f"  {err[-1]}" if p.returncode and err else ""))
    return status


# ---------------------------------------------------------------------------------------------------
# comparing files

class Paths:
    """Replaces a tree's root, its output directory and the inputs directory of its run by placeholders."""

    def __init__(self, tree: Path, out: Path, inputs: Path):
        self.subs = [(str(out), "<OUT>"), (str(inputs), "<IN>"), (str(tree), "<TREE>")]

    def text(self, s: str) -> str:
        for a, b in self.subs:
            s = s.replace(a, b)
        return s

    def json(self, x):
        if isinstance(x, dict):
            return {k: self.json(v) for k, v in x.items() if k not in IGNORED_JSON_KEYS}
        if isinstance(x, list):
            return [self.json(v) for v in x]
        return self.text(x) if isinstance(x, str) else x


def read_text(p: Path) -> str:
    with open(p, "rb") as fh:
        magic = fh.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(p, "rt") as fh:
        return fh.read()


def first_diff(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"line {i + 1}: {str(x)[:80]!r} vs {str(y)[:80]!r}"
    return f"{len(a)} vs {len(b)} lines"


def cmp_bigwig(a: Path, b: Path) -> str | None:
    import pyBigWig

    x, y = pyBigWig.open(str(a)), pyBigWig.open(str(b))
    try:
        if x.chroms() != y.chroms():
            return f"chromosomes differ: {x.chroms()} vs {y.chroms()}"
        n = 0
        for c in x.chroms():
            ia, ib = x.intervals(c) or (), y.intervals(c) or ()
            if len(ia) != len(ib):
                return f"{c}: {len(ia)} vs {len(ib)} intervals"
            va, vb = np.array(ia, dtype=np.float64).reshape(-1, 3), np.array(ib, dtype=np.float64).reshape(-1, 3)
            bad = ~((va == vb) | (np.isnan(va) & np.isnan(vb))).all(axis=1)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                return f"{c}: interval {k}: {ia[k]} vs {ib[k]}"
            n += len(ia)
        return None if n else "no values"  # an empty BigWig on both sides would hide a broken case
    finally:
        x.close()
        y.close()


def cmp_parquet(a: Path, b: Path, pa: Paths, pb: Paths) -> str | None:
    import polars as pl
    from polars.testing import assert_frame_equal

    x, y = pl.read_parquet(a), pl.read_parquet(b)
    if x.schema != y.schema:
        return f"schema {dict(x.schema)} vs {dict(y.schema)}"
    try:
        assert_frame_equal(x, y, check_exact=True)
    except AssertionError as e:
        return " ".join(str(e).split())[:160]
    ma, mb = (p.json({k: v for k, v in pl.read_parquet_metadata(f).items() if k != "ARROW:schema"})
              for f, p in ((a, pa), (b, pb)))
    ma, mb = ({k: v for k, v in m.items() if k not in ("ntk_version",)} for m in (ma, mb))
    if ma != mb:
        k = next(k for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k))
        return f"metadata {k}: {ma.get(k)!r} vs {mb.get(k)!r}"
    return None


def cmp_vcf(a: Path, b: Path, pa: Paths, pb: Paths) -> str | None:
    la, lb = ([p.text(line) for line in read_text(f).splitlines() if not line.startswith(IGNORED_VCF_HEADERS)]
              for f, p in ((a, pa), (b, pb)))
    if la != lb:
        return first_diff(la, lb)
    return None if any(not line.startswith("#") for line in la) else "no records"


def cmp_json(a: Path, b: Path, pa: Paths, pb: Paths) -> str | None:
    ja, jb = pa.json(json.loads(a.read_text())), pb.json(json.loads(b.read_text()))
    if ja == jb:
        return None
    return "differs: " + _json_diff(ja, jb)


def _json_diff(a, b, where="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _json_diff(a.get(k), b.get(k), f"{where}.{k}")
    return f"{where or '.'}: {str(a)[:70]} vs {str(b)[:70]}"


def cmp_npy(a: Path, b: Path) -> str | None:
    x, y = np.load(a), np.load(b)
    if x.shape != y.shape or x.dtype != y.dtype:
        return f"{x.shape} {x.dtype} vs {y.shape} {y.dtype}"
    return None if np.array_equal(x, y, equal_nan=True) else "values differ"


def cmp_text(a: Path, b: Path, pa: Paths, pb: Paths) -> str | None:
    la, lb = pa.text(read_text(a)).splitlines(), pb.text(read_text(b)).splitlines()
    return None if la == lb else first_diff(la, lb)


def compare_file(a: Path, b: Path, pa: Paths, pb: Paths) -> tuple[str, str | None]:
    n = a.name
    if n.endswith(".bw"):
        return "bigwig", cmp_bigwig(a, b)
    if n.endswith(".parquet"):
        return "parquet", cmp_parquet(a, b, pa, pb)
    if n.endswith((".vcf", ".vcf.gz")):
        return "vcf", cmp_vcf(a, b, pa, pb)
    if n.endswith(".json"):
        return "json", cmp_json(a, b, pa, pb)
    if n.endswith(".npy"):
        return "npy", cmp_npy(a, b)
    return "text", cmp_text(a, b, pa, pb)


def files_under(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", default=BASE_REF, help=f"first ref (default {BASE_REF}); {WORKTREE} = the working tree")
    ap.add_argument("--b", default=WORKTREE, help=f"second ref (default {WORKTREE})")
    ap.add_argument("--only", default=None, help="comma-separated prefixes of case names (default: all)")
    ap.add_argument("--keep", default=None, help="keep the outputs in this directory (default: a temp dir, removed)")
    ap.add_argument("--cache", default=None, help="reuse (or store) the outputs of a commit (not WORKTREE) in "
                    "CACHE/<commit>, so that repeated comparisons against one base run it once")
    args = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ntk-compare-"))
    if args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    inputs = tmp / "inputs"
    inputs.mkdir()
    make_inputs(inputs)
    todo = cases(inputs)
    if args.only:
        prefixes = tuple(args.only.split(","))
        todo = [c for c in todo if c[0].startswith(prefixes)]
    trees: list[Path] = []
    worktrees: list[Path] = []
    t0 = time.perf_counter()
    try:
        results = []
        outs: list[Path] = []
        ran_in: list[Path] = []  # where each ref's cases ran (the paths written into its outputs)
        inputs_of: list[Path] = []  # the inputs they read
        for label, ref in (("a", args.a), ("b", args.b)):
            cached = None
            if args.cache and ref != WORKTREE:
                sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], capture_output=True, text=True,
                                     check=True).stdout.strip()
                cached = Path(args.cache) / f"{sha}-{'_'.join(sorted(c[0] for c in todo))}"[:200]
                if (cached / "status.json").is_file():
                    log(f"{label}: {ref}: outputs cached in {cached}")
                    st = json.loads((cached / "status.json").read_text())
                    trees.append(Path(st.pop("__tree__")))
                    ran_in.append(Path(st.pop("__out__")))
                    inputs_of.append(Path(st.pop("__inputs__")))
                    outs.append(cached / "out")
                    results.append({k: tuple(v) for k, v in st.items()})
                    continue
            tree = checkout(ref, tmp / f"tree-{label}")
            if tree != ROOT:
                worktrees.append(tree)
            trees.append(tree)
            log(f"{label}: {ref} ({tree})")
            out = tmp / f"out-{label}"
            results.append(run_tree(tree, out, todo, log))
            ran_in.append(out)
            inputs_of.append(inputs)
            if cached is not None:
                shutil.rmtree(cached, ignore_errors=True)
                cached.mkdir(parents=True)
                shutil.copytree(out, cached / "out")
                (cached / "status.json").write_text(json.dumps({**results[-1], "__tree__": str(tree),
                                                                    "__out__": str(ran_in[-1]),
                                                                    "__inputs__": str(inputs)}))
                out = cached / "out"
            outs.append(out)
        pa, pb = (Paths(trees[k], ran_in[k], inputs_of[k]) for k in (0, 1))
        rows: list[tuple[str, str, str, str]] = []
        for name, _, _ in todo:
            (ra, ea, _), (rb, eb, _) = results[0][name], results[1][name]
            if ra or rb:
                rows.append((name, "(command)", "exit", f"DIFF rc {ra} vs {rb}: {ea or eb}"))
        fa, fb = files_under(outs[0]), files_under(outs[1])
        for f in sorted(fa ^ fb):
            rows.append(("", f, "", f"DIFF only in {'a' if f in fa else 'b'}"))
        for f in sorted(fa & fb):
            if f.endswith(INDEX_SUFFIXES):
                continue
            kind, why = compare_file(outs[0] / f, outs[1] / f, pa, pb)
            rows.append(("", f, kind, "same" if why is None else f"DIFF {why}"))
    finally:
        for w in worktrees:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(w)], check=False)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    width = max(len(r[1]) for r in rows) if rows else 10
    print(f"{'file':{width}s}  {'kind':8s}  result")
    for case, f, kind, res in rows:
        print(f"{(case + ' ' if case else '') + f:{width}s}  {kind:8s}  {res}")
    bad = [r for r in rows if r[3].startswith("DIFF")]
    print(f"\n{args.a} vs {args.b}: {len(rows) - len(bad)} same, {len(bad)} different "
          f"({len(todo)} cases, {time.perf_counter() - t0:.0f} s)")
    return 1 if bad or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
