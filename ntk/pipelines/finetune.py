"""``ntk finetune classify|regress``: fine-tune a Nucleotide Transformer on labelled sequences.

Flow: labelled records (:mod:`ntk.io.labels`) -> labels encoded and split without leakage
(:mod:`ntk.train.finetune_data`) -> base model + new head (:func:`build_task_model`) -> method (full, head, LoRA,
IA3: :func:`setup_method`) -> the shared :class:`ntk.train.Trainer` (early stopping on the monitored validation
metric, ``best/`` kept) -> best checkpoint evaluated on the test split -> ``RUN_DIR/metrics.json``.

The segmentation task (``ntk finetune segment``) lives in :mod:`.finetune_segment` and shares everything here
except the data and the loss.

Run directory: ``run.json``, ``checkpoints/step-*/``, ``best/`` (best validation metric), ``final/`` (last step),
``metrics.parquet`` (one row per step, ``val_*`` columns at evaluations), ``training_curves.png``,
``metrics.json`` (split sizes, initial/best validation metrics, test metrics of ``best/``, trainable
parameters); ``fold-K/`` run directories under ``--folds``. ``best/`` and ``final/`` are HF-layout checkpoints
that ``ntk.load_model`` and ``ntk predict`` read; adapters are folded in by ``--merge`` (or at load time).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..errors import InputError, NtkError
from ..io.labels import LabeledSequences, read_labeled
from ..model.adapters import ADAPTER_KEY, adapter_parameters, apply_ia3, apply_lora
from ..model.checkpoint import load_into, load_model, load_state_dict, save_model
from ..model.config import NTConfig
from ..model.heads import NUCLEOTIDE_HEAD_DEFAULTS, NUCLEOTIDE_HEAD_KEY
from ..model.nt import NUC_PER_TOKEN, NucleotideTransformer
from ..model.runtime import set_threads
from ..train import metrics as M
from ..train.checkpointing import latest_checkpoint, prepare_run_dir, read_run_info, write_json_atomic
from ..train.distributed import env_world_size
from ..train.finetune_data import (EncodedLabels, SequenceBatches, Split, encode_labels, split_by_chroms,
                                   split_by_column, split_kfold, split_random, tokenize_all)
from ..train.loop import TrainConfig, Trainer
from ..train.optim import default_pretrain_lr
from ..report import NULL, Reporter
from .sequence_outputs import pad_token, sequence_outputs

METHODS = ("full", "head", "lora", "ia3")
# segmentation (``ntk finetune segment``) keeps these; classify/regress use the measured defaults (train_config)
DEFAULT_LR = {"full": 1e-4, "head": 1e-3, "lora": 1e-3, "ia3": 3e-3}
# classify/regress: the validation loss by default (a rank metric like MCC is flat for an untrained head and
# noisy on small validation sets; the loss also stops over-confident overfitting); MCC etc. only when asked
DEFAULT_MONITOR = {"single_label_classification": "loss", "multi_label_classification": "loss",
                   "regression": "loss", "segmentation": "auprc"}
# classify/regress defaults, measured on the planted-motif task and a yeast task (README, bench/RESULTS.md)
SEQUENCE_LR = {"head": 3e-3, "lora": 3e-3, "ia3": 1e-2}  # full: by model size (sequence_lr)
SEQUENCE_DRAWS = 5000  # default epochs: about this many training-sequence draws, 3 to 10 epochs
EVALS_PER_EPOCH = 2
LEGACY_EPOCHS = 10.0  # segment (its CLI passes its own)
LEGACY_PATIENCE = 5
BASELINE_AUTO_MAX_RECORDS = 20_000  # --baseline auto: the k-mer baseline up to this many records
OWN_ENTRIES = ("metrics.json",)  # written here, besides the trainer's run-directory entries


@dataclass
class FinetuneOptions:
    """Everything the fine-tuning runs share (the CLI maps its options onto this one to one)."""
    model: str | None = None  # base checkpoint dir / preset / None = embedded default
    method: str = "full"  # full | head | lora | ia3 (full: the best by measurement, README)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "query,value"
    ia3_targets: str = "key,value,ffn_out"
    merge: bool = False  # fold adapters into plain weights in best/ and final/
    epochs: float | None = None  # None: classify/regress default_epochs(training records), segment 10
    steps: int | None = None  # overrides epochs
    batch_size: int = 16
    lr: float | None = None  # None: classify/regress sequence_lr, segment DEFAULT_LR
    warmup: float = 0.05  # < 1: fraction of the steps; >= 1: steps
    weight_decay: float = 0.01
    schedule: str = "cosine"
    eval_every: int | None = None  # steps; None: classify/regress twice per epoch, segment once per epoch
    patience: int | None = None  # evaluations without improvement before stopping (None: a third of the
    #                             run's evaluations, at least 2; 0: never)
    monitor: str | None = None  # validation metric (mcc, auroc, auprc, f1, accuracy, pearson, spearman, r2, loss)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    save_every: int = 0
    quiet: bool = False
    force: bool = False
    resume: bool = False
    shift_augment: int = 5  # classify/regress: drop 0..N leading nt of a training sequence at each draw
    baseline: str = "auto"  # classify/regress: kmer | none | auto (kmer up to BASELINE_AUTO_MAX_RECORDS records)
    species: str | None = None  # classify/regress with an NTv3 post-trained base: the species it is conditioned on
    extra: dict = field(default_factory=dict)


# -- model -----------------------------------------------------------------------------------------
def is_ntv3(model) -> bool:
    return model.config.family.startswith("ntv3")


def ntv3_species(base, species: str | None) -> str | None:
    """The species a post-trained NTv3 base is fine-tuned on (NtkError when missing or unknown, listing the
    choices); None for a pre-trained base (NtkError if one is given)."""
    if base.config.is_post_trained:
        if not species:
            raise NtkError("--species is required to fine-tune this NTv3 post-trained model (choose from: "
                           f"{', '.join(base.config.species)})")
        try:
            base.species_id(species)
        except ValueError as e:
            raise NtkError(f"--species: {e}") from None
        return species
    if species:
        raise NtkError("--species: only NTv3 post-trained models are conditioned on a species")
    return None


def _ntv3_task_config(base, species: str | None):
    """A copy of the base's config without earlier fine-tuning records; ``ntk_species`` set for a post-trained base."""
    from ..model.ntv3_config import NTv3Config

    cfg = NTv3Config.from_dict(json.loads(json.dumps(base.config.to_dict())))
    for k in (ADAPTER_KEY, "regression_mean", "regression_std", "ntk_species", "ntk_head", "features", "num_labels",
              "problem_type", "id2label", "segment_window"):
        cfg.extra.pop(k, None)
    if ntv3_species(base, species):
        cfg.extra["ntk_species"] = species
    return cfg


