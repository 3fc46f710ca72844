"""CPU inference speed (issue #20): each change as a paired A/B row, and `ntk segment` end to end before/after.

Model rows (in one process, the embedded default model, real yeast windows of the model's 1,536 nt = 257
tokens, ``--windows`` per forward): A and B alternate (A B, B A, A B, ...) ``--repeats`` times; each pair gives
a ratio time(A) / time(B) (> 1: B is faster). Printed: the median ratio and its min-max over the pairs, for wall
time and for process CPU time (CPU time is steadier when other jobs share the cores; with one torch thread the
two agree on an idle machine).

  heads      A: every head (the 4,107-way LM head included)      B: ``heads="segment"`` (what segment runs now)
  rotary     A: rotate-half with cat/neg per call, 3 q/k/v matmuls B: signed tables, one fused QKV matmul
  sigmoid    A: forward with softmax over the 2 classes [..., 1]  B: with sigmoid(l1 - l0)
  in place   A: SwiGLU on the halves of one matmul, SiLU   B: two matmuls, SiLU and product in place; U-Net
             into new buffers                                SiLU in place
  bf16       A: fp32                                              B: bf16 (slower without native bf16)
  compile    A: eager                                             B: torch.compile of each encoder block
             (only with --compile: the compile time is printed and usually dominates short runs)

End to end (``--e2e``): ``ntk segment GENOME -r REGION -o OUT -q`` as a subprocess, alternating between the code
of ``--base`` (a git commit, exported with ``git archive``; default: the commit before issue #20) and this
tree, ``--e2e-repeats`` pairs, with torch's default threads and with ``--threads 1``; then this tree's
``--threads 2`` single process against ``torchrun --nproc-per-node 2 --no-python ntk segment ... --threads 1``
(two single-thread ranks + merge). Wall time, and CPU time of the children.

    python bench/cpu_speed.py [--windows 16] [--repeats 5] [--threads 1] [--compile]
                              [--e2e] [--region I:1-100000] [--e2e-repeats 3] [--base da5c606]
"""
from __future__ import annotations

import argparse
import gzip
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ntk.model import load_model  # noqa: E402
from ntk.model import encoder as enc  # noqa: E402
from ntk.model import heads as heads_mod  # noqa: E402
from ntk.model import nt as ntmod  # noqa: E402
from ntk.model.nt import segment_probabilities  # noqa: E402
from ntk.model.tokenizer import sequence_codes  # noqa: E402

SAMPLE = ROOT / "data" / "sample" / "genome.fa.gz"
BASE = "da5c606"  # main before issue #20


# -- the code before issue #20, as the A side of the rotary row ---------------------------------------------------
def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


_OLD_TABLES: dict = {}


def _old_tables(rope):
    key = id(rope)
    if key not in _OLD_TABLES:
        cos, sin = rope[0][:, 0], rope[1][:, 0]  # [T, d/2]
        _OLD_TABLES[key] = (torch.cat((cos, cos), -1), torch.cat((sin, sin), -1))
    return _OLD_TABLES[key]


def reference_attention_forward(self, x, key_mask, rope):
    B, T, H = x.shape
    sa = self.self
    h = self.LayerNorm(x)
    q = sa.query(h).view(B, T, sa.n_heads, sa.head_dim).transpose(1, 2)
    k = sa.key(h).view(B, T, sa.n_heads, sa.head_dim).transpose(1, 2)
    v = sa.value(h).view(B, T, sa.n_heads, sa.head_dim).transpose(1, 2)
    if rope is not None:
        cos, sin = _old_tables(rope)
        q = (q * cos + _rotate_half(q) * sin).to(v.dtype)
        k = (k * cos + _rotate_half(k) * sin).to(v.dtype)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    return x + self.output.dense(a.transpose(1, 2).reshape(B, T, H))


def reference_intermediate_forward(self, x):
    x = self.dense(x)
    if self.glu:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
    return F.gelu(x)


