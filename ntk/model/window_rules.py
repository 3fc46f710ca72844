"""Window facts of each model family, owned by the model config: what window lengths a model takes (the *unit*),
each job's default window, and the one check of ``--window`` (one exception type,
:class:`ntk.errors.InputError`: the window does not fit the model).

Everything here reads the config only, so a bad ``--window`` is refused from ``config.json`` before any weights
load (:func:`ntk.model.checkpoint.read_config`). ``NTConfig`` and ``NTv3Config`` expose these rules as
``window_unit``, ``default_window(job)`` and ``check_window(window, job)``.

- **Unit.** SegmentNT: 6 nt per token x ``2**num_layers_head`` (the U-Net halves the token axis once per level;
  24 nt for the released 2-level heads); other NT models: 1 (any length; the 6-mer tokenizer handles the rest);
  NTv3: ``2**num_downsamples`` (one token per base).
- **Jobs** and their default windows (the values every existing model had before these rules moved here):

  ========== ======================================================== =====================================
  job        NT v1/v2, SegmentNT                                      NTv3
  ========== ======================================================== =====================================
  segment    ``segment_window`` of config.json (written by ``ntk       ``segment_window``, else 1 Mb rounded
             finetune segment``) when it is a multiple of the unit,   down to the unit
             else the trained length ``(max_tokens - 1) * 6`` rounded
             down to the unit (at least one unit)
  score      ``(max_tokens - 1) * 6`` rounded down to the unit        32 kb (:data:`NTV3_VARIANT_WINDOW`)
  embed      ``max_tokens - 1`` **DNA tokens** (embed tiles tokens;   1 Mb
             a larger ``--window`` is capped to it)
  finetune   ``min(max_tokens - 1, 1024)`` tokens x 6 rounded down   8 kb rounded down to the unit
             to the unit (called on the config of the model being
             trained: its head sets the unit)
  ========== ======================================================== =====================================

The check refuses a window that is not a positive multiple of the unit (score: also one under 24 nt; score and
finetune: one longer than a learned-position model's context); embed caps NT windows to the context.
"""
from __future__ import annotations

from ..errors import InputError

JOBS = ("segment", "score", "embed", "finetune")
NT_PER_TOKEN = 6
SEGMENT_NT_HEAD_LEVELS = 2  # U-Net levels of a SegmentNT head whose config.json does not say (the released ones)
SEGMENT_NT_UNIT = NT_PER_TOKEN * 2 ** SEGMENT_NT_HEAD_LEVELS  # 24 nt: the unit of those heads
NTV3_DEFAULT_WINDOW = 1 << 20  # the released NTv3 models' 1 Mb context
NTV3_VARIANT_WINDOW = 1 << 15  # NTv3 score-variants: a 32 kb window centred on each variant
NTV3_FINETUNE_WINDOW = 8192  # NTv3 finetune segment: training windows (rounded down to the unit)
FINETUNE_MAX_TOKENS = 1024  # NT finetune segment: default windows of at most this many tokens (6,144 nt)
SCORE_MIN_WINDOW = 24  # score-variants: the shortest window (nt) around a variant


def _job(job: str) -> str:
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r} (expected one of {', '.join(JOBS)})")
    return job


def _trained(cfg, unit: int) -> int | None:
    """``segment_window`` of config.json when it is a usable window (a positive multiple of the unit)."""
    w = cfg.extra.get("segment_window")
    return w if isinstance(w, int) and w >= unit and w % unit == 0 else None


# -- NT v1 / v2 / SegmentNT ----------------------------------------------------------------------------------

def nt_head_levels(cfg) -> int:
    return cfg.num_layers_head or SEGMENT_NT_HEAD_LEVELS


def nt_window_unit(cfg) -> int:
    return NT_PER_TOKEN * 2 ** nt_head_levels(cfg) if cfg.is_segmentation else 1


def nt_default_window(cfg, job: str) -> int:
    unit, context = nt_window_unit(cfg), (cfg.max_tokens - 1) * NT_PER_TOKEN
    if _job(job) == "segment":
        trained = _trained(cfg, unit)
        return trained if trained is not None else max(unit, context // unit * unit)
    if job == "score":
        return context - context % unit
    if job == "finetune":
        return min(cfg.max_tokens - 1, FINETUNE_MAX_TOKENS) * NT_PER_TOKEN // unit * unit
    return cfg.max_tokens - 1  # embed: tokens


def nt_check_window(cfg, window: int | None, job: str) -> int:
    """The window of ``job`` (``window``, else the default), or InputError."""
    w = nt_default_window(cfg, job) if window is None else int(window)
    unit = nt_window_unit(cfg)
    if job == "embed":
        w = min(w, cfg.max_tokens - 1)
        if w < 1:
            raise InputError(f"model context of {cfg.max_tokens} tokens is too small")
        return w
    if job == "score" and w < SCORE_MIN_WINDOW:
        raise InputError(f"--window {w}: must be at least {SCORE_MIN_WINDOW} nt")
    if w < unit or w % unit:
        raise InputError(f"--window {w}: must be a positive multiple of {unit} nt (6 nt per token x "
                       f"{2 ** nt_head_levels(cfg)} for the U-Net pooling levels)"
                       + (f"; e.g. {w - w % unit}" if w > unit else ""))
    limit = (cfg.max_tokens - 1) * NT_PER_TOKEN
    if job in ("score", "finetune") and not cfg.rotary and w > limit:
        raise InputError(f"--window {w}: this model has learned positions for at most {cfg.max_tokens} tokens "
                       f"({limit} nt)")
    return w


# -- NTv3 ------------------------------------------------------------------------------------------------------

def ntv3_window_unit(cfg) -> int:
    return 2 ** cfg.num_downsamples


def ntv3_default_window(cfg, job: str) -> int:
    unit = ntv3_window_unit(cfg)
    if _job(job) == "segment":
        trained = _trained(cfg, unit)
        return trained if trained is not None else max(unit, NTV3_DEFAULT_WINDOW // unit * unit)
    if job == "finetune":
        return max(unit, NTV3_FINETUNE_WINDOW // unit * unit)
    return NTV3_VARIANT_WINDOW if job == "score" else NTV3_DEFAULT_WINDOW


def ntv3_check_window(cfg, window: int | None, job: str) -> int:
    w = ntv3_default_window(cfg, job) if window is None else int(window)
    unit = ntv3_window_unit(cfg)
    if w < unit or w % unit:
        raise InputError(f"--window {w}: must be a positive multiple of {unit} nt (2^num_downsamples for this NTv3 "
                       "model)")
    return w
