"""--precision fp8 (issue #19): e4m3 quantisation, the Float8 linear layer, the module swap, the precision
plumbing and its refusals, and segment/embed running in fp8 on the CPU (torch 2.13 implements
``torch._scaled_mm`` on CPU tensors: products of the e4m3 values accumulated in float32).

Bounds are derived from the e4m3 format (ntk/model/fp8.py's docstring): 3 mantissa bits, so rounding a scaled value
in the normal range (>= 2**-6) to nearest has relative error <= 2**-4; subnormals (spacing 2**-9) have absolute
error <= 2**-10 in scaled units. Float32 arithmetic around it (x / s, q * s) adds a few 2**-24 relative.
"""
import json

import numpy as np
import pytest
import torch
from conftest import REORDER_ULPS, assert_f32_close, run_ntk
from torch import nn

import ntk
from ntk.errors import NtkError
from ntk.model.fp8 import (E4M3_MAX, E4M3_MIN_NORMAL, E4M3_REL_ERR, E4M3_SUB_ABS_ERR, Float8Linear, dequantise,
                           emulated_linear, fp8_refusal, quantise, to_fp8, trunk_linear_names)
from ntk.model.runtime import choose_precision

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F32_SLACK = 4 * 2.0 ** -24  # x / s and q * s: one float32 rounding each, relative, with margin
BF16_U = 2.0 ** -8  # unit roundoff of bf16 (8 significant bits)


def wide_range(shape, seed=0):
    """Normal values times 10**U(-4, 1): magnitudes over five decades, so that both e4m3 normals and subnormals
    occur after per-row scaling."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 10.0 ** (torch.rand(shape, generator=g) * 5 - 4)


@pytest.mark.parametrize("scaling", ["row", "tensor"])
def test_quantise_round_trip_within_e4m3_bounds(scaling):
    x = wide_range((64, 256))
    q, s = quantise(x, scaling)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
    assert s.shape == ((64, 1) if scaling == "row" else ())
    back = dequantise(q, s)
    assert torch.isfinite(back).all()
    v = (x / s).abs()  # the scaled magnitudes that were rounded to e4m3
    assert float(v.max()) <= E4M3_MAX * (1 + F32_SLACK)
    if scaling == "row":  # each row's largest magnitude lands on 448 (the format's largest finite value)
        assert torch.equal(q.float().abs().amax(dim=1), torch.full((64,), E4M3_MAX))
    err = (back - x).abs()
    normal = v >= E4M3_MIN_NORMAL
    rel = err[normal] / x.abs()[normal]
    assert float(rel.max()) <= E4M3_REL_ERR + F32_SLACK
    sub_bound = E4M3_SUB_ABS_ERR * s.expand_as(x) * (1 + F32_SLACK)
    assert bool((err[~normal] <= sub_bound[~normal]).all())
    assert int((~normal).sum()) > 0  # the subnormal bound was exercised
    # the bound is the format's, not a loose one: some element comes within a factor 2 of it
    assert float(rel.max()) > E4M3_REL_ERR / 2


def test_quantise_zero_rows_and_exact_values():
    x = torch.zeros(3, 16)
    x[1, :4] = torch.tensor([1.0, -2.0, 0.5, 0.25])  # powers of two: exact in e4m3 under any power-of-two scale
    q, s = quantise(x)
    assert float(s[0]) == 1.0 and float(s[2]) == 1.0  # all-zero rows
    assert torch.equal(dequantise(q, s)[[0, 2]], x[[0, 2]])
    assert_f32_close(dequantise(q, s)[1], x[1], ulps=4, what="powers of two")


def linear_error_bound(x, w, sx, sw, bias, out_scale):
    """Elementwise bound on |Float8Linear(x) - (x W^T + b)| (float64). With u = 2**-4, a = 2**-10 * s:
    |x8 - x| <= u|x| + a_x, |w8 - w| <= u|w| + a_w, |w8| <= (1+u)|w| + a_w, and
    x8 w8 - x w = (x8 - x) w8 + x (w8 - w), summed over the inner dimension K; float32 accumulation adds
    K * 2**-24 * sum |x8||w8|; the bias rounded to bf16 adds 2**-8 |b|; the result rounded to bf16 adds
    2**-8 of the output's magnitude (``out_scale``)."""
    u = E4M3_REL_ERR + F32_SLACK
    ax = E4M3_SUB_ABS_ERR * sx.double() * (1 + F32_SLACK)
    aw = E4M3_SUB_ABS_ERR * sw.double().reshape(-1, 1) * (1 + F32_SLACK)
    X, W = x.double().abs(), w.double().abs()
    bound = (u * X + ax) @ ((1 + u) * W + aw).t() + X @ (u * W + aw).t()
    K = x.shape[1]
    bound += K * 2.0 ** -24 * (((1 + u) * X + ax) @ ((1 + u) * W + aw).t())
    if bias is not None:
        bound += BF16_U * bias.double().abs()
    return bound + BF16_U * out_scale


