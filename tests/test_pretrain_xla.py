"""`ntk pretrain --device xla` on torch-xla's CPU PJRT backend (run by `make test-xla` in its own environment).

Skipped where torch-xla is not installed (the project's main environment: torch-xla wheels are built for one
torch release each, see the Makefile's test-xla target).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

torch_xla = pytest.importorskip("torch_xla", reason="torch-xla is not installed (run `make test-xla`)")

os.environ.setdefault("PJRT_DEVICE", "CPU")

import polars as pl  # noqa: E402
import torch  # noqa: E402

import ntk  # noqa: E402
from ntk.pipelines.pretrain import PretrainOptions, pretrain  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample" / "genome.fa.gz"


def _compiles() -> int:
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    return int(data[0]) if data else 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pretrain_on_xla_cpu_has_static_shapes(tmp_path, precision):
    genome = tmp_path / "genome.fa.gz"
    shutil.copy(SAMPLE, genome)
    opts = dict(config="tiny", seq_len=32, tokens_per_batch=256, warmup=1, lr=2e-3, val_windows=16, eval_every=2,
                save_every=3, device="xla", precision=precision, quiet=True, seed=0)
    s = pretrain([str(genome)], tmp_path / "a", PretrainOptions(steps=3, **opts))
    assert s["step"] == 3
    after_short = _compiles()
    # a longer run re-uses the same graphs: every step has the same shapes whatever the mask drew
    s = pretrain([str(genome)], tmp_path / "b", PretrainOptions(steps=6, **opts))
    assert s["step"] == 6 and _compiles() == after_short
    losses = pl.read_parquet(tmp_path / "b" / "metrics.parquet").filter(pl.col("step") > 0)["loss"].to_list()
    assert len(losses) == 6 and all(7.0 < x < 9.5 for x in losses)
    m = ntk.load_model(tmp_path / "b" / "final")  # checkpoints are written from XLA tensors as plain CPU ones
    assert m(torch.tensor([[3, 10, 11, 12]])).logits.shape == (1, 4, 4107)
