"""``ntk models list|info|download``."""
from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..errors import NtkError
from ..model.checkpoint import (
    EMBEDDED_DEFAULT,
    EMBEDDED_DIR,
    find_in_hf_cache,
    hf_cache_dir,
    resolve_model_path,
)
from ..model.config import PRESETS, NTConfig, preset_config
from .common import console

app = typer.Typer(no_args_is_help=True)


def count_parameters(cfg: NTConfig) -> int:
    """Parameters of the architecture (no weights needed): build on the meta device."""
    import torch

    from ..model.nt import NucleotideTransformer

    with torch.device("meta"):
        m = NucleotideTransformer(cfg)
    return sum(p.numel() for p in m.parameters())


def _fmt(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


@app.command("list")
def list_models():
    """Presets (released checkpoints and training configs), whether each is available offline, and its size."""
    t = Table(title=f"ntk models (HF cache: {hf_cache_dir()})")
    for c in ("name", "HF repo", "family", "params", "local"):
        t.add_column(c)
    emb = EMBEDDED_DIR / EMBEDDED_DEFAULT
    if (emb / "config.json").is_file():
        cfg = NTConfig.from_json(emb / "config.json")
        t.add_row(f"{EMBEDDED_DEFAULT} (default)", "embedded in ntk", cfg.family, _fmt(count_parameters(cfg)), "yes")
    for name, (repo, _) in PRESETS.items():
        cfg = preset_config(name)
        local = "-" if repo is None else (str(find_in_hf_cache(repo)) if find_in_hf_cache(repo) else "no")
        t.add_row(name, repo or "(training config)", cfg.family, _fmt(count_parameters(cfg)), local)
    console.print(t)


@app.command("info")
def info(model: Annotated[str, typer.Argument(help="Checkpoint directory or preset name")]):
    """Config and parameter count of a checkpoint (loads the weights to validate them)."""
    from ..model.checkpoint import load_model

    path = resolve_model_path(model)
    m = load_model(str(path))
    cfg = m.config
    t = Table(show_header=False, title=str(path))
    rows = [("family", cfg.family), ("parameters", f"{m.num_parameters():,}"),
            ("layers", cfg.num_hidden_layers), ("hidden", cfg.hidden_size), ("heads", cfg.num_attention_heads),
            ("ffn", f"{cfg.intermediate_size} ({'SwiGLU' if cfg.glu else 'GELU'})"),
            ("positions", cfg.position_embedding_type), ("vocab", f"{cfg.vocab_size} (tokenizer {cfg.tokenizer_version})"),
            ("max tokens", cfg.max_tokens), ("LM head", "yes" if m.lm_head is not None else "no"),
            ("segmentation features", ", ".join(cfg.features or []) or "-")]
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)


@app.command("download")
def download(name: Annotated[str, typer.Argument(help="Preset name, e.g. nt-v2-50m")]):
    """Fetch a released checkpoint into the HF cache (the only ntk command that uses the network)."""
    if name not in PRESETS or PRESETS[name][0] is None:
        raise NtkError(f"unknown preset {name!r}")
    repo = PRESETS[name][0]
    try:
        import huggingface_hub
    except ImportError:
        raise NtkError("`ntk models download` needs the huggingface_hub package (pip install huggingface_hub)") from None
    path = huggingface_hub.snapshot_download(repo, allow_patterns=["config.json", "*.safetensors", "*.json", "*.bin"])
    console.print(f"{name}: {path}")