def reference_unet_forward(self, x):
    skips = []
    for blk in self._downsample_blocks:
        for conv in blk.conv_layers:
            x = F.silu(conv(x))
        skips.append(x)
        x = F.avg_pool1d(x, kernel_size=2, stride=2)
    for blk, skip in zip(self._upsample_blocks, reversed(skips)):
        for conv in blk.conv_layers:
            x = F.silu(conv(x))
        x = torch.repeat_interleave(x, 2, dim=-1) + skip
    convs = self.final_block.conv_layers
    for i, conv in enumerate(convs):
        x = conv(x)
        if i < len(convs) - 1:
            x = F.silu(x)
    return x


# -- timing --------------------------------------------------------------------------------------------------------
def timed(fn, iters: int) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    return time.perf_counter() - w, time.process_time() - c


def paired(a, b, repeats: int, iters: int) -> dict:
    a(), b()  # warm-up (allocator, kernels, caches)
    wall, cpu = [], []
    for r in range(repeats):
        if r % 2 == 0:
            ta, tb = timed(a, iters), timed(b, iters)
        else:
            tb, ta = timed(b, iters), timed(a, iters)
        wall.append(ta[0] / tb[0])
        cpu.append(ta[1] / tb[1])
    return {"wall": wall, "cpu": cpu}


def fmt(ratios: list[float]) -> str:
    return f"**{statistics.median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f})"


def yeast_ids(model, n: int) -> torch.Tensor:
    with gzip.open(SAMPLE, "rt") as f:
        seq = "".join(line.strip() for line in f if not line.startswith(">"))
    w = model.config.extra.get("segment_window", 1536)
    rows = [model.tokenizer.tokenize_codes(sequence_codes(seq[i * w:(i + 1) * w]))[0] for i in range(n)]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def model_rows(a) -> list[tuple[str, dict]]:
    m = load_model(None)
    ids = yeast_ids(m, a.windows)
    r = m.config.rescaling_for_tokens(ids.shape[1])
    rows = []
    with torch.inference_mode():
        def run(model, **kw):
            return lambda: model(ids, rescaling_factor=r, **kw)

        rows.append(("heads: LM head skipped (`heads=\"segment\"`)",
                     paired(run(m), run(m, heads="segment"), a.repeats, a.iters)))

        new_forward = enc.Attention.forward

        def old():
            enc.Attention.forward = reference_attention_forward
            try:
                m(ids, rescaling_factor=r, heads="segment")
            finally:
                enc.Attention.forward = new_forward
        rows.append(("rotary: signed tables + fused QKV", paired(old, run(m, heads="segment"), a.repeats, a.iters)))

        def softmax_probabilities(logits):
            return torch.softmax(logits.float(), -1)[..., 1]

        def with_softmax():
            ntmod.segment_probabilities = softmax_probabilities
            try:
                m(ids, rescaling_factor=r, heads="segment")
            finally:
                ntmod.segment_probabilities = segment_probabilities
        rows.append(("segment probabilities: sigmoid(l1 - l0) instead of softmax over 2",
                     paired(with_softmax, run(m, heads="segment"), a.repeats, a.iters)))

        def old_inplace():
            saved = enc.Intermediate.forward, heads_mod.UNet1D.forward
            enc.Intermediate.forward, heads_mod.UNet1D.forward = reference_intermediate_forward, reference_unet_forward
            try:
                m(ids, rescaling_factor=r, heads="segment")
            finally:
                enc.Intermediate.forward, heads_mod.UNet1D.forward = saved
        rows.append(("SwiGLU as two matmuls + in-place SiLU*up; U-Net SiLU in place",
                     paired(old_inplace, run(m, heads="segment"), a.repeats, a.iters)))

        m16 = load_model(None, dtype=torch.bfloat16)
        rows.append(("bf16 instead of fp32 (this CPU)",
                     paired(run(m, heads="segment"), run(m16, heads="segment"), a.repeats, a.iters)))
        del m16

        if a.compile:
            mc = load_model(None)
            for i, blk in enumerate(mc.esm.encoder.layer):
                mc.esm.encoder.layer[i] = torch.compile(blk, dynamic=False)
            t = time.perf_counter()
            mc(ids, rescaling_factor=r, heads="segment")
            print(f"torch.compile of {len(mc.esm.encoder.layer)} blocks + first call: {time.perf_counter() - t:.1f} s")
            rows.append(("torch.compile of the encoder blocks",
                         paired(run(m, heads="segment"), run(mc, heads="segment"), a.repeats, a.iters)))
    return rows


