"""The result documents the benchmarks write and the plots read, and their validation."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = 1
KINDS = ("models", "micro", "scaling", "deploy", "parity")
STATUSES = ("ok", "oom", "failed", "skipped")  # skipped: the run's time cap came first

_ENVIRONMENT_KEYS = ("device", "device_type", "device_slug", "torch", "triton", "date")
_ROW_KEYS = {
    "models": ("model", "display", "batch_size", "compile", "dtype", "status"),
    "micro": ("case", "op", "impl", "batch_size", "dtype", "median_ms"),
    "scaling": ("layer", "nodes", "batch_size", "dtype", "status"),
    "deploy": ("model", "display", "form", "runtime", "batch_size", "status"),
    "parity": ("model", "seed", "image", "batch_size", "ort_rel_diff", "float64_rel_diff"),
}
_TIMED_KEYS = ("median_ms", "p10_ms", "p90_ms", "repeats")
_UNTIMED_KINDS = ("parity",)  # rows of numbers other than timings


class ResultError(ValueError):
    """A result document does not follow the schema."""


def validate(doc: object, source: str = "result") -> dict:
    """Return ``doc`` if it is a valid result document, else raise :class:`ResultError`."""
    if not isinstance(doc, dict):
        raise ResultError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ResultError(f"{source}: 'kind' must be one of {KINDS}, got {kind!r}")
    if doc.get("schema") != SCHEMA_VERSION:
        raise ResultError(f"{source}: 'schema' must be {SCHEMA_VERSION}, got {doc.get('schema')!r}")
    env = doc.get("environment")
    if not isinstance(env, dict) or any(k not in env for k in _ENVIRONMENT_KEYS):
        raise ResultError(f"{source}: 'environment' must hold {_ENVIRONMENT_KEYS}")
    rows = doc.get("rows")
    if not isinstance(rows, list):
        raise ResultError(f"{source}: 'rows' must be a list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ResultError(f"{source}: row {i} is not an object")
        missing = [k for k in _ROW_KEYS[kind] if k not in row]
        if missing:
            raise ResultError(f"{source}: row {i} lacks {missing}")
        status = row.get("status", "ok")
        if status not in STATUSES:
            raise ResultError(f"{source}: row {i} has status {status!r}, not one of {STATUSES}")
        if status == "ok" and kind not in _UNTIMED_KINDS:
            absent = [k for k in _TIMED_KEYS if not isinstance(row.get(k), (int, float))]
            if absent:
                raise ResultError(f"{source}: row {i} is 'ok' but lacks numbers for {absent}")
        if not isinstance(row["batch_size"], int) or row["batch_size"] < 1:
            raise ResultError(f"{source}: row {i} has batch_size {row['batch_size']!r}")
    return doc


def load(path: Path | str) -> dict:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ResultError(f"{path}: cannot read a JSON result ({err})") from err
    return validate(doc, str(path))
