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
from ..model.ntv3_config import NTV3_PRESETS
from .common import console

app = typer.Typer(no_args_is_help=True)


def count_parameters(cfg: NTConfig, keys: set[str] | None = None) -> int:
    """Parameters of the model that ``ntk.load_model`` builds for ``cfg`` (and a checkpoint holding ``keys``, which
    decide the optional heads), built on the meta device: no weights needed. The one count ntk shows everywhere
    (``models list``, ``models info``, the model card)."""
    import torch

    from ..model.checkpoint import build_model

    with torch.device("meta"):
        m = build_model(cfg, keys)
    return sum(p.numel() for p in m.parameters())


def checkpoint_keys(directory) -> set[str] | None:
    """Tensor names of a safetensors checkpoint, from its header only (no weights read)."""
    from pathlib import Path

    from safetensors import safe_open

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return None
    keys: set[str] = set()
    for f in files:
        with safe_open(str(f), "pt") as h:
            keys.update(h.keys())
    return keys


def fmt_count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


@app.command("list")
def list_models():
    """Presets and the embedded model: parameters, family, whether the weights are in the local HF cache.

    Printed to stdout, one model per line, names and repo ids never shortened (on a narrow terminal the repo id
    goes on a line of its own).

    \b
    Examples:
      ntk models list
      HF_HOME=/data/hf ntk models list | grep segment
    """
    import shutil
    import sys

    rows = []
    emb = EMBEDDED_DIR / EMBEDDED_DEFAULT
    if (emb / "config.json").is_file():
        cfg = NTConfig.from_json(emb / "config.json")
        rows.append((f"{EMBEDDED_DEFAULT} (default)", fmt_count(count_parameters(cfg, checkpoint_keys(emb))),
                     cfg.family, "yes", "(embedded in ntk)"))
    for name, (repo, _) in PRESETS.items():
        cfg = preset_config(name)
        local = "-" if repo is None else ("yes" if find_in_hf_cache(repo) else "no")
        rows.append((name, fmt_count(count_parameters(cfg)), cfg.family, local, repo or "(training config)"))
    for name, (repo, size, kind, _) in NTV3_PRESETS.items():
        rows.append((name, f"~{size}", "ntv3-pre" if kind.startswith("pre") else "ntv3-post",
                     "yes" if find_in_hf_cache(repo) else "no", repo))
    chat_row, chat_note = _chatnt_row()
    rows.append(chat_row)
    head = ("name", "params", "family", "local", "HF repo")
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    width = shutil.get_terminal_size((10_000, 24)).columns if sys.stdout.isatty() else 10_000

    def line(r) -> str:
        first = f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:<{w[2]}}  {r[3]:<{w[3]}}"
        full = f"{first}  {r[4]}"
        return full if len(full) <= width else f"{first}\n    {r[4]}"

    console.print(f"HF cache: {hf_cache_dir()} (local = weights found there; ntk never downloads at run time)")
    print("\n".join(line(r) for r in [head, *rows]), flush=True)
    console.print(chat_note, soft_wrap=True, markup=False)
    n = Table(title="NTv3 presets (sizes nominal, from the release names)")
    for c in ("name", "kind", "supports"):
        n.add_column(c)
    for name, (_, _, kind, supports) in NTV3_PRESETS.items():
        n.add_row(name, kind, supports)
    console.print(n)


def _chatnt_row() -> tuple[tuple[str, ...], str]:
    """The ChatNT preset: its own architecture (model/chatnt.py); its row and the note on what it needs."""
    import torch

    from ..model.chatnt import RELEASE_CONFIG, RELEASE_REPO, ChatNT, ChatNTConfig

    with torch.device("meta"):
        n = ChatNT(ChatNTConfig(RELEASE_CONFIG)).num_parameters()
    hit = find_in_hf_cache(RELEASE_REPO)
    row = ("chatnt", fmt_count(n), "ChatNT", "yes" if hit else "no", RELEASE_REPO)
    return row, (f"chatnt: {fmt_count(n)} parameters = {n * 2 / 2**30:.1f} GiB of weights at bf16/fp16 (plan a GPU "
                 f"with {n * 2 / 2**30 + 4:.0f}+ GiB; {n * 4 / 2**30:.0f} GiB at fp32 on CPU); English tokenizer "
                 "needs pip install 'ntk[chat]'; convert the JAX release once: "
                 "ntk models convert chatnt SNAPSHOT/jax_params DIR, then ntk chat -m DIR")


