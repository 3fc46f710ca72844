"""ntk.pipelines.embed against a direct forward pass + pooling through the Python API (golden tiny models)."""
import numpy as np
import pytest
import torch

import ntk
from ntk.errors import NtkError
from ntk.model.tokenizer import CLS, reverse_complement, sequence_codes
from ntk.pipelines.embed import embed_sequences, normalise_layers, tokenize_long
from ntk.plan.windows import tile

from conftest import assert_f32_close

MODELS = ["nt_v1_tiny", "nt_v2_tiny", "segment_nt_tiny"]


@pytest.fixture(scope="module", params=MODELS)
def model(request, golden_dir):
    return ntk.load_model(golden_dir / request.param)


def random_seq(rng, n, n_frac=0.0, lower=False):
    s = rng.choice(list("ACGT"), n)
    if n_frac:
        s[rng.random(n) < n_frac] = "N"
    s = "".join(s)
    return s.lower() if lower else s


def reference(m, seq, layer=-1, pool="mean"):
    """Each window run alone (no padding, no batching) through m(...); every token taken from the window that
    keeps it; then pooled. Short sequences are a single direct forward of the whole tokenization."""
    ids = m.tokenizer.tokenize(seq)[0]
    dna = ids[1:]
    W = m.config.max_tokens - 1
    wins = tile(0, len(dna), W, W // 8, unit=1)
    per_token = np.full((len(dna), m.config.hidden_size), np.nan)
    covered = np.zeros(len(dna), int)
    cls, whole = [], []
    with torch.no_grad():
        for w in wins:
            x = torch.as_tensor(np.concatenate(([CLS], dna[w.start:w.end])))[None]
            h = m(x, output_hidden_states=True, heads=False).hidden_states[layer][0].double().numpy()
            a, b = 1 + w.keep_start - w.start, 1 + w.keep_end - w.start
            per_token[w.keep_start:w.keep_end] = h[a:b]
            covered[w.keep_start:w.keep_end] += 1
            cls.append(h[0])
            whole.append(h[1:])
    assert (covered == 1).all(), "every token must be pooled exactly once"
    # per-token rows: near each window boundary, the two windows' rows blended by a linear ramp over half their
    # overlap on each side (at most half of either kept part)
    blended = per_token.copy()
    for (wa, ha), (wb, hb) in zip(zip(wins, whole), zip(wins[1:], whole[1:])):
        mid = wa.keep_end
        h = min(mid - wb.start, wa.end - mid, (wa.keep_end - wa.keep_start) // 2, (wb.keep_end - wb.keep_start) // 2)
        t = ((np.arange(2 * h) + 0.5) / (2 * h))[:, None]
        blended[mid - h:mid + h] = (1 - t) * ha[mid - h - wa.start:mid + h - wa.start] + \
            t * hb[mid - h - wb.start:mid + h - wb.start]
    return {"mean": per_token.mean(0), "max": per_token.max(0), "cls": np.mean(cls, 0), "none": blended}[pool]


def as_matrix(df, col="embedding"):
    return np.array(df[col].to_list(), dtype=np.float64)


def mixed_set(m, rng):
    W = m.config.max_tokens - 1
    return [
        random_seq(rng, 5),  # single-nucleotide tokens only
        random_seq(rng, 6 * W),  # exactly the maximum length: one full window
        random_seq(rng, 100, n_frac=0.05, lower=True),  # soft-masked, N tokens
        random_seq(rng, 6 * W + 1),  # one token too many: tiled
        random_seq(rng, 6 * W * 5 + 17, n_frac=0.02),  # several windows, N inside windows
        random_seq(rng, 61),
    ]


def test_matches_direct_forward_mixed_lengths(model):
    rng = np.random.default_rng(1)
    seqs = mixed_set(model, rng)
    # short one: the plainest possible check, straight through tokenizer.encode + forward + mean
    with torch.no_grad():
        b = model.tokenizer.encode([seqs[0]])
        direct = model(b.input_ids, attention_mask=b.attention_mask,
                       output_hidden_states=True, heads=False).hidden_states[-1][0, 1:].mean(0).double().numpy()
    df = embed_sequences(model, seqs, layers=[-1, 1])  # every sequence in one chunk, short ones share a batch
    assert df["name"].to_list() == [f"seq{i + 1}" for i in range(len(seqs))]
    assert_f32_close(as_matrix(df, f"embedding_layer{model.config.num_hidden_layers}")[0], direct, what="direct")
    W = model.config.max_tokens - 1
    assert df["n_tokens"].to_list()[1] == W and df["n_tokens"].to_list()[3] == W + 1
    for layer in (-1, 1):
        col = f"embedding_layer{model.config.num_hidden_layers if layer == -1 else layer}"
        got = as_matrix(df, col)
        for i, s in enumerate(seqs):
            assert_f32_close(got[i], reference(model, s, layer), what=f"{col} seq{i + 1} ({len(s)} nt)")


def test_padding_and_batching_do_not_change_rows(model):
    rng = np.random.default_rng(2)
    seqs = mixed_set(model, rng)
    together = as_matrix(embed_sequences(model, seqs))
    alone = as_matrix(embed_sequences(model, seqs, batch_size=1))
    assert_f32_close(together, alone, what="batch_size=1")
    # padding every batch to the chunk's longest window (the benchmark's reference) changes nothing either
    padded = as_matrix(embed_sequences(model, seqs, bucket=False, batch_size=3))
    assert_f32_close(together, padded, what="padded")


@pytest.mark.parametrize("pool", ["max", "cls", "none"])
def test_other_poolings_match_reference(golden_dir, pool):
    m = ntk.load_model(golden_dir / "nt_v2_tiny")
    rng = np.random.default_rng(3)
    seqs = [random_seq(rng, 40), random_seq(rng, 1500, n_frac=0.01)]
    df = embed_sequences(m, seqs, pool=pool, chunk_tokens=100)  # several chunks: the long record spans them
    if pool == "none":
        for i, s in enumerate(seqs):
            rows = df.filter(df["name"] == f"seq{i + 1}")
            ids, starts, ends = m.tokenizer.tokenize(s)
            assert rows["token_index"].to_list() == list(range(len(ids) - 1))
            assert rows["nt_start"].to_list() == starts[1:].tolist()
            assert rows["nt_end"].to_list() == ends[1:].tolist()
            assert_f32_close(as_matrix(rows), reference(m, s, pool="none"), what=f"seq{i + 1}")
    else:
        got = as_matrix(df)
        for i, s in enumerate(seqs):
            assert_f32_close(got[i], reference(m, s, pool=pool), what=f"{pool} seq{i + 1}")


def test_row_order_is_input_order_across_chunks(golden_dir):
    m = ntk.load_model(golden_dir / "nt_v1_tiny")
    rng = np.random.default_rng(4)
    lengths = rng.permutation([3, 30, 300, 700, 12, 2000, 64, 390, 1, 150])
    seqs = [(f"r{i}_{n}", random_seq(rng, int(n))) for i, n in enumerate(lengths)]
    small_chunks = embed_sequences(m, seqs, chunk_tokens=64)
    one_chunk = embed_sequences(m, seqs)
    assert small_chunks["name"].to_list() == [n for n, _ in seqs] == one_chunk["name"].to_list()
    assert small_chunks["length"].to_list() == [int(n) for n in lengths]
    each = np.stack([as_matrix(embed_sequences(m, [s]))[0] for s in seqs])
    assert_f32_close(as_matrix(small_chunks), each, what="small chunks")
    assert_f32_close(as_matrix(one_chunk), each, what="one chunk")


def test_rc_average(golden_dir):
    m = ntk.load_model(golden_dir / "nt_v2_tiny")
    rng = np.random.default_rng(5)
    s = random_seq(rng, 800, n_frac=0.01)
    got = as_matrix(embed_sequences(m, [s], rc_average=True))[0]
    want = (reference(m, s) + reference(m, reverse_complement(s))) / 2
    assert_f32_close(got, want, what="rc-average")
    with pytest.raises(NtkError, match="rc-average"):
        embed_sequences(m, [s], rc_average=True, pool="none")


def test_empty_and_all_n_rows(golden_dir):
    m = ntk.load_model(golden_dir / "nt_v2_tiny")
    seqs = [("empty", ""), ("ns", "NNNNNRYN"), ("ok", "ACGTACGTTT")]
    df = embed_sequences(m, seqs)
    assert df["status"].to_list() == ["empty", "all_n", "ok"]
    assert df["embedding"].to_list()[:2] == [None, None]
    assert df["n_tokens"].to_list() == [0, 8, 5]
    with pytest.raises(NtkError, match="sequence 'bad': invalid nucleotide 'X' at position 3"):
        embed_sequences(m, [("bad", "ACXGT")])
    none = embed_sequences(m, seqs, pool="none")
    assert none["status"].to_list() == ["empty", "all_n"] + ["ok"] * 5
    assert none["token_index"].to_list()[:2] == [None, None]


def test_tokenize_long_equals_whole_tokenization(golden_dir):
    m = ntk.load_model(golden_dir / "nt_v1_tiny")
    rng = np.random.default_rng(6)
    for n, nf in [(0, 0), (5, 0), (997, 0.0), (1000, 0.02), (3000, 0.3), (2000, 0.9)]:
        codes = sequence_codes(random_seq(rng, n, n_frac=nf))
        ids, starts, _ = m.tokenizer.tokenize_codes(codes, add_cls=False)
        for block in (6, 7, 13, 64, 1 << 20):
            got_ids, got_starts = tokenize_long(m.tokenizer, codes, block)
            assert np.array_equal(got_ids, ids) and np.array_equal(got_starts, starts), (n, nf, block)


def test_layer_selection():
    assert normalise_layers(None, 12) == [12]
    assert normalise_layers(["-1", "6,0", "12"], 12) == [12, 6, 0]
    assert normalise_layers(-13, 12) == [0]
    for bad in ("13", "-14", "x"):
        with pytest.raises(NtkError, match="--layer"):
            normalise_layers(bad, 12)
