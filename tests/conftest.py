import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden"
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


def run_ntk(*args, input=None, check=False, cwd=None):
    """Run the real CLI in a subprocess; returns CompletedProcess (text)."""
    p = subprocess.run([sys.executable, "-m", "ntk.cli.main", *map(str, args)], input=input, capture_output=True,
                       text=True, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"ntk {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (make setup installs it from Debian)")
    return path


@pytest.fixture
def one_torch_thread():
    """One torch thread for tests of tiny models: steady speed when the other core is busy (tests run in parallel
    under -n 2); modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- float tolerances (see tests/TOLERANCES.md for why each bound holds) ------------------------------------------
F32_EPS = float(np.finfo(np.float32).eps)  # 2**-23: the spacing of float32 just above 1.0
# Same math, different summation order: batch size, padding, window tiling and the CPU's BLAS kernels (AVX2 vs
# AVX-512 vs NEON block a matmul differently) each round differently. A few ulp per matmul, through the handful of
# layers of the test models: 64 eps x the values' scale (observed: <= 7 eps on x86-64 AVX2 and AVX-512).
REORDER_ULPS = 64
# Mathematically equal, computed another way: merged adapter weights W + (alpha/r) B A (one rounding of the sum in
# the weights instead of one in the activations, at every adapted layer), a checkpoint written and read back.
MERGE_ULPS = 256
# Two training runs that differ only in how a step's batch is summed (one batch vs two accumulated micro-batches):
# gradients agree to a few eps, AdamW divides by sqrt(v) (which keeps relative, not absolute, differences) over a
# few steps.
TRAIN_ULPS = 256


def assert_f32_close(got, want, ulps: float = REORDER_ULPS, scale: float | None = None, what: str = "") -> None:
    """max |got - want| <= ulps x eps32 x scale, scale = max |want| unless given (e.g. 1 for probabilities).
    NaN must be at the same places in both (positions without a value)."""
    got, want = (np.asarray(x.detach().cpu().double() if hasattr(x, "detach") else x, dtype=np.float64)
                 for x in (got, want))
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), f"{what}: values missing at other positions"
    if nan.all():
        return
    if scale is None:
        scale = float(np.abs(want[~nan]).max())
    err = float(np.abs(got[~nan] - want[~nan]).max())
    bound = ulps * F32_EPS * max(scale, np.finfo(np.float32).tiny)
    if os.environ.get("NTK_TOL_REPORT"):  # record the observed error in eps x scale (for tests/TOLERANCES.md)
        with open(os.environ["NTK_TOL_REPORT"], "a") as f:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            f.write(f"{test}\t{what}\t{err / (F32_EPS * scale):.2f}\t{ulps}\n")
    assert err <= bound, (f"{what}: max |diff| {err:.3g} > {ulps} eps32 x scale {scale:.3g} = {bound:.3g} "
                          f"({err / (F32_EPS * scale):.1f} eps x scale)")
