"""The Nucleotide Transformer 6-mer tokenizer, vectorised with numpy.

Reference algorithm (instadeepai/nucleotide-transformer ``NucleotidesKmersTokenizer``):
split the sequence at every ``N``; cut each N-free piece left to right into 6-mers; emit a
trailing remainder (< 6 nt) as single-nucleotide tokens; every ``N`` is its own token; prepend
``<cls>``. No EOS/BOS.

Two id orders exist (k-mers enumerated over "ATCG", most significant base first):
- ``v1`` (NT v1, AgroNT; 4105 embedding rows): <unk>0 <pad>1 <mask>2 <cls>3, 6-mers 4..4099,
  A T C G N = 4100..4104.
- ``v2`` (NT v2, SegmentNT; 4107 rows): <unk>0 <pad>1 <mask>2 <cls>3 <eos>4 <bos>5, 6-mers
  6..4101, A T C G N = 4102..4106.

Input handling beyond the reference (documented in the README): lowercase (soft-masked) bases
are uppercased; the IUPAC ambiguity codes R Y S W K M B D H V (and U is *not* accepted) count as
``N``; any other character raises ``ValueError`` naming it and its position.

Every token carries the nucleotide span ``[start, end)`` it covers in the input string; ``<cls>``
and padding carry ``(-1, -1)``.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

K = 6
UNK, PAD, MASK, CLS = 0, 1, 2, 3
NUC_ALPHABET = "ATCG"  # id order of the reference vocabulary

# byte -> code: A T C G = 0..3, N (and IUPAC ambiguity) = 4, invalid = 255
_CODES = np.full(256, 255, dtype=np.uint8)
for _i, _b in enumerate(NUC_ALPHABET):
    _CODES[ord(_b)] = _i
    _CODES[ord(_b.lower())] = _i
for _b in "NRYSWKMBDHV":
    _CODES[ord(_b)] = 4
    _CODES[ord(_b.lower())] = 4
N_CODE = 4

# complement over codes: A<->T (0<->1), C<->G (2<->3), N->N
_COMPLEMENT_CODE = np.array([1, 0, 3, 2, 4], dtype=np.uint8)


def sequence_codes(seq: str | bytes | np.ndarray) -> np.ndarray:
    """Return uint8 codes (A=0,T=1,C=2,G=3,N=4) for a DNA string; raise ValueError on other characters."""
    if isinstance(seq, np.ndarray):
        if seq.dtype == np.uint8 and (seq.size == 0 or seq.max() <= N_CODE):
            return seq
        raise ValueError("code arrays must be uint8 values 0..4")
    raw = np.frombuffer(seq.encode("ascii", "replace") if isinstance(seq, str) else bytes(seq), dtype=np.uint8)
    codes = _CODES[raw]
    bad = np.flatnonzero(codes == 255)
    if bad.size:
        pos = int(bad[0])
        raise ValueError(f"invalid nucleotide {chr(raw[pos])!r} at position {pos + 1} (allowed: ACGT, N and IUPAC codes)")
    return codes


def reverse_complement_codes(codes: np.ndarray) -> np.ndarray:
    return _COMPLEMENT_CODE[codes[::-1]]


def reverse_complement(seq: str) -> str:
    """Reverse complement of a DNA string (ambiguity codes become N)."""
    return decode_codes(reverse_complement_codes(sequence_codes(seq)))


def decode_codes(codes: np.ndarray) -> str:
    return bytes(np.frombuffer(b"ATCGN", dtype=np.uint8)[codes]).decode()


@dataclass
class TokenBatch:
    """A right-padded batch: ``input_ids`` [B, T] (CLS first, pad 1), ``attention_mask`` [B, T] (bool),
    ``offsets`` [B, T, 2] nucleotide span of each token (``-1`` for CLS and pads).

    Unpacks as ``ids, offsets = tokenizer.encode(...)`` and indexes like a dict (``batch["input_ids"]``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    offsets: np.ndarray

    def __iter__(self) -> Iterator:
        return iter((self.input_ids, self.offsets))

    def __getitem__(self, key: str):
        return getattr(self, key)

    def keys(self):
        return ["input_ids", "attention_mask", "offsets"]

    def to(self, device) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.offsets)


