"""``--compile``: a model forward compiled by ``torch.compile`` for one static batch shape (issue #19).

Modes (:data:`COMPILE_MODES`):

- ``off`` (default): eager PyTorch.
- ``on``: inductor (``torch.compile(fn, dynamic=False)``): fused element-wise work (rotary, LayerNorm, SwiGLU,
  the U-Net's convolutions' epilogues), one graph for the whole forward (encoder + head).
- ``cudagraphs``: ``on`` plus CUDA graphs (``mode="reduce-overhead"``): the launches of a forward are replayed as
  one graph; pays when kernels are short (small models, small batches). CUDA only.

Not ``auto``: compiling costs tens of seconds to minutes per run (once per shape) and its gain is not measured
yet on the released models (``bench/segment_gpu.py`` rows ``compile``/``cudagraphs``); it stays opt-in until
those rows say when it pays.

**One static shape per run, no recompiles.** The compiled function sees exactly one input shape ``(rows,
tokens)``: the one the job declares (segment: a full batch of the run's window) or else the first batch it is
given (fixed-length embed/score windows). A later batch of the same length with at least half as many rows is
padded to the full batch with copies of its last row (their outputs are dropped, so no value depends on the
padding); every other batch (the short windows of short ACGT runs, a small last batch, padded batches of
variable-length records) runs eager. Compiled and eager values agree to float32 reordering error.

Where inductor cannot work the run stops before the model loads, with one line saying why: on CPU without a C++
compiler (inductor builds its kernels with one), on CUDA without triton, on other devices (mps, xla).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..errors import NtkError

COMPILE_MODES = ("off", "on", "cudagraphs")
BACKEND = "inductor"  # torch.compile's backend (tests of the plumbing set "eager": dynamo alone, no code generation)


def check_compile(mode: str, device: torch.device | str) -> str:
    """``mode`` checked against the device (NtkError naming what is missing); returns it."""
    if mode not in COMPILE_MODES:
        raise NtkError(f"--compile {mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    if mode == "off":
        return mode
    kind = torch.device(device).type
    if kind == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise NtkError("--compile: torch.compile on CUDA needs triton (pip install triton), which is not "
                           "installed; run without --compile")
    elif kind == "cpu":
        if mode == "cudagraphs":
            raise NtkError("--compile cudagraphs: CUDA graphs need a CUDA device (use --compile on on CPU)")
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception:  # InvalidCxxCompiler (and whatever a broken toolchain raises)
            raise NtkError("--compile: torch.compile on CPU needs a C++ compiler (g++ or clang++, or $CXX) and "
                           "none works on this machine; install one or run without --compile") from None
    else:
        raise NtkError(f"--compile: torch.compile runs on cuda and cpu devices, not {kind}; run without --compile")
    return mode


class StaticCompiled:
    """``fn(ids [B, T], *per_row_tensors) -> tensor [B, ...]`` compiled for one shape ``(rows, tokens)``; other
    shapes run ``fn`` eagerly (see the module docstring). ``info()`` is what run.json records."""

    def __init__(self, fn: Callable[..., torch.Tensor], mode: str, shape: tuple[int, int] | None = None,
                 rows_for: Callable[[int], int] | None = None, backend: str | None = None):
        """``shape``: the static (rows, tokens); None: the first batch's tokens T, and ``rows_for(T)`` rows (a full
        batch of that length under the job's batch rule) or else the first batch's rows. ``backend``: torch.compile's
        (default :data:`BACKEND`)."""
        self.fn = fn
        self.mode = mode
        self.shape = shape
        self.rows_for = rows_for
        graphs = {"mode": "reduce-overhead"} if mode == "cudagraphs" else {}  # CUDA graphs (inductor's option)
        self.compiled = torch.compile(fn, dynamic=False, fullgraph=True, backend=backend or BACKEND,
                                      **graphs)
        self.batches_compiled = self.batches_eager = self.rows_padded = 0
        self.compile_seconds: float | None = None

    def reset_counts(self) -> None:
        """Zero the batch counts (a run reusing this compiled forward reports its own; compile_seconds stays)."""
        self.batches_compiled = self.batches_eager = self.rows_padded = 0

    def takes(self, rows: int, tokens: int) -> bool:
        """Whether a batch of this shape runs compiled (padded to the static rows when it has fewer)."""
        if self.shape is None:
            return True
        R, T = self.shape
        return tokens == T and R <= 2 * rows <= 2 * R

    def __call__(self, ids: torch.Tensor, *rows: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        if not self.takes(B, T):
            self.batches_eager += 1
            return self.fn(ids, *rows)
        if self.shape is None:
            self.shape = (max(B, self.rows_for(T)) if self.rows_for is not None else B, T)
            if not self.takes(B, T):  # a first batch under half the full rows runs eager
                self.batches_eager += 1
                return self.fn(ids, *rows)
        R = self.shape[0]
        args = [ids, *rows]
        if B < R:
            args = [torch.cat([a, a[-1:].expand(R - B, *a.shape[1:])]) for a in args]
            self.rows_padded += R - B
        if self.mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        first = self.compile_seconds is None
        t = time.perf_counter()
        try:
            out = self.compiled(*args)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            if not first:
                raise
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise NtkError(f"--compile: torch.compile failed ({why}); run without --compile") from None
        if first:
            self.compile_seconds = time.perf_counter() - t  # the first call compiles (and runs once)
        self.batches_compiled += 1
        out = out[:B]
        return out.clone() if self.mode == "cudagraphs" else out  # a replay overwrites the graph's outputs

    def eager(self, fn: Callable[..., torch.Tensor], *args) -> torch.Tensor:
        """Run ``fn`` (a forward the compiled one cannot take: a padded batch) and count it as an eager batch."""
        self.batches_eager += 1
        return fn(*args)

    def info(self) -> dict:
        return {"mode": self.mode, "shape": list(self.shape) if self.shape is not None else None,
                "batches_compiled": self.batches_compiled, "batches_eager": self.batches_eager,
                "rows_padded": self.rows_padded,
                "compile_seconds": round(self.compile_seconds, 3) if self.compile_seconds is not None else None}


def compile_info(mode: str, compiled: StaticCompiled | None) -> dict:
    """run.json's ``runtime.compile``: ``{"mode": "off"}`` or the compiled forward's counts."""
    return compiled.info() if compiled is not None else {"mode": mode}
