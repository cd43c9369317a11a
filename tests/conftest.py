"""Test set-up shared by the whole suite.

Without a GPU, Triton kernels run under the interpreter: TRITON_INTERPRET must be set before any
kernel module is imported, so it is set here, before the test modules import ``kernels``
(unless it is set already: ``TRITON_INTERPRET=0`` turns the interpreter off).

Where no Triton kernel can run (no CUDA device and the interpreter off), a test that launches
one is reported as skipped, with the reason, instead of failing: on a GPU machine the same
tests run the kernels on CUDA tensors, and without either nothing can check them.
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

#: Whether the Triton interpreter runs the kernels on CPU tensors in this process.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
#: Whether Triton kernels can run in this process: on CUDA, or on CPU tensors interpreted.
KERNELS_RUN = HAS_CUDA or INTERPRETED
_NO_INTERPRETER = "TRITON_INTERPRET is off: the Triton kernels cannot run on CPU tensors"
#: What a launch on CPU tensors says without the interpreter (the backend's own error), and
#: where no kernel can run at all (Triton's for a CPU pointer, or for a missing GPU driver).
_NEEDS_INTERPRETER = "needs the Triton interpreter"
_NO_KERNELS = ("cannot be accessed from Triton", "0 active drivers")


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "interpreter: needs the Triton interpreter (skipped where it is off)"
    )


def pytest_collection_modifyitems(config, items) -> None:
    if INTERPRETED:
        return
    skip = pytest.mark.skip(reason=_NO_INTERPRETER)
    for item in items:
        if "interpreter" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Without the interpreter, a test that launches a kernel on CPU tensors is skipped (with
    the reason) instead of failing; so is every kernel launch where no kernel can run."""
    outcome = yield
    report = outcome.get_result()
    if INTERPRETED or call.excinfo is None or report.when not in ("setup", "call"):
        return
    message = str(call.excinfo.value)
    no_kernels = not KERNELS_RUN and any(text in message for text in _NO_KERNELS)
    if _NEEDS_INTERPRETER in message or no_kernels:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {_NO_INTERPRETER}")


@pytest.fixture
def device() -> torch.device:
    """The device kernels are tested on: CUDA when present, else the CPU under the interpreter
    (skipped where neither runs them)."""
    if not KERNELS_RUN:
        pytest.skip(f"no CUDA device and {_NO_INTERPRETER}")
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
