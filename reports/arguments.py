"""Argument types the report commands share (light: ``.ci/gpu-session`` imports it before torch)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["seconds"]


def seconds(maximum: float | None = None) -> Callable[[str], float]:
    """An argparse type: a number of seconds > 0 (and at most ``maximum``); NaN and words are
    refused with the accepted range."""
    bound = f"(0, {maximum:g}]" if maximum is not None else "> 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value > 0 and (maximum is None or value <= maximum)):
            raise argparse.ArgumentTypeError(f"must be a number of seconds {bound}, got {text!r}")
        return value

    return parse