class NucleotideTokenizer:
    """6-mer tokenizer in the v1 (4105) or v2 (4107) id order."""

    def __init__(self, version: str = "v2", k: int = K):
        if version not in ("v1", "v2"):
            raise ValueError(f"unknown tokenizer version {version!r} (v1 or v2)")
        if not 1 <= k <= K:  # k < 6 only for tiny test models (ChatNT golden); released models use 6
            raise ValueError("k-mer size must be 1..6")
        self.version = version
        self.k = k
        self.unk_id, self.pad_id, self.mask_id, self.cls_id = UNK, PAD, MASK, CLS
        self.kmer_offset = 4 if version == "v1" else 6
        self.single_offset = self.kmer_offset + 4**k  # A T C G N follow the k-mers
        self.vocab_size = self.single_offset + 5
        self.special_tokens = ["<unk>", "<pad>", "<mask>", "<cls>"] + ([] if version == "v1" else ["<eos>", "<bos>"])

    # -- vocabulary -------------------------------------------------------------------------
    def id_to_token(self, i: int) -> str:
        i = int(i)
        if i < self.kmer_offset:
            return self.special_tokens[i]
        if i < self.single_offset:
            v, s = i - self.kmer_offset, []
            for _ in range(self.k):
                s.append(NUC_ALPHABET[v % 4])
                v //= 4
            return "".join(reversed(s))
        if i < self.vocab_size:
            return "ATCGN"[i - self.single_offset]
        raise KeyError(i)

    def token_to_id(self, tok: str) -> int:
        if tok in self.special_tokens:
            return self.special_tokens.index(tok)
        if len(tok) == 1:
            return self.single_offset + "ATCGN".index(tok)
        if len(tok) == self.k:
            v = 0
            for ch in tok:
                v = v * 4 + NUC_ALPHABET.index(ch)
            return self.kmer_offset + v
        raise KeyError(tok)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.id_to_token(i) for i in ids]

    @property
    def kmer_id_range(self) -> tuple[int, int]:
        return self.kmer_offset, self.single_offset

    # -- tokenization -----------------------------------------------------------------------
    def tokenize_codes(self, codes: np.ndarray, add_cls: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokenize a code array; return ``(ids int32 [T], starts int64 [T], ends int64 [T])``."""
        n = int(codes.shape[0])
        is_n = codes == N_CODE
        idx = np.arange(n, dtype=np.int64)
        # start index of the N-free run each position belongs to
        run_start_mark = ~is_n & np.concatenate(([True], is_n[:-1])) if n else np.zeros(0, bool)
        run_start = np.maximum.accumulate(np.where(run_start_mark, idx, 0)) if n else idx
        run_end_mark = ~is_n & np.concatenate((is_n[1:], [True])) if n else np.zeros(0, bool)
        # run end (exclusive) per position: reverse accumulate of minimum
        ends_at = np.where(run_end_mark, idx + 1, n + 1)
        run_end = np.minimum.accumulate(ends_at[::-1])[::-1] if n else idx
        offset = idx - run_start
        full_len = ((run_end - run_start) // self.k) * self.k
        in_full = ~is_n & (offset < full_len)
        kmer_start = in_full & (offset % self.k == 0)
        single = ~in_full  # remainders and N
        token_start = kmer_start | single
        starts = np.flatnonzero(token_start).astype(np.int64)
        is_kmer = kmer_start[starts]
        ends = starts + np.where(is_kmer, self.k, 1)
        ids = np.empty(starts.shape[0], dtype=np.int32)
        ks = starts[is_kmer]
        val = np.zeros(ks.shape[0], dtype=np.int32)
        for j in range(self.k):
            val = val * 4 + codes[ks + j]
        ids[is_kmer] = val + self.kmer_offset
        ids[~is_kmer] = codes[starts[~is_kmer]].astype(np.int32) + self.single_offset
        if add_cls:
            ids = np.concatenate(([self.cls_id], ids)).astype(np.int32)
            starts = np.concatenate(([-1], starts))
            ends = np.concatenate(([-1], ends))
        return ids, starts, ends

    def tokenize(self, seq: str | bytes, add_cls: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokenize one sequence string; see :meth:`tokenize_codes`."""
        return self.tokenize_codes(sequence_codes(seq), add_cls=add_cls)

    def tokens(self, seq: str) -> list[str]:
        return self.convert_ids_to_tokens(self.tokenize(seq)[0])

    def encode(self, seqs: str | Sequence[str], max_length: int | None = None, pad_to: int | None = None) -> TokenBatch:
        """Tokenize a batch, CLS first, right-padded with id 1. ``max_length`` (tokens incl. CLS) raises if exceeded."""
        if isinstance(seqs, (str, bytes)):
            seqs = [seqs]
        toks = [self.tokenize(s) for s in seqs]
        return self.pad([t for t in toks], max_length=max_length, pad_to=pad_to)

    def pad(self, toks: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], max_length: int | None = None,
            pad_to: int | None = None) -> TokenBatch:
        lengths = [len(t[0]) for t in toks]
        T = max(lengths, default=1)
        if pad_to is not None:
            T = max(T, pad_to)
        if max_length is not None and T > max_length:
            raise ValueError(f"sequence needs {max(lengths)} tokens but the model takes at most {max_length}")
        B = len(toks)
        ids = np.full((B, T), self.pad_id, dtype=np.int64)
        offsets = np.full((B, T, 2), -1, dtype=np.int64)
        for i, (t, s, e) in enumerate(toks):
            ids[i, : len(t)] = t
            offsets[i, : len(t), 0] = s
            offsets[i, : len(t), 1] = e
        input_ids = torch.from_numpy(ids)
        return TokenBatch(input_ids, input_ids != self.pad_id, offsets)

    def __call__(self, seqs, **kw) -> TokenBatch:
        return self.encode(seqs, **kw)

    def __repr__(self) -> str:
        return f"NucleotideTokenizer(version={self.version!r}, vocab_size={self.vocab_size})"
