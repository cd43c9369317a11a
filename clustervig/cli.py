"""What the command lines share (``python -m clustervig ...`` and ``python -m reports ...``): a
user's mistake reported in one line without a traceback, and ``--model`` names resolved."""

from __future__ import annotations

import argparse
import sys

__all__ = ["canonical_model_name", "user_error"]


def user_error(prefix: str, err: Exception) -> int:
    """Print ``prefix: err`` on stderr and return 2, the exit status of a user's mistake (a
    wrong size, file or option found after parsing), e.g. ``return user_error("python -m
    clustervig export", err)``."""
    print(f"{prefix}: {err}", file=sys.stderr)
    return 2


def canonical_model_name(parser: argparse.ArgumentParser, name: str) -> str:
    """The registry's name for ``name`` (any spelling :func:`clustervig.canonical_name` takes),
    or ``parser``'s usage error with its message (exit status 2)."""
    from .registry import canonical_name

    try:
        return canonical_name(name)
    except ValueError as err:
        parser.error(str(err))


def environment_error(prog: str) -> int | None:
    """The exit status of a user's mistake (2, after one line on stderr) when an environment
    variable of the kernels is set to a value they do not take, else None: the command lines
    call it right after parsing their arguments."""
    import kernels

    try:
        kernels.check_environment()
    except ValueError as err:
        return user_error(prog, err)
    return None
