"""CPU inference speed (issue #20): the --precision auto decision, and rotary with precomputed signed tables."""
import json

import pytest
import torch

from ntk.model.encoder import Rotary, apply_rotary, rotary_inv_freq
from ntk.model.runtime import CPU_BF16_FLAGS, choose_precision, cpu_flags

CPU = torch.device("cpu")

ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
"""
SPR = "processor : 0\nflags : fpu sse avx2 avx512f amx_tile amx_bf16 amx_int8 avx512_bf16\n"
AVX2 = "processor : 0\nflags : fpu sse sse2 avx avx2 fma\n"
GRAVITON = "processor : 0\nBogoMIPS : 2100.00\nFeatures : fp asimd evtstrm aes pmull sha1 sha2 crc32 bf16 i8mm\n"


def test_cpu_flags_parsing():
    assert "avx512_bf16" in cpu_flags(ZEN5) and "avx512f" in cpu_flags(ZEN5)
    assert {"amx_bf16", "avx512_bf16"} <= cpu_flags(SPR)
    assert not set(CPU_BF16_FLAGS) & cpu_flags(AVX2)
    assert "bf16" in cpu_flags(GRAVITON)
    assert cpu_flags("garbage without flags") is None
    here = cpu_flags()  # this machine: a set on Linux, None elsewhere; never raises
    assert here is None or isinstance(here, set)


@pytest.mark.parametrize("info,task,want", [
    (ZEN5, "segment", torch.bfloat16),
    (SPR, "segment", torch.bfloat16),
    (AVX2, "segment", torch.float32),
    (ZEN5, "score-variants", torch.float32),  # small ref/alt differences: not validated in bf16
    (ZEN5, "embed", torch.float32),
    (ZEN5, None, torch.float32),
])
def test_auto_precision_on_x86(info, task, want):
    p = choose_precision("auto", CPU, task=task, flags=cpu_flags(info), machine="x86_64")
    assert p.dtype == want
    assert p.reason.startswith("auto")
    if want == torch.bfloat16:
        assert "bf16" in p.reason and "RESULTS.md" in p.reason
    elif info == AVX2:
        assert "no native bf16" in p.reason


def test_auto_precision_fallbacks():
    # ARM with a bf16 flag: not measured there -> fp32; flags unreadable (macOS, Windows) -> fp32
    p = choose_precision("auto", CPU, task="segment", flags=cpu_flags(GRAVITON), machine="aarch64")
    assert p.dtype == torch.float32 and "aarch64" in p.reason
    p = choose_precision("auto", CPU, task="segment", flags=None, machine="x86_64")
    assert p.dtype == torch.float32 and "unreadable" in p.reason
    p = choose_precision("auto", CPU, task="segment", flags=None, machine="arm64")
    assert p.dtype == torch.float32
    # explicit choices are kept whatever the CPU
    assert choose_precision("bf16", CPU, task="segment", flags=cpu_flags(AVX2)).dtype == torch.bfloat16
    assert choose_precision("fp32", CPU, task="segment", flags=cpu_flags(SPR)).reason == "requested"
    assert choose_precision(torch.float16, CPU).dtype == torch.float16
    # this machine, whatever it is: a valid choice with a reason
    p = choose_precision("auto", CPU, task="segment")
    assert p.dtype in (torch.float32, torch.bfloat16) and p.reason and p.as_json()["dtype"] in ("fp32", "bf16")


def _reference_rotary(x, T, head_dim, factor):
    """The textbook rotate-half formulation on [B, heads, T, d]: x cos + cat(-x2, x1) sin."""
    inv = rotary_inv_freq(head_dim, factor)
    f = torch.outer(torch.arange(T, dtype=torch.float32), inv)
    emb = torch.cat((f, f), -1)
    a, b = x.chunk(2, -1)
    return x * emb.cos() + torch.cat((-b, a), -1) * emb.sin()


@pytest.mark.parametrize("factor", [None, 2.44140625])
def test_rotary_signed_tables_match_rotate_half(factor):
    B, T, n, d = 2, 11, 3, 8
    x = torch.randn(B, T, n, d, dtype=torch.float64)
    tables = Rotary(d).tables(T, factor, "cpu", torch.float64)
    want = _reference_rotary(x.transpose(1, 2), T, d, factor).transpose(1, 2)
    with torch.no_grad():
        fast = apply_rotary(x, tables)
    # float64 throughout: differences are rounding only (sums of two products, a few ulp of |x|)
    torch.testing.assert_close(fast, want, rtol=0, atol=1e-12)
    # autograd path (training): same values, gradients flow, and a strided input (a slice of a fused qkv) works
    xg = x.clone().requires_grad_(True)
    slow = apply_rotary(xg, tables)
    torch.testing.assert_close(slow, want, rtol=0, atol=1e-12)
    slow.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    qkv = torch.randn(B, T, 3 * n, d, dtype=torch.float64)
    with torch.no_grad():
        got = apply_rotary(qkv[:, :, :n], tables)
    torch.testing.assert_close(got, _reference_rotary(qkv[:, :, :n].transpose(1, 2), T, d, factor).transpose(1, 2),
                               rtol=0, atol=1e-12)


def test_segment_run_json_records_precision(tmp_path, golden_dir, one_torch_thread):
    from ntk.pipelines.segment import segment_genome

    fa = tmp_path / "g.fa"
    fa.write_text(">c\n" + "ACGTTGCA" * 240 + "\n")
    lines = []
    segment_genome(fa, tmp_path / "o", model=str(golden_dir / "segment_nt_tiny"), device="cpu", precision="fp32",
                   zoom_levels=0, threads=1, log=lines.append)
    info = json.loads((tmp_path / "o" / "run.json").read_text())
    assert info["runtime"]["precision"] == {"dtype": "fp32", "reason": "requested"}
    assert lines == ["precision: fp32 (requested)"]
    segment_genome(fa, tmp_path / "a", model=str(golden_dir / "segment_nt_tiny"), device="cpu", zoom_levels=0,
                   threads=1)
    auto = json.loads((tmp_path / "a" / "run.json").read_text())["runtime"]["precision"]
    assert auto["reason"].startswith("auto") and auto["dtype"] == choose_precision("auto", CPU, "segment").name


def test_bf16_segment_accuracy_within_documented_bounds(tmp_path, golden_dir, sample_dir, one_torch_thread):
    """What `--precision auto` relies on for segment (runtime.CPU_BF16_BOUNDS, bench/bf16_accuracy.py): bf16 vs
    fp32 end to end on real yeast sequence with the golden SegmentNT. Holds with or without native bf16 (without,
    torch converts through fp32: same rounding of weights and activations, fp32 accumulation)."""
    import gzip

    import numpy as np
    import pyBigWig

    from ntk.model.runtime import CPU_BF16_BOUNDS
    from ntk.pipelines.segment import segment_genome

    with gzip.open(sample_dir / "genome.fa.gz", "rt") as f:
        seq = "".join(line.strip() for line in f if not line.startswith(">"))[:30_000]
    fa = tmp_path / "g.fa"
    fa.write_text(">I\n" + seq + "\n")
    probs = {}
    for prec in ("fp32", "bf16"):
        res = segment_genome(fa, tmp_path / prec, model=str(golden_dir / "segment_nt_tiny"), device="cpu",
                             precision=prec, zoom_levels=0, threads=1)
        assert json.loads((tmp_path / prec / "run.json").read_text())["runtime"]["dtype"] == \
            {"fp32": "float32", "bf16": "bfloat16"}[prec]
        cols = []
        for feat in res.features:
            with pyBigWig.open(str(tmp_path / prec / f"{feat}.bw")) as bw:
                cols.append(np.asarray(bw.values("I", 0, len(seq)), dtype=np.float64))
        probs[prec] = np.stack(cols, 1)
    ok = ~np.isnan(probs["fp32"])
    assert ok.mean() > 0.9
    d = np.abs(probs["bf16"] - probs["fp32"])[ok]
    flips = ((probs["fp32"] >= 0.5) != (probs["bf16"] >= 0.5))[ok]
    assert 0 < d.max() <= CPU_BF16_BOUNDS["max_abs_dp"]  # > 0: the bf16 run really ran in bf16
    assert flips.mean() <= CPU_BF16_BOUNDS["call_flip_fraction"]