# -- end to end ----------------------------------------------------------------------------------------------------
def run_cmd(cmd: list[str], env: dict) -> tuple[float, float]:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def e2e_rows(a, tmp: Path) -> list[tuple[str, dict]]:
    before = tmp / "before"
    before.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", a.base], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    genome = tmp / "genome.fa"
    with gzip.open(SAMPLE, "rb") as f:
        genome.write_bytes(f.read())
    bindir = str(Path(sys.executable).parent)
    region = [] if a.region == "all" else ["-r", a.region]

    def env(tree: Path) -> dict:
        e = dict(os.environ, PYTHONPATH=str(tree), PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
        e.pop("OMP_NUM_THREADS", None)
        return e

    def segment(tree: Path, extra: list[str], out: str) -> list[str]:
        return [sys.executable, "-m", "ntk.cli.main", "segment", str(genome), *region, "-o",
                str(tmp / out), "--force", "-q", *extra]

    def pair_runs(ca, ea, cb, eb) -> dict:
        wall, cpu, abs_a, abs_b = [], [], [], []
        for r in range(a.e2e_repeats):
            if r % 2 == 0:
                ta, tb = run_cmd(ca, ea), run_cmd(cb, eb)
            else:
                tb, ta = run_cmd(cb, eb), run_cmd(ca, ea)
            wall.append(ta[0] / tb[0])
            cpu.append(ta[1] / tb[1])
            abs_a.append(ta[0])
            abs_b.append(tb[0])
        return {"wall": wall, "cpu": cpu, "a_s": abs_a, "b_s": abs_b}

    rows = []
    for extra, label in (([], "default threads"), (["--threads", "1"], "--threads 1")):
        rows.append((f"`ntk segment` end to end, {label}: {a.base} -> this tree",
                     pair_runs(segment(before, extra, "a"), env(before), segment(ROOT, extra, "b"), env(ROOT))))
    torchrun = shutil.which("torchrun", path=bindir) or "torchrun"
    two = [torchrun, "--nproc-per-node", "2", "--no-python", "ntk", "segment", str(genome), *region,
           "-o", str(tmp / "c"), "--force", "-q", "--threads", "1"]
    rows.append(("1 process x 2 threads -> 2 single-thread ranks (torchrun) + merge",
                 pair_runs(segment(ROOT, ["--threads", "2"], "d"), env(ROOT), two, env(ROOT))))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=16, help="windows per forward in the model rows")
    ap.add_argument("--repeats", type=int, default=5, help="A/B pairs per model row")
    ap.add_argument("--iters", type=int, default=2, help="forwards per timing")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the model rows")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the encoder blocks")
    ap.add_argument("--no-model", action="store_true", help="skip the model rows")
    ap.add_argument("--e2e", action="store_true", help="also run ntk segment end to end, before vs now")
    ap.add_argument("--region", default="I:1-100000", help="region of the yeast sample genome, or 'all' (817 kbp)")
    ap.add_argument("--e2e-repeats", type=int, default=3)
    ap.add_argument("--base", default=BASE, help="git commit of the 'before' code")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print("| change | A -> B | wall ratio A/B median (min-max) | CPU-time ratio median (min-max) |")
    print("|---|---|---|---|")
    rows = [] if a.no_model else model_rows(a)
    for name, r in rows:
        print(f"| {name} | model forward, {a.windows} x 257 tokens, {a.threads} thread(s), {a.repeats} pairs | "
              f"{fmt(r['wall'])} | {fmt(r['cpu'])} |")
    if a.e2e:
        with tempfile.TemporaryDirectory() as d:
            for name, r in e2e_rows(a, Path(d)):
                print(f"| {name} | {a.region}, {a.e2e_repeats} pairs, A {statistics.median(r['a_s']):.1f} s -> B "
                      f"{statistics.median(r['b_s']):.1f} s (medians) | {fmt(r['wall'])} | {fmt(r['cpu'])} |")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