@pytest.mark.parametrize("scaling", ["row", "tensor"])
def test_float8_linear_vs_fp32_linear(scaling):
    torch.manual_seed(0)
    M, K, N = 37, 96, 48
    lin = nn.Linear(K, N)
    x = wide_range((M, K), seed=1)
    f8 = Float8Linear(lin, scaling, out_dtype=torch.bfloat16)
    with torch.no_grad():
        want = lin(x).double()
        got = f8(x)
    assert got.dtype == torch.bfloat16 and got.shape == (M, N)
    _, sx = quantise(x, scaling)
    sw = f8.weight_scale.reshape(-1) if scaling == "row" else f8.weight_scale.expand(N)
    sx = sx if scaling == "row" else sx.expand(M, 1)
    bound = linear_error_bound(x, lin.weight.detach(), sx, sw, lin.bias.detach(), want.abs() + 1e-30)
    # the bf16 rounding is of the computed value, itself within the other terms of ``want``
    bound += BF16_U * (bound - BF16_U * want.abs())
    err = (got.double() - want).abs()
    assert bool((err <= bound).all()), f"worst err/bound {float((err / bound).max()):.3f}"
    # fp8 is really in use: errors well above bf16's alone on some output
    assert float((err - BF16_U * want.abs()).max()) > 0
    # 3-D input (batch, tokens, K) gives the same rows
    with torch.no_grad():
        got3 = f8(x.reshape(1, M, K))
    assert torch.equal(got3.reshape(M, N), got)


def test_scaled_mm_matches_the_emulated_math():
    """torch._scaled_mm (the path a GPU runs) against the reference: dequantise with the same scales, float32
    matmul; float32 outputs agree up to summation order."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = wide_range((20, 64), seed=2)
    for scaling in ("row", "tensor"):
        real = Float8Linear(lin, scaling, out_dtype=torch.float32)
        emu = Float8Linear(lin, scaling, out_dtype=torch.float32, emulate=True)
        with torch.no_grad():
            a, b = real(x), emu(x)
        x8, sx = quantise(x, scaling)
        scale = float((dequantise(x8, sx).abs() @ (real.weight_fp8.float().abs()
                                                   * real.weight_scale.reshape(-1, 1)).t()).max())
        assert_f32_close(a, b, REORDER_ULPS, scale=scale, what=f"_scaled_mm vs emulated ({scaling})")
        y = emulated_linear(x8, sx, real.weight_fp8, real.weight_scale, real.bias, torch.float32)
        assert torch.equal(y, b)


def test_swap_touches_exactly_the_encoder_linears(golden_dir):
    m = ntk.load_model(str(golden_dir / "segment_nt_tiny"), dtype=torch.bfloat16)
    before = {n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)}
    L = m.config.num_hidden_layers
    expected = {f"esm.encoder.layer.{i}.{n}" for i in range(L) for n in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")}
    assert set(trunk_linear_names(m)) == expected and expected < before
    ids = torch.randint(5, 4000, (2, 1 + 4 * 8))
    with torch.no_grad():
        p16 = m(ids, heads="segment").segment_probabilities
    summary = to_fp8(m)
    assert set(summary["swapped"]) == expected and summary["kept"] == []
    swapped = {n for n, mod in m.named_modules() if isinstance(mod, Float8Linear)}
    still = {n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)}
    assert swapped == expected and still == before - expected  # heads (SegmentNT fc, U-Net) untouched
    assert m.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in m.parameters())
    with torch.no_grad():
        p8 = m(ids, heads="segment").segment_probabilities
    assert p8.shape == p16.shape and torch.isfinite(p8).all() and not torch.equal(p8, p16)
    assert to_fp8(m)["swapped"] == summary["swapped"]  # a second swap changes nothing


def test_swap_keeps_layers_cuda_cannot_run(golden_dir):
    """On CUDA, torch._scaled_mm needs inner and output sizes that are multiples of 16: such layers stay bf16
    (golden SegmentNT: FFN 40 -> 32 is kept, the gate/up 32 -> 80 is swapped)."""
    m = ntk.load_model(str(golden_dir / "segment_nt_tiny"), dtype=torch.bfloat16)
    s = to_fp8(m, align=16)
    assert s["kept"] == [f"esm.encoder.layer.{i}.output.dense" for i in range(m.config.num_hidden_layers)]
    assert len(s["swapped"]) == 5 * m.config.num_hidden_layers


def test_swap_ntv3(golden_dir):
    m = ntk.load_model(str(golden_dir / "ntv3_pre_tiny"), dtype=torch.bfloat16)
    names = trunk_linear_names(m)
    assert len(names) == 6 * m.config.num_layers
    s = to_fp8(m)
    assert s["swapped"] == names
    assert {n for n, mod in m.named_modules() if isinstance(mod, Float8Linear)} == set(names)
    ids = torch.randint(0, 4, (1, 2 * m.config.window_unit))
    with torch.no_grad():
        out = m(ids)
    assert torch.isfinite(out.logits.float()).all()


def test_refusals():
    assert fp8_refusal(torch.device("cpu")) is None
    assert fp8_refusal(torch.device("cuda:0"), capability=(9, 0)) is None
    assert fp8_refusal(torch.device("cuda:0"), capability=(8, 9)) is None
    msg = fp8_refusal(torch.device("cuda:0"), capability=(8, 0))
    assert "compute capability 8.0" in msg and "8.9+" in msg and "cuda:0" in msg and "\n" not in msg
    msg = fp8_refusal(torch.device("mps"))
    assert "mps" in msg and "8.9+" in msg
    p = choose_precision("fp8", torch.device("cpu"))
    assert p.fp8 and p.dtype == torch.bfloat16 and p.name == "fp8" and p.as_json()["dtype"] == "fp8"


def test_refusal_on_an_old_gpu(monkeypatch):
    """What ``--device cuda --precision fp8`` says on an A100 (no GPU here: the capability query is replaced)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(NtkError, match=r"cuda:0 \(NVIDIA A100-SXM4-80GB, compute capability 8.0\) has no FP8"):
        choose_precision("fp8", torch.device("cuda:0"))