def _ntv3_with_base_weights(base, cfg):
    """An NTv3 model for ``cfg`` (new heads seeded with 0) with every tensor it shares with ``base`` copied."""
    from ..model.ntv3 import NTv3

    torch.manual_seed(0)
    model = NTv3(cfg, reference=base.reference)
    src = base.state_dict()
    dst = model.state_dict()
    with torch.no_grad():
        for k, v in dst.items():
            if k.startswith("core.") and k in src:
                v.copy_(src[k])
    model.load_state_dict(dst)
    return model


def build_ntv3_task_model(base, label_names: list[str], problem_type: str, regression_mean=None,
                          regression_std=None, species: str | None = None):
    """An NTv3 base (pre- or post-trained) with a new sequence head (:class:`ntk.model.ntv3.NTv3SequenceHead`:
    mean of the final per-base embedding over the real bases -> dense -> tanh -> out); base weights copied.
    A post-trained base is conditioned on ``species`` (required; stored as ``ntk_species`` in config.json)."""
    cfg = _ntv3_task_config(base, species)
    cfg.extra.update(num_labels=len(label_names), problem_type=problem_type,
                     id2label={str(i): n for i, n in enumerate(label_names)}, ntk_head="sequence")
    if regression_mean is not None:
        cfg.extra["regression_mean"] = [float(x) for x in regression_mean]
        cfg.extra["regression_std"] = [float(x) for x in regression_std]
    return _ntv3_with_base_weights(base, cfg)


def build_ntv3_segment_model(base, features: list[str], species: str | None = None,
                             keep_fraction: float | None = None):
    """An NTv3 base with a new per-base segment head (:class:`ntk.model.ntv3.NTv3SegmentHead`; config.json
    ``ntk_head: "segment"``, ``features``); base weights copied. A post-trained base keeps its own
    ``keep_target_center_fraction`` (the centre ``ntk segment`` keeps) and its BED-head rows of the features it
    already predicts (same name) seed the new head; a pre-trained base gets ``keep_fraction``. A post-trained base
    is conditioned on ``species`` (required; ``ntk_species``)."""
    cfg = _ntv3_task_config(base, species)
    cfg.extra.update(ntk_head="segment", features=list(features))
    if not cfg.is_post_trained and keep_fraction is not None:
        cfg.keep_target_center_fraction = float(keep_fraction)
    cfg.validate()
    model = _ntv3_with_base_weights(base, cfg)
    old = list(base.config.bed_elements_names or [])
    if set(old) & set(features):  # bed head rows laid out (element, class)
        w_old = base.core.bed_head.head.weight.view(len(old), 2, -1)
        b_old = base.core.bed_head.head.bias.view(len(old), 2)
        h = model.segment_head.head
        w_new = h.head.weight.data.view(len(features), 2, -1)
        b_new = h.head.bias.data.view(len(features), 2)
        with torch.no_grad():
            for j, f in enumerate(features):
                if f in old:
                    w_new[j] = w_old[old.index(f)]
                    b_new[j] = b_old[old.index(f)]
            h.layer_norm.weight.copy_(base.core.bed_head.layer_norm.weight)
            h.layer_norm.bias.copy_(base.core.bed_head.layer_norm.bias)
    return model


