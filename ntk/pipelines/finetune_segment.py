"""``ntk finetune segment``: train a SegmentNT-style U-Net head (and, by method, the encoder) to predict
per-nucleotide genomic features derived from an annotation (GTF, GFF3 or BED; see :mod:`ntk.io.annotation`).

- Windows: exactly ``--window`` nt (a multiple of 24: 6-mer tokens, two U-Net pooling levels), inside ACGT
  runs (SegmentNT never sees N and is never padded); training windows are re-drawn every epoch with a random
  shift of up to half a window and, with ``--rc-augment``, reverse-complemented half of the time (features
  are unstranded, so the targets are simply reversed).
- Splits: whole chromosomes (``--val-chroms``, ``--test-chroms``); training uses every other annotated
  contig. Validation uses at most ``--max-eval-windows`` windows evenly spaced along the validation contigs
  (each nucleotide scored once, from the centre of its window, as ``ntk segment`` does: where two evaluated
  windows are neighbours their probabilities are blended across the overlap, see ``plan/windows``; the
  evaluation loss is the cross-entropy of those probabilities); test uses them all.
- Loss: cross-entropy of the two-class per-nucleotide, per-feature logits (SegmentNT's output layout
  ``[B, 6(T-1), F, 2]``). Metrics: per-feature nucleotide-level MCC (threshold 0.5) and AUPRC, and their means.
- Result: a SegmentNT-type checkpoint (``architectures: ["SegmentNT"]``, your ``features``) in ``best/`` that
  ``ntk.load_model`` and ``ntk segment`` run. When the window needs more tokens than a rotary base model was
  trained on, ``rescaling_factor`` is set to ``tokens / (max_position_embeddings - 2)`` as SegmentNT does.

**NTv3 bases** (pre-trained, or post-trained with ``--species``): the head is a per-base one
(:class:`ntk.model.ntv3.NTv3SegmentHead`: LayerNorm + linear -> a logit pair per feature and base, on the final
per-base embedding; single-base tokens, so base ``i`` of a window is token ``i``); windows are multiples of
``2**num_downsamples`` (default 8 kb rounded down: model/window_rules.py), inside ACGT runs (never ``<pad>``), and
the loss covers the whole window. Evaluation keeps each window's centre as ``ntk segment`` does for NTv3: the
model's ``keep_target_center_fraction`` (a post-trained base's own; for a pre-trained base
``1 - 2 * eval_crop / window``, ``eval_crop`` default window/8, written to config.json); kept centres abut, so
nothing is blended. The result is an NTv3 checkpoint (config.json ``ntk_head: "segment"``, ``features``,
``ntk_species`` for a post-trained base) that ``ntk.load_model`` and ``ntk segment -m`` run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..io.annotation import read_annotation
from ..io.fasta import IndexedFasta
from ..io.intervals import suggest_contig
from ..model.checkpoint import load_model, read_config
from ..model.config import NTConfig
from ..model.nt import NUC_PER_TOKEN
from ..model.runtime import set_threads
from ..report import NULL, Reporter
from ..train.finetune_data import WindowBatches, genome_windows
from ..train.metrics import SegmentationMetrics
from ..plan.windows import Blender, Window
from ..errors import NtkError
from .finetune import (FinetuneOptions, TrainTask, build_ntv3_segment_model, build_task_model, check_single_process,
                       clean_json, is_ntv3, monitor_name, ntv3_species, setup_method, start_run, train_and_report)


@dataclass
class SegmentTaskInput:
    reference: str
    annotation: str
    features: list[str]
    val_chroms: list[str] = field(default_factory=list)
    test_chroms: list[str] = field(default_factory=list)
    train_chroms: list[str] | None = None  # default: every annotated contig not held out
    chr_map: dict | None = None
    annotation_format: str | None = None  # gtf | gff3 | bed (default: from the file)
    window: int | None = None  # nt; default: the model's context, at most 1024 tokens
    eval_crop: int | None = None  # nt ignored at each end of evaluation windows (default window/8)
    max_eval_windows: int | None = 256
    rc_augment: bool = True
    num_layers_head: int = 2
    pos_weight: str = "none"  # none | auto (sqrt(neg/pos) per feature, capped at 100) | a number
    nucleotide_head: int | None = None  # channels of ntk's nucleotide head (0 = none; None = the base's, if any)


def positive_weights(spec: str, ann, fa: IndexedFasta, contigs: list[str]) -> torch.Tensor | None:
    """Per-feature weight of the positive class: ``none``; a number; or ``auto`` = sqrt(negatives/positives)
    over the training contigs, between 1 and 100 (rare features such as splice sites are otherwise never
    predicted above 0.5)."""
    spec = (spec or "none").lower()
    if spec == "none":
        return None
    if spec != "auto":
        try:
            w = float(spec)
        except ValueError:
            raise InputError(f"--pos-weight {spec!r}: expected none, auto or a number") from None
        if w <= 0:
            raise InputError("--pos-weight must be positive")
        return torch.full((len(ann.features),), w)
    total = sum(fa.lengths[c] for c in contigs)
    out = []
    for f in ann.features:
        pos = sum(int((e - s).sum()) for c in contigs for s, e in [ann.intervals(f, c)])
        frac = min(max(pos / max(total, 1), 1e-9), 1.0)
        out.append(min(max(((1 - frac) / frac) ** 0.5, 1.0), 100.0))
    return torch.tensor(out, dtype=torch.float32)


def weighted_segment_loss(logits: torch.Tensor, targets: torch.Tensor, pos_w: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over ``[B, L, F, 2]`` logits with the positive class of feature f weighted by ``pos_w[f]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    t = targets.long()
    picked = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    w = torch.where(t == 1, pos_w, torch.ones_like(pos_w))
    return -(w * picked).sum() / w.sum()


def trained_config(base_config, inp: SegmentTaskInput, features: list[str]):
    """The config whose window rules apply (model/window_rules.py, job ``finetune``): for an NT base the config of
    the SegmentNT-type model being trained (its ``num_layers_head`` sets the window unit), for NTv3 the base's."""
    if isinstance(base_config, NTConfig):
        return replace(base_config, features=list(features), num_layers_head=inp.num_layers_head)
    return base_config


