"""timm's own model tests against this project's models: ``python -m tests.timm_suite``.

timm's maintainers run ``tests/test_models.py`` on every model before it is merged. It ships in
timm's source distribution, not in the wheel: this fetches the distribution of the installed
timm version from the package index (``pip download --no-binary :all:``; nothing of it is kept
in this repository), and runs its ``test_models.py`` the way timm's CI does, on the models
``clustervig`` registers, with this project's registering module listed among the families
that support ``forward_intermediates`` / ``features_only`` (``FEAT_INTER_FILTERS``) and among
those timm declares not scriptable (``EXCLUDE_JIT_FILTERS``, as for its ``hiera``, ``hrnet``
and ``densenet`` families: the models raise a clear error when scripted and export through
``torch.export`` and ONNX instead).

The test file is copied to a temporary directory and those two lists are extended there (one
inserted line, which fails loudly if timm's file no longer has the lists); the models are
selected with ``-k``. Extra arguments go to pytest (``-x``, ``-k`` further, ``--timeout``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: timm's registry records a model's module by the last part of the entry point's module name.
REGISTERING_MODULE = "timm_models"
MODEL_PATTERNS = ("cvig_*", "pvig_*", "ivig_*")
#: Where the inserted line goes: after every list it extends is defined.
ANCHOR = "TARGET_FWD_SIZE = MAX_FWD_SIZE"
CONFTEST = """
import clustervig  # noqa: F401  (registers this project's models with timm)
"""


def fetch_timm_tests(work: Path) -> Path:
    """The ``tests`` directory of the installed timm version's source distribution."""
    import timm

    version = timm.__version__
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-binary",
            ":all:",
            "--no-deps",
            f"timm=={version}",
            "-d",
            str(work),
        ],
        check=True,
    )
    archive = next(work.glob(f"timm-{version}.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    return work / f"timm-{version}" / "tests"


def prepare(timm_tests: Path, out: Path) -> Path:
    """Copy timm's ``test_models.py`` (and its conftest) into ``out``, extended for this
    project's models (module docstring); returns the copied test file."""
    source = (timm_tests / "test_models.py").read_text()
    if ANCHOR not in source or "FEAT_INTER_FILTERS" not in source:
        raise SystemExit(
            f"timm_suite: {timm_tests}/test_models.py no longer defines FEAT_INTER_FILTERS "
            f"before {ANCHOR!r}; update tests/timm_suite.py for this timm version"
        )
    patterns = ", ".join(repr(p) for p in MODEL_PATTERNS)
    line = (
        f"FEAT_INTER_FILTERS += [{REGISTERING_MODULE!r}]; "
        f"EXCLUDE_JIT_FILTERS += [{patterns}]  # clustervig\n"
    )
    source = source.replace(ANCHOR, line + ANCHOR, 1)
    target = out / "test_models.py"
    target.write_text(source)
    conftest = timm_tests / "conftest.py"
    extra = conftest.read_text() if conftest.exists() else ""
    (out / "conftest.py").write_text(CONFTEST + extra)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.timm_suite",
        description="Run timm's own tests/test_models.py on this project's registered models.",
    )
    parser.add_argument(
        "--timm-tests",
        type=Path,
        help="timm's tests/ directory (default: fetched from the installed version's sdist)",
    )
    args, pytest_args = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="clustervig-timm-suite-") as tmp:
        work = Path(tmp)
        timm_tests = args.timm_tests or fetch_timm_tests(work / "sdist")
        run_dir = work / "run"
        run_dir.mkdir()
        target = prepare(timm_tests, run_dir)
        select = " or ".join(p.rstrip("_*") for p in MODEL_PATTERNS)
        command = [
            sys.executable,
            "-m",
            "pytest",
            str(target),
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::pytest.PytestUnknownMarkWarning",
            "--rootdir",
            str(run_dir),
            "-k",
            select,
            *pytest_args,
        ]
        print(f"timm_suite: {' '.join(command)}", flush=True)
        code = subprocess.run(command, cwd=run_dir).returncode
        shutil.rmtree(run_dir, ignore_errors=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
