import shutil
import subprocess
import sys
from pathlib import Path

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
