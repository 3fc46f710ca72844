"""ChatNT (InstaDeep): NT-v2 DNA encoder + English-aware Perceiver resampler + LLaMA decoder, in plain torch.

``m(english_ids [B, L], bio_ids [B, K, Lb])`` -> :class:`ChatNTOutput` (``logits`` [B, L, V] after the
reference's clean-up, ``projected_bio_embeddings`` [B, K, R, D]); ``m.generate(english_ids, bio_ids,
max_new_tokens=N)`` -> new ids [B, N] (-1 after EOS). Each row holds exactly K ``<DNA>`` placeholders
(id = English vocab size, read through a clamped lookup as the last embedding row).

Reproduces the reference (``nucleotide_transformer.chatNT.model``) exactly, including how it places the DNA
embeddings. For DNA k (``idx`` = position of the k-th ``<DNA>`` in the *original* ids) the reference builds
``y = insert(x, idx + k*R, proj_k)[:L+1]`` and then ``jnp.roll(jnp.roll(y, idx)[:-1], -idx)``; ``jnp.roll``
without an axis rolls the *flattened* [L+1, D] array, so rows 0..L-2 are ``y``'s and the last row mixes the
ends of rows L-1 and L (see :meth:`ChatNT.insert`). The intended effect -- R rows inserted before ``<DNA>``,
the sequence cut back to L rows -- therefore holds whenever the prompt plus K*R rows fit in L-1 rows; for a
longer prompt the reference truncates real tokens and blends the last row (the "quirk" golden case), and ntk
reproduces that too. The logits are then cleaned up per DNA: ``out[j] = logits[j]`` for ``j <= idx``,
``logits[j+R]`` for ``idx < j < L-R``, 0 for the last R rows.

Generation follows the reference notebook (greedy argmax at ``logits[first_pad - 1]``, written into the
first pad slot, stop at EOS; the DNA embeddings of the original prompt are reused at every step). The
reference recomputes the whole sequence per token; ntk keeps a key/value cache when that is provably the
same computation (no quirk at any step, see :meth:`ChatNT.cache_is_exact`) and otherwise falls back to the
reference's full recompute, so the generated ids are the reference's either way.

NT encoder detail: the reference's attention mask is the outer product of the bio padding mask, so padded
*query* rows attend uniformly to every key; this is reproduced (it only changes the padded rows of
``nt_embeddings``, which the resampler masks anyway).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from .config import NTConfig
from .encoder import ESM
from .llama import LlamaConfig, LlamaDecoder
from .perceiver import PerceiverConfig, PerceiverResampler
from .tokenizer import NucleotideTokenizer

# the released checkpoint (InstaDeepAI/ChatNT, jax_params/params.joblib): reference `get_chatNT()`
RELEASE_CONFIG: dict[str, Any] = {
    "model_type": "chatnt",
    "seq_token_id": 32000, "english_vocab_size": 32000, "bio_vocab_size": 4107,
    "bos_token_id": 1, "eos_token_id": 2, "english_pad_token_id": 2, "bio_pad_token_id": 1, "bio_cls_token_id": 3,
    "english_max_length": 512, "bio_max_length": 512,
    "nt_name": "dcnuc_v2_500M_multi_species", "gpt_name": "llama_decoder",
    "prompt_template": ("A chat between a curious user and an artificial intelligence assistant that can handle "
                        "bio sequences. The assistant gives helpful, detailed, and polite answers to the user's "
                        "questions. USER: {question} ASSISTANT:"),
    "gpt_config": {"vocab_size": 32000, "eos_token_id": 2, "embed_dim": 4096, "ffn_embed_dim": 11008, "num_heads": 32,
                   "num_kv_heads": 32, "num_layers": 32,
                   "rope_config": {"max_seq_len": 2048, "dim": 128, "theta": 10000.0},
                   "add_bias_ffn": False, "ffn_activation_name": "silu", "use_glu_in_ffn": True,
                   "add_bias_lm_head": False, "norm_type": "RMS_norm", "rms_norm_eps": 1e-06,
                   "parallel_attention_ff": False, "add_bias_attn": False},
    "nt_config": {"alphabet_size": 4107, "pad_token_id": 1, "mask_token_id": 2, "max_positions": 2048,
                  "embed_scale": 1.0, "emb_layer_norm_before": False, "attention_heads": 16, "key_size": 64,
                  "embed_dim": 1024, "ffn_embed_dim": 4096, "num_layers": 29, "positional_embedding": None,
                  "lm_head": "roberta", "add_bias_kv": False, "add_bias_ffn": False, "use_rotary_embedding": True,
                  "rescaling_factor": None, "ffn_activation_name": "swish", "use_glu_in_ffn": True,
                  "layer_norm_eps": 1e-05, "pre_layer_norm": True, "bias_word_embedding": False,
                  "mask_before_attention": False, "token_dropout": False},
    "perceiver_resampler_config": {"emb_layer_norm_before": False, "attention_heads": 32, "key_size": 128,
                                   "embed_dim": 4096, "ffn_embed_dim": 11008, "num_layers": 3, "add_bias_kv": False,
                                   "add_bias_ffn": True, "ffn_activation_name": "gelu-no-approx",
                                   "use_glu_in_ffn": False, "resampled_length": 64},
}
RELEASE_REPO = "InstaDeepAI/ChatNT"
DEFAULT_TEMPLATE = RELEASE_CONFIG["prompt_template"]
SEQ_PLACEHOLDER = "<DNA>"


def is_chatnt_config(d: dict) -> bool:
    return str(d.get("model_type", "")).lower() == "chatnt" or ("gpt_config" in d and "nt_config" in d)


@dataclass
class ChatNTConfig:
    raw: dict[str, Any]
    nt: NTConfig = field(init=False)
    gpt: LlamaConfig = field(init=False)
    perceiver: PerceiverConfig = field(init=False)

    def __post_init__(self):
        d = self.raw
        try:
            n = d["nt_config"]
            if n.get("positional_embedding") not in (None, "") or not n.get("use_rotary_embedding", True):
                raise ValueError("nt_config: ChatNT's encoder uses rotary positions only")
            if n.get("add_bias_ffn", False) or not n.get("use_glu_in_ffn", True) or not n.get("pre_layer_norm", True) \
                    or n.get("emb_layer_norm_before", False) or n.get("token_dropout", False) \
                    or float(n.get("embed_scale", 1.0)) != 1.0 or n.get("add_bias_kv", False):
                raise ValueError("nt_config: only the NT-v2 layout (pre-LN, SwiGLU without bias) is supported")
            heads, embed = int(n["attention_heads"]), int(n["embed_dim"])
            if int(n.get("key_size") or embed // heads) * heads != embed:
                raise ValueError("nt_config: key_size * attention_heads must equal embed_dim")
            self.nt = NTConfig(vocab_size=int(n["alphabet_size"]), hidden_size=embed,
                               num_hidden_layers=int(n["num_layers"]), num_attention_heads=heads,
                               intermediate_size=int(n["ffn_embed_dim"]),
                               layer_norm_eps=float(n.get("layer_norm_eps", 1e-5)),
                               pad_token_id=int(n.get("pad_token_id", 1)), mask_token_id=int(n.get("mask_token_id", 2)),
                               max_position_embeddings=int(n.get("max_positions", 2048)),
                               position_embedding_type="rotary", add_bias_fnn=False)
            self.gpt = LlamaConfig.from_reference(d["gpt_config"])
            self.perceiver = PerceiverConfig.from_reference(d["perceiver_resampler_config"])
            if self.perceiver.embed_dim != self.gpt.embed_dim:
                raise ValueError("perceiver_resampler_config.embed_dim must equal gpt_config.embed_dim")
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"ChatNT config: {e if not isinstance(e, KeyError) else f'missing field {e}'}") from None

    # -- ids ----------------------------------------------------------------------------------------
    def _get(self, key, default):
        return self.raw.get(key, default)

    @property
    def seq_token_id(self) -> int:
        return int(self._get("seq_token_id", self.gpt.vocab_size))

    @property
    def english_pad_id(self) -> int:
        return int(self._get("english_pad_token_id", 2))

    @property
    def bio_pad_id(self) -> int:
        return int(self._get("bio_pad_token_id", self.nt.pad_token_id))

    @property
    def bos_id(self) -> int:
        return int(self._get("bos_token_id", 1))

    @property
    def eos_id(self) -> int:
        return int(self._get("eos_token_id", self.gpt.eos_token_id))

    @property
    def english_max_length(self) -> int:
        return int(self._get("english_max_length", 512))

    @property
    def bio_max_tokens(self) -> int:
        """Longest tokenized DNA (CLS included) the encoder takes: its rotary context ``max_positions``."""
        return self.nt.max_position_embeddings

    @property
    def resampled_length(self) -> int:
        return self.perceiver.resampled_length

    @property
    def prompt_template(self) -> str:
        return str(self._get("prompt_template", DEFAULT_TEMPLATE))

    @property
    def bio_kmer(self) -> int:
        return int(self._get("bio_kmer", 6))

    @property
    def family(self) -> str:
        return "ChatNT"

    @classmethod
    def from_json(cls, path: str | Path) -> ChatNTConfig:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable config ({e})") from None
        return cls(d)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.raw, indent=2) + "\n")


@dataclass
class ChatNTOutput:
    logits: torch.Tensor  # [B, L, V] after the reference's clean-up
    projected_bio_embeddings: torch.Tensor  # [B, K, R, D]

    def __getitem__(self, key: str):
        return getattr(self, key)


class ChatNT(nn.Module):
    source: str | None = None  # the checkpoint directory it was loaded from (set by ntk.load_model)

    def __init__(self, cfg: ChatNTConfig):
        super().__init__()
        self.config = cfg
        self.nt = ESM(cfg.nt)
        self.perceiver = PerceiverResampler(cfg.perceiver, cfg.nt.hidden_size, cfg.gpt.vocab_size, cfg.bio_pad_id,
                                            cfg.english_pad_id)
        self.decoder = LlamaDecoder(cfg.gpt)
        self.bio_tokenizer = NucleotideTokenizer("v2", k=cfg.bio_kmer)
        self.english_tokenizer = None  # set by load_chatnt when the checkpoint has one
        self.english_tokenizer_problem = "no English tokenizer attached to this model"
        self.source = ""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- stages --------------------------------------------------------------------------------------
    def encode_dna(self, bio_ids: torch.Tensor) -> torch.Tensor:
        """NT encoder output after its final LayerNorm: [B, Lb] -> [B, Lb, Dn] (reference masking, see module doc)."""
        esm = self.nt
        dtype = esm.encoder.emb_layer_norm_after.weight.dtype
        bio_ids = bio_ids.to(self.device, torch.long)
        T = bio_ids.shape[1]
        x = esm.embeddings.word_embeddings(bio_ids).float()
        valid = bio_ids != self.config.bio_pad_id
        pair = valid[:, None, :, None] & valid[:, None, None, :]
        neg = max(-1e30, torch.finfo(dtype).min)
        mask = torch.zeros(pair.shape, dtype=dtype, device=x.device).masked_fill(~pair, neg)
        rope = esm.rotary.tables(T, None, x.device, dtype)
        for block in esm.encoder.layer:
            x = block(x, mask, rope)
        return esm.encoder.emb_layer_norm_after(x)

    def project(self, english_ids: torch.Tensor, bio_ids: torch.Tensor) -> torch.Tensor:
        """[B, L], [B, K, Lb] -> projected DNA embeddings [B, K, R, D]."""
        english_ids, bio_ids = self._ids(english_ids, bio_ids)
        outs = [self.perceiver(self.encode_dna(bio_ids[:, k]), bio_ids[:, k], english_ids)
                for k in range(bio_ids.shape[1])]
        return torch.stack(outs, dim=1)

    def _ids(self, english_ids, bio_ids):
        english_ids = torch.as_tensor(np.asarray(english_ids) if not torch.is_tensor(english_ids) else english_ids)
        bio_ids = torch.as_tensor(np.asarray(bio_ids) if not torch.is_tensor(bio_ids) else bio_ids)
        if english_ids.dim() == 1:
            english_ids = english_ids.unsqueeze(0)
        if bio_ids.dim() == 2:
            bio_ids = bio_ids.unsqueeze(1)
        if bio_ids.dim() != 3 or bio_ids.shape[0] != english_ids.shape[0]:
            raise ValueError(f"bio_ids must be [B, K, Lb] with the B of english_ids {tuple(english_ids.shape)}, "
                             f"got {tuple(bio_ids.shape)}")
        return english_ids.to(self.device, torch.long), bio_ids.to(self.device, torch.long)

    def dna_positions(self, english_ids: torch.Tensor, K: int) -> torch.Tensor:
        """[B, K] positions of the K ``<DNA>`` placeholders of each row (ValueError unless exactly K per row)."""
        is_seq = english_ids == self.config.seq_token_id
        counts = is_seq.sum(1)
        bad = torch.nonzero(counts != K).flatten()
        if bad.numel():
            b = int(bad[0])
            raise ValueError(f"prompt row {b} has {int(counts[b])} {SEQ_PLACEHOLDER} placeholder(s) for {K} DNA "
                             "sequence(s): each row needs exactly one placeholder per sequence")
        L = english_ids.shape[1]
        pos = torch.arange(L, device=english_ids.device).expand_as(english_ids)
        return torch.sort(torch.where(is_seq, pos, L), dim=1).values[:, :K]

    # -- the reference's insertion and clean-up --------------------------------------------------------
    def insert(self, x: torch.Tensor, idx: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, L, D] with the K projected sequences [B, K, R, D] placed exactly as the reference does.

        Per DNA k: ``y = insert(x, idx + k*R, proj_k)[:L+1]`` ([L+1, D]), then ``jnp.roll(jnp.roll(y, idx)[:-1],
        -idx)`` -- a roll of the *flattened* array (no axis), so element ``f`` of the flattened result is
        ``y.flat[f]`` for ``f < L*D - idx`` and ``y.flat[f + D]`` after: rows 0..L-2 are ``y``'s, the last row
        mixes the ends of rows L-1 and L."""
        B, L, D = x.shape
        K, R = proj.shape[1], proj.shape[2]
        j = torch.arange(L + 1, device=x.device)[None, :]
        f = torch.arange(L * D, device=x.device)[None, :]
        for k in range(K):
            ik = idx[:, k : k + 1]
            p = ik + k * R
            gi = torch.where(j < p, j, torch.where(j < p + R, L + (j - p), j - R))  # insert(...)[:L+1]
            src = torch.cat((x, proj[:, k].to(x.dtype)), dim=1)
            y = torch.gather(src, 1, gi.unsqueeze(-1).expand(B, L + 1, D)).reshape(B, (L + 1) * D)
            fi = torch.where(f < L * D - ik, f, f + D)
            x = torch.gather(y, 1, fi).view(B, L, D)
        return x

    def cleanup(self, logits: torch.Tensor, idx: torch.Tensor, R: int) -> torch.Tensor:
        B, L, V = logits.shape
        j = torch.arange(L, device=logits.device)[None, :]
        for k in range(idx.shape[1]):
            ik = idx[:, k : k + 1]
            src = torch.where(j <= ik, j, (j + R).clamp(max=L - 1))
            out = torch.gather(logits, 1, src.unsqueeze(-1).expand(B, L, V))
            logits = out.masked_fill((j >= L - R).unsqueeze(-1), 0.0)
        return logits

    def forward(self, english_ids, bio_ids, projected_bio_embeddings: torch.Tensor | None = None) -> ChatNTOutput:
        english_ids, bio_ids = self._ids(english_ids, bio_ids)
        K = bio_ids.shape[1]
        idx = self.dna_positions(english_ids, K)
        if projected_bio_embeddings is None:
            projected_bio_embeddings = self.project(english_ids, bio_ids)
        x = self.insert(self.decoder.embed(english_ids), idx, projected_bio_embeddings)
        logits = self.decoder.logits(self.decoder(x))
        return ChatNTOutput(self.cleanup(logits, idx, projected_bio_embeddings.shape[2]), projected_bio_embeddings)

    # -- generation -----------------------------------------------------------------------------------
    def _first_pad(self, ids: torch.Tensor) -> torch.Tensor:
        """First pad position per row (L when there is none)."""
        L = ids.shape[1]
        pos = torch.arange(L, device=ids.device).expand_as(ids)
        return torch.where(ids == self.config.english_pad_id, pos, L).min(1).values

    def _logit_source(self, j: int, idx: list[int], L: int, R: int) -> int | None:
        """Which raw decoder position the cleaned-up logit ``j`` comes from (None: the zeroed tail)."""
        for ik in reversed(idx):
            if j >= L - R:
                return None
            if j > ik:
                j = j + R
        return j

    def cache_is_exact(self, english_ids: torch.Tensor, idx: torch.Tensor, R: int, steps: int) -> bool:
        """True when a KV-cached decode reproduces the reference's full recompute for ``steps`` tokens: at every
        step each row's real tokens plus the K*R DNA rows fit in the first L-1 decoder rows (so neither the
        truncation nor the reference's last-row mixing touches them) and the logit read is the last real one."""
        L = english_ids.shape[1]
        n0 = self._first_pad(english_ids).tolist()
        for b, ids_b in enumerate(idx.tolist()):
            K = len(ids_b)
            for s in range(steps):
                n = n0[b] + s
                if n + K * R > L - 1:
                    return False
                src = self._logit_source(n - 1, ids_b, L, R)
                if src is None or (s > 0 and src != n - 1 + K * R):
                    return False
        return True

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float, top_p: float, gens) -> torch.Tensor:
        """Next token per row: argmax, or a draw from the (nucleus-filtered) softmax with each row's generator."""
        logits = logits.float()
        if temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sp, si = probs.sort(dim=-1, descending=True)
            keep = (sp.cumsum(-1) - sp) < top_p  # smallest prefix whose mass reaches top_p (first always kept)
            probs = torch.zeros_like(probs).scatter(-1, si, sp * keep)
        probs = (probs / probs.sum(-1, keepdim=True)).cpu()
        draws = [torch.multinomial(probs[b], 1, generator=g) for b, g in enumerate(gens)]
        return torch.cat(draws).to(logits.device)

    @torch.no_grad()
    def generate(self, english_ids, bio_ids, max_new_tokens: int = 20, use_cache: bool | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | list[int] | None = None) -> torch.Tensor:
        """New token ids [B, max_new_tokens], -1 after EOS (EOS itself is not returned).

        Greedy by default (the reference). ``temperature > 0`` samples (optionally nucleus ``top_p``); row b
        draws from its own ``torch.Generator`` seeded with ``seed[b]`` (a single int seeds row b with
        ``seed + b``), so a row's answer does not depend on the other rows of the batch.
        ``use_cache``: None = KV cache whenever it is exact (see :meth:`cache_is_exact`), True = require it
        (ValueError if it would differ), False = full recompute."""
        english_ids, bio_ids = self._ids(english_ids, bio_ids)
        K = bio_ids.shape[1]
        idx = self.dna_positions(english_ids, K)
        gen = None
        if temperature > 0:
            B = english_ids.shape[0]
            seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed or 0) + b for b in range(B)]
            if len(seeds) != B:
                raise ValueError(f"{len(seeds)} seeds for {B} rows")
            gen = [torch.Generator().manual_seed(int(x)) for x in seeds]
        proj = self.project(english_ids, bio_ids)
        R = proj.shape[2]
        exact = self.cache_is_exact(english_ids, idx, R, max_new_tokens)
        if use_cache and not exact:
            raise ValueError("the KV cache would not reproduce the reference here: the prompt plus "
                             f"{max_new_tokens} new tokens do not fit in the English length {english_ids.shape[1]} "
                             f"with {K}x{R} DNA embeddings")
        if use_cache is None:
            use_cache = exact
        if use_cache:
            return self._generate_cached(english_ids, idx, proj, max_new_tokens, temperature, top_p, gen)
        return self._generate_recompute(english_ids, bio_ids, proj, max_new_tokens, temperature, top_p, gen)

    def _generate_recompute(self, ids, bio_ids, proj, n, temperature, top_p, gen):
        ids = ids.clone()
        B, L = ids.shape
        out = torch.full((B, n), -1, dtype=torch.long, device=ids.device)
        done = torch.zeros(B, dtype=torch.bool, device=ids.device)
        rows = torch.arange(B, device=ids.device)
        eos = self.config.eos_id
        for s in range(n):
            first = self._first_pad(ids)
            done |= first >= L  # no free slot left: the reference cannot continue either
            if bool(done.all()):
                break
            logits = self(ids, bio_ids, projected_bio_embeddings=proj).logits
            tok = self._pick(logits[rows, (first - 1).clamp(min=0)], temperature, top_p, gen)
            live = ~done & (tok != eos)
            done |= tok == eos
            out[live, s] = tok[live]
            ids[rows[live], first[live]] = tok[live]
        return out

    def _generate_cached(self, ids, idx, proj, n, temperature, top_p, gen):
        B, L = ids.shape
        R, K = proj.shape[2], proj.shape[1]
        dec = self.decoder
        n0 = self._first_pad(ids)
        x = self.insert(dec.embed(ids), idx, proj)
        T = int(n0.max()) + K * R
        hidden, cache = dec.prefill(x[:, :T], T + n)
        rows = torch.arange(B, device=ids.device)
        src = torch.tensor([self._logit_source(int(n0[b]) - 1, idx[b].tolist(), L, R) for b in range(B)],
                           device=ids.device)
        logits = dec.logits(hidden[rows, src])
        out = torch.full((B, n), -1, dtype=torch.long, device=ids.device)
        done = torch.zeros(B, dtype=torch.bool, device=ids.device)
        pos = n0 + K * R  # where each row's next token goes
        eos = self.config.eos_id
        for s in range(n):
            tok = self._pick(logits, temperature, top_p, gen)
            live = ~done & (tok != eos)
            done |= tok == eos
            out[live, s] = tok[live]
            if bool(done.all()) or s == n - 1:
                break
            h = dec.step(dec.embed(tok.clamp(min=0))[:, None, :], pos, cache)
            logits = dec.logits(h[:, 0])
            pos = torch.where(done, pos, pos + 1).clamp(max=cache.size - 1)
        return out


