"""``--compile`` (issue #19): the NT/SegmentNT forward has no graph break, the unpadded path gives SDPA no mask,
padded batches keep the mask, compiled values equal eager ones to float32 reordering, and machines where inductor
cannot work get a one-line error."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ntk
from ntk.errors import NtkError
from ntk.model.compiled import StaticCompiled, check_compile

from conftest import REORDER_ULPS, assert_f32_close, run_ntk

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ids(m, B: int, T: int, seed: int = 0) -> torch.Tensor:
    """[B, T] token ids of real 6-mers after a CLS, nothing padded."""
    g = torch.Generator().manual_seed(seed)
    tok = m.tokenizer
    ids = torch.randint(tok.cls_id + 4, m.config.vocab_size - 1, (B, T), generator=g)  # past the special tokens
    ids[:, 0] = tok.cls_id
    return ids


def _sdpa_masks(monkeypatch) -> list:
    """Record the ``attn_mask`` every SDPA call gets (the encoder calls it through ``F``)."""
    seen, real = [], F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask, **kw)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen


def _sdpa_nodes(explained) -> list:
    return [n for g in explained.graphs for n in g.graph.nodes
            if n.op == "call_function" and n.target is F.scaled_dot_product_attention]


@pytest.mark.parametrize("name", ["segment_nt_tiny", "nt_v2_tiny"])
def test_forward_has_no_graph_break(golden_dir, name):
    """dynamo traces the whole forward (encoder + U-Net head for SegmentNT, trunk + hidden states for NT v2) in
    one graph, unpadded and padded; unpadded, SDPA gets no mask in the graph (flash-eligible on CUDA)."""
    m = ntk.load_model(golden_dir / name).eval()
    ids = _ids(m, 2, 17)
    r = m.config.rescaling_for_tokens(17) if m.config.is_segmentation else None

    def unpadded(ids):
        out = m(ids, rescaling_factor=r, heads="segment" if m.config.is_segmentation else False,
                output_hidden_states=True, unpadded=True)
        return out.segment_probabilities if m.config.is_segmentation else torch.stack(out.hidden_states)

    def padded(ids, mask):
        return m(ids, attention_mask=mask, heads=False).last_hidden_state

    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 9:] = False
    with torch.inference_mode():
        e = torch._dynamo.explain(unpadded)(ids)
        assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons
        nodes = _sdpa_nodes(e)
        assert len(nodes) == m.config.num_hidden_layers
        assert all(n.kwargs.get("attn_mask") is None for n in nodes)
        e = torch._dynamo.explain(padded)(ids, mask)
        assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons
        assert all(n.kwargs.get("attn_mask") is not None for n in _sdpa_nodes(e))


@pytest.mark.parametrize("fp8", [False, True])
def test_embedded_model_with_nucleotide_head_and_fp8_traces_whole(fp8):
    """The embedded default model (SegmentNT + ntk's nucleotide head), as is and with its trunk linears in float8
    (``--precision fp8`` together with ``--compile``): one graph, no break, and the traced function (dynamo,
    ``backend="eager"``) gives the eager values."""
    from ntk.model.fp8 import to_fp8

    m = ntk.load_model(None).eval()
    assert m.nuc_head is not None
    if fp8:
        m = m.to(torch.bfloat16)
        to_fp8(m)
    ids = _ids(m, 2, 65)

    def f(ids):
        return m(ids, heads="segment", unpadded=True).segment_probabilities

    with torch.inference_mode():
        e = torch._dynamo.explain(f)(ids)
        assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons
        want = f(ids)
        got = torch.compile(f, backend="eager", fullgraph=True, dynamic=False)(ids)
        logits = m(ids, heads="segment", unpadded=True).segment_logits
    if not fp8:
        assert_f32_close(got, want, REORDER_ULPS, scale=1.0, what="compiled vs eager")
    else:
        # bf16 logits: a reordered forward may land each of the two logits one bf16 ulp (2**-7 relative) away;
        # p = sigmoid(l1 - l0) moves by at most 1/4 of that
        ulp = 2.0 ** (float(torch.floor(torch.log2(logits.float().abs().max()))) - 7)
        assert (got - want).abs().max() <= 0.25 * 2 * ulp


def test_unpadded_path_passes_no_mask_and_equals_the_masked_path(golden_dir, monkeypatch):
    """Eager: ``unpadded=True`` calls SDPA with ``attn_mask=None`` and gives exactly what the default (a mask
    derived from the ids, found all-True and dropped) gives."""
    m = ntk.load_model(golden_dir / "segment_nt_tiny").eval()
    ids = _ids(m, 3, 33, seed=1)
    with torch.inference_mode():
        want = m(ids, heads="segment").segment_probabilities
        seen = _sdpa_masks(monkeypatch)
        got = m(ids, heads="segment", unpadded=True).segment_probabilities
    assert len(seen) == m.config.num_hidden_layers and all(a is None for a in seen)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="unpadded"):
        m(ids, attention_mask=torch.ones_like(ids), unpadded=True)


def test_padded_batch_keeps_the_mask_compiled_or_not(golden_dir, monkeypatch):
    """A padded batch (rows of different lengths) gives each row what it gives alone, in eager mode and traced by
    dynamo (where the all-True check is skipped and the mask always reaches SDPA)."""
    m = ntk.load_model(golden_dir / "nt_v2_tiny").eval()
    lengths = [17, 11, 6]
    ids = _ids(m, 3, 17, seed=2)
    for i, n in enumerate(lengths):
        ids[i, n:] = m.config.pad_token_id
    mask = ids != m.config.pad_token_id

    def trunk(ids, mask):
        return m(ids, attention_mask=mask, heads=False).last_hidden_state

    traced = torch.compile(trunk, backend="eager", fullgraph=True, dynamic=False)
    with torch.inference_mode():
        alone = [m(ids[i:i + 1, :n], unpadded=True, heads=False).last_hidden_state[0] for i, n in enumerate(lengths)]
        seen = _sdpa_masks(monkeypatch)
        for got in (trunk(ids, mask), traced(ids, mask)):
            for i, n in enumerate(lengths):
                assert_f32_close(got[i, :n], alone[i], REORDER_ULPS, what=f"row {i}")
    assert seen and all(a is not None for a in seen)


def test_static_shape_rules(golden_dir):
    """One static shape: a batch of the same length with at least half the rows is padded with copies of its last
    row (outputs dropped); other shapes run eager; the values are the eager ones."""
    m = ntk.load_model(golden_dir / "segment_nt_tiny").eval()

    def fn(ids):
        return m(ids, heads="segment", unpadded=True).segment_probabilities

    c = StaticCompiled(fn, "on", rows_for=lambda T: 4, backend="eager")
    with torch.inference_mode():
        for B, T in [(4, 17), (3, 17), (2, 17), (1, 17), (4, 9), (5, 17)]:
            ids = _ids(m, B, T, seed=B * T)
            got = c(ids)
            assert got.shape[0] == B
            assert_f32_close(got, fn(ids), REORDER_ULPS, scale=1.0, what=f"{B}x{T}")
    info = c.info()
    assert info["shape"] == [4, 17]
    assert (info["batches_compiled"], info["batches_eager"], info["rows_padded"]) == (3, 3, 1 + 2)


def test_check_compile_refuses_clearly(monkeypatch):
    assert check_compile("off", "cpu") == "off"
    with pytest.raises(NtkError, match="expected one of off, on, cudagraphs"):
        check_compile("fast", "cpu")
    with pytest.raises(NtkError, match="CUDA graphs need a CUDA device"):
        check_compile("cudagraphs", "cpu")
    with pytest.raises(NtkError, match="runs on cuda and cpu devices, not mps"):
        check_compile("on", "mps")


def test_cli_without_a_cxx_compiler_is_one_line(sample_dir, tmp_path, monkeypatch):
    """Inductor builds CPU kernels with a C++ compiler: without one, ``--compile on`` stops before the model
    loads with one line naming what is missing (exit 2), and nothing is written."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    p = run_ntk("segment", sample_dir / "genome.fa.gz", "-r", "I:1-2000", "-o", tmp_path / "o", "--device", "cpu",
                "--compile", "on")
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        "ntk: error: --compile: torch.compile on CPU needs a C++ compiler (g++ or clang++, or $CXX) and none works "
        "on this machine; install one or run without --compile"]
    assert not (tmp_path / "o").exists()


