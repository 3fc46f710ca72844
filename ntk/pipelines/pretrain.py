"""``ntk pretrain``: masked-language-model pretraining of a Nucleotide Transformer from FASTA corpora.

``pretrain(corpora, run_dir, PretrainOptions(...))`` builds (``config``: preset name or config.json) or loads
(``init_from``) a model with an LM head, splits the corpora into training and validation windows
(:mod:`ntk.train.corpus`), and runs the shared loop (:class:`ntk.train.Trainer`) with the masked-LM loss
(:mod:`ntk.train.masking`). Under ``torchrun`` every rank runs this same function with its own data stream.
The run directory layout is described in :mod:`ntk.train.checkpointing`; the final model is ``RUN_DIR/final``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import NtkError
from ..io.intervals import Interval, parse_region, read_bed
from ..model.checkpoint import load_model
from ..model.preflight import check_fits_in_memory
from ..model.config import PRESETS, NTConfig, preset_config
from ..model.heads import LMHead
from ..model.nt import NucleotideTransformer
from ..model.runtime import set_threads
from ..plan.batching import auto_token_budget
from ..report import NULL, Reporter
from ..train import distributed as D
from ..train.checkpointing import prepare_run_dir, read_run_info, write_json_atomic
from ..train.corpus import MaskedLMStream, Prefetcher, split_corpus, unigram_cross_entropy, validation_batches
from ..train.loop import TrainConfig, Trainer, unwrap
from ..train.masking import masked_lm_loss
from ..train.optim import default_pretrain_lr, default_warmup, describe_schedule, schedule_warning

# options that define the data stream: a resume with different values does not continue the same stream
_STREAM_OPTIONS = ("corpora", "weights", "regions", "regions_file", "val_chroms", "val_regions", "val_frac",
                   "seq_len", "max_n_frac", "rc_aug", "seed", "batch_size", "tokens_per_batch")


@dataclass
class PretrainOptions:
    config: str | None = None            # preset name (tiny, small, nt-v2-50m, ...) or a config.json path
    init_from: str | None = None         # continue training a model (dir, preset with weights in the HF cache)
    weights: list[float] | None = None   # sampling weight per corpus (default: proportional to usable bases)
    regions: list[str] = field(default_factory=list)  # -r chr:start-end (1-based inclusive)
    regions_file: str | None = None      # -R BED
    val_chroms: list[str] = field(default_factory=list)
    val_regions: str | None = None       # BED of held-out validation regions
    val_frac: float = 0.01               # without val_chroms/val_regions: held-out tail (0: no validation)
    val_windows: int = 128
    seq_len: int | None = None           # tokens per window incl. <cls> (default: min(model max, 1000))
    max_n_frac: float = 0.05
    rc_aug: bool = False
    mask_prob: float = 0.15
    seed: int = 0
    steps: int = 10000
    tokens_per_batch: int = 65536        # tokens per optimiser step over all ranks and accumulation
    batch_size: int | None = None        # sequences per forward pass per rank (None: fit a token budget)
    lr: float | None = None              # peak rate (None: by model size, ntk.train.optim.PRETRAIN_LR_TABLE)
    warmup: int | None = None            # warm-up steps (None: 5% of steps, at most 1000)
    schedule: str = "cosine"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    save_every: int = 1000
    eval_every: int = 500
    log_every: int = 1
    keep_checkpoints: int = 2
    stop_after: int | None = None
    resume: bool = False
    force: bool = False
    device: str = "auto"
    precision: str = "auto"
    grad_checkpointing: bool = False
    threads: int | None = None
    quiet: bool = False


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """BERT/ESM initialisation: normal(0, 0.02) matrices and embeddings, zero biases, unit LayerNorms."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name == "lm_head.bias":
            nn.init.zeros_(p)


def new_model_config(spec: str) -> NTConfig:
    """A preset name or a config.json path -> a masked-LM config."""
    p = Path(spec)
    if p.is_dir() and (p / "config.json").is_file():
        p = p / "config.json"
    if p.is_file():
        cfg = NTConfig.from_json(p)
    elif spec in PRESETS:
        cfg = preset_config(spec)
    else:
        raise NtkError(f"--config {spec!r}: neither a config.json file nor a preset "
                       f"(presets: {', '.join(PRESETS)})")
    if cfg.is_segmentation:
        raise NtkError(f"--config {spec!r} describes a SegmentNT model; pretraining builds a masked-LM encoder "
                       "(use an NT v1/v2 config)")
    cfg.architectures = ["EsmForMaskedLM"]
    cfg.num_labels = cfg.problem_type = cfg.id2label = None
    return cfg


