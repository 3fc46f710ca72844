"""ntk segment on a GPU with a full-size SegmentNT (random weights, the `segment-nt` preset: 29 layers, hidden
1024, 30 kb windows, 557M parameters): one row per optimisation of issue #19, each measured on its own:

- ``eager``: model-only forward (the windows and batches segment runs, tokenized beforehand; default SDPA
  dispatch), the reference of every other row;
- ``sdpa-flash`` / ``sdpa-efficient`` / ``sdpa-math``: the same with SDPA forced to one kernel
  (``torch.nn.attention.sdpa_kernel``); plus the check that SegmentNT windows pass no attention mask (so flash
  is eligible) and the attention ops/kernels the profiler saw in one forward;
- ``compile``: what ``ntk segment --compile on`` runs: the unpadded SegmentNT forward (encoder + U-Net, no
  attention mask, 0 graph breaks) compiled by inductor for one static shape (``dynamic=False``, a full batch of
  full windows; shorter batches of the window padded to it, other shapes eager: ``pipelines/segment.py``
  ``compile_forward``), model only on segment's batches, ratio against ``eager``;
- ``cudagraphs``: the same with ``--compile cudagraphs`` (``mode="reduce-overhead"``: inductor + CUDA graphs);
  CUDA only;
- ``e2e compile`` / ``e2e cudagraphs``: ``segment_genome(..., compile=...)`` end to end (compilation in a warm-up
  run first, as the ``e2e`` rows warm up, reused by the timed run; its compile time in the note); CUDA only;
- ``batch=N``: the eager model with N windows per forward (tokens/s vs batch; peak memory);
- ``fp8``: ``--precision fp8`` (the encoder's linear layers in float8 e4m3 with per-row scales,
  ``torch._scaled_mm``; ``ntk/model/fp8.py``), model only, and its accuracy against the bf16 model on the same
  windows (max and mean |dp|, fraction of (position, feature) calls changed at 0.5); refused rows (a GPU below
  compute capability 8.9) record the refusal; on the CPU (smoke) torch's CPU float8 kernel runs it;
- ``e2e thread`` / ``e2e process``: ``segment_genome`` end to end with the track writers in threads / in worker
  processes (``NTK_TRACK_WRITERS``), ratio against the eager model-only time.

Columns: tokens/s, MFU (bf16 dense peak; GPU only), end-to-end / model-only (e2e rows), and the projected time for
a 3.1 Gbp human genome (kept nt per second of that row). A row that fails records its error and the others go on.

    python bench/segment_gpu.py [--mbp 3] [--precision bf16] [--crop N] [--rows eager,compile,...] [--json F]
    python bench/segment_gpu.py --cpu-smoke     # every row on the CPU with the golden tiny SegmentNT (a dry run;
                                                # the compile row with backend="eager": the plumbing, not inductor;
                                                # no cudagraphs / e2e compile rows)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from segment_throughput import GOLDEN, THRESHOLD, write_genome  # noqa: E402

import ntk  # noqa: E402
from ntk.io.fasta import IndexedFasta  # noqa: E402
from ntk.model import NucleotideTransformer, preset_config  # noqa: E402
from ntk.model.runtime import resolve_dtype  # noqa: E402
from ntk.model.tokenizer import sequence_codes  # noqa: E402
from ntk.plan.batching import auto_token_budget  # noqa: E402
from ntk.pipelines.segment import (compile_forward, family_of, iter_batches, iter_windows, plan_units,  # noqa: E402
                                   segment_genome)

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
HUMAN_BP = 3.1e9
ROWS = ["sdpa", "eager", "sdpa-flash", "sdpa-efficient", "sdpa-math", "batch", "e2e", "compile", "cudagraphs",
        "e2e-compile", "fp8"]


def flops_per_token(cfg, tokens: int) -> float:
    """Forward FLOPs per token: encoder linear layers (SwiGLU) + attention scores/values + ~U-Net and fc."""
    L, H, F_ = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    return L * (2 * (4 * H * H + 3 * H * F_) + 4 * tokens * H) + 2 * 66e6


class Bench:
    def __init__(self, m, dev: torch.device, fasta: Path, crop: int | None, tmp: Path):
        self.m, self.dev, self.fasta, self.tmp = m, dev, fasta, tmp
        self.cfg = m.config
        self.W = m.config.default_window("segment")
        self.crop = crop if crop is not None else self.W // 8
        fa = IndexedFasta(fasta)
        self.jobs = list(iter_windows(fa, plan_units(fa), self.W, self.crop, family_of(self.m)))
        self.ids = {}  # window start -> token ids
        for j in self.jobs:
            w = j.window
            self.ids[(w.chrom, w.start)] = self.m.tokenizer.tokenize_codes(
                sequence_codes(fa.fetch(w.chrom, w.start, w.end)))[0].astype(np.int64)
        fa.close()
        self.kept_bp = sum(j.window.keep_end - j.window.keep_start for j in self.jobs)
        self.budget = auto_token_budget(dev.type, self.cfg.hidden_size, self.cfg.num_hidden_layers)
        self.tokens_per_window = self.W // 6 + 1
        self.gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        self.peak = next((v for k, v in PEAK_BF16.items() if k in self.gpu), None)
        self.model_only_s: float | None = None
        self.rows: list[dict] = []
        self.smoke = dev.type == "cpu"

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def batches(self, per_batch: int | None = None) -> list[torch.Tensor]:
        """The windows in segment's batches (token budget), or ``per_batch`` windows of equal length each."""
        if per_batch is None:
            fa = IndexedFasta(self.fasta)
            jobs = iter_windows(fa, plan_units(fa), self.W, self.crop, family_of(self.m))
            groups = list(iter_batches(jobs, self.budget, None))
            fa.close()
        else:
            groups, cur = [], []
            for j in self.jobs:
                if cur and (len(cur) == per_batch or cur[-1].window.length != j.window.length):
                    groups.append(cur)
                    cur = []
                cur.append(j)
            groups.append(cur)
        out = []
        for g in groups:
            t = torch.from_numpy(np.stack([self.ids[(j.window.chrom, j.window.start)] for j in g]))
            out.append(t.pin_memory() if self.dev.type == "cuda" else t)
        return out

    def forward_time(self, fwd, batches: list[torch.Tensor], warm: int = 1) -> float:
        with torch.inference_mode():
            for ids in batches[:warm]:  # kernels, allocator, compilation of the common shape
                fwd(ids.to(self.dev)).float().cpu()
            for ids in {tuple(b.shape): b for b in batches}.values():  # every other shape compiled too
                fwd(ids.to(self.dev)).float().cpu()
            self.sync()
            t0 = time.perf_counter()
            for ids in batches:
                fwd(ids.to(self.dev, non_blocking=True)).float().cpu()
            self.sync()
        return time.perf_counter() - t0

    def eager(self, ids: torch.Tensor) -> torch.Tensor:
        """What ``ntk segment`` runs per batch without --compile: the unpadded forward (no mask, no check)."""
        return family_of(self.m).probabilities(ids)

    def add(self, name: str, seconds: float | None, tokens: int | None = None, e2e: float | None = None,
            note: str = "", **extra) -> dict:
        r = {"row": name, "note": note, **extra}
        if seconds is not None:
            tps = tokens / seconds if tokens else None
            r.update(seconds=seconds, tokens_per_s=tps,
                     mfu=(tps * flops_per_token(self.cfg, self.tokens_per_window) / self.peak)
                     if (tps and self.peak) else None)
            t = e2e if e2e is not None else seconds
            r["human_genome_minutes"] = HUMAN_BP / (self.kept_bp / t) / 60
            if e2e is not None and self.model_only_s:
                r["e2e_over_model_only"] = e2e / self.model_only_s
        self.rows.append(r)
        print(json.dumps(r), flush=True)
        return r

    def guarded(self, name: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one failing optimisation must not lose the other rows
            self.add(name, None, note=f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            traceback.print_exc(limit=3)

    # -- rows ----------------------------------------------------------------------------------------
    def row_sdpa(self) -> None:
        """Which SDPA path SegmentNT windows take: mask passed or not, and the ops/kernels in one forward."""
        import torch.nn.functional as F

        calls = []
        orig = F.scaled_dot_product_attention

        def spy(q, k, v, attn_mask=None, *a, **kw):
            calls.append({"mask": attn_mask is not None, "dtype": str(q.dtype).replace("torch.", ""),
                          "q_shape": list(q.shape), "q_last_dim_contiguous": q.stride(-1) == 1})
            return orig(q, k, v, attn_mask, *a, **kw)
        ids = self.batches(1)[0]
        F.scaled_dot_product_attention = spy
        try:
            with torch.inference_mode():
                self.eager(ids.to(self.dev))
        finally:
            F.scaled_dot_product_attention = orig
        acts = [torch.profiler.ProfilerActivity.CPU] + \
            ([torch.profiler.ProfilerActivity.CUDA] if self.dev.type == "cuda" else [])
        with torch.inference_mode(), torch.profiler.profile(activities=acts) as prof:
            self.eager(ids.to(self.dev))
            self.sync()
        keys = ("attention", "flash", "fmha", "sdpa", "efficient", "softmax")
        names = sorted({e.key for e in prof.key_averages() if any(k in e.key.lower() for k in keys)})
        self.add("sdpa", None, note="attention calls of one window and the attention ops/kernels profiled",
                 calls=len(calls), any_mask=any(c["mask"] for c in calls), first_call=calls[0] if calls else None,
                 profiled=names[:20])

    def row_forced(self, backend: str) -> None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        b = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "math": SDPBackend.MATH}[backend]
        batches = self.batches()
        with sdpa_kernel([b]):
            t = self.forward_time(self.eager, batches)
        self.add(f"sdpa-{backend}", t, sum(x.numel() for x in batches), note=f"SDPA forced to {backend}")

    def row_eager(self) -> None:
        batches = self.batches()
        t = self.forward_time(self.eager, batches)
        self.model_only_s = t
        self.add("eager", t, sum(x.numel() for x in batches),
                 note=f"model only, segment's batches ({len(batches)} of <= {self.budget} tokens)")

    def row_batch(self, sizes: list[int]) -> None:
        for n in sizes:
            def one(n=n):
                batches = self.batches(n)
                if self.dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.dev)
                t = self.forward_time(self.eager, batches)
                mem = torch.cuda.max_memory_allocated(self.dev) / 2**30 if self.dev.type == "cuda" else None
                self.add(f"batch={n}", t, sum(x.numel() for x in batches), note=f"{n} windows per forward",
                         peak_gib=mem)
            self.guarded(f"batch={n}", one)

    def row_e2e(self, writers: str) -> None:
        old = os.environ.get("NTK_TRACK_WRITERS")
        os.environ["NTK_TRACK_WRITERS"] = writers
        try:
            segment_genome(self.fasta, self.tmp / "warm", model=self.m, regions=[f"chr1:1-{4 * self.W}"],
                           threshold=THRESHOLD, force=True, crop=self.crop)
            self.sync()
            t0 = time.perf_counter()
            r = segment_genome(self.fasta, self.tmp / "out", model=self.m, threshold=THRESHOLD, force=True,
                               crop=self.crop)
            self.sync()
            t = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("NTK_TRACK_WRITERS", None)
            else:
                os.environ["NTK_TRACK_WRITERS"] = old
        self.add(f"e2e {writers}", t, sum(len(v) for v in self.ids.values()), e2e=t,
                 note=f"segment_genome end to end, track writers in {writers}es" if writers == "process" else
                 f"segment_genome end to end, track writers in {writers}s",
                 bp_scored=r.bp_scored, bp_per_s=r.bp_scored / t, end_to_end_s=t)

    def row_fp8(self, max_batches: int = 8) -> None:
        """fp8 model only (same batches as eager), ratio to the eager row, and fp8 vs bf16 probabilities on the
        first ``max_batches`` batches (the bf16 model: this one, or a bf16 copy when it runs in another dtype)."""
        import copy

        from fp8_accuracy import compare

        from ntk.model.fp8 import fp8_refusal, to_fp8

        why = fp8_refusal(self.dev)
        if why:
            self.add("fp8", None, note=f"refused: {why}")
            return
        rotary = getattr(self.m.esm, "rotary", None)
        if rotary is not None:
            rotary._cache.clear()  # its tables (a tuple subclass) do not deep-copy; they are rebuilt on demand
        ref = self.m if self.m.dtype == torch.bfloat16 else copy.deepcopy(self.m).to(torch.bfloat16)
        m8 = copy.deepcopy(ref)
        info = to_fp8(m8)
        batches = self.batches()
        base, self.m = self.m, m8
        try:
            t = self.forward_time(self.eager, batches)
            probs = {}
            with torch.inference_mode():
                for name, model in (("bf16", ref), ("fp8", m8)):
                    self.m = model
                    probs[name] = np.concatenate([self.eager(b.to(self.dev)).float().cpu().numpy()
                                                  .reshape(-1, len(self.cfg.features)) for b in batches[:max_batches]])
        finally:
            self.m = base
        acc = compare(probs["bf16"].astype(np.float64), probs["fp8"].astype(np.float64), list(self.cfg.features))[-1]
        ratio = self.model_only_s / t if self.model_only_s else None
        self.add("fp8", t, sum(x.numel() for x in batches),
                 note=f"--precision fp8: {len(info['swapped'])} encoder linears via {info['path']} on "
                      f"{self.dev.type} ({len(info['kept'])} kept bf16), row scaling; accuracy vs bf16 on "
                      f"{min(len(batches), max_batches)} batches",
                 speedup_vs_eager=ratio, max_abs_dp_vs_bf16=acc["max_abs_dp"], mean_abs_dp_vs_bf16=acc["mean_abs_dp"],
                 calls_changed_vs_bf16=acc["call_flip_fraction"], compared_positions=acc["positions"])
        del m8

    def row_compiled(self, name: str, mode: str) -> None:
        """``ntk segment --compile MODE``'s forward (``compile_forward``), model only, on segment's batches."""
        backend = "eager" if self.smoke else "inductor"  # smoke: the plumbing only (inductor's C++ build is slow)
        self.fresh()
        fam = family_of(self.m)
        c = compile_forward(fam, mode, self.W, self.budget, None, backend=backend)
        try:
            batches = self.batches()
            t_c = time.perf_counter()
            t = self.forward_time(c, batches)
            t_c = time.perf_counter() - t_c - t
            ratio = f"; eager / this {self.model_only_s / t:.3f}" if self.model_only_s else ""
            self.add(name, t, sum(x.numel() for x in batches),
                     note=f"--compile {mode} (compile_forward: static shape {list(c.shape)}, dynamic=False"
                          f"{', backend=eager' if self.smoke else ''}), model only{ratio}",
                     compile_and_warmup_s=t_c, compile_s=c.compile_seconds, **{k: v for k, v in c.info().items()
                                                                              if k.startswith(("batches", "rows"))})
        finally:
            self.fresh()

    def fresh(self) -> None:
        """Forget compiled code: dynamo's caches and the compiled forward segment keeps on the model."""
        torch._dynamo.reset()
        self.m.__dict__.pop("_ntk_compiled", None)

    def row_e2e_compiled(self, mode: str) -> None:
        """``segment_genome(..., compile=MODE)`` end to end (writers in processes, the default for genomes); the
        warm-up run compiles, the timed run reuses its compiled forward (kept on the model)."""
        self.fresh()
        t0 = time.perf_counter()
        w = segment_genome(self.fasta, self.tmp / "warm", model=self.m, regions=[f"chr1:1-{4 * self.W}"],
                           threshold=THRESHOLD, force=True, crop=self.crop, compile=mode)
        warm = time.perf_counter() - t0
        self.sync()
        t0 = time.perf_counter()
        r = segment_genome(self.fasta, self.tmp / "out", model=self.m, threshold=THRESHOLD, force=True,
                           crop=self.crop, compile=mode)
        self.sync()
        t = time.perf_counter() - t0
        self.add(f"e2e {mode}", t, sum(len(v) for v in self.ids.values()), e2e=t,
                 note=f"segment_genome(compile={mode!r}) end to end, compiled in the warm-up run "
                      f"({w.compile.get('compile_seconds')} s of its {warm:.1f} s)",
                 bp_scored=r.bp_scored, bp_per_s=r.bp_scored / t, end_to_end_s=t, compile=r.compile,
                 warm_compile=w.compile)
        self.fresh()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mbp", type=float, default=None, help="synthetic genome size (default 3; smoke 0.1)")
    ap.add_argument("--preset", default="segment-nt")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--crop", type=int, default=None, help="nt cropped at each window side (default: window/8)")
    ap.add_argument("--rows", default="all", help=f"comma list of {','.join(ROWS)} (default all)")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,24", help="windows per forward for the batch rows")
    ap.add_argument("--cpu-smoke", "--dry-run", dest="smoke", action="store_true",
                    help="run every row on the CPU with the golden tiny SegmentNT, small genome (checks the script)")
    ap.add_argument("--json", default=None, help="write all rows to this file")
    args = ap.parse_args()
    rows = ROWS if args.rows == "all" else args.rows.split(",")
    if args.smoke:
        dev = torch.device("cpu")
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
        m = ntk.load_model(str(GOLDEN), device="cpu", dtype=torch.float32).eval()
        mbp = args.mbp or 0.1
        sizes = [1, 4]
    else:
        dev = torch.device("cuda")
        cfg = preset_config(args.preset)
        torch.manual_seed(0)
        with torch.device(dev):
            m = NucleotideTransformer(cfg)
        m = m.to(resolve_dtype(args.precision, dev)).eval()
        mbp = args.mbp or 3.0
        sizes = [int(x) for x in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "genome.fa"
        n = int(mbp * 1e6)
        write_genome(fasta, [n // 2, n - n // 2], gap_every=max(n // 3, 50_000))
        b = Bench(m, dev, fasta, args.crop, Path(tmp))
        head = {"device": b.gpu, "preset": "golden tiny" if args.smoke else args.preset,
                "params": sum(p.numel() for p in m.parameters()), "dtype": str(m.dtype), "window_nt": b.W,
                "crop": b.crop, "windows": len(b.jobs), "kept_bp": b.kept_bp, "token_budget": b.budget,
                "gflop_per_token": flops_per_token(m.config, b.tokens_per_window) / 1e9, "torch": torch.__version__}
        print(json.dumps(head), flush=True)
        b.guarded("eager", b.row_eager)  # always first: the reference of the other rows
        if "sdpa" in rows:
            b.guarded("sdpa", b.row_sdpa)
        for k in ("flash", "efficient", "math"):
            if f"sdpa-{k}" in rows:
                b.guarded(f"sdpa-{k}", lambda k=k: b.row_forced(k))
        if "batch" in rows:
            b.row_batch(sizes)
        if "e2e" in rows:
            for w in ("thread", "process"):
                b.guarded(f"e2e {w}", lambda w=w: b.row_e2e(w))
        if "compile" in rows:
            b.guarded("compile", lambda: b.row_compiled("compile", "on"))
        if "cudagraphs" in rows:
            if dev.type == "cuda":
                b.guarded("cudagraphs", lambda: b.row_compiled("cudagraphs", "cudagraphs"))
            else:
                b.add("cudagraphs", None, note="skipped: needs CUDA")
        if "fp8" in rows:
            b.guarded("fp8", b.row_fp8)
        if "e2e-compile" in rows:
            for mode in ("on", "cudagraphs"):
                if dev.type == "cuda":
                    b.guarded(f"e2e {mode}", lambda mode=mode: b.row_e2e_compiled(mode))
                else:
                    b.add(f"e2e {mode}", None, note="skipped on the CPU smoke run (inductor's C++ build)")
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": head, "rows": b.rows}, indent=1) + "\n")
    print("\n| row | tokens/s | MFU | end-to-end / model-only | human genome (min) | max abs dp vs bf16 | "
          "calls changed vs bf16 | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in b.rows:
        def f(k: str, fmt: str, r: dict = r) -> str:
            return fmt.format(r[k]) if r.get(k) is not None else "-"
        print(f"| {r['row']} | {f('tokens_per_s', '{:,.0f}')} | {f('mfu', '{:.1%}')} | "
              f"{f('e2e_over_model_only', '{:.3f}')} | {f('human_genome_minutes', '{:.1f}')} | "
              f"{f('max_abs_dp_vs_bf16', '{:.3g}')} | {f('calls_changed_vs_bf16', '{:.2e}')} | {r['note']} |")
    with contextlib.suppress(Exception):
        sys.stdout.flush()


if __name__ == "__main__":
    main()