def _check_contigs(names: list[str], lengths: dict[str, int], option: str) -> None:
    for n in names:
        if n not in lengths:
            raise InputError(f"{option}: contig {n!r} is not in the FASTA{suggest_contig(n, lengths)}")


def _train_contigs(inp: SegmentTaskInput, fa: IndexedFasta, ann) -> list[str]:
    """The training contigs (checked: --val-chroms required, the three splits disjoint and known to the FASTA)."""
    if not inp.val_chroms:
        raise InputError("--val-chroms is required: validation holds out whole chromosomes (no leakage between "
                         "neighbouring windows)")
    _check_contigs(inp.val_chroms, fa.lengths, "--val-chroms")
    _check_contigs(inp.test_chroms, fa.lengths, "--test-chroms")
    if set(inp.val_chroms) & set(inp.test_chroms):
        raise InputError("a chromosome cannot be both in --val-chroms and --test-chroms")
    held = set(inp.val_chroms) | set(inp.test_chroms)
    if inp.train_chroms:
        _check_contigs(inp.train_chroms, fa.lengths, "--train-chroms")
        if held & set(inp.train_chroms):
            raise InputError("--train-chroms overlaps --val-chroms/--test-chroms")
        train_contigs = list(inp.train_chroms)
    else:
        annotated = ann.contigs
        train_contigs = [c for c in fa.names if c in annotated and c not in held]
    if not train_contigs:
        raise InputError("no annotated contig is left for training after --val-chroms/--test-chroms")
    return train_contigs


def _split_record(model, inp: SegmentTaskInput, ann, window: int, crop: int, train_contigs: list[str],
                  splits: tuple) -> dict:
    """What metrics.json records about the data: features, window, the split by chromosome, annotated bp."""
    train_w, val_w, test_w = splits
    record = {
        "features": ann.features, "window": window,
        "split": {"how": "by chromosome", "train_contigs": train_contigs, "val_contigs": list(inp.val_chroms),
                  "test_contigs": list(inp.test_chroms), "train_windows": len(train_w),
                  "val_windows": len(val_w), "test_windows": len(test_w) if test_w is not None else 0,
                  "skipped_short_run_bp": train_w.skipped_bp},
        "annotated_bp": {f: ann.covered_bp(f) for f in ann.features},
    }
    if is_ntv3(model):
        f = model.config.keep_target_center_fraction
        record.update(eval_crop=crop, keep_target_center_fraction=f, species=model.config.finetune_species)
    else:
        record["rescaling_factor"] = model.config.rescaling_factor
    return record