# ------------------------------------------------------------------------------------------------------
# checkpoint names: the reference's Haiku layout ("<module path>/<param>", Linear w [in, out])
_PREFIX_ALIASES = (("bio_brain_encoder/", "chat_nt_encoder/"), ("bio_brain_decoder/", "chat_nt_decoder/"))
_UNUSED = ("/~/roberta_lm_head/~/lm_head_fc_1/", "/~/roberta_lm_head/~/lm_final_fc/",
           "/~/roberta_lm_head/~/lm_head_layer_norm/")


def canonical_haiku_name(name: str) -> str:
    for old, new in _PREFIX_ALIASES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def haiku_name_map(cfg: ChatNTConfig) -> dict[str, tuple[str, bool]]:
    """Haiku name -> (ntk parameter name, transpose?) for every parameter ChatNT uses."""
    m: dict[str, tuple[str, bool]] = {}
    E = f"chat_nt_encoder/{cfg.raw.get('nt_name', 'dcnuc_v2_500M_multi_species')}"
    m[f"{E}/~/embed/embeddings"] = ("nt.embeddings.word_embeddings.weight", False)
    for i in range(cfg.nt.num_hidden_layers):
        a, t = f"{E}/attention_layer_{i}/~/", f"nt.encoder.layer.{i}."
        for ln, dst in (("self_attention_layer_norm", "attention.LayerNorm"), ("final_layer_norm", "LayerNorm")):
            m[f"{a}{ln}/scale"] = (f"{t}{dst}.weight", False)
            m[f"{a}{ln}/offset"] = (f"{t}{dst}.bias", False)
        for src, dst in (("query", "attention.self.query"), ("key", "attention.self.key"),
                         ("value", "attention.self.value"), ("mha_output", "attention.output.dense")):
            m[f"{a}self_attention/{src}/w"] = (f"{t}{dst}.weight", True)
            m[f"{a}self_attention/{src}/b"] = (f"{t}{dst}.bias", False)
        m[f"{a}fc1/w"] = (f"{t}intermediate.dense.weight", True)
        m[f"{a}fc2/w"] = (f"{t}output.dense.weight", True)
    m[f"{E}/~/roberta_lm_head/~/emb_layer_norm_after/scale"] = ("nt.encoder.emb_layer_norm_after.weight", False)
    m[f"{E}/~/roberta_lm_head/~/emb_layer_norm_after/offset"] = ("nt.encoder.emb_layer_norm_after.bias", False)

    P = "multi_modal_perceiver_resampler_projection"
    m[f"{P}/bio_to_english_projection/w"] = ("perceiver.bio_to_english_projection.weight", True)
    m[f"{P}/bio_to_english_projection/b"] = ("perceiver.bio_to_english_projection.bias", False)
    m[f"{P}/token_embed/embeddings"] = ("perceiver.token_embed.weight", False)
    m[f"{P}/multi_modal_perceiver_resampler/latent_queries"] = ("perceiver.latent_queries", False)
    for layer in range(cfg.perceiver.num_layers):
        a, t = f"{P}/multi_modal_perceiver_resampler/multi_modal_perceiver_layer_{layer}/~/", f"perceiver.layers.{layer}."
        for ln, dst in (("cross_attention_layer_norm_1", "norm1"), ("cross_attention_layer_norm_2", "norm2"),
                        ("final_layer_norm", "norm3")):
            m[f"{a}{ln}/scale"] = (f"{t}{dst}.weight", False)
            m[f"{a}{ln}/offset"] = (f"{t}{dst}.bias", False)
        for c in (1, 2):
            for src, dst in (("query", "query"), ("key", "key"), ("value", "value"), ("mha_output", "output")):
                m[f"{a}cross_attention_{c}/{src}/w"] = (f"{t}attn{c}.{dst}.weight", True)
                m[f"{a}cross_attention_{c}/{src}/b"] = (f"{t}attn{c}.{dst}.bias", False)
        for fc in ("fc1", "fc2"):
            m[f"{a}{fc}/w"] = (f"{t}{fc}.weight", True)
            m[f"{a}{fc}/b"] = (f"{t}{fc}.bias", False)

    D = f"chat_nt_decoder/{cfg.raw.get('gpt_name', 'llama_decoder')}"
    m[f"{D}/~/token_embed/embeddings"] = ("decoder.token_embed.weight", False)
    for i in range(cfg.gpt.num_layers):
        a, t = f"{D}/gpt_decoder_layer_{i}/~/", f"decoder.layers.{i}."
        m[f"{a}attn_RMS_norm/scale"] = (f"{t}attn_norm.weight", False)
        m[f"{a}ffn_RMS_norm/scale"] = (f"{t}ffn_norm.weight", False)
        for src, dst in (("query_linear", "q"), ("key_linear", "k"), ("value_linear", "v"), ("out_linear", "o")):
            m[f"{a}self_attn/~/{src}/w"] = (f"{t}attn.{dst}.weight", True)
        m[f"{a}fc1_linear_glu/w"] = (f"{t}fc1.weight", True)
        m[f"{a}fc2_linear/w"] = (f"{t}fc2.weight", True)
    m[f"{D}/~/final_RMS_norm/scale"] = ("decoder.final_norm.weight", False)
    m[f"{D}/~/simple_lm_head/~/lm_final_fc/w"] = ("decoder.lm_head.weight", True)
    return m


