"""Model configs with user overrides: unknown names and bad values are reported by name."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

__all__ = ["UnknownOptionError", "apply_overrides", "parse_override"]

C = TypeVar("C")


class UnknownOptionError(TypeError, ValueError):
    """An option the model does not have: a ``TypeError``, as an unexpected keyword argument is
    in Python (what timm's factory expects), and a ``ValueError`` like every other bad option
    here (what this package's CLIs report in one line)."""


def apply_overrides(owner: str, config: C, overrides: dict) -> C:
    """``config`` with ``overrides`` applied; an unknown option raises
    :class:`UnknownOptionError` listing the valid ones (instead of the dataclass's ``unexpected
    keyword argument``)."""
    fields = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise UnknownOptionError(
            f"{owner}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"valid options: {', '.join(fields)}"
        )
    return dataclasses.replace(config, **overrides)


def parse_override(item: str) -> tuple[str, object]:
    """``"KEY=VALUE"`` (a ``--model-args`` item) -> ``(key, value)`` with ints, floats and
    true/false converted."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--model-args: expected KEY=VALUE, got {item!r}")
    for cast in (int, float):
        try:
            return key, cast(text)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(text.lower(), text)