def build_model(opts: PretrainOptions, resume_from: Path | None, reporter: Reporter = NULL) -> NucleotideTransformer:
    torch.manual_seed(opts.seed)
    if resume_from is not None:  # weights are restored by the trainer
        return NucleotideTransformer(NTConfig.from_json(resume_from / "config.json"), lm_head=True)
    if opts.init_from:
        model = load_model(opts.init_from, device="cpu", dtype=torch.float32)
        if model.config.family.startswith("ntv3"):
            raise NtkError(f"--init-from {opts.init_from}: NTv3 models cannot be pretrained with ntk pretrain (it "
                           "trains NT v1/v2 encoders)")
        if model.config.is_segmentation:
            raise NtkError(f"--init-from {opts.init_from}: a SegmentNT model cannot be pretrained with the masked-LM "
                           "objective (use an NT v1/v2 checkpoint)")
        if model.lm_head is None:
            model.lm_head = LMHead(model.config)
            init_weights(model.lm_head)
            reporter.warn(f"--init-from {opts.init_from}: no LM head in the checkpoint; a new one is initialised")
        model.classifier = None
        model.config.architectures = ["EsmForMaskedLM"]
        model.config.num_labels = model.config.problem_type = model.config.id2label = None
        return model
    cfg = new_model_config(opts.config or "tiny")
    # weights, gradients and two Adam moments in fp32: refuse before allocating a model that cannot fit
    check_fits_in_memory(cfg, f"--config {opts.config or 'tiny'}", 16, device="cpu", lm_head=True)
    model = NucleotideTransformer(cfg, lm_head=True)
    init_weights(model)
    return model


def _parse_regions(opts: PretrainOptions, lengths: dict[str, int]) -> list[Interval] | None:
    out: list[Interval] = []
    for r in opts.regions:
        out.append(parse_region(r, lengths))
    if opts.regions_file:
        out.extend(read_bed(opts.regions_file))
    return out or None


def _lengths(paths: list[str]) -> dict[str, int]:
    from ..io.fasta import IndexedFasta

    lengths: dict[str, int] = {}
    for p in paths:
        with IndexedFasta(p) as fa:
            for c in fa.contigs:
                lengths.setdefault(c.name, c.length)
    return lengths


def resolved_schedule(opts: PretrainOptions, n_params: int | None) -> tuple[float, int]:
    """(peak lr, warm-up steps) of a run: the options, or the defaults for this model size and run length."""
    lr = opts.lr if opts.lr is not None else (default_pretrain_lr(n_params) if n_params else 1e-4)
    warmup = opts.warmup if opts.warmup is not None else default_warmup(opts.steps)
    return lr, warmup


def _train_config(opts: PretrainOptions, grad_accum: int, n_params: int | None = None) -> TrainConfig:
    lr, warmup = resolved_schedule(opts, n_params)
    return TrainConfig(
        steps=opts.steps, lr=lr, warmup_steps=warmup, schedule=opts.schedule,
        weight_decay=opts.weight_decay, grad_clip=opts.grad_clip, grad_accum=grad_accum, precision=opts.precision,
        eval_every=opts.eval_every, save_every=opts.save_every, log_every=opts.log_every,
        keep_checkpoints=opts.keep_checkpoints, seed=opts.seed, device=opts.device,
        activation_checkpointing=opts.grad_checkpointing, stop_after=opts.stop_after, quiet=opts.quiet)


def _options_record(corpora: list[str], opts: PretrainOptions) -> dict:
    d = dataclasses.asdict(opts)
    d["corpora"] = [str(Path(c).resolve()) for c in corpora]
    return d


def _check_resume_options(run_dir: Path, record: dict, reporter: Reporter = NULL) -> None:
    info = read_run_info(run_dir) or {}
    before = info.get("options") or {}
    changed = [k for k in _STREAM_OPTIONS if k in before and before.get(k) != record.get(k)]
    if changed:
        reporter.warn(f"--resume with different {', '.join(changed)} than the original run: the data stream "
                      "will not continue exactly as an uninterrupted run")


def pretrain(corpora: list[str], run_dir: str | Path, opts: PretrainOptions | None = None,
             reporter: Reporter = NULL) -> dict:
    """Run masked-LM pretraining; return a summary (steps, final validation metrics, paths). ``reporter``: the
    set-up lines, the training progress bar and warnings (default: silent; the CLI passes its rich one)."""
    opts = opts or PretrainOptions()
    if not corpora:
        raise NtkError("no corpus FASTA given")
    if opts.config and opts.init_from:
        raise NtkError("--config and --init-from are exclusive (a new model, or continue training one)")
    if opts.weights is not None and len(opts.weights) != len(corpora):
        raise NtkError(f"--weights: {len(opts.weights)} value(s) for {len(corpora)} corpus file(s)")
    if not 0 <= opts.max_n_frac <= 1:
        raise NtkError("--max-n-frac must be between 0 and 1")
    if not 0 < opts.mask_prob < 1:
        raise NtkError("mask probability must be between 0 and 1")
    if opts.tokens_per_batch < 1:
        raise NtkError("--tokens-per-batch must be >= 1")
    _train_config(opts, grad_accum=1).validate()  # bad options fail before anything is read or written
    set_threads(opts.threads)
    run_dir = Path(run_dir)
    info = D.setup(opts.device)
    try:
        return _pretrain(corpora, run_dir, opts, info, reporter)
    finally:
        D.teardown()