def load_haiku_weights(model: ChatNT, sd, where: str) -> None:
    """Load Haiku-layout weights into ``model`` (its parameters already allocated, any device/dtype), strictly:
    every parameter present with its shape, nothing unknown. ``sd``: a dict of tensors, or an open safetensors
    file (tensors are then read and copied one at a time, so peak memory is the model plus one tensor)."""
    keys = list(sd.keys())
    canon = {canonical_haiku_name(k): k for k in keys}
    names = haiku_name_map(model.config)
    params = dict(model.named_parameters())

    def shape(k):
        return tuple(sd[k].shape) if isinstance(sd, dict) else tuple(sd.get_slice(k).get_shape())

    missing = [k for k in names if k not in canon]
    unexpected = [k for k in canon if k not in names and not any(u in k for u in _UNUSED)]
    mismatched = []
    for k, (dst, transpose) in names.items():
        if k in canon:
            shp = shape(canon[k])
            if (shp[::-1] if transpose and len(shp) == 2 else shp) != tuple(params[dst].shape):
                mismatched.append(f"{k} {shp}")
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                shown = ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
                parts.append(f"{len(items)} {label}: {shown}")
        raise CheckpointError(f"{where}: ChatNT weights do not match config.json: " + "; ".join(parts))
    if set(params) != {dst for dst, _ in names.values()}:  # a bug in the name map, not in the file
        raise CheckpointError(f"{where}: internal: parameters without a source in the name map")
    with torch.no_grad():
        for k, (dst, transpose) in names.items():
            t = sd[canon[k]] if isinstance(sd, dict) else sd.get_tensor(canon[k])
            params[dst].copy_(t.t() if transpose and t.dim() == 2 else t)


