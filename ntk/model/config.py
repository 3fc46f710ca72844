"""One config dataclass for NT v1, NT v2, SegmentNT and AgroNT, read from and written to HF ``config.json``.

Family rules (see ../shared/research/nt_spec.md):
- v1 / AgroNT: learned positions (``position_embedding_type: absolute``), GELU FFN with bias,
  token-dropout scaling in v1 (``token_dropout: true``), tokenizer id order v1 (vocab 4105).
- v2: rotary positions, SwiGLU FFN without bias (``add_bias_fnn: false``), vocab 4107.
- SegmentNT: v2 encoder + U-Net head; ``features``, ``num_layers_head``, ``rescaling_factor``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from . import window_rules


class JsonConfig:
    """What both config classes (NTConfig, NTv3Config) do with their ``to_dict()``: write config.json, hash it."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def fingerprint(self) -> str:
        """Short hash of the architecture-defining fields (model identity in manifests)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class NTConfig(JsonConfig):
    vocab_size: int = 4107
    hidden_size: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 16
    intermediate_size: int = 2048
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 1
    mask_token_id: int = 2
    max_position_embeddings: int = 2050
    position_embedding_type: str = "rotary"  # "absolute" (learned) or "rotary"
    token_dropout: bool = False
    add_bias_fnn: bool = False  # HF spelling; False => SwiGLU FFN without bias (v2)
    emb_layer_norm_before: bool = False
    tie_word_embeddings: bool = False
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    architectures: list[str] = field(default_factory=lambda: ["EsmForMaskedLM"])
    model_type: str = "esm"
    # SegmentNT head
    features: list[str] | None = None
    num_layers_head: int | None = None
    rescaling_factor: float | None = None
    # fine-tuned sequence heads (ntk finetune classify/regress)
    num_labels: int | None = None
    problem_type: str | None = None
    id2label: dict[str, str] | None = None
    # anything else found in config.json, written back unchanged
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- derived ------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary(self) -> bool:
        return self.position_embedding_type == "rotary"

    @property
    def glu(self) -> bool:
        """SwiGLU FFN (v2): fc1 maps H -> 2F without bias, gate = first half."""
        return not self.add_bias_fnn

    @property
    def tokenizer_version(self) -> str:
        return "v1" if self.vocab_size <= 4105 else "v2"

    @property
    def is_segmentation(self) -> bool:
        return bool(self.features) or "SegmentNT" in (self.architectures or [])

    @property
    def max_tokens(self) -> int:
        """Longest input (tokens incl. CLS) the model was trained on."""
        if self.is_segmentation and self.rescaling_factor:
            return int(round(self.rescaling_factor * (self.max_position_embeddings - 2))) + 1
        return self.max_position_embeddings - 2

    @property
    def family(self) -> str:
        if self.is_segmentation:
            return "segment_nt"
        if self.rotary:
            return "nt-v2"
        return "nt-v1"

    # -- window facts (model/window_rules.py) ------------------------------------------------------
    @property
    def window_unit(self) -> int:
        """Window lengths (nt) must be multiples of this: SegmentNT 6 x 2**num_layers_head, other NT models 1."""
        return window_rules.nt_window_unit(self)

    def default_window(self, job: str) -> int:
        """The default window of ``job`` (``segment``, ``score``; ``embed``: in DNA tokens)."""
        return window_rules.nt_default_window(self, job)

    def check_window(self, window: int | None, job: str) -> int:
        """``window`` (None: the default) checked for ``job``; InputError when the model cannot take it."""
        return window_rules.nt_check_window(self, window, job)

    def rescaling_for_tokens(self, n_tokens: int) -> float | None:
        """Rotary base rescaling factor for an input of ``n_tokens`` tokens (incl. CLS), by the reference rule:
        the trained factor at every length up to the trained length; beyond it ``n_tokens / (max_pos - 2)``."""
        if not self.rotary:
            return None
        if self.rescaling_factor is None:
            return None
        base_positions = self.max_position_embeddings - 2
        if n_tokens > self.max_tokens:
            return n_tokens / base_positions
        return self.rescaling_factor

    # -- io -----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NTConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        n_feat = d.get("num_features")
        if n_feat is not None and not d.get("features"):
            # SegmentNT's first published config revision has "num_features": 14 and no "features" list: the
            # 14 features are the documented SegmentNT ones, in the model card's order; other counts get
            # placeholder names feature_0, feature_1, ...
            n_feat = int(n_feat)
            known["features"] = list(SEGMENT_NT_FEATURES) if n_feat == len(SEGMENT_NT_FEATURES) else \
                [f"feature_{i}" for i in range(n_feat)]
        elif n_feat is not None and len(d["features"]) != int(n_feat):
            raise ValueError(f"num_features {n_feat} != {len(d['features'])} names in features")
        if "add_bias_fnn" not in d:
            # stock ESM (v1/AgroNT) has biased GELU FFN; rotary NT checkpoints without the key are SwiGLU
            known["add_bias_fnn"] = d.get("position_embedding_type", "absolute") != "rotary"
        _check_types(known)
        cfg = cls(**known, extra=extra)
        cfg.validate()
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> NTConfig:
        return config_from_json(cls, path)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d = {k: v for k, v in d.items() if v is not None}
        d.update(self.extra)
        return d

    def validate(self) -> None:
        if self.model_type not in ("esm", "segment_nt", "nt"):
            raise ValueError(f"unknown architecture: model_type {self.model_type!r} (expected 'esm')")
        if self.position_embedding_type not in ("absolute", "rotary"):
            raise ValueError(f"unknown position_embedding_type {self.position_embedding_type!r}")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"field {name!r}: must be a positive integer, got {getattr(self, name)}")
        if self.max_position_embeddings < 3:
            raise ValueError(f"field 'max_position_embeddings': must be >= 3, got {self.max_position_embeddings}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.vocab_size not in (4105, 4107):
            raise ValueError(f"vocab_size {self.vocab_size} is not a 6-mer NT vocabulary (4105 or 4107)")
        if self.rotary and self.head_dim % 2:
            raise ValueError("rotary positions need an even head dimension")
        if self.emb_layer_norm_before:
            raise ValueError("emb_layer_norm_before=true is not used by any NT checkpoint and is not supported")


def _type_ok(value: Any, annotation: str) -> bool:
    for alt in (a.strip() for a in annotation.split("|")):
        if alt == "None" and value is None:
            return True
        if alt == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if alt == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if alt == "bool" and isinstance(value, bool):
            return True
        if alt == "str" and isinstance(value, str):
            return True
        if alt == "list[str]" and isinstance(value, list) and all(isinstance(x, str) for x in value):
            return True
        if alt.startswith("dict[") and isinstance(value, dict):
            return True
    return False


def _check_types(known: dict[str, Any]) -> None:
    """Every known config.json field must have its declared JSON type (a string where a size is expected would
    otherwise fail somewhere deep in the model code)."""
    types = {f.name: str(f.type) for f in dataclasses.fields(NTConfig)}
    for name, value in known.items():
        want = types[name]
        if not _type_ok(value, want):
            shown = json.dumps(value)[:60]
            readable = want.replace("list[str]", "list of strings").replace("dict[str, str]", "object")
            raise ValueError(f"field {name!r}: expected {readable.replace(' | ', ' or ')}, got {shown}")


# ------------------------------------------------------------------------------------------------
# Presets: released checkpoints (HF repo ids under InstaDeepAI/) and small configs for training.

def _v1(L, H, heads, F, vocab=4105, max_pos=1002, token_dropout=True):
    return dict(vocab_size=vocab, hidden_size=H, num_hidden_layers=L, num_attention_heads=heads,
                intermediate_size=F, hidden_act="gelu", layer_norm_eps=1e-12, max_position_embeddings=max_pos,
                position_embedding_type="absolute", token_dropout=token_dropout, add_bias_fnn=True,
                architectures=["EsmForMaskedLM"])


def _v2(L, H, heads, F):
    return dict(vocab_size=4107, hidden_size=H, num_hidden_layers=L, num_attention_heads=heads,
                intermediate_size=F, hidden_act="gelu", layer_norm_eps=1e-12, max_position_embeddings=2050,
                position_embedding_type="rotary", token_dropout=False, add_bias_fnn=False,
                architectures=["EsmForMaskedLM"])


SEGMENT_NT_FEATURES = [
    "protein_coding_gene", "lncRNA", "exon", "intron", "splice_donor", "splice_acceptor", "5UTR", "3UTR",
    "CTCF-bound", "polyA_signal", "enhancer_Tissue_specific", "enhancer_Tissue_invariant",
    "promoter_Tissue_specific", "promoter_Tissue_invariant",
]


def _segment():
    d = _v2(29, 1024, 16, 4096)
    d.update(architectures=["SegmentNT"], features=list(SEGMENT_NT_FEATURES), num_layers_head=2,
             rescaling_factor=2.44140625)
    return d


PRESETS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "nt-500m-human-ref": ("InstaDeepAI/nucleotide-transformer-500m-human-ref", _v1(24, 1280, 20, 5120)),
    "nt-500m-1000g": ("InstaDeepAI/nucleotide-transformer-500m-1000g", _v1(24, 1280, 20, 5120)),
    "nt-2.5b-1000g": ("InstaDeepAI/nucleotide-transformer-2.5b-1000g", _v1(32, 2560, 20, 10240)),
    "nt-2.5b-multi-species": ("InstaDeepAI/nucleotide-transformer-2.5b-multi-species", _v1(32, 2560, 20, 10240)),
    "nt-v2-50m": ("InstaDeepAI/nucleotide-transformer-v2-50m-multi-species", _v2(12, 512, 16, 2048)),
    "nt-v2-100m": ("InstaDeepAI/nucleotide-transformer-v2-100m-multi-species", _v2(22, 512, 16, 2048)),
    "nt-v2-250m": ("InstaDeepAI/nucleotide-transformer-v2-250m-multi-species", _v2(24, 768, 16, 3072)),
    "nt-v2-500m": ("InstaDeepAI/nucleotide-transformer-v2-500m-multi-species", _v2(29, 1024, 16, 4096)),
    "segment-nt": ("InstaDeepAI/segment_nt", _segment()),
    "segment-nt-multi-species": ("InstaDeepAI/segment_nt_multi_species", _segment()),
    "agro-nt-1b": ("InstaDeepAI/agro-nucleotide-transformer-1b",
                   _v1(40, 1500, 20, 5120, max_pos=1026, token_dropout=False)),
    # small configurations for training with ntk pretrain (no released weights)
    "tiny": (None, dict(_v2(2, 64, 4, 128), max_position_embeddings=514)),
    "small": (None, dict(_v2(4, 128, 4, 256), max_position_embeddings=1026)),
}


def preset_config(name: str) -> NTConfig:
    if name not in PRESETS:
        raise CheckpointError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return NTConfig.from_dict(json.loads(json.dumps(PRESETS[name][1])))


def config_from_json(cls, path: str | Path):
    """``cls.from_dict`` of a config.json, every failure (missing, not JSON, not an object, a bad field) as one
    CheckpointError naming the file; shared by the model families' config classes."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: config.json not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    try:
        return cls.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