def finetune_segment(inp: SegmentTaskInput, run_dir: str | Path, opts: FinetuneOptions | None = None,
                     reporter: Reporter = NULL) -> dict:
    """Train the segmentation head; return the report written to ``RUN_DIR/metrics.json`` (``reporter``: progress,
    log lines and warnings; default: silent)."""
    opts = opts or FinetuneOptions()
    run_dir = Path(run_dir)
    check_single_process()
    set_threads(opts.threads)
    if inp.nucleotide_head is not None and inp.nucleotide_head < 0:  # before the reference and the model load
        raise NtkError(f"--nucleotide-head {inp.nucleotide_head}: channels must be >= 0 (0 = none)")
    fa = IndexedFasta(inp.reference)
    ann = read_annotation(inp.annotation, list(inp.features), fa.lengths, inp.chr_map, inp.annotation_format)
    train_contigs = _train_contigs(inp, fa, ann)

    early = read_config(opts.model)  # a bad --window fails from config.json, before the weights load
    if early is not None:
        trained_config(early, inp, ann.features).check_window(inp.window or None, "finetune")
    base = load_model(opts.model)
    if is_ntv3(base):
        setup = _ntv3_setup(base, inp, opts, ann.features)
    else:
        if opts.species:
            raise NtkError("--species: only NTv3 post-trained models are conditioned on a species")
        setup = _nt_setup(base, inp, ann.features)
    model, window, crop, unit, blend = setup
    train_w = genome_windows(fa, train_contigs, window, 0, unit)
    val_w = genome_windows(fa, list(inp.val_chroms), window, crop, unit).subsample(inp.max_eval_windows)
    test_w = genome_windows(fa, list(inp.test_chroms), window, crop, unit) if inp.test_chroms else None
    if len(train_w) == 0:
        raise InputError(f"no ACGT run of {window} nt on the training contigs: lower --window")
    if len(val_w) == 0:
        raise InputError(f"no ACGT run of {window} nt on --val-chroms: lower --window")

    monitor_name("segmentation", opts.monitor)  # a bad --monitor fails before anything is written
    model.config.extra["segment_window"] = window  # `ntk segment` uses the trained window by default
    del base
    params = setup_method(model, opts)
    options = {"task": "segment", "input": clean_json(asdict(inp)), "finetune": clean_json(asdict(opts))}
    resume_from = start_run(run_dir, options, opts)
    batches = WindowBatches(fa, ann, train_w, model.tokenizer, opts.batch_size, train=True, seed=opts.seed,
                            rc_augment=inp.rc_augment)

    weights = positive_weights(inp.pos_weight, ann, fa, train_contigs)

    def loss_fn(m, batch):
        logits = m(batch["input_ids"], heads="segment").segment_logits
        if weights is None:
            loss = F.cross_entropy(logits.float().reshape(-1, 2), batch["targets"].reshape(-1).long())
        else:
            loss = weighted_segment_loss(logits, batch["targets"], weights.to(logits.device))
        return loss, {"n_windows": batch["input_ids"].shape[0]}

    def evaluate_on(windows):
        return lambda m: evaluate_windows(m, fa, ann, windows, model.tokenizer, opts.batch_size, blend)

    record = _split_record(model, inp, ann, window, crop, train_contigs, (train_w, val_w, test_w))
    test_eval = evaluate_on(test_w) if test_w is not None and len(test_w) else None
    task = TrainTask("segmentation", loss_fn, batches, batches.batches_per_epoch, evaluate_on(val_w),
                     test_eval=test_eval, record=record)
    report = train_and_report(model, params, task, opts, run_dir, resume_from, reporter)
    fa.close()
    return report