def _copy_config(cfg: NTConfig) -> NTConfig:
    return NTConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))


def build_task_model(base: NucleotideTransformer, head: str, *, label_names: list[str] | None = None,
                     problem_type: str | None = None, regression_mean=None, regression_std=None,
                     features: list[str] | None = None, num_layers_head: int = 2,
                     rescaling_factor: float | None = None,
                     nucleotide_head: int | None = None) -> NucleotideTransformer:
    """The base encoder with a new task head (``head``: ``sequence`` or ``segment``), weights copied.

    Head weights of the base are reused when they fit: a classifier with the same labels, a SegmentNT U-Net of
    the same depth, the ``fc`` rows of features the base already predicts, and ntk's nucleotide head when the
    base has one of the same shape (its body, and its output rows of the features the base predicts).
    ``nucleotide_head`` (segment): channels of ntk's nucleotide head (model/heads.py); 0 = none, None = the
    base's (if any)."""
    cfg = _copy_config(base.config)
    for k in (ADAPTER_KEY, "regression_mean", "regression_std"):
        cfg.extra.pop(k, None)
    if head == "sequence":
        cfg.architectures = ["EsmForSequenceClassification"]
        cfg.features = cfg.num_layers_head = None
        cfg.extra.pop(NUCLEOTIDE_HEAD_KEY, None)
        cfg.num_labels, cfg.problem_type = len(label_names), problem_type
        cfg.id2label = {str(i): n for i, n in enumerate(label_names)}
        if regression_mean is not None:
            cfg.extra["regression_mean"] = [float(x) for x in regression_mean]
            cfg.extra["regression_std"] = [float(x) for x in regression_std]
    elif head == "segment":
        cfg.architectures = ["SegmentNT"]
        cfg.features, cfg.num_layers_head = list(features), num_layers_head
        cfg.num_labels = cfg.problem_type = cfg.id2label = None
        if nucleotide_head == 0:
            cfg.extra.pop(NUCLEOTIDE_HEAD_KEY, None)
        elif nucleotide_head is not None:
            cfg.extra[NUCLEOTIDE_HEAD_KEY] = dict(NUCLEOTIDE_HEAD_DEFAULTS, channels=int(nucleotide_head))
        if rescaling_factor is not None:
            cfg.rescaling_factor = rescaling_factor
    else:
        raise ValueError(f"unknown head {head!r}")
    torch.manual_seed(0)
    # the base's masked-LM head is kept (unchanged: it gets no gradient) so the result still scores llr
    model = NucleotideTransformer(cfg, lm_head=base.lm_head is not None)
    src = {k: v for k, v in base.state_dict().items()}
    dst = model.state_dict()
    with torch.no_grad():
        for k, v in dst.items():
            if k.startswith(("esm.", "lm_head.")):
                v.copy_(src[k])
        if (model.nuc_head is not None and getattr(base, "nuc_head", None) is not None
                and base.config.extra[NUCLEOTIDE_HEAD_KEY] == cfg.extra[NUCLEOTIDE_HEAD_KEY]):
            _copy_nucleotide_head(src, dst, base.features, list(features))
        if head == "sequence" and base.classifier is not None and base.config.id2label == cfg.id2label:
            for k in dst:
                if k.startswith("classifier.") and k in src and src[k].shape == dst[k].shape:
                    dst[k].copy_(src[k])
        if head == "segment" and base.unet is not None and base.unet.num_layers == num_layers_head:
            for k in dst:
                if k.startswith("unet.") and k in src and src[k].shape == dst[k].shape:
                    dst[k].copy_(src[k])
            # fc: [6 * F * 2, H] rows laid out (nucleotide, feature, class)
            old_f, new_f = base.features, list(features)
            w_old = src["fc.weight"].view(NUC_PER_TOKEN, len(old_f), 2, -1)
            b_old = src["fc.bias"].view(NUC_PER_TOKEN, len(old_f), 2)
            w_new = dst["fc.weight"].view(NUC_PER_TOKEN, len(new_f), 2, -1)
            b_new = dst["fc.bias"].view(NUC_PER_TOKEN, len(new_f), 2)
            for j, f in enumerate(new_f):
                if f in old_f:
                    w_new[:, j] = w_old[:, old_f.index(f)]
                    b_new[:, j] = b_old[:, old_f.index(f)]
    model.load_state_dict(dst)
    return model


