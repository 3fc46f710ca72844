"""NTv3 configuration, read from the HF ``config.json`` of the released checkpoints (field names as in
``nucleotide_transformer_v3/pretrained.py::parse_hf_config_to_*``).

NTv3 (Boshar et al. 2025) is a U-Net over single-base tokens: embedding -> stem conv (k=15) ->
``num_downsamples`` conv blocks with average pooling -> rotary Transformer -> as many up-sampling blocks
with skips -> per-base outputs. Pre-trained models carry an MLM head; post-trained models are conditioned on
a species (adaptive LayerNorm, gated residuals) and add a species head, a BigWig-track head (softplus,
per species) and a BED-element head, both on the central ``keep_target_center_fraction`` of the window.

Strictness: a field ntk does not implement is refused with its name (``ValueError``; the loader turns it into
a one-line ``CheckpointError``), never silently ignored — e.g. the revised release's ``residual_scale``.
HF bookkeeping fields (``architectures``, ``auto_map``, ``transformers_version``, ...) are accepted.

Compute dtype: the HF remote code runs blocks under autocast with per-block dtypes read from the config
(``embedding_compute_dtype``, ``stem_compute_dtype``, ``down_convolution_compute_dtype``,
``transformer_qkvo_compute_dtype``, ``up_convolution_compute_dtype``, ``lmhead_compute_dtype``); when a field
is absent it uses bfloat16 for the stem, both conv towers and the Transformer (float32 for the embedding and
the LM head; LayerNorms and the attention softmax always in float32). ntk computes in the one dtype it is
asked for (``ntk.load_model(dtype=...)``, ``--precision``), with LayerNorms in float32 as the HF code does:
``--precision auto`` gives bf16 on accelerators -- what the HF code does for a config without the fields --
and fp32 on CPU (exact; bf16 on CPU with ``--precision bf16``). The fields are validated, kept in
:attr:`NTv3Config.compute_dtypes`, and :attr:`NTv3Config.hf_compute_dtypes` reports the HF per-block dtypes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import window_rules
from .config import JsonConfig, config_from_json

NUM_SPECIAL_TOKENS = 6  # <unk> <pad> <mask> <cls> <eos> <bos>

# HF/bookkeeping keys that do not change the computation
_METADATA_KEYS = {
    "model_type", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
    "name_or_path", "return_dict", "output_hidden_states", "output_attentions", "use_cache", "is_encoder_decoder",
    "_commit_hash", "_attn_implementation_autoset", "tie_word_embeddings", "id2label", "label2id",
    "model_name", "description", "use_return_dict",
    # HF NTv3 output selection (which intermediate outputs to return; no effect on the computation)
    "embeddings_layers_to_save", "deconv_layers_to_save", "attention_maps_to_save",
}
HF_DEFAULT_COMPUTE_DTYPES = {
    "embedding_compute_dtype": "float32", "stem_compute_dtype": "bfloat16",
    "down_convolution_compute_dtype": "bfloat16", "transformer_qkvo_compute_dtype": "bfloat16",
    "up_convolution_compute_dtype": "bfloat16", "lmhead_compute_dtype": "float32",
}
# keys written by ntk itself (fine-tuning records)
_NTK_KEYS = {"segment_window", "ntk_adapters", "ntk_task", "ntk_head", "ntk_base", "num_labels", "problem_type",
             "regression_mean", "regression_std", "features"}
NTK_HEADS = ("sequence", "segment")  # ``ntk_head``: classify/regress (``num_labels``) | segment (``features``)
_DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                "float16": "float16", "fp16": "float16"}


# initial-release NTv3 checkpoints on HF (InstaDeepAI/, gated: accept the licence on the hub, then
# `ntk models download NAME`): name -> (repo, nominal size, kind, what ntk runs with it)
NTV3_PRESETS: dict[str, tuple[str, str, str, str]] = {
    "ntv3-8m-pre": ("InstaDeepAI/NTv3_8M_pre", "8M", "pre-trained (MLM)",
                    "embed, score-variants (llr, distances), finetune classify|regress|segment"),
    "ntv3-100m-pre": ("InstaDeepAI/NTv3_100M_pre", "100M", "pre-trained (MLM)",
                      "embed, score-variants (llr, distances), finetune classify|regress|segment"),
    "ntv3-650m-pre": ("InstaDeepAI/NTv3_650M_pre", "650M", "pre-trained (MLM)",
                      "embed, score-variants (llr, distances), finetune classify|regress|segment"),
    "ntv3-100m-post": ("InstaDeepAI/NTv3_100M_post", "100M", "post-trained (species; tracks + elements)",
                       "segment, tracks, embed, score-variants (+ tracks, elements), "
                       "finetune classify|regress|segment (--species)"),
    "ntv3-650m-post": ("InstaDeepAI/NTv3_650M_post", "650M", "post-trained (species; tracks + elements)",
                       "segment, tracks, embed, score-variants (+ tracks, elements), "
                       "finetune classify|regress|segment (--species)"),
}
MODEL_TYPES = ("ntv3", "ntv3_pretrained", "ntv3_posttrained")


def filter_list(conv_init_embed_dim: int, embed_dim: int, num_downsamples: int) -> list[int]:
    """Channel widths of the U-Net levels: ``linspace`` from the stem width to the Transformer width, truncated
    to integers (as the reference does: 16 -> 24 over 3 levels gives 16, 18, 21, 24)."""
    return [int(v) for v in np.linspace(conv_init_embed_dim, embed_dim, num_downsamples + 1)]


@dataclass
class NTv3Config(JsonConfig):
    alphabet_size: int = 11
    pad_token_id: int = 1
    mask_token_id: int = 2
    num_downsamples: int = 7
    attention_heads: int = 8
    key_size: int = 64
    token_embed_dim: int = 16
    conv_init_embed_dim: int = 128
    embed_dim: int = 512
    ffn_embed_dim: int = 2048
    num_layers: int = 12
    layer_norm_eps: float = 1e-5
    num_hidden_layers_head: int = 0
    use_skip_connection: bool = True
    deconv_upsample_type: str = "conv_transpose"
    deconv_phase: str = "odd"
    # post-trained
    conditions_names: list[str] | None = None
    conditions_vocab_size: list[int] | None = None
    bigwigs_per_species: dict[str, list[str]] | None = None
    bed_elements_names: list[str] | None = None
    keep_target_center_fraction: float | None = None
    species_to_token_id: dict[str, int] | None = None
    num_species_special_tokens: int | None = None
    model_type: str = "ntv3"
    architectures: list[str] = field(default_factory=lambda: ["NTv3PreTrained"])
    # fields that set compute dtypes in the HF code (see module docstring)
    compute_dtypes: dict[str, str] = field(default_factory=dict)
    # accepted metadata / ntk fine-tuning keys, written back unchanged
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- derived -----------------------------------------------------------------------------------
    @property
    def is_post_trained(self) -> bool:
        return self.conditions_names is not None or self.species_to_token_id is not None

    @property
    def num_labels(self) -> int | None:
        """Outputs of an ``ntk finetune classify|regress`` sequence head (None: no such head)."""
        n = self.extra.get("num_labels")
        return int(n) if n else None

    @property
    def problem_type(self) -> str | None:
        return self.extra.get("problem_type")

    @property
    def id2label(self) -> dict[str, str] | None:
        return self.extra.get("id2label")

    @property
    def finetune_species(self) -> str | None:
        """Post-trained base fine-tuned with a sequence head: the species it was conditioned on (``ntk_species``)."""
        return self.extra.get("ntk_species")

    @property
    def family(self) -> str:
        return "ntv3-post" if self.is_post_trained else "ntv3-pre"

    @property
    def window_unit(self) -> int:
        """Window lengths must be multiples of this (one token per base, ``num_downsamples`` halvings)."""
        return window_rules.ntv3_window_unit(self)

    def default_window(self, job: str) -> int:
        """The default window (nt) of ``job`` (``segment``, ``score``, ``embed``; see model/window_rules.py)."""
        return window_rules.ntv3_default_window(self, job)

    def check_window(self, window: int | None, job: str) -> int:
        """``window`` (None: the default) checked for ``job``; InputError when the model cannot take it."""
        return window_rules.ntv3_check_window(self, window, job)

    @property
    def filter_list(self) -> list[int]:
        return filter_list(self.conv_init_embed_dim, self.embed_dim, self.num_downsamples)

    @property
    def species(self) -> list[str]:
        """Species names in head order (species id - num_species_special_tokens)."""
        if not self.species_to_token_id:
            return []
        k = self.num_species_special_tokens or NUM_SPECIAL_TOKENS
        return [s for s, i in sorted(self.species_to_token_id.items(), key=lambda t: t[1]) if i >= k]

    @property
    def segment_features(self) -> list[str]:
        """Features of an ``ntk finetune segment`` per-base head (``ntk_head: "segment"``, ``features``); else []."""
        if self.extra.get("ntk_head") != "segment":
            return []
        return list(self.extra.get("features") or [])

    @property
    def features(self) -> list[str]:
        """BED-head elements, empty for pre-trained models (a fine-tuned segment head's features:
        :attr:`segment_features`; what ``ntk segment`` writes: ``NTv3.features``)."""
        return list(self.bed_elements_names or [])

    @property
    def is_segmentation(self) -> bool:
        return bool(self.bed_elements_names) or bool(self.segment_features)

    def tracks_for(self, species: str) -> list[str]:
        return list((self.bigwigs_per_species or {}).get(species, []))

    @property
    def max_tracks(self) -> int:
        return max((len(v) for v in (self.bigwigs_per_species or {}).values()), default=0)

    # compatibility names used by the pipelines (token budgets, run records)
    @property
    def hidden_size(self) -> int:
        return self.embed_dim

    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers

    @property
    def vocab_size(self) -> int:
        return self.alphabet_size

    @property
    def max_tokens(self) -> int:
        """Longest window the released models were trained on (1 Mb); ntk accepts longer ones."""
        return 1 << 20

    @property
    def hf_compute_dtypes(self) -> dict[str, str]:
        """The per-block dtypes the HF remote code would use for this config (absent fields: its defaults)."""
        return {**HF_DEFAULT_COMPUTE_DTYPES, **self.compute_dtypes}

    # -- io ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NTv3Config:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "compute_dtypes"}
        known = {k: v for k, v in d.items() if k in names}
        dtypes, extra, unknown = {}, {}, []
        for k, v in d.items():
            if k in names:
                continue
            if k.endswith("compute_dtype") or k == "param_dtype":
                if not isinstance(v, str) or v.lower().replace("jnp.", "").replace("torch.", "") not in _DTYPE_NAMES:
                    raise ValueError(f"{k}: unknown dtype {v!r} (float32, bfloat16, float16)")
                dtypes[k] = _DTYPE_NAMES[v.lower().replace("jnp.", "").replace("torch.", "")]
            elif k in _METADATA_KEYS or k in _NTK_KEYS or k.startswith("ntk_"):
                extra[k] = v
            else:
                unknown.append(k)
        if unknown:
            raise ValueError(f"NTv3 config field(s) not implemented by ntk: {', '.join(sorted(unknown))} "
                             "(refused rather than ignored: they may change the computation)")
        cfg = cls(**known, compute_dtypes=dtypes, extra=extra)
        cfg.validate()
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> NTv3Config:
        return config_from_json(cls, path)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "compute_dtypes")}
        d = {k: v for k, v in d.items() if v is not None}
        d.update(self.compute_dtypes)
        d.update(self.extra)
        return d

    def _validate_ntk_head(self) -> None:
        head = self.extra.get("ntk_head")
        if head is not None and head not in NTK_HEADS:
            raise ValueError(f"ntk_head {head!r} is not implemented ({', '.join(NTK_HEADS)})")
        feats = self.extra.get("features")
        if head == "segment":
            if (not isinstance(feats, list) or not feats or not all(isinstance(f, str) and f for f in feats)
                    or len(set(feats)) != len(feats)):
                raise ValueError("ntk_head 'segment' needs 'features': a list of distinct feature names")
            if self.num_labels:
                raise ValueError("ntk_head 'segment' and num_labels (a sequence head) exclude each other")
        elif feats is not None:
            raise ValueError("config field 'features' without ntk_head 'segment' is not implemented for NTv3")
        f = self.keep_target_center_fraction
        if f is not None and not 0 < f <= 1:
            raise ValueError("keep_target_center_fraction must be in (0, 1]")

    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not an NTv3 type ({', '.join(MODEL_TYPES)})")
        if self.alphabet_size != 11:
            raise ValueError(f"alphabet_size {self.alphabet_size}: NTv3 uses the 11-token single-base vocabulary")
        if self.num_hidden_layers_head != 0:
            raise ValueError(f"num_hidden_layers_head={self.num_hidden_layers_head} is not implemented by ntk "
                             "(released NTv3 configs use 0)")
        if self.deconv_upsample_type not in ("conv_transpose", "repeat+conv"):
            raise ValueError(f"deconv_upsample_type {self.deconv_upsample_type!r} is not implemented "
                             "(conv_transpose, repeat+conv)")
        if self.deconv_phase != "odd":
            raise ValueError(f"deconv_phase {self.deconv_phase!r} is not implemented (odd)")
        if self.key_size % 2:
            raise ValueError("rotary attention needs an even key_size")
        if self.num_downsamples < 0:
            raise ValueError("num_downsamples must be >= 0")
        self._validate_ntk_head()
        if self.is_post_trained:
            if list(self.conditions_names or []) != ["species"]:
                raise ValueError(f"conditions_names {self.conditions_names!r}: ntk implements one condition, "
                                 "'species'")
            if not self.species_to_token_id or not self.conditions_vocab_size:
                raise ValueError("post-trained NTv3 config lacks species_to_token_id / conditions_vocab_size")
            if self.keep_target_center_fraction is None or not 0 < self.keep_target_center_fraction <= 1:
                raise ValueError("keep_target_center_fraction must be in (0, 1]")
            missing = [s for s in (self.bigwigs_per_species or {}) if s not in self.species_to_token_id]
            if missing:
                raise ValueError(f"bigwigs_per_species names species not in species_to_token_id: {missing}")
