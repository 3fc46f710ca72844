"""ChatNT's English tokenizer: the checkpoint's LLaMA tokenizer, read with ``tokenizers`` (or ``sentencepiece``).

Looked up in the model directory, first match wins:
``english_tokenizer/tokenizer.json``, ``tokenizer.json`` (HF fast-tokenizer file; needs the ``tokenizers``
package: ``pip install 'ntk[chat]'``), then ``english_tokenizer/tokenizer.model`` or ``tokenizer.model``
(SentencePiece; needs the ``sentencepiece`` package).

A prompt is encoded as the reference does it with the HF tokenizer: BOS first, each ``<DNA>`` placeholder
one token whose id is the model's ``seq_token_id`` (the English vocabulary size: out of the embedding tables,
read as their last row). When the tokenizer itself knows ``<DNA>`` (an added token), the whole prompt is
encoded in one go and that token's id is mapped to ``seq_token_id``; otherwise the text between
placeholders is encoded piece by piece (as an added token splits it) and the placeholders are inserted.
"""
from __future__ import annotations

from pathlib import Path

SEQ_PLACEHOLDER = "<DNA>"


class EnglishTokenizer:
    def __init__(self, backend, kind: str, path: Path, bos_id: int, seq_token_id: int):
        self.backend, self.kind, self.path = backend, kind, path
        self.bos_id, self.seq_token_id = bos_id, seq_token_id

    def _encode_piece(self, text: str) -> list[int]:
        if not text:
            return []
        if self.kind == "tokenizers":
            return list(self.backend.encode(text, add_special_tokens=False).ids)
        return list(self.backend.encode(text))

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt, BOS first, one ``seq_token_id`` per ``<DNA>``."""
        dna_id = self.backend.token_to_id(SEQ_PLACEHOLDER) if self.kind == "tokenizers" else None
        if dna_id is not None:
            ids = list(self.backend.encode(text).ids)
            ids = [self.seq_token_id if i == dna_id else i for i in ids]
        else:
            ids = []
            for n, piece in enumerate(text.split(SEQ_PLACEHOLDER)):
                if n:
                    ids.append(self.seq_token_id)
                ids.extend(self._encode_piece(piece))
        if not ids or ids[0] != self.bos_id:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        ids = [int(i) for i in ids if int(i) >= 0 and int(i) != self.seq_token_id]
        if self.kind == "tokenizers":
            return self.backend.decode(ids, skip_special_tokens=True).strip()
        return self.backend.decode(ids).strip()

    def __repr__(self) -> str:
        return f"EnglishTokenizer({self.kind}, {self.path})"


def load_english_tokenizer(directory: Path, cfg) -> tuple[EnglishTokenizer | None, str]:
    """(tokenizer, '') or (None, why not) -- the model itself works on ids without one."""
    directory = Path(directory)
    bos, seq = cfg.bos_id, cfg.seq_token_id
    for p in (directory / "english_tokenizer" / "tokenizer.json", directory / "tokenizer.json"):
        if p.is_file():
            try:
                from tokenizers import Tokenizer
            except ImportError:
                return None, (f"{p}: reading the English tokenizer needs the 'tokenizers' package: "
                              "pip install 'ntk[chat]'")
            try:
                return EnglishTokenizer(Tokenizer.from_file(str(p)), "tokenizers", p, bos, seq), ""
            except Exception as e:  # noqa: BLE001 (tokenizers raises its own Exception type)
                return None, f"{p}: not a readable tokenizer.json ({str(e).splitlines()[0][:160]})"
    for p in (directory / "english_tokenizer" / "tokenizer.model", directory / "tokenizer.model"):
        if p.is_file():
            try:
                import sentencepiece as spm
            except ImportError:
                return None, (f"{p}: a SentencePiece model; reading it needs the 'sentencepiece' package "
                              "(pip install sentencepiece), or put the HF tokenizer.json beside it")
            try:
                sp = spm.SentencePieceProcessor(model_file=str(p))
            except Exception as e:  # noqa: BLE001
                return None, f"{p}: not a readable SentencePiece model ({e})"
            return EnglishTokenizer(sp, "sentencepiece", p, bos, seq), ""
    return None, (f"{directory}: no English tokenizer (expected english_tokenizer/tokenizer.json or "
                  "english_tokenizer/tokenizer.model, as in the InstaDeepAI/ChatNT release)")