def _copy_nucleotide_head(src: dict, dst: dict, old_f: list[str], new_f: list[str]) -> None:
    """ntk's nucleotide head of the base into the new model (same shape): its body as is, and the output rows
    ([F * 2] laid out (feature, class)) of the features the base already predicts."""
    for k in dst:
        if k.startswith("nuc_head.") and not k.startswith("nuc_head.out.") and k in src:
            dst[k].copy_(src[k])
    for name in ("weight", "bias"):
        k = f"nuc_head.out.{name}"
        w_old = src[k].view(len(old_f), 2, *src[k].shape[1:])
        w_new = dst[k].view(len(new_f), 2, *dst[k].shape[1:])
        for j, f in enumerate(new_f):
            if f in old_f:
                w_new[j] = w_old[old_f.index(f)]


def head_parameters(model: NucleotideTransformer) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters()
            if n.startswith(("classifier.", "unet.", "fc.", "segment_head.", "nuc_head."))]


def setup_method(model: NucleotideTransformer, opts: FinetuneOptions) -> list[tuple[str, torch.nn.Parameter]]:
    """Apply the method (adapters for lora/ia3) and return the parameters to train (always including the head)."""
    if opts.method not in METHODS:
        raise NtkError(f"--method {opts.method!r}: expected one of {', '.join(METHODS)}")
    try:
        if opts.method == "lora":
            model.config.extra[ADAPTER_KEY] = apply_lora(model, opts.lora_rank, opts.lora_alpha, opts.lora_targets,
                                                         opts.lora_dropout)
        elif opts.method == "ia3":
            model.config.extra[ADAPTER_KEY] = apply_ia3(model, opts.ia3_targets)
    except ValueError as e:
        raise NtkError(f"--method {opts.method}: {e}") from None
    if opts.method == "full":
        return list(model.named_parameters())
    heads = head_parameters(model)
    if opts.method == "head":
        return heads
    ids = {id(p) for p in adapter_parameters(model)}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids] + heads


def count_parameters(params) -> int:
    return sum(p.numel() for _, p in params)


# -- metrics ---------------------------------------------------------------------------------------
def task_loss(problem_type: str, out: torch.Tensor, labels: torch.Tensor, std: torch.Tensor | None = None):
    out = out.float()
    if problem_type == "single_label_classification":
        return F.cross_entropy(out, labels.long())
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(out, labels.float())
    # regression heads report target units; the loss is the MSE of standardised values
    return (((out - labels.float()) / std) ** 2).mean()


def task_metrics(problem_type: str, y: np.ndarray, out: np.ndarray, names: list[str]) -> dict[str, float]:
    if problem_type == "single_label_classification":
        proba = torch.softmax(torch.from_numpy(out).float(), -1).numpy()
        return M.classification_metrics(y, proba)
    if problem_type == "multi_label_classification":
        return M.multilabel_metrics(y, 1 / (1 + np.exp(-out)))
    return M.regression_metrics(y, out, names)


METRIC_NAMES = {
    "single_label_classification": ("mcc", "accuracy", "f1", "auroc", "auprc", "loss"),
    "multi_label_classification": ("mcc", "accuracy", "f1", "auroc", "auprc", "loss"),
    "regression": ("pearson", "spearman", "r2", "mse", "loss"),
    "segmentation": ("mcc", "auprc", "auroc", "loss"),
}


def monitor_name(problem_type: str, monitor: str | None) -> tuple[str, str]:
    """(trainer key ``val_<metric>``, mode min|max) for the chosen validation metric (``metric`` or, per
    feature/target, ``metric/name``)."""
    m = monitor or DEFAULT_MONITOR[problem_type]
    m = m[4:] if m.startswith("val_") else m
    if m.split("/")[0] not in METRIC_NAMES[problem_type]:
        raise NtkError(f"--monitor {m!r}: choose one of {', '.join(METRIC_NAMES[problem_type])} "
                       "(or metric/NAME for one feature or target)")
    mode = "min" if m.split("/")[0] in M.LOWER_IS_BETTER else "max"
    return f"val_{m}", mode