def _bigwig(path, chrom, n):
    import pyBigWig

    with pyBigWig.open(str(path)) as bw:
        return np.asarray(bw.values(chrom, 0, n), dtype=np.float64)


def test_segment_compiled_equals_eager_through_the_cli(golden_dir, sample_dir, tmp_path):
    """``ntk segment --compile on`` (inductor, C++ kernels) on data/sample: the same tracks as eager to float32
    reordering (probabilities: scale 1), and run.json says what ran compiled."""
    from conftest import need_tool

    need_tool("g++")
    model = golden_dir / "segment_nt_tiny"
    common = ["segment", sample_dir / "genome.fa.gz", "-m", model, "-r", "I:1-3000", "--device", "cpu",
              "--threads", "1", "--batch-size", "4", "-q"]
    run_ntk(*common, "-o", tmp_path / "eager", check=True)
    run_ntk(*common, "-o", tmp_path / "compiled", "--compile", "on", check=True)
    run = json.loads((tmp_path / "compiled" / "run.json").read_text())
    c = run["runtime"]["compile"]
    assert c["mode"] == "on" and c["batches_compiled"] >= 1 and c["shape"][0] == 4
    assert json.loads((tmp_path / "eager" / "run.json").read_text())["runtime"]["compile"] == {"mode": "off"}
    for f in run["options"]["features"]:
        want = _bigwig(tmp_path / "eager" / f"{f}.bw", "I", 3000)
        got = _bigwig(tmp_path / "compiled" / f"{f}.bw", "I", 3000)
        assert_f32_close(got, want, REORDER_ULPS, scale=1.0, what=f)


