"""The embedded default model: every command works out of the box, offline, on the sample data."""
import numpy as np
import polars as pl
import pyBigWig
import pytest

import ntk
from ntk.io.annotation import read_annotation
from ntk.model.checkpoint import EMBEDDED_DEFAULT, EMBEDDED_DIR

from conftest import run_ntk

FEATURES = ["protein_coding_gene", "exon", "intron", "splice_donor", "splice_acceptor", "5UTR", "3UTR"]


def test_default_model_loads_with_both_heads():
    m = ntk.load_model(None)
    assert m.source == str(EMBEDDED_DIR / EMBEDDED_DEFAULT)
    assert m.config.features == FEATURES and m.lm_head is not None
    assert 1e6 < m.num_parameters() < 1e7
    out = m(m.tokenizer.encode(["ACGTAC" * 16]))
    assert out.segment_probabilities.shape == (1, 96, len(FEATURES)) and out.logits.shape[-1] == 4107


def test_segment_default_model_tracks_genes(tmp_path, sample_dir):
    """On sample chromosome I (seen in training; the held-out numbers are in the model card), the default model's
    exon track separates annotated exons from the rest."""
    out = tmp_path / "seg"
    p = run_ntk("segment", sample_dir / "genome.fa.gz", "-r", "I:130001-160000", "-o", out, "-q")
    assert p.returncode == 0, p.stderr
    bw = pyBigWig.open(str(out / "exon.bw"))
    vals = np.asarray(bw.values("I", 130000, 160000, numpy=True))
    bw.close()
    ann = read_annotation(sample_dir / "genes.gtf.gz", ["exon"])
    t = ann.targets("I", 130000, 160000)[:, 0].astype(bool)
    ok = ~np.isnan(vals)
    assert ok.mean() > 0.99
    assert vals[ok & t].mean() > vals[ok & ~t].mean() + 0.2


def test_score_variants_and_embed_default_model(tmp_path, sample_dir):
    vcf = tmp_path / "v.vcf"
    lines = [ln for ln in (sample_dir / "variants.vcf").read_text().splitlines()
             if ln.startswith("#") or ln.split("\t")[0] == "I" and int(ln.split("\t")[1]) < 40000]
    vcf.write_text("\n".join(lines) + "\n")
    p = run_ntk("score-variants", vcf, "--reference", sample_dir / "genome.fa.gz", "-o", tmp_path / "o.vcf.gz",
                "--table", tmp_path / "t.parquet", "-q")
    assert p.returncode == 0, p.stderr
    t = pl.read_parquet(tmp_path / "t.parquet")
    assert "llr" in " ".join(t.columns).lower() and (t["status"] == "ok").sum() >= 8
    bed = tmp_path / "r.bed"
    bed.write_text("I\t1000\t2000\tr1\t0\t+\nI\t5000\t5600\tr2\t0\t-\n")
    p = run_ntk("embed", "-R", bed, "--reference", sample_dir / "genome.fa.gz", "-o", tmp_path / "e.parquet", "-q")
    assert p.returncode == 0, p.stderr
    e = pl.read_parquet(tmp_path / "e.parquet")
    assert e["name"].to_list() == ["r1", "r2"] and len(e["embedding"][0]) == 128


@pytest.mark.parametrize("cmd", ["models list"])
def test_models_list_shows_default(cmd):
    p = run_ntk(*cmd.split())
    assert p.returncode == 0 and EMBEDDED_DEFAULT in p.stdout