def _nt_setup(base, inp: SegmentTaskInput, features: list[str]):
    """SegmentNT-type head on an NT base: (model, window, eval crop, window unit, blend mode)."""
    cfg = base.config
    target = trained_config(cfg, inp, features)
    window = target.check_window(inp.window or None, "finetune")
    tokens = window // NUC_PER_TOKEN + 1
    rescaling = None
    if tokens > cfg.max_tokens:  # a rotary base (check_window refuses this for learned positions)
        rescaling = (tokens - 1) / (cfg.max_position_embeddings - 2)
    crop = inp.eval_crop if inp.eval_crop is not None else window // 8
    model = build_task_model(base, "segment", features=features, num_layers_head=inp.num_layers_head,
                             rescaling_factor=rescaling, nucleotide_head=inp.nucleotide_head)
    return model, window, crop, target.window_unit, "linear"


def _ntv3_setup(base, inp: SegmentTaskInput, opts: FinetuneOptions, features: list[str]):
    """Per-base head on an NTv3 base: (model, window, eval crop = the kept centre's margin, unit, blend "none")."""
    from .family import NTv3Family

    if inp.nucleotide_head:
        raise NtkError("--nucleotide-head: only for NT (SegmentNT-type) bases; an NTv3 head is per base already")
    unit = base.config.window_unit
    ntv3_species(base, opts.species)
    window = base.config.check_window(inp.window or None, "finetune")
    keep = None
    if base.config.is_post_trained:
        if inp.eval_crop is not None:
            raise InputError(f"--eval-crop: an NTv3 post-trained base keeps its own centre of each window "
                             f"(keep_target_center_fraction {base.config.keep_target_center_fraction}); the "
                             "evaluation crop follows from --window")
    else:
        crop = inp.eval_crop if inp.eval_crop is not None else window // 8
        if crop < 0 or 2 * crop >= window:
            raise InputError(f"--eval-crop {crop}: must be >= 0 and less than half the window ({window} nt)")
        keep = (window - 2 * crop) / window
    model = build_ntv3_segment_model(base, features, opts.species, keep)
    fam = NTv3Family(model)
    if fam.kept(window) < 1 or 2 * fam.margin(window) >= window:
        raise InputError(f"--window {window}: too short, its kept centre is empty")
    return model, window, fam.margin(window), unit, "none"


def evaluate_windows(m, fa: IndexedFasta, ann, windows, tokenizer, batch_size: int, blend: str = "linear") -> dict:
    """Per-feature nucleotide-level metrics of ``m``'s segment head over ``windows``: each nucleotide scored once,
    from the kept part of its window (``blend``: how neighbouring windows' values meet, see plan/windows);
    ``loss`` is the cross-entropy of the kept probabilities."""
    acc = SegmentationMetrics(ann.features)
    loss_sum, n = 0.0, 0
    dev = m.device
    blender = Blender(blend)

    def score(kept: np.ndarray, t: np.ndarray) -> None:
        nonlocal loss_sum, n
        acc.update(kept, t)
        p = np.clip(kept.astype(np.float64), 1e-12, 1 - 1e-12)  # CE of the (blended) probabilities
        loss_sum += float(-np.where(t > 0, np.log(p), np.log1p(-p)).sum())
        n += t.size

    for sel, batch in WindowBatches(fa, ann, windows, tokenizer, batch_size, train=False):
        logits = m(batch["input_ids"].to(dev), heads="segment").segment_logits.float().cpu()
        proba = torch.softmax(logits, -1)[..., 1].numpy()
        for k, i in enumerate(sel):
            s0 = int(windows.start[i])
            w = Window(windows.contigs[int(windows.contig[i])], s0, s0 + windows.window,
                       int(windows.keep_start[i]), int(windows.keep_end[i]))
            t = batch["targets"][k, w.keep_start - s0:w.keep_end - s0].numpy()
            for _, kept, tt in blender.push(w, proba[k], t):
                score(kept, tt)
    for _, kept, tt in blender.flush():
        score(kept, tt)
    res = acc.result()
    out = {"loss": loss_sum / max(n, 1), "mcc": res["mcc"], "auprc": res["auprc"], "auroc": res["auroc"]}
    for f in ann.features:
        out[f"mcc/{f}"] = res[f"mcc/{f}"]
        out[f"auprc/{f}"] = res[f"auprc/{f}"]
    return out
