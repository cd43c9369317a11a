"""Test set-up shared by the whole suite.

Without a GPU, Triton kernels run under the interpreter: TRITON_INTERPRET must be set before any
kernel module is imported, so it is set here, before the test modules import ``kernels``.
"""

import os
import tempfile

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
# The suite never reads or writes the user's tuning cache (configs and self-check verdicts).
os.environ["CLUSTERVIG_AUTOTUNE_DIR"] = tempfile.mkdtemp(prefix="clustervig-test-cache-")
# Nor its compiled CPU kernels: the suite builds its own once (a second or two).
os.environ["CLUSTERVIG_NATIVE_DIR"] = tempfile.mkdtemp(prefix="clustervig-test-native-")

import pytest  # noqa: E402


@pytest.fixture
def device() -> torch.device:
    """The device kernels are tested on: CUDA when present, else the CPU under the interpreter."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
