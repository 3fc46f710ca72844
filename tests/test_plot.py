import pytest

from conftest import run_ntk

pytest.importorskip("matplotlib")


def test_plot_tracks_against_annotation(tmp_path, golden_dir, sample_dir):
    seg = tmp_path / "seg"
    run_ntk("segment", sample_dir / "genome.fa.gz", "-r", "I:1-6000", "-m", golden_dir / "segment_nt_tiny",
            "-o", seg, "-q", check=True)
    png = tmp_path / "gene.png"
    p = run_ntk("plot", seg, "-r", "I:300-5000", "-a", sample_dir / "genes.gtf.gz", "-o", png)
    assert p.returncode == 0, p.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # bad region: one clear error, no file
    p = run_ntk("plot", seg, "-r", "chrI:1-100", "-o", tmp_path / "x.png")
    assert p.returncode == 2 and "chrI" in p.stderr and "--chr-map" in p.stderr
    assert not (tmp_path / "x.png").exists()