@pytest.fixture
def dynamo_only(monkeypatch):
    """The jobs' compiled forwards traced by dynamo without inductor's code generation (``backend="eager"``): the
    plumbing (which batches run compiled, padding, values) in seconds; inductor itself is the segment CLI test's."""
    from ntk.model import compiled

    monkeypatch.setattr(compiled, "BACKEND", "eager")


def _fixed_length_fasta(path, sample_dir, n: int = 20, length: int = 600, short: bool = True):
    from ntk.io.fasta import IndexedFasta

    fa = IndexedFasta(sample_dir / "genome.fa.gz")
    with open(path, "w") as f:
        for i in range(n):
            f.write(f">r{i}\n{fa.fetch('I', 10_000 + 997 * i, 10_000 + 997 * i + length)}\n")
        if short:
            f.write(">short\nACGTACGTAAACCCGGGTTTACGT\n")
    fa.close()
    return path


def test_embed_compiled_plumbing(sample_dir, tmp_path, dynamo_only):
    """``embed --compile``: batches of equal-length records (no padding) run the compiled unpadded forward, the
    partial last one padded to the static rows, a padded batch eager; embeddings equal eager ones."""
    import polars as pl

    from ntk.pipelines.embed import run_embed
    from ntk.pipelines.options import EmbedOptions

    fa = _fixed_length_fasta(tmp_path / "fixed.fa", sample_dir)
    got = {}
    for mode in ("off", "on"):
        st = run_embed(EmbedOptions(tmp_path / f"{mode}.parquet", input=str(fa), device="cpu", batch_size=8,
                                    compile=mode))
        got[mode] = np.stack(pl.read_parquet(tmp_path / f"{mode}.parquet")["embedding"].to_list())
        if mode == "on":
            c = st.compile
            assert c["shape"][0] == 8 and c["batches_compiled"] >= 2 and c["batches_eager"] >= 1, c
        else:
            assert st.compile is None
    assert_f32_close(got["on"], got["off"], REORDER_ULPS, what="embeddings")


def test_score_variants_compiled_plumbing(sample_dir, tmp_path, dynamo_only):
    """``score-variants --compile``: the trunk of unpadded REF/ALT windows runs compiled (a partial batch padded to
    the static rows); every score equals the eager one."""
    import polars as pl

    from ntk.pipelines.score_variants import score_variants

    tables = {}
    for mode in ("off", "on"):
        s = score_variants(str(sample_dir / "variants.vcf"), str(sample_dir / "genome.fa.gz"), output=None,
                           table=str(tmp_path / f"{mode}.parquet"), regions=["I:1-30,000"], device="cpu",
                           threads=1, compile=mode)
        tables[mode] = pl.read_parquet(tmp_path / f"{mode}.parquet")
        if mode == "on":
            assert s.compile["batches_compiled"] >= 1, s.compile
    a, b = tables["off"], tables["on"]
    assert a.height == b.height > 0
    for col in a.columns:
        if a[col].dtype in (pl.Float32, pl.Float64):
            assert_f32_close(b[col].to_numpy(), a[col].to_numpy(), REORDER_ULPS, what=col)