def clean_json(obj):
    """NaN/inf -> None, numpy scalars -> Python (metrics.json is strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# -- run directory ---------------------------------------------------------------------------------
def sequence_lr(method: str, n_params: int) -> float:
    """classify/regress peak learning rate: full fine-tuning by model size (the pretraining table: 1e-3 for the
    small models measured here, down to 1e-4 from 150 M parameters), adapters and heads fixed (SEQUENCE_LR)."""
    if method == "full":
        return default_pretrain_lr(n_params)
    return SEQUENCE_LR[method]


def default_epochs(n_train: int) -> float:
    """classify/regress: about SEQUENCE_DRAWS sequence draws, at least 3 and at most 10 epochs (10 for 500
    records, 5 for 1,000, 3 from 1,667 on)."""
    return float(min(10.0, max(3.0, round(SEQUENCE_DRAWS / max(n_train, 1), 1))))


def default_patience(steps: int, eval_every: int) -> int:
    """A third of the run's evaluations, at least 2: with 2 evaluations per epoch and 6 epochs, 4 evaluations
    (two epochs) without improvement stop the run."""
    n_evals = max(1, steps // max(eval_every, 1))
    return max(2, math.ceil(n_evals / 3))


def train_config(opts: FinetuneOptions, steps_per_epoch: int, monitor: str, mode: str,
                 n_params: int | None = None, sequence_task: bool = False, n_train: int | None = None
                 ) -> TrainConfig:
    """The trainer's configuration; ``sequence_task`` (classify/regress) uses the measured defaults for options
    left at None, segmentation its own (10 epochs, one evaluation per epoch, DEFAULT_LR)."""
    if opts.epochs is not None:
        epochs = opts.epochs
    elif sequence_task:
        epochs = default_epochs(n_train or 1)
    else:
        epochs = LEGACY_EPOCHS
    steps = opts.steps or max(1, math.ceil(epochs * steps_per_epoch))
    warmup = int(round(opts.warmup * steps)) if opts.warmup < 1 else int(opts.warmup)
    if opts.eval_every is not None:
        eval_every = opts.eval_every
    elif sequence_task:
        eval_every = max(1, min(math.ceil(steps_per_epoch / EVALS_PER_EPOCH), steps))
    else:
        eval_every = min(steps_per_epoch, steps)
    if opts.lr:
        lr = opts.lr
    elif sequence_task:
        lr = sequence_lr(opts.method, n_params or 0)
    else:
        lr = DEFAULT_LR[opts.method]
    if opts.patience is None:
        patience = default_patience(steps, eval_every) if sequence_task else LEGACY_PATIENCE
    else:
        patience = opts.patience or None  # 0: never stop early
    return TrainConfig(steps=steps, lr=lr, warmup_steps=warmup,
                       schedule=opts.schedule, weight_decay=opts.weight_decay, precision=opts.precision,
                       eval_every=eval_every, save_every=opts.save_every, log_every=1, keep_checkpoints=1,
                       seed=opts.seed, device=opts.device, monitor=monitor, monitor_mode=mode,
                       patience=patience, save_best=True, quiet=opts.quiet,
                       progress_metrics=("loss",))


def check_single_process() -> None:
    if env_world_size() > 1:
        raise NtkError("ntk finetune runs in one process (one device); data-parallel torchrun is supported by "
                       "ntk pretrain only")


def start_run(run_dir: Path, options: dict, opts: FinetuneOptions) -> Path | None:
    """Prepare ``run_dir`` (shared run-directory rules of ntk/train) and clear this module's own entries."""
    if opts.force and not opts.resume and read_run_info(run_dir) is not None:
        for name in OWN_ENTRIES:
            (run_dir / name).unlink(missing_ok=True)
        for p in run_dir.glob("fold-*"):
            shutil.rmtree(p, ignore_errors=True)
    return prepare_run_dir(run_dir, "finetune", opts.resume, opts.force, options)


def merge_in_place(checkpoint_dir: Path) -> None:
    """Rewrite an adapter checkpoint as a plain one (ntk.load_model folds the adapters in)."""
    if checkpoint_dir.is_dir():
        save_model(load_model(checkpoint_dir), checkpoint_dir)


class _Evals:
    """Wraps an eval function: prefixes ``val_``, checks the monitored key exists, remembers the first
    (untrained-head) result."""

    def __init__(self, fn, monitor: str):
        self.fn, self.monitor, self.initial = fn, monitor, None

    def __call__(self, model):
        res = {f"val_{k}": v for k, v in self.fn(model).items()}
        if self.monitor not in res:
            names = sorted(k[4:] for k in res)
            raise NtkError(f"--monitor {self.monitor[4:]!r}: not a validation metric of this run (choose from "
                           f"{', '.join(names[:30])})")
        if self.initial is None:
            self.initial = res
        return res


@dataclass
class TrainTask:
    """What a fine-tuning task hands to :func:`train_and_report`: its training batches and loss, its evaluations,
    and what it adds to ``metrics.json``."""
    problem_type: str  # single_label_classification | multi_label_classification | regression | segmentation
    loss_fn: Callable  # (model, batch) -> (loss, metrics)
    batches: Any  # the training batches (an iterable the Trainer draws from)
    steps_per_epoch: int
    evaluate: Callable  # model -> validation metrics (unprefixed keys)
    test_eval: Callable | None = None  # model -> test metrics; None: no test data
    record: dict | None = None  # task entries of metrics.json (labels, split, ...)
    sequence_task: bool = False  # classify/regress defaults for the schedule (train_config)
    baseline: Callable | None = None  # () -> the baseline's report, run before training (metrics.json "baseline")
    n_train: int | None = None  # training records (classify/regress default epochs)


