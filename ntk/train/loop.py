"""The one training loop of ntk, shared by ``ntk pretrain`` and ``ntk finetune``. It knows nothing about the task.

Usage::

    from ntk.train import TrainConfig, Trainer

    def loss_fn(model, batch):                 # model: the (possibly DDP-wrapped) module; batch: on the device
        out = model(batch["input_ids"], batch["attention_mask"])
        loss = torch.nn.functional.cross_entropy(out.logits, batch["labels"])
        return loss, {"accuracy": (out.logits.argmax(-1) == batch["labels"]).float().mean(),
                      "tokens": batch["attention_mask"].sum()}

    def eval_fn(model):                        # model: the plain module, eval mode, under no_grad + autocast
        return {"val_loss": ...}

    trainer = Trainer(model, TrainConfig(steps=1000, lr=1e-4), "runs/x", loss_fn, batches, eval_fn=eval_fn,
                      resume_from=None)       # or a checkpoint dir, e.g. from checkpointing.prepare_run_dir
    summary = trainer.fit()

Contract:
- ``train_batches``: an iterator of batches (dicts/lists/tuples of tensors, moved to the device by the trainer),
  ``cfg.grad_accum`` micro-batches per optimiser step. If it has ``state_dict()``/``load_state_dict(d)`` its
  position is saved in every checkpoint and restored on resume (the pretrain stream is resumable exactly). If it
  runs out, training stops there (checkpoint + final model), like an early stop.
- ``loss_fn(model, batch) -> (loss, metrics)``: ``loss`` a scalar tensor (mean over the micro-batch);
  ``metrics`` floats or 0-d tensors, averaged over micro-batches, steps between two log rows and ranks; the key
  ``tokens`` (and any key starting with ``n_``) is summed instead, and ``tokens`` drives the tokens/s figure.
  Under torchrun the model is wrapped in DDP: a submodule called outside its forward (``unwrap(model).lm_head``)
  still gets synchronised gradients as long as every trainable parameter receives a gradient each step
  (otherwise set ``find_unused_parameters``).
- ``eval_fn(model) -> dict of floats``: run every ``eval_every`` steps, before the first step of a fresh run
  (the starting value) and at the end, on every rank (it must give the same numbers on every rank, e.g. a fixed
  validation set). ``monitor`` (default ``val_loss``) drives ``patience`` (early stopping) and ``save_best``.
- ``trainable_params``: parameters to optimise (default: all with ``requires_grad``; e.g. a frozen encoder).
- ``on_save(path)``: called on rank 0 after each checkpoint / best / final directory is written (to add files).

What the trainer does: AdamW (no decay on biases/norms/embeddings), warm-up + cosine/inverse-sqrt/constant
schedule, gradient clipping, gradient accumulation (``no_sync`` on all but the last micro-batch under DDP),
autocast (bf16 on GPU/TPU by default, fp16 with a grad scaler on CUDA when asked, fp32 on CPU), optional
activation checkpointing, DDP under torchrun, ``mark_step`` on XLA; progress through ``reporter`` (rank 0);
``RUN_DIR/metrics.parquet`` (one row per ``log_every`` steps, eval columns filled at eval steps);
``RUN_DIR/training_curves.png`` at every eval; checkpoints every ``save_every`` steps (see checkpointing.py);
``RUN_DIR/final/`` at the end. SIGINT/SIGTERM save a checkpoint at the current step, then raise
:class:`TrainingInterrupted` (a SIGINT that the process ignores, as in background jobs, stays ignored);
``stop_after`` stops cleanly after that step with a checkpoint while keeping the schedule of ``steps``
(time-sliced jobs). ``--resume`` from a checkpoint continues bit-for-bit on CPU.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist

from ..errors import Interrupted, NtkError
from ..model.checkpoint import save_model
from ..report import NULL, Reporter
from . import distributed as D
from .checkpointing import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .optim import SCHEDULES, build_optimizer, build_scheduler

LossFn = Callable[[torch.nn.Module, Any], "tuple[torch.Tensor, dict[str, Any]]"]
EvalFn = Callable[[torch.nn.Module], "dict[str, float]"]


class TrainingInterrupted(NtkError):
    """SIGINT/SIGTERM during training: a checkpoint was saved at ``step``."""

    def __init__(self, step: int, checkpoint: Path | None, signum: int = signal.SIGINT):
        self.step, self.checkpoint, self.signum = step, checkpoint, int(signum)
        name = signal.Signals(self.signum).name if self.signum in signal.Signals._value2member_map_ else self.signum
        super().__init__(f"stopped by {name} at step {step}; checkpoint saved in {checkpoint} (continue with "
                         "--resume)")


@dataclass
class TrainConfig:
    steps: int = 1000                  # optimiser steps in the whole run (the schedule spans them)
    lr: float = 1e-4                   # peak learning rate
    warmup_steps: int = 100
    schedule: str = "cosine"           # cosine | inverse_sqrt | constant
    min_lr_ratio: float = 0.0          # cosine floor, as a fraction of lr
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float | None = 1.0      # max global gradient norm (None/0: off)
    grad_accum: int = 1                # micro-batches per optimiser step (per rank)
    precision: str = "auto"            # auto | fp32 | bf16 | fp16 (autocast; weights stay fp32)
    eval_every: int = 0                # 0: evaluate only at the start and the end
    save_every: int = 0                # 0: checkpoint only at the end
    log_every: int = 1                 # a metrics row every N steps
    keep_checkpoints: int = 2          # newest checkpoints kept (None/0: all)
    seed: int = 0
    device: str = "auto"
    activation_checkpointing: bool = False
    stop_after: int | None = None      # stop after this step (checkpoint), schedule still spans `steps`
    monitor: str = "val_loss"          # eval metric for early stopping / best model
    monitor_mode: str = "min"          # min | max
    patience: int | None = None        # evals without improvement before stopping (None: never)
    save_best: bool = False            # write RUN_DIR/best/ when the monitored metric improves
    find_unused_parameters: bool = False
    quiet: bool = False
    plot: bool = True                  # training_curves.png at each eval
    progress_metrics: tuple[str, ...] = ("loss", "accuracy")
    metrics_flush_s: float = 30.0      # rewrite metrics.parquet at least this often
    extra: dict = field(default_factory=dict)  # free-form, recorded only

    def validate(self) -> None:
        if self.steps < 1:
            raise NtkError("--steps must be >= 1")
        if self.lr <= 0:
            raise NtkError("--lr must be > 0")
        if self.warmup_steps < 0:
            raise NtkError("--warmup must be >= 0")
        if self.schedule not in SCHEDULES:
            raise NtkError(f"--schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.grad_accum < 1:
            raise NtkError("gradient accumulation must be >= 1")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise NtkError(f"--precision {self.precision!r}: expected auto, fp32, bf16 or fp16")
        if self.monitor_mode not in ("min", "max"):
            raise NtkError(f"monitor_mode {self.monitor_mode!r}: expected min or max")
        for name in ("eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise NtkError(f"--{name.replace('_', '-')} must be >= 0")
        if self.log_every < 1:
            raise NtkError("log_every must be >= 1")


# -- helpers ---------------------------------------------------------------------------------------
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under a DDP wrapper."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        if device.type == "xla":
            return torch.bfloat16
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise NtkError("--precision fp16 trains only on CUDA (use bf16 or fp32)")
        return torch.float16
    return torch.bfloat16


def _is_summed(key: str) -> bool:
    return key == "tokens" or key.startswith("n_")


def _as_float(v) -> float:
    return float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)


# -- the trainer -----------------------------------------------------------------------------------
class Trainer:
    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, run_dir: str | Path, loss_fn: LossFn,
                 train_batches: Iterable, eval_fn: EvalFn | None = None,
                 trainable_params: Iterable[tuple[str, torch.nn.Parameter]] | None = None,
                 resume_from: str | Path | None = None, dist_info: D.DistInfo | None = None,
                 on_save: Callable[[Path], None] | None = None, reporter: Reporter = NULL):
        cfg.validate()
        self.cfg = cfg
        self.reporter = reporter  # progress bar, eval lines and warnings (the CLI passes its rich one)
        self.run_dir = Path(run_dir)
        self.loss_fn, self.eval_fn, self.on_save = loss_fn, eval_fn, on_save
        self.dist = dist_info or D.setup(cfg.device)
        self.device = self.dist.device
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        self.batches = train_batches
        self._iter: Iterator = iter(train_batches)

        torch.manual_seed(cfg.seed + self.dist.rank)
        model = model.to(self.device, torch.float32).train()
        if trainable_params is not None:
            trainable_params = list(trainable_params)
            model.requires_grad_(False)
            for _, p in trainable_params:
                p.requires_grad_(True)
        elif not any(p.requires_grad for p in model.parameters()):
            model.requires_grad_(True)  # e.g. a model from ntk.load_model (inference mode)
        if cfg.activation_checkpointing:
            enc = getattr(getattr(model, "esm", None), "encoder", None)
            if enc is None or not hasattr(enc, "gradient_checkpointing"):
                raise NtkError("activation checkpointing is not available for this model")
            enc.gradient_checkpointing = True
        self.model = model
        named = trainable_params if trainable_params is not None else [
            (n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(named, cfg.lr, cfg.weight_decay, betas=cfg.betas,
                                         fused=self.device.type in ("cuda", "cpu"))
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.params = [p for _, p in named]

        self.step = 0
        self.best: float | None = None
        self.bad_evals = 0
        self.tokens_seen = 0.0
        self.elapsed_before = 0.0
        self.rows: list[dict] = []
        self.last_eval: dict[str, float] = {}
        self._last_eval_step = -1
        self._plotted: tuple[int, int] | None = None
        self.resumed = resume_from is not None
        if resume_from is not None:
            self._restore(Path(resume_from))

        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters)
        else:
            self.wrapped = model
        self._stop_signal = False

    # -- state ------------------------------------------------------------------------------------
    def _trainer_state(self) -> dict:
        per_rank = {"rng": rng_state(),
                    "data": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None}
        if self.dist.distributed:
            # a fingerprint of this rank's parameters: DDP keeps replicas identical, checked at every save
            per_rank["param_sums"] = torch.stack([p.detach().double().sum().cpu() for p in self.model.parameters()])
            gathered = [None] * self.dist.world_size
            dist.all_gather_object(gathered, per_rank)
            ref = gathered[0]["param_sums"]
            if self.dist.is_main and any(not torch.equal(g["param_sums"], ref) for g in gathered[1:]):
                self.reporter.warn(f"warning: the {self.dist.world_size} ranks' parameters differ at step "
                                   f"{self.step}")
        else:
            gathered = [per_rank]
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ranks": gathered,
            "world_size": self.dist.world_size,
            "best": self.best,
            "bad_evals": self.bad_evals,
            "tokens_seen": self.tokens_seen,
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0),
            "config": {k: v for k, v in asdict(self.cfg).items() if isinstance(v, (int, float, str, bool, type(None)))},
        }

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path, self.model)
        self.model.to(self.device)
        self.step = int(state["step"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as e:
            raise NtkError(f"{path}: optimiser state does not match the trainable parameters ({e})") from None
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ranks = state.get("ranks") or []
        mine = ranks[self.dist.rank] if len(ranks) == self.dist.world_size else (ranks[0] if ranks else {})
        if len(ranks) != self.dist.world_size and self.dist.is_main:
            self.reporter.warn(f"resuming a {len(ranks)}-process run with {self.dist.world_size} process(es): "
                               "data streams and RNG continue from rank 0's state, not exactly as before")
        if mine.get("rng"):
            set_rng_state(mine["rng"])
        if mine.get("data") is not None and hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(mine["data"])
            self._iter = iter(self.batches)
        self.best = state.get("best")
        self.bad_evals = int(state.get("bad_evals", 0))
        self.tokens_seen = float(state.get("tokens_seen", 0.0))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.rows = self._read_metrics(upto=self.step)

    # -- metrics files ----------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.parquet"

    def _read_metrics(self, upto: int) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        import polars as pl

        try:
            df = pl.read_parquet(self.metrics_path)
        except Exception:  # an unreadable log does not stop a resume; it is rewritten
            return []
        return df.filter(pl.col("step") <= upto).to_dicts()

    def _write_metrics(self) -> None:
        if not self.dist.is_main or not self.rows:
            return
        import polars as pl

        from ..io.atomic import atomic_path

        keys: list[str] = []
        for r in self.rows:
            keys.extend(k for k in r if k not in keys)
        cols = {k: [r.get(k) for r in self.rows] for k in keys}
        schema = {k: (pl.Int64 if k == "step" else pl.Float64) for k in keys}
        df = pl.DataFrame(cols, schema=schema)
        with atomic_path(self.metrics_path) as tmp:
            df.write_parquet(tmp)
        self._last_flush = time.perf_counter()

    def _plot(self) -> None:
        if not (self.dist.is_main and self.cfg.plot) or self._plotted == (len(self.rows), self.step):
            return
        self._plotted = (len(self.rows), self.step)
        from .curves import plot_training_curves

        plot_training_curves(self.rows, self.run_dir / "training_curves.png", log=self.reporter.log)

    def _save(self, reason: str = "") -> Path:
        state = self._trainer_state()  # a collective under DDP: every rank gathers
        path = None
        if self.dist.is_main:
            path = save_checkpoint(self.run_dir, self.step, self.model, state, keep=self.cfg.keep_checkpoints or None)
            if self.on_save:
                self.on_save(path)
            self._write_metrics()
        D.barrier(self.dist)
        return path if path is not None else self.run_dir / "checkpoints" / f"step-{self.step:08d}"

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                res = {k: _as_float(v) for k, v in self.eval_fn(self.model).items()}
        finally:
            self.model.train()
        D.mark_step(self.device)
        self.last_eval, self._last_eval_step = res, self.step
        return res

    def _after_eval(self, res: dict[str, float]) -> bool:
        """Record an evaluation; return True when early stopping says stop."""
        row = next((r for r in reversed(self.rows) if r["step"] == self.step), None)
        if row is None:
            row = {"step": self.step}
            self.rows.append(row)
        row.update(res)
        if self.dist.is_main and not self.cfg.quiet:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in res.items())
            self.reporter.log(f"step {self.step}: {shown}")
        stop = False
        m = res.get(self.cfg.monitor)
        if m is not None and math.isfinite(m):
            better = self.best is None or (m < self.best if self.cfg.monitor_mode == "min" else m > self.best)
            if better:
                self.best, self.bad_evals = m, 0
                if self.cfg.save_best and self.dist.is_main:
                    p = save_model(self.model, self.run_dir / "best")
                    if self.on_save:
                        self.on_save(p)
            else:
                self.bad_evals += 1
                stop = self.cfg.patience is not None and self.bad_evals >= self.cfg.patience
        self._write_metrics()
        self._plot()
        return stop

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @property
    def _collective_device(self) -> torch.device:
        """Where tensors for collectives live: the accelerator for NCCL/XLA process groups, else the CPU (gloo)."""
        return self.device if self.dist.backend in ("nccl", "xla") else torch.device("cpu")

    # -- signals ----------------------------------------------------------------------------------
    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}

        def handler(signum, frame):
            if self._stop_signal:  # second Ctrl-C: give up at once
                raise Interrupted(signum)
            self._stop_signal = signum

        for s in (signal.SIGINT, signal.SIGTERM):
            if s == signal.SIGINT and signal.getsignal(s) is signal.SIG_IGN:
                continue  # a background job (nohup, `&` in a script) keeps ignoring Ctrl-C
            old[s] = signal.signal(s, handler)
        return old

    def _stop_requested(self) -> bool:
        flag = self._stop_signal
        if self.dist.distributed:
            t = torch.tensor([1.0 if flag else 0.0], device=self._collective_device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    # -- the loop ---------------------------------------------------------------------------------
    def _train_step(self) -> dict[str, Any] | None:
        cfg = self.cfg
        sums: dict[str, Any] = {}
        for micro in range(cfg.grad_accum):
            try:
                batch = next(self._iter)
            except StopIteration:
                return None
            batch = to_device(batch, self.device)
            sync = (not self.dist.distributed or micro == cfg.grad_accum - 1)
            ctx = contextlib.nullcontext() if sync else self.wrapped.no_sync()
            with ctx:
                with self._autocast():
                    loss, metrics = self.loss_fn(self.wrapped, batch)
                scaled = loss.float() / cfg.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            metrics = dict(metrics)
            metrics.setdefault("loss", loss.detach())
            for k, v in metrics.items():
                v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
                sums[k] = sums[k] + v if k in sums else v
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip) if cfg.grad_clip else None
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        D.mark_step(self.device)
        out = {k: (v if _is_summed(k) else v / cfg.grad_accum) for k, v in sums.items()}
        if grad_norm is not None:
            out["grad_norm"] = grad_norm.detach()  # before clipping
        out["lr"] = lr
        return out

    def _log_row(self, window: list[dict], seconds: float) -> dict:
        keys = sorted({k for m in window for k in m})
        vals = torch.tensor([sum(_as_float(m[k]) for m in window if k in m) for k in keys], dtype=torch.float64)
        counts = torch.tensor([sum(1 for m in window if k in m) for k in keys], dtype=torch.float64)
        vals = D.all_reduce_mean(vals.to(self._collective_device), self.dist).cpu()
        row: dict[str, Any] = {"step": self.step}
        for k, v, c in zip(keys, vals.tolist(), counts.tolist()):
            row[k] = v * self.dist.world_size if _is_summed(k) else v / max(c, 1)
        if "tokens" in row:
            self.tokens_seen += row["tokens"]
            row["tokens_per_s"] = row["tokens"] / max(seconds, 1e-9)
        row["elapsed_s"] = self.elapsed_before + time.perf_counter() - self._t0
        loss = row.get("loss")
        if loss is not None and not math.isfinite(loss):
            raise NtkError(f"training diverged: loss is {loss} at step {self.step} (lower --lr, raise --warmup, "
                           "or use --precision fp32)")
        return row

    def fit(self) -> dict[str, Any]:
        """Train to ``cfg.steps`` (or ``stop_after``, early stop, end of data); return a summary."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._t0 = time.perf_counter()
        self._last_flush = self._t0
        target = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
        stopped = "steps"
        if not self.resumed and self.eval_fn is not None:
            if self._after_eval(self.evaluate()):
                stopped = "early_stop"
        old_handlers = self._install_signals()
        progress = None
        if self.dist.is_main and not cfg.quiet:
            progress = self.reporter
            progress.start("train", cfg.steps, "steps", completed=self.step, info=True, keep=True)
        shown = self.step
        window: list[dict] = []
        t_window = time.perf_counter()
        last_saved = self.step if self.resumed else -1
        try:
            while self.step < target and stopped == "steps":
                m = self._train_step()
                if m is None:
                    stopped = "end_of_data"
                    break
                self.step += 1
                window.append(m)
                if self.step % cfg.log_every == 0 or self.step == target:
                    now = time.perf_counter()
                    row = self._log_row(window, now - t_window)
                    window, t_window = [], now
                    self.rows.append(row)
                    if progress is not None:
                        info = "  ".join(f"{k} {row[k]:.4f}" for k in cfg.progress_metrics if k in row)
                        if "tokens_per_s" in row:
                            info += f"  {row['tokens_per_s']:,.0f} tok/s"
                        info += f"  lr {row['lr']:.2e}"
                        progress.advance(self.step - shown, info=info)
                        shown = self.step
                    if self.dist.is_main and now - self._last_flush > cfg.metrics_flush_s:
                        self._write_metrics()
                elif progress is not None:
                    progress.advance(self.step - shown)
                    shown = self.step
                if self.eval_fn is not None and cfg.eval_every and self.step % cfg.eval_every == 0 \
                        and self.step < target:
                    if self._after_eval(self.evaluate()):
                        stopped = "early_stop"
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < target:
                    self._save()
                    last_saved = self.step
                if self._stop_requested():
                    stopped = "interrupted"
                    break
        finally:
            if progress is not None:
                progress.finish()
            for s, h in old_handlers.items():
                signal.signal(s, h)
        if window:  # steps since the last row (end of data / interruption)
            self.rows.append(self._log_row(window, time.perf_counter() - t_window))
        if stopped != "interrupted" and self.eval_fn is not None and self._last_eval_step != self.step:
            self._after_eval(self.evaluate())
        ckpt = self._save() if self.step != last_saved else self.run_dir / "checkpoints" / f"step-{self.step:08d}"
        if stopped == "interrupted":
            raise TrainingInterrupted(self.step, ckpt, self._stop_signal or signal.SIGTERM)
        final = None
        if self.step >= cfg.steps or stopped in ("early_stop", "end_of_data"):
            final = self.run_dir / "final"
            if self.dist.is_main:
                save_model(self.model, final)
                if self.on_save:
                    self.on_save(final)
            D.barrier(self.dist)
        elif stopped == "steps":
            stopped = "stop_after"
        self._write_metrics()
        self._plot()
        return {"step": self.step, "stopped": stopped, "checkpoint": ckpt, "final": final, "best": self.best,
                "last_eval": self.last_eval, "tokens_seen": self.tokens_seen,
                "elapsed_s": self.elapsed_before + time.perf_counter() - self._t0}