@dataclass
class _Data:
    """The training stream and the fixed validation set of one rank, with the batch shape that feeds them."""

    split: object                 # ntk.train.corpus split: train / val corpora and where validation comes from
    seq_len: int                  # tokens per window incl. <cls>
    micro: int                    # sequences per forward pass per rank
    accum: int                    # gradient-accumulation steps per optimiser step
    stream: MaskedLMStream
    val_batches: list
    baseline: float               # context-free unigram loss on the validation targets (nan without validation)


def _pretrain(corpora: list[str], run_dir: Path, opts: PretrainOptions, info: D.DistInfo, reporter: Reporter) -> dict:
    say = reporter.log if (info.is_main and not opts.quiet) else (lambda *a, **k: None)
    record = _options_record(corpora, opts)

    # 1. inputs first: a bad corpus fails before anything is written
    lengths = _lengths(corpora)
    regions = _parse_regions(opts, lengths)
    val_regions = list(read_bed(opts.val_regions)) if opts.val_regions else None

    # 2. the run directory (rank 0 decides; the others follow)
    resume_from = _claim_run_dir(run_dir, opts, record, info, reporter)

    # 3. the model and its tokenizer; 4. data
    model = build_model(opts, resume_from, reporter)
    data = _training_data(corpora, opts, model, info, regions, val_regions)

    if info.is_main:  # inputs are good: now the run directory is written
        prepare_run_dir(run_dir, "pretrain", opts.resume, opts.force, record, write=True)
    D.barrier(info)
    n_params = sum(p.numel() for p in model.parameters())
    tcfg = _train_config(opts, grad_accum=data.accum, n_params=n_params)
    _report_setup(say, reporter, info, opts, len(corpora), model, n_params, resume_from, data, tcfg)

    loss_fn, eval_fn = _masked_lm_fns(info, model.tokenizer, data)
    batches = Prefetcher(data.stream)
    try:
        trainer = Trainer(model, tcfg, run_dir, loss_fn, batches, eval_fn=eval_fn if data.val_batches else None,
                          resume_from=resume_from, dist_info=info, reporter=reporter)
        summary = trainer.fit()
    finally:
        batches.close()
    world = info.world_size
    summary.update(lr=tcfg.lr, warmup=tcfg.warmup_steps, schedule=tcfg.schedule,
                   seq_len=data.seq_len, micro_batch=data.micro, grad_accum=data.accum, world_size=world,
                   tokens_per_step=data.seq_len * data.micro * data.accum * world, unigram_loss=data.baseline,
                   val_source=data.split.val_source, run_dir=run_dir)
    if info.is_main:
        write_json_atomic(run_dir / "summary.json", summary)
    return summary


def _claim_run_dir(run_dir: Path, opts: PretrainOptions, record: dict, info: D.DistInfo,
                   reporter: Reporter) -> Path | None:
    """Rank 0 checks the run directory (new, --force, or --resume) without writing it; every rank gets its
    answer: the checkpoint to resume from (None: a new run), or rank 0's error raised on every rank."""
    outcome = None
    if info.is_main:
        try:
            outcome = ("ok", prepare_run_dir(run_dir, "pretrain", opts.resume, opts.force, record, write=False))
        except NtkError as e:
            outcome = ("error", str(e))
    outcome = D.broadcast_object(outcome, info)
    if outcome[0] == "error":
        raise NtkError(outcome[1])
    resume_from = Path(outcome[1]) if outcome[1] is not None else None
    if resume_from is not None and info.is_main:
        _check_resume_options(run_dir, record, reporter)
    return resume_from