def train_and_report(model: NucleotideTransformer, params, task: TrainTask, opts: FinetuneOptions, run_dir: Path,
                     resume_from: Path | None, reporter: Reporter = NULL) -> dict:
    """Run the shared Trainer, then evaluate ``best/`` on validation and test data; write metrics.json.

    ``task.baseline``: a callable returning the baseline's report (``{"kind", "val", "test", ...}``), run before
    training; stored as ``metrics.json["baseline"]``. When no evaluation beats the untrained head (the best
    checkpoint is the one of step 0), a warning is logged (also under --quiet) and ``metrics.json`` has
    ``"best_is_untrained": true``.
    """
    monitor, mode = monitor_name(task.problem_type, opts.monitor)
    tcfg = train_config(opts, task.steps_per_epoch, monitor, mode, n_params=model.num_parameters(),
                        sequence_task=task.sequence_task, n_train=task.n_train)
    evals = _Evals(task.evaluate, monitor)
    trainer = Trainer(model, tcfg, run_dir, task.loss_fn, task.batches, eval_fn=evals, trainable_params=params,
                      resume_from=resume_from, reporter=reporter)
    if not opts.quiet:
        reporter.log(f"finetune: {count_parameters(params):,} of {model.num_parameters():,} parameters trained "
                     f"({opts.method}); {tcfg.steps} steps ({tcfg.steps / max(task.steps_per_epoch, 1):.3g} "
                     f"epochs), eval every {tcfg.eval_every}, monitor {monitor} ({mode}), patience {tcfg.patience}; "
                     f"lr {tcfg.lr:.2e}, warm-up {tcfg.warmup_steps}, weight decay {tcfg.weight_decay}")
    base_report = task.baseline() if task.baseline is not None else None
    initial_test = None
    if task.test_eval is not None and resume_from is None:  # the untrained head on the test data, for comparison
        trainer.model.eval()
        with torch.no_grad():
            initial_test = task.test_eval(trainer.model)
        trainer.model.train()
    summary = trainer.fit()
    report = _training_report(model, params, task, opts, tcfg, trainer, summary, monitor)
    report["initial_val"], report["initial_test"] = _strip(evals.initial), initial_test
    report.update(_schedule_and_record(tcfg, task))
    report["best_is_untrained"] = report["best_step"] == 0
    if report["best_is_untrained"]:
        reporter.warn(f"ntk finetune: warning: no evaluation beat the untrained head ({monitor} "
                      f"{summary['best']:.4g} at step 0): best/ is the untrained model. The model did not learn "
                      "this task with these options (try more data, --epochs, --lr or --method; compare with the "
                      "k-mer baseline in metrics.json).")
    _evaluate_best(trainer.model.eval(), task, opts, run_dir, report)
    if base_report is not None:
        report["baseline"] = base_report
    write_json_atomic(run_dir / "metrics.json", clean_json(report))
    return report


def _training_report(model, params, task: TrainTask, opts: FinetuneOptions, tcfg: TrainConfig, trainer: Trainer,
                     summary: dict, monitor: str) -> dict:
    """The first entries of metrics.json: what was trained and how the run ended."""
    return {"ntk_version": __version__, "problem_type": task.problem_type, "method": opts.method,
            "trainable_parameters": count_parameters(params), "total_parameters": model.num_parameters(),
            "monitor": monitor, "steps": summary["step"], "stopped": summary["stopped"],
            "best_value": summary["best"], "best_step": _best_step(trainer.rows, monitor, summary["best"])}


def _schedule_and_record(tcfg: TrainConfig, task: TrainTask) -> dict:
    return {"schedule": {"lr": tcfg.lr, "warmup_steps": tcfg.warmup_steps, "epochs": tcfg.steps / max(
        task.steps_per_epoch, 1), "eval_every": tcfg.eval_every, "patience": tcfg.patience,
        "weight_decay": tcfg.weight_decay}, **(task.record or {})}


def _evaluate_best(model, task: TrainTask, opts: FinetuneOptions, run_dir: Path, report: dict) -> None:
    """Load ``best/`` into ``model``, evaluate it on validation (and test) data into ``report``; merge adapters."""
    best_dir = run_dir / "best"
    if best_dir.is_dir():
        load_into(model, load_state_dict(best_dir), str(best_dir))
    with torch.no_grad():
        report["val"] = task.evaluate(model)
        if task.test_eval is not None:
            report["test"] = task.test_eval(model)
    if opts.merge and opts.method in ("lora", "ia3"):
        merge_in_place(best_dir)
        merge_in_place(run_dir / "final")
    report["best_checkpoint"] = str(best_dir) if best_dir.is_dir() else None


def _strip(d: dict | None) -> dict | None:
    return {k[4:] if k.startswith("val_") else k: v for k, v in d.items()} if d is not None else None


def _best_step(rows: list[dict], monitor: str, best) -> int | None:
    if best is None:
        return None
    hits = [r["step"] for r in rows if r.get(monitor) is not None and r[monitor] == best]
    return int(hits[0]) if hits else None