def chatnt_weights_file(directory: Path) -> Path:
    """The Haiku-layout safetensors file of a ChatNT directory, or a CheckpointError saying what to do."""
    st = directory / "model.safetensors"
    if st.is_file():
        from safetensors import safe_open
        try:
            with safe_open(str(st), framework="pt") as f:
                keys = list(f.keys())
        except Exception as e:  # noqa: BLE001 (safetensors raises several types)
            raise CheckpointError(f"{st}: not a readable safetensors file ({e})") from None
        if any("/" in k for k in keys):
            return st
        raise CheckpointError(
            f"{st}: tensor names are not the reference JAX layout ntk reads (e.g. {keys[0] if keys else 'none'!r}); "
            "the names of the HF PyTorch port of ChatNT cannot be mapped with certainty, so ntk refuses them. "
            f"Convert the JAX release instead: ntk models convert chatnt {directory / 'jax_params'} OUT_DIR")
    joblib = next((p for p in (directory / "jax_params" / "params.joblib", directory / "params.joblib") if p.is_file()),
                  None)
    if joblib is not None:
        raise CheckpointError(f"{directory}: holds the JAX release ({joblib}); convert it once to safetensors: "
                              f"ntk models convert chatnt {joblib} OUT_DIR, then use -m OUT_DIR")
    if any(directory.glob("*.bin")) or any(directory.glob("*.safetensors")):
        raise CheckpointError(
            f"{directory}: PyTorch-port weights of ChatNT: their tensor names cannot be mapped with certainty, so ntk "
            "refuses them; convert the JAX release (jax_params/params.joblib) with `ntk models convert chatnt SRC DST`")
    raise CheckpointError(f"{directory}: no ChatNT weights (model.safetensors in the JAX layout, or "
                          "jax_params/params.joblib to convert)")


def load_chatnt(directory: Path, device="cpu", dtype=torch.float32) -> ChatNT:
    """A ChatNT directory -> model in eval mode on ``device``/``dtype``, built without a float32 copy in host
    memory: parameters are allocated on the target device in the target dtype and filled tensor by tensor."""
    from safetensors import safe_open

    from .runtime import resolve_device, resolve_dtype

    path = chatnt_weights_file(directory)  # first: a PyTorch-port or JAX-only directory gets the converter hint
    cfg = ChatNTConfig.from_json(directory / "config.json")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    with torch.device("meta"):
        model = ChatNT(cfg)
    model = model.to(dtype=dt).to_empty(device=dev)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            load_haiku_weights(model, f, str(directory))
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 (safetensors raises several types)
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    model = model.eval()
    model.requires_grad_(False)
    model.source = str(directory)
    from .chat_tokenizer import load_english_tokenizer
    model.english_tokenizer, model.english_tokenizer_problem = load_english_tokenizer(directory, cfg)
    return model