def _training_data(corpora: list[str], opts: PretrainOptions, model: NucleotideTransformer, info: D.DistInfo,
                   regions: list[Interval] | None, val_regions: list[Interval] | None) -> _Data:
    """The window length, the batch shape (micro-batch x accumulation reaching --tokens-per-batch over all
    ranks), this rank's training stream and the validation batches."""
    cfg = model.config
    seq_len = opts.seq_len or min(cfg.max_tokens, 1000)
    if not 8 <= seq_len <= cfg.max_tokens:
        raise NtkError(f"--seq-len {seq_len}: must be between 8 and the model's {cfg.max_tokens} tokens "
                       f"(max_position_embeddings {cfg.max_position_embeddings})")
    window = 6 * (seq_len - 1)
    tok = model.tokenizer
    split = split_corpus(corpora, window, regions=regions, val_chroms=opts.val_chroms or None,
                         val_regions=val_regions, val_frac=opts.val_frac)
    world = info.world_size
    if opts.batch_size:
        micro = opts.batch_size
    else:
        budget = auto_token_budget(info.device.type, cfg.hidden_size, cfg.num_hidden_layers) // 2
        micro = max(1, budget // seq_len)
    micro = max(1, min(micro, math.ceil(opts.tokens_per_batch / (seq_len * world))))
    accum = max(1, math.ceil(opts.tokens_per_batch / (micro * seq_len * world)))
    stream = MaskedLMStream(split.train, tok, seq_len, micro, seed=opts.seed, rank=info.rank, weights=opts.weights,
                            max_n_frac=opts.max_n_frac, rc_aug=opts.rc_aug, mask_prob=opts.mask_prob)
    stream.check()
    val_batches = validation_batches(split.val, tok, seq_len, micro, opts.val_windows, opts.seed,
                                     opts.max_n_frac, opts.mask_prob)
    baseline = unigram_cross_entropy(stream, val_batches) if val_batches else float("nan")
    return _Data(split, seq_len, micro, accum, stream, val_batches, baseline)


def _report_setup(say, reporter: Reporter, info: D.DistInfo, opts: PretrainOptions, n_corpora: int,
                  model: NucleotideTransformer, n_params: int, resume_from: Path | None, data: _Data,
                  tcfg: TrainConfig) -> None:
    """The set-up lines (model, corpus, batch, baseline, schedule) and the schedule warning (shown under --quiet
    too, on rank 0)."""
    cfg, world = model.config, info.world_size
    say(f"model: {cfg.family} {cfg.num_hidden_layers} layers x {cfg.hidden_size}, {n_params / 1e6:.2f} M parameters"
        + (f" (resuming {resume_from})" if resume_from else ""))
    say(f"corpus: {sum(s.bases for s in data.split.train):,} training bases in {n_corpora} file(s); validation: "
        f"{data.split.val_source}, {sum(b['input_ids'].shape[0] for b in data.val_batches)} windows")
    say(f"batch: {data.seq_len} tokens x {data.micro} sequences x {data.accum} accumulation x {world} process(es) = "
        f"{data.seq_len * data.micro * data.accum * world:,} tokens per step; device {info.device}")
    if data.val_batches:
        say(f"unigram baseline (context-free loss on the validation targets): {data.baseline:.4f} nats")
    why = []
    if opts.lr is None:
        why.append(f"lr: default for {n_params / 1e6:.2g} M parameters")
    if opts.warmup is None:
        why.append("warm-up: default 5% of --steps")
    say(f"schedule: {describe_schedule(tcfg.schedule, tcfg.warmup_steps, tcfg.steps, tcfg.lr, tcfg.min_lr_ratio)}"
        + (f" ({'; '.join(why)})" if why else ""))
    warning = schedule_warning(tcfg.schedule, tcfg.warmup_steps, tcfg.steps, tcfg.lr)
    if warning and info.is_main:  # shown under --quiet too
        reporter.warn(f"warning: {warning}")


def _masked_lm_fns(info: D.DistInfo, tok, data: _Data):
    """(loss_fn, eval_fn) of the trainer: the masked-LM loss of a batch, and the validation metrics over the fixed
    validation batches (loss, perplexity, masked-token accuracy, loss on the shown masks, unigram baseline)."""
    static = info.device.type == "xla"
    val_batches, baseline = data.val_batches, data.baseline

    def loss_fn(m, batch):
        return masked_lm_loss(m, unwrap(m).lm_head, batch, static_shapes=static)

    def eval_fn(m):
        total = masked = hits = n = n_shown = 0.0
        for b in val_batches:
            b = {k: v.to(info.device) for k, v in b.items()}
            loss, met = masked_lm_loss(m, m.lm_head, b, static_shapes=static, mask_id=tok.mask_id)
            k = float(met["n_masked"])
            shown = float(((b["input_ids"] == tok.mask_id) & (b["labels"] >= 0)).sum())
            total += float(loss) * k
            hits += float(met["accuracy"]) * k
            masked += float(met["masked_loss"]) * shown
            n += k
            n_shown += shown
            D.mark_step(info.device)
        val_loss = total / max(n, 1)
        return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0)),
                "val_accuracy": hits / max(n, 1), "val_masked_loss": masked / max(n_shown, 1),
                "val_unigram_loss": baseline}

    return loss_fn, eval_fn


__all__ = ["PretrainOptions", "pretrain", "init_weights", "new_model_config"]
