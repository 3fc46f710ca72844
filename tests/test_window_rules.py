"""Window facts are owned by the model config (model/window_rules.py): the unit follows the SegmentNT head's depth
and NTv3's downsamplings, each job's default window keeps the value it had, and a bad --window is refused from
config.json alone, before any weights are read."""
from __future__ import annotations

import json
import shutil

import pytest

from ntk.errors import CheckpointError, NtkError
from ntk.model.checkpoint import check_window_before_loading, read_config
from ntk.model.config import NTConfig
from ntk.pipelines.embed import embed_sequences
from ntk.pipelines.score_variants import score_variants
from ntk.pipelines.segment import segment_genome


def test_unit_follows_the_head_depth(golden_dir):
    seg = read_config(golden_dir / "segment_nt_tiny")
    assert seg.window_unit == 24 and seg.num_layers_head == 2
    d = json.loads((golden_dir / "segment_nt_tiny" / "config.json").read_text())
    three = NTConfig.from_dict({**d, "num_layers_head": 3})  # a 3-level U-Net halves the tokens 3 times
    assert three.window_unit == 48
    assert three.default_window("segment") == 936 // 48 * 48
    with pytest.raises(NtkError, match="--window 936: must be a positive multiple of 48 nt"):
        three.check_window(936, "segment")
    assert read_config(golden_dir / "nt_v2_tiny").window_unit == 1
    assert read_config(golden_dir / "ntv3_pre_tiny").window_unit == 8  # 2**num_downsamples


def test_default_windows_of_the_golden_models(golden_dir):
    """The values every job used before the rules moved to the config."""
    seg, v1, v2 = (read_config(golden_dir / n) for n in ("segment_nt_tiny", "nt_v1_tiny", "nt_v2_tiny"))
    assert seg.default_window("segment") == (seg.max_tokens - 1) * 6 // 24 * 24 == 936
    assert seg.default_window("score") == 936
    for cfg in (v1, v2):
        assert cfg.default_window("score") == (cfg.max_tokens - 1) * 6
        assert cfg.default_window("embed") == cfg.max_tokens - 1  # tokens
        assert cfg.check_window(10 ** 6, "embed") == cfg.max_tokens - 1  # capped to the context
    pre = read_config(golden_dir / "ntv3_pre_tiny")
    assert (pre.default_window("segment"), pre.default_window("score"), pre.default_window("embed")) == (
        1 << 20, 1 << 15, 1 << 20)
    trained = NTConfig.from_dict({**seg.to_dict(), "segment_window": 480})
    assert trained.default_window("segment") == 480 and trained.default_window("score") == 936
    with pytest.raises(ValueError, match="unknown job"):
        seg.default_window("nope")


def test_bad_window_is_refused_before_the_weights_load(golden_dir, tmp_path, sample_dir):
    """A checkpoint whose weights are unreadable: a bad --window is reported (from config.json), not the weights."""
    fa = str(sample_dir / "genome.fa.gz")
    broken = {}
    for name in ("segment_nt_tiny", "nt_v1_tiny", "ntv3_pre_tiny"):
        d = broken[name] = tmp_path / name
        d.mkdir()
        shutil.copy(golden_dir / name / "config.json", d / "config.json")
        (d / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError):  # the weights really are unreadable
        segment_genome(fa, tmp_path / "o0", model=str(broken["segment_nt_tiny"]), regions=["I:1-2000"])
    with pytest.raises(NtkError, match="--window 100: must be a positive multiple of 24 nt") as e:
        segment_genome(fa, tmp_path / "o1", model=str(broken["segment_nt_tiny"]), window=100, regions=["I:1-2000"])
    assert not isinstance(e.value, CheckpointError)
    vcf = tmp_path / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
    with pytest.raises(NtkError, match="learned positions"):
        score_variants(str(vcf), fa, model=str(broken["nt_v1_tiny"]), window=6000, output=None,
                       table=str(tmp_path / "t.parquet"))
    with pytest.raises(NtkError, match="multiple of 8 nt"):
        check_window_before_loading(str(broken["ntv3_pre_tiny"]), 60, "embed")
    check_window_before_loading(str(broken["ntv3_pre_tiny"]), 64, "embed")  # fine: nothing loaded, nothing raised


def test_embed_window_rules_through_the_api(golden_dir):
    import ntk

    m = ntk.load_model(golden_dir / "ntv3_pre_tiny")
    with pytest.raises(NtkError, match="multiple of 8"):
        embed_sequences(m, ["ACGT"], window=60)


def test_finetune_segment_windows_follow_the_trained_head(golden_dir):
    """finetune segment checks --window with the config of the model it trains: the new head's depth sets the
    unit; the defaults are those of before (6,144 nt at most; NTv3 8 kb rounded down to the unit)."""
    from ntk.pipelines.finetune_segment import SegmentTaskInput, trained_config

    v2 = read_config(golden_dir / "nt_v2_tiny")
    two = trained_config(v2, SegmentTaskInput("g.fa", "a.gtf", ["exon"]), ["exon"])
    three = trained_config(v2, SegmentTaskInput("g.fa", "a.gtf", ["exon"], num_layers_head=3), ["exon"])
    assert (two.window_unit, three.window_unit) == (24, 48) and v2.window_unit == 1
    assert two.default_window("finetune") == min(v2.max_tokens - 1, 1024) * 6 // 24 * 24
    assert three.check_window(480, "finetune") == 480
    with pytest.raises(NtkError, match="--window 504: must be a positive multiple of 48 nt"):
        three.check_window(504, "finetune")
    v1 = read_config(golden_dir / "nt_v1_tiny")
    with pytest.raises(NtkError, match="learned positions"):
        trained_config(v1, SegmentTaskInput("g.fa", "a.gtf", ["exon"]), ["exon"]).check_window(6 * 2400, "finetune")
    pre = read_config(golden_dir / "ntv3_pre_tiny")
    assert trained_config(pre, SegmentTaskInput("g.fa", "a.gtf", ["exon"]), ["exon"]) is pre
    assert pre.default_window("finetune") == 8192