def test_cli_refusals(tmp_path, golden_dir):
    fa = tmp_path / "s.fa"
    fa.write_text(">a\n" + "ACGT" * 30 + "\n")
    p = run_ntk("chat", "-m", golden_dir / "chatnt_tiny", "-f", fa, "-q", "what is <DNA>?", "--precision", "fp8")
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.strip().count("\n") == 0
    assert "--precision fp8 is for segment, embed and score-variants" in p.stderr
    with pytest.raises(NtkError, match="fp16, fp8"):  # the list of precisions names fp8
        choose_precision("fp9", torch.device("cpu"))


def test_segment_and_embed_in_fp8_on_the_cpu(tmp_path, golden_dir):
    g = torch.Generator().manual_seed(3)
    seq = "".join("ACGT"[i] for i in torch.randint(0, 4, (1200,), generator=g).tolist())
    fa = tmp_path / "g.fa"
    fa.write_text(f">chrA\n{seq}\n")
    p = run_ntk("segment", fa, "-m", golden_dir / "segment_nt_tiny", "-o", tmp_path / "seg", "--precision", "fp8",
                "--device", "cpu", "--window", "480")
    assert p.returncode == 0, p.stderr
    assert "precision: fp8" in p.stderr
    run = json.loads((tmp_path / "seg" / "run.json").read_text())
    assert run["runtime"]["precision"]["dtype"] == "fp8"
    import pyBigWig
    feats = sorted((tmp_path / "seg").glob("*.bw"))
    assert len(feats) == len(ntk.load_model(str(golden_dir / "segment_nt_tiny")).features)
    for f in feats:
        v = np.array(pyBigWig.open(str(f)).values("chrA", 0, len(seq)))
        assert not np.isnan(v).any() and v.min() >= 0 and v.max() <= 1  # one ACGT run: every position scored
    p = run_ntk("embed", fa, "-m", golden_dir / "nt_v2_tiny", "-o", tmp_path / "e.parquet", "--precision", "fp8",
                "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "e.parquet").stat().st_size > 0


@pytest.mark.skipif(not torch.cuda.is_available() or fp8_refusal(torch.device("cuda")) is not None,
                    reason="needs a CUDA GPU of compute capability 8.9+ (run by bench/fp8_gpu_check.sh)")
@pytest.mark.parametrize("scaling", ["row", "tensor"])
def test_scaled_mm_on_cuda_matches_the_emulated_math(scaling):
    """The GPU kernel (FP8 tensor cores, float32 accumulation) against the same quantisation dequantised and
    multiplied in float32: the bf16 outputs differ by the bf16 rounding of either (2 x 2**-8 |y|) plus the
    summation order (REORDER_ULPS eps32 of sum |x8 s_x| |w8 s_w|)."""
    torch.manual_seed(0)
    dev = torch.device("cuda")
    lin = nn.Linear(1024, 4096).to(dev, torch.bfloat16)  # the segment-nt FFN's sizes
    x = wide_range((3 * 513, 1024), seed=4).to(dev, torch.bfloat16)
    real = Float8Linear(lin, scaling)
    emu = Float8Linear(lin, scaling, emulate=True)
    with torch.no_grad():
        a, b = real(x).double(), emu(x).double()
    x8, sx = quantise(x, scaling)
    mag = dequantise(x8, sx).abs().double() @ (real.weight_fp8.double().abs()
                                               * real.weight_scale.double().reshape(-1, 1)).t()
    bound = 2 * BF16_U * (1 + BF16_U) * b.abs() + REORDER_ULPS * 2.0 ** -23 * mag + BF16_U * real.bias.double().abs()
    assert bool(((a - b).abs() <= bound).all()), f"worst {float(((a - b).abs() / bound).max()):.3f} of the bound"