# -- classify / regress ----------------------------------------------------------------------------
@dataclass
class SequenceTaskInput:
    """Where the labelled sequences come from and how to read their labels."""
    path: str | None = None  # table (CSV/TSV/Parquet) or FASTA
    label_cols: list[str] = field(default_factory=lambda: ["label"])
    sequence_col: str = "sequence"
    name_col: str | None = None
    regions: str | None = None  # BED (+ reference)
    reference: str | None = None
    chr_map: dict | None = None
    multi_label: bool = False
    classes: list[str] | None = None
    # splits
    split_col: str | None = None
    val_chroms: list[str] = field(default_factory=list)
    test_chroms: list[str] = field(default_factory=list)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    folds: int | None = None


def make_splits(data: LabeledSequences, enc: EncodedLabels, inp: SequenceTaskInput, seed: int,
                split_values: list | None) -> list[Split]:
    if inp.val_chroms or inp.test_chroms:
        if data.chroms is None:
            raise InputError("--val-chroms/--test-chroms need genomic input (-R regions.bed, or a 'chrom' column)")
        if inp.folds:
            raise InputError("--folds and --val-chroms/--test-chroms exclude each other")
        return [split_by_chroms(data.chroms, inp.val_chroms, inp.test_chroms)]
    if data.starts is not None:
        raise InputError("genomic intervals (-R) are split by chromosome to avoid leakage between overlapping "
                         "or neighbouring intervals: give --val-chroms (and --test-chroms)")
    if split_values is not None:
        return [split_by_column(split_values, data.where, data.source)]
    if inp.folds:
        return split_kfold(len(data), enc.strata(), inp.folds, inp.val_fraction, seed)
    return [split_random(len(data), enc.strata(), inp.val_fraction, inp.test_fraction, seed)]


def finetune_sequences(task: str, inp: SequenceTaskInput, run_dir: str | Path, opts: FinetuneOptions | None = None,
                       reporter: Reporter = NULL) -> dict:
    """``ntk finetune classify`` (task ``classify``) or ``ntk finetune regress`` (``regress``); returns the report
    written to ``RUN_DIR/metrics.json``. ``reporter``: progress, log lines and warnings (default: silent)."""
    opts = opts or FinetuneOptions()
    run_dir = Path(run_dir)
    check_single_process()
    set_threads(opts.threads)
    label_cols = list(inp.label_cols)
    extra_cols = [inp.split_col] if inp.split_col else []
    data = read_labeled(inp.path, label_cols + extra_cols, inp.sequence_col, inp.name_col, inp.regions,
                        inp.reference, inp.chr_map)
    split_values = data.labels.pop(inp.split_col) if inp.split_col else None
    enc = encode_labels(data, label_cols, task, inp.multi_label, inp.classes)
    splits = make_splits(data, enc, inp, opts.seed, split_values)
    for sp in splits:
        if len(sp.val) == 0:
            raise InputError(f"the validation split is empty ({sp.how}): early stopping and the best checkpoint "
                             "need validation data (raise --val-fraction or give --val-chroms)")
    base = load_model(opts.model)
    if is_ntv3(base):  # one-line refusals before anything is written
        ntv3_species(base, opts.species)
    elif opts.species:
        raise NtkError("--species: only NTv3 post-trained models are conditioned on a species")
    ids = tokenize_all(base.tokenizer, data.sequences, base.config.max_tokens, data.where, data.source)
    monitor_name(enc.problem_type, opts.monitor)  # a bad --monitor fails before anything is written
    if opts.baseline not in ("auto", "kmer", "none"):
        raise NtkError(f"--baseline {opts.baseline!r}: expected kmer, none or auto")
    options = {"task": task, "input": clean_json(asdict(inp)), "finetune": clean_json(asdict(opts)),
               "base_model": getattr(base, "source", None) or str(opts.model)}
    resume_from = None
    if not inp.folds:
        resume_from = start_run(run_dir, options, opts)
    else:
        _start_kfold(run_dir, options, opts)
    reports = []
    for k, sp in enumerate(splits):
        rd = run_dir / f"fold-{k + 1}" if inp.folds else run_dir
        if inp.folds:
            if (rd / "metrics.json").is_file() and opts.resume:
                reports.append(json.loads((rd / "metrics.json").read_text()))
                continue
            rd.mkdir(parents=True, exist_ok=True)
            resume_from = latest_checkpoint(rd) if opts.resume else None
        reports.append(_run_one(base, enc, ids, sp, opts, rd, resume_from, data, reporter))
    if not inp.folds:
        return reports[0]
    summary = _kfold_summary(reports, enc)
    write_json_atomic(run_dir / "metrics.json", clean_json(summary))
    return summary