@app.command("info")
def info(model: Annotated[str, typer.Argument(metavar="MODEL", help="Checkpoint directory or preset name")]):
    """Config and parameter count of a checkpoint (loads the weights to validate them).

    \b
    Examples:
      ntk models info segment-nt
      ntk models info runs/seg/best
    """
    from ..model.checkpoint import load_model

    path = resolve_model_path(model)
    m = load_model(str(path))
    cfg = m.config
    if cfg.family == "ChatNT":
        t = Table(show_header=False, title=str(path))
        for k, v in (("family", "ChatNT"), ("parameters", f"{m.num_parameters():,}"),
                     ("DNA encoder", f"NT-v2, {cfg.nt.num_hidden_layers} layers x {cfg.nt.hidden_size}, "
                                     f"max {cfg.bio_max_tokens} tokens"),
                     ("resampler", f"{cfg.perceiver.num_layers} layers, {cfg.resampled_length} embeddings per DNA"),
                     ("decoder", f"LLaMA, {cfg.gpt.num_layers} layers x {cfg.gpt.embed_dim}, vocab {cfg.gpt.vocab_size}"),
                     ("English length", cfg.english_max_length),
                     ("English tokenizer", m.english_tokenizer or m.english_tokenizer_problem)):
            t.add_row(k, str(v))
        console.print(t)
        return
    t = Table(show_header=False, title=str(path))
    if cfg.family.startswith("ntv3"):
        rows = [("family", cfg.family), ("parameters", f"{m.num_parameters():,} ({fmt_count(m.num_parameters())})"),
                ("transformer", f"{cfg.num_layers} layers, width {cfg.embed_dim}, {cfg.attention_heads} heads x "
                                f"{cfg.key_size}, FFN {cfg.ffn_embed_dim} (SwiGLU)"),
                ("U-Net", f"{cfg.num_downsamples} levels, widths {cfg.filter_list}, {cfg.deconv_upsample_type}"),
                ("window unit", f"{cfg.window_unit} nt (windows are multiples of it)"),
                ("compute dtypes (HF code)", ", ".join(f"{k}={v}" for k, v in cfg.hf_compute_dtypes.items()))]
        if cfg.is_post_trained:
            rows += [("species", ", ".join(cfg.species)),
                     ("tracks per species", ", ".join(f"{s_}: {len(cfg.tracks_for(s_))}" for s_ in cfg.species)),
                     ("BED elements", ", ".join(cfg.bed_elements_names or []) or "-"),
                     ("heads' centre", f"{cfg.keep_target_center_fraction} of the window")]
        if cfg.segment_features:  # ntk finetune segment
            rows += [("fine-tuned segment head", f"{', '.join(cfg.segment_features)} (per base; ntk segment keeps "
                                                 f"{cfg.keep_target_center_fraction} of the window)")]
        elif cfg.num_labels:  # ntk finetune classify|regress
            rows += [("fine-tuned sequence head", f"{cfg.problem_type}: {cfg.num_labels} outputs")]
        if cfg.finetune_species:
            rows += [("fine-tuned species", cfg.finetune_species)]
        for k, v in rows:
            t.add_row(k, str(v))
        console.print(t)
        return
    rows = [("family", cfg.family), ("parameters", f"{m.num_parameters():,} ({fmt_count(m.num_parameters())})"),
            ("layers", cfg.num_hidden_layers), ("hidden", cfg.hidden_size), ("heads", cfg.num_attention_heads),
            ("ffn", f"{cfg.intermediate_size} ({'SwiGLU' if cfg.glu else 'GELU'})"),
            ("positions", cfg.position_embedding_type), ("vocab", f"{cfg.vocab_size} (tokenizer {cfg.tokenizer_version})"),
            ("max tokens", cfg.max_tokens), ("LM head", "yes" if m.lm_head is not None else "no"),
            ("segmentation features", ", ".join(cfg.features or []) or "-")]
    if getattr(m, "nuc_head", None) is not None:
        from ..model.heads import NUCLEOTIDE_HEAD_KEY

        nh = cfg.extra[NUCLEOTIDE_HEAD_KEY]
        rows.append(("nucleotide head", f"{nh['channels']} channels, kernel {nh['kernel']}, dilations "
                                        f"{', '.join(map(str, nh['dilations']))} (ntk's; --nucleotide-head)"))
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)


@app.command("download")
def download(name: Annotated[str, typer.Argument(metavar="PRESET", help="Preset name, e.g. nt-v2-50m")]):
    """Fetch a released checkpoint into the HF cache (the only ntk command that uses the network).

    \b
    Examples:
      ntk models download nt-v2-50m
      HF_HOME=/data/hf ntk models download segment-nt
    """
    if name in NTV3_PRESETS:
        repo = NTV3_PRESETS[name][0]
    elif name not in PRESETS or PRESETS[name][0] is None:
        raise NtkError(f"unknown preset {name!r}")
    else:
        repo = PRESETS[name][0]
    try:
        import huggingface_hub
    except ImportError:
        raise NtkError("`ntk models download` needs the huggingface_hub package (pip install huggingface_hub)") from None
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from ..model.checkpoint import hf_cache_dir

    try:
        path = huggingface_hub.snapshot_download(repo, allow_patterns=["config.json", "*.safetensors", "*.json",
                                                                       "*.bin"])
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        # no network, a proxy or the hub refusing: say so, and how to put the checkpoint in place by hand
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise NtkError(f"cannot download {repo} from the Hugging Face hub ({reason}); on a machine with network "
                       f"run `ntk models download {name}` and copy {hf_cache_dir()}/models--"
                       f"{repo.replace('/', '--')} here, or download config.json and the weights into a directory "
                       "and pass it with --model DIR") from None
    console.print(f"{name}: {path}")


@app.command("convert")
def convert(
    family: Annotated[str, typer.Argument(help="Model family: chatnt")],
    src: Annotated[str, typer.Argument(help="ChatNT: the JAX release's params.joblib, its jax_params/ folder or the "
                                       "release root")],
    dst: Annotated[str, typer.Argument(help="Output directory (config.json + model.safetensors + tokenizers)")],
    config: Annotated[str | None, typer.Option("--config", help="Reference-style config.json to use instead of the "
                                               "released configuration")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="keep | fp32 | fp16 (floating arrays)")] = "keep",
    force: Annotated[bool, typer.Option("--force", help="Replace DST if it exists")] = False,
):
    """Convert a checkpoint to safetensors without executing anything from it (ChatNT: restricted unpickler).

    \b
    Examples:
      ntk models convert chatnt ~/hf/ChatNT/jax_params chatnt/
      ntk models convert chatnt ~/hf/ChatNT/jax_params chatnt16/ --dtype fp16
    """
    if family.lower() != "chatnt":
        raise NtkError(f"convert {family!r}: only 'chatnt' is supported")
    from ..model.chatnt_convert import convert_chatnt

    out = convert_chatnt(src, dst, config=config, dtype=dtype, force=force, log=console.print)
    console.print(f"ntk models convert: {out}")

