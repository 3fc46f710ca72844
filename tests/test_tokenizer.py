import json

import numpy as np
import pytest

from ntk.model.tokenizer import NucleotideTokenizer, reverse_complement, sequence_codes


@pytest.fixture(scope="module")
def cases(golden_dir):
    return json.loads((golden_dir / "tokenizer.json").read_text())["cases"]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_reference_cases(cases, version):
    tok = NucleotideTokenizer(version)
    assert len(cases) == 74
    for c in cases:
        ids, starts, ends = tok.tokenize(c["sequence"])
        assert ids.tolist() == c[f"ids_{version}"], c["sequence"]
        assert tok.convert_ids_to_tokens(ids) == c["tokens"]
        # offsets: each token covers exactly its text, contiguous, CLS has none
        assert starts[0] == -1 and ends[0] == -1
        assert "".join(c["sequence"][s:e] for s, e in zip(starts[1:], ends[1:])) == c["sequence"]
        for t, s, e in zip(c["tokens"][1:], starts[1:], ends[1:]):
            assert c["sequence"][s:e] == t


def test_vocab_ids():
    v1, v2 = NucleotideTokenizer("v1"), NucleotideTokenizer("v2")
    assert v1.vocab_size == 4105 and v2.vocab_size == 4107
    assert v1.token_to_id("AAAAAA") == 4 and v2.token_to_id("AAAAAA") == 6
    assert v1.token_to_id("ACGTGT") == 737 and v2.token_to_id("ACGTGT") == 739
    assert v1.token_to_id("N") == 4104 and v2.token_to_id("N") == 4106
    for t in (v1, v2):
        for i in range(t.vocab_size):
            assert t.token_to_id(t.id_to_token(i)) == i


def test_lowercase_and_iupac():
    tok = NucleotideTokenizer("v2")
    up = tok.tokenize("ACGTGTACNTGCACGG")[0]
    assert tok.tokenize("acgtgtacntgcacgg")[0].tolist() == up.tolist()
    # IUPAC ambiguity codes count as N
    assert tok.tokenize("ACGTGTACRTGCACGG")[0].tolist() == up.tolist()
    assert tok.tokenize("ACGTGTACyTGCACGG")[0].tolist() == up.tolist()
    with pytest.raises(ValueError, match="position 3"):
        tok.tokenize("AC-GT")


def test_batch_padding_and_mask():
    tok = NucleotideTokenizer("v2")
    b = tok.encode(["ACGTACGTACGT", "ACG"])
    ids, offsets = b  # unpacks like the DESIGN contract
    assert ids.shape == (2, 4)  # CLS + 2 six-mers (padded) | CLS + A C G
    assert b["attention_mask"].tolist() == [[True, True, True, False], [True] * 4]
    assert offsets[0, 1:3].tolist() == [[0, 6], [6, 12]] and offsets[1, 1:].tolist() == [[0, 1], [1, 2], [2, 3]]
    b = tok.encode(["ACGTACGTACGTA", "A"])
    assert b.input_ids[1].tolist() == [3, tok.token_to_id("A"), 1, 1]
    assert b.attention_mask[1].tolist() == [True, True, False, False]
    assert b.offsets[1, 2].tolist() == [-1, -1]


def test_reverse_complement():
    assert reverse_complement("AACGTN") == "NACGTT"
    assert reverse_complement("acgR") == "NCGT"


def test_chromosome_scale():
    # 25 Mbp in one call (vectorised; its speed is a benchmark matter, not a timed test): every nucleotide is
    # covered exactly once and the ids agree with tokenizing a slice on its own
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, 25_000_000, dtype=np.uint8)
    codes[rng.integers(0, codes.size, 5000)] = 4
    tok = NucleotideTokenizer("v2")
    ids, starts, ends = tok.tokenize_codes(codes)
    assert ends[-1] == codes.size and (ends[1:] - starts[1:]).sum() == codes.size
    k = int(np.searchsorted(starts[1:], 20_000_000)) + 1  # a token boundary near 20 Mbp
    tail_ids, _, _ = tok.tokenize_codes(codes[starts[k]:])
    assert np.array_equal(np.asarray(tail_ids)[1:], np.asarray(ids)[k:])
    s = sequence_codes("ACGT" * 10)
    assert s.tolist() == [0, 2, 3, 1] * 10