def _kfold_summary(reports: list[dict], enc: EncodedLabels) -> dict:
    """RUN_DIR/metrics.json of a k-fold run: each fold's test metrics, their mean and sd (and the baseline's mean)."""
    summary = {"folds": len(reports), "problem_type": enc.problem_type, "labels": enc.names,
               "test_mean": {}, "test_std": {}, "per_fold": [r.get("test") for r in reports],
               "best_is_untrained": [bool(r.get("best_is_untrained")) for r in reports]}
    keys = sorted({k for r in reports for k in (r.get("test") or {})})
    for key in keys:
        vals = [r["test"][key] for r in reports if r.get("test") and r["test"].get(key) is not None]
        if vals:
            summary["test_mean"][key] = float(np.mean(vals))
            summary["test_std"][key] = float(np.std(vals))
    base = [(r.get("baseline") or {}).get("test") for r in reports]
    if all(base):
        summary["baseline_test_mean"] = {k: float(np.mean([b[k] for b in base if b.get(k) is not None]))
                                         for k in base[0] if any(b.get(k) is not None for b in base)}
    return summary


def _start_kfold(run_dir: Path, options: dict, opts: FinetuneOptions) -> None:
    info = read_run_info(run_dir)
    if opts.resume:
        if info is None or info.get("kind") != "finetune":
            raise NtkError(f"{run_dir}: --resume needs an `ntk finetune` run directory")
        return
    start_run(run_dir, options, opts)


def _run_one(base, enc: EncodedLabels, ids, sp: Split, opts: FinetuneOptions, run_dir: Path,
             resume_from: Path | None, data: LabeledSequences, reporter: Reporter = NULL) -> dict:
    pt = enc.problem_type
    mean = std = None
    if pt == "regression":
        ytr = enc.y[sp.train]
        mean, std = ytr.mean(0), np.maximum(ytr.std(0), 1e-6)
    if is_ntv3(base):
        model = build_ntv3_task_model(base, enc.names, pt, mean, std, species=opts.species)
    else:
        model = build_task_model(base, "sequence", label_names=enc.names, problem_type=pt, regression_mean=mean,
                                 regression_std=std)
    params = setup_method(model, opts)
    pad = pad_token(base)
    unit = getattr(base.tokenizer, "unit", 1)
    std_t = torch.tensor(std, dtype=torch.float32) if std is not None else None
    # NTv3: single-base tokens, so no tokenisation frames to augment (shift_augment is for 6-mer tokens)
    shift = 0 if is_ntv3(base) else opts.shift_augment
    batches = SequenceBatches([ids[i] for i in sp.train], enc.y[sp.train], opts.batch_size, pad, seed=opts.seed,
                              sequences=[data.sequences[i] for i in sp.train], tokenizer=base.tokenizer,
                              shift_augment=shift, max_tokens=base.config.max_tokens, unit=unit)

    def loss_fn(m, batch):
        out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], heads="classifier").logits
        loss = task_loss(pt, out, batch["labels"], std_t.to(out.device) if std_t is not None else None)
        metrics = {"n_sequences": batch["labels"].shape[0]}
        if pt == "single_label_classification":
            metrics["accuracy"] = (out.argmax(-1) == batch["labels"]).float().mean()
        return loss, metrics

    def evaluate_on(idx):
        sub_ids, y = [ids[i] for i in idx], enc.y[idx]

        def fn(m):
            out = sequence_outputs(m, sub_ids, opts.batch_size * 2, pad)
            res = task_metrics(pt, y, out, enc.names)
            o, t = torch.from_numpy(out), torch.from_numpy(y)
            res["loss"] = float(task_loss(pt, o, t, std_t))
            return res
        return fn

    def kmer_baseline():
        from ..train.kmer_baseline import fit_kmer_baseline

        seqs = data.sequences
        fitted = fit_kmer_baseline([seqs[i] for i in sp.train], enc.y[sp.train], [seqs[i] for i in sp.val],
                                   enc.y[sp.val], pt)
        rep = {"kind": "kmer", "features": f"1-{fitted.k_max}-mer frequencies", "l2": fitted.l2}
        for name, idx in (("val", sp.val), ("test", sp.test)):
            if len(idx):
                out, y = fitted.outputs([seqs[i] for i in idx]), enc.y[idx]
                res = task_metrics(pt, y, out, enc.names)
                res["loss"] = float(task_loss(pt, torch.from_numpy(out), torch.from_numpy(y), std_t))
                rep[name] = res
        return rep

    use_baseline = opts.baseline == "kmer" or (opts.baseline == "auto" and len(data) <= BASELINE_AUTO_MAX_RECORDS)
    record = {"labels": enc.names, "split": {"how": sp.how, **sp.sizes()}}
    task = TrainTask(pt, loss_fn, batches, batches.batches_per_epoch, evaluate_on(sp.val),
                     test_eval=evaluate_on(sp.test) if len(sp.test) else None, record=record, sequence_task=True,
                     baseline=kmer_baseline if use_baseline else None, n_train=len(sp.train))
    return train_and_report(model, params, task, opts, run_dir, resume_from, reporter)
