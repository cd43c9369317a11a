"""Per-GPU kernel cache: tuned configs and self-check verdicts, one JSON file per (GPU model,
compute capability, Triton version).

Kernel launches read it (:meth:`kernels.tuning.Tunable.config`, :mod:`kernels.selfcheck`);
``python -m autotune --gpu`` and ``python -m kernels.selfcheck`` write it. It lives with the
kernels so that ``kernels/`` never imports the tuner's package.

File ``<gpu-slug>-sm<cc>-triton<major.minor>.json``::

    {"format": 1,
     "device": {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "triton": "3.6"},
     "torch": "2.11.0", "updated": "2026-11-24T12:00:00+00:00",
     "entries": {"<op>": {"<bucket>": {"config": {...}, "time_ms": 0.012,
                                        "source_hash": "...", "space_hash": "...",
                                        "tuned_at": "..."}}},
     "verdicts": {"<op>/<dtype>": {"ok": true, "source_hash": "...", "max_error": 0.0,
                                   "cases": 12, "detail": "", "checked_at": "..."}}}

Lookup order: the user cache directory (``$CLUSTERVIG_AUTOTUNE_DIR``, else
``$XDG_CACHE_HOME/clustervig/autotune``, else ``~/.cache/clustervig/autotune``), then the defaults
shipped in ``kernels/defaults/``. A file that is corrupt, from another GPU or Triton version, or
of another format is ignored with one warning; an entry whose kernel source or search space
changed, or whose config is not in the space, is ignored with one warning per op. Writes go to a
temporary file in the same directory and are renamed over the target (atomic), under a lock so
that concurrent tuners merge rather than overwrite each other's entries.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch


class Tunable(Protocol):
    """What the cache reads of a :class:`kernels.tuning.Tunable` (defined above this module:
    its launches read the cache)."""

    name: str
    space: dict
    default: dict
    interpret_space: Any

    def source_hash(self) -> str: ...

    def space_hash(self) -> str: ...


__all__ = [
    "AutotuneCacheWarning",
    "FORMAT_VERSION",
    "cache_dir",
    "cache_path",
    "device_identity",
    "inspect_file",
    "load",
    "load_verdicts",
    "lookup",
    "save_entries",
    "save_verdicts",
    "shipped_dir",
]

FORMAT_VERSION = 1
ENV_DIR = "CLUSTERVIG_AUTOTUNE_DIR"
INTERPRETER_DEVICE = {"name": "triton-interpreter", "capability": "cpu"}


class AutotuneCacheWarning(UserWarning):
    """A cache file or entry was ignored (corrupt, foreign or stale)."""


_warned: set[str] = set()
_loaded: dict[tuple, dict] = {}
#: (kernel name, device type, device index, bucket) -> (config, "cache" | "default")
_chosen: dict[tuple, tuple[dict, str]] = {}


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        # Attributed to the package, not to a line of library code the user never wrote.
        warnings.warn_explicit(message, AutotuneCacheWarning, "clustervig", 0)


def reset() -> None:
    """Forget loaded files, the configs chosen from them and issued warnings (tests; after
    writing a cache file)."""
    _warned.clear()
    _loaded.clear()
    _chosen.clear()


# --------------------------------------------------------------------------------------------
# Identity and paths
# --------------------------------------------------------------------------------------------
def triton_version() -> str:
    try:
        import triton
    except ImportError:  # pragma: no cover - triton is a dependency on Linux x86-64
        return "none"
    return ".".join(triton.__version__.split(".")[:2])


def device_identity(device: torch.device) -> dict[str, str]:
    """``{"name", "capability", "triton"}`` of a CUDA device, or of the CPU interpreter."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        ident = {"name": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}"}
    else:
        ident = dict(INTERPRETER_DEVICE)
    ident["triton"] = triton_version()
    return ident


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cache_filename(identity: dict[str, str]) -> str:
    capability = identity["capability"].replace(".", "")
    return f"{_slug(identity['name'])}-sm{capability}-triton{identity['triton']}.json"


def cache_dir() -> Path:
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clustervig" / "autotune"


def shipped_dir() -> Path:
    return Path(__file__).resolve().parent / "defaults"


def cache_path(identity: dict[str, str], directory: Path | None = None) -> Path:
    return (directory or cache_dir()) / cache_filename(identity)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
#: A cache file larger than this is no file this project wrote (a full GPU tuning is ~100 KiB):
#: it is ignored unread rather than read whole.
MAX_FILE_BYTES = 16 * 2**20
#: Nesting deeper than this is no cache this project wrote (its tables are 4 levels deep).
MAX_DEPTH = 8


def _depth(value: Any, limit: int) -> int:
    """The nesting depth of ``value`` (dicts and lists), counted iteratively up to ``limit + 1``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def inspect_file(path: Path, identity: dict[str, str]) -> tuple[dict[str, dict], str | None]:
    """``({"entries": ..., "verdicts": ...}, None)`` for a usable file, else ``({}, why)``;
    ``why`` is ``"absent"`` for a missing file. Bounded: a file over :data:`MAX_FILE_BYTES`
    is not read, JSON nested past :data:`MAX_DEPTH` is refused."""
    if not path.is_file():
        return {}, "absent"
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return {}, f"is {size / 2**20:.0f} MiB, more than any cache written here"
        data = json.loads(path.read_text())
    except RecursionError:
        return {}, "is nested too deeply to be a cache written here"
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return {}, f"unreadable ({err})"
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        return {}, "is nested too deeply to be a cache written here"
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        found = data.get("format") if isinstance(data, dict) else "?"
        return {}, f"has format {found}, expected {FORMAT_VERSION}"
    recorded = data.get("device")
    if not isinstance(recorded, dict) or any(recorded.get(k) != v for k, v in identity.items()):
        return {}, f"was written for {recorded}, not this device {identity}"
    entries = data.get("entries")
    verdicts = data.get("verdicts", {})
    if not isinstance(entries, dict) or not isinstance(verdicts, dict):
        return {}, "has no valid 'entries' table"
    return {"entries": entries, "verdicts": verdicts}, None


def _read_file(path: Path, identity: dict[str, str]) -> dict[str, dict]:
    """The tables of one file, or ``{}`` (with one warning) when it cannot be trusted."""
    tables, problem = inspect_file(path, identity)
    if problem is not None and problem != "absent":
        _warn_once(str(path), f"autotune cache {path} {problem}; ignoring it")
    return tables


def _load_table(device: torch.device, table: str) -> dict[str, Any]:
    """One table of ``device``'s files: the shipped defaults overlaid by the user cache
    (memoised). ``entries`` merge per op and bucket, ``verdicts`` per key."""
    identity = device_identity(device)
    key = (tuple(sorted(identity.items())), str(cache_dir()), table)
    if key not in _loaded:
        merged: dict[str, Any] = {}
        for path in (cache_path(identity, shipped_dir()), cache_path(identity)):
            for name, value in _read_file(path, identity).get(table, {}).items():
                if table == "entries" and isinstance(value, dict):
                    merged.setdefault(name, {}).update(value)
                elif table == "verdicts" and isinstance(value, dict):
                    merged[name] = value
        _loaded[key] = merged
    return _loaded[key]


def load(device: torch.device) -> dict[str, Any]:
    """Tuned entries for ``device``: ``{op: {bucket: entry}}``."""
    return _load_table(device, "entries")


def load_verdicts(device: torch.device) -> dict[str, Any]:
    """Self-check verdicts for ``device``: ``{"<op>/<dtype>": verdict}``."""
    return _load_table(device, "verdicts")


def _valid_config(entry: Any, tunable: Tunable, bucket: str) -> dict | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        return None
    if entry.get("source_hash") != tunable.source_hash():
        return None
    if entry.get("space_hash") != tunable.space_hash():
        return None
    config = entry["config"]
    width = bucket.split("/", 1)[0]
    for known in (*tunable.space.get(width, ()), *tunable.interpret_space):
        if _same_typed(config, dict(known)):
            return dict(known)
    return None


def _same_typed(config: dict, known: dict) -> bool:
    """Equal keys and values of equal types: ``32.0`` is not the block size ``32`` (a float
    where Triton needs an int crashes the launch), ``True`` is not ``1``."""
    return config.keys() == known.keys() and all(
        type(config[k]) is type(known[k]) and config[k] == known[k] for k in known
    )


def lookup(tunable: Tunable, device: torch.device, bucket: str) -> dict | None:
    """The cached config of ``tunable`` for ``bucket`` on ``device``, or None.

    An entry recorded for another kernel source or search space, or naming a config outside the
    space, is never applied: it is ignored with one warning per op.
    """
    entry = load(device).get(tunable.name, {}).get(bucket)
    if entry is None:
        return None
    config = _valid_config(entry, tunable, bucket)
    if config is None:
        _warn_once(
            f"stale:{tunable.name}",
            f"autotune cache entry for {tunable.name!r} was tuned for another kernel source or "
            "search space; using the default config (re-run `python -m autotune --gpu`)",
        )
    return config


def config_for(tunable: Tunable, device: torch.device, bucket: str) -> tuple[dict, str]:
    """``(config, source)`` of a launch of ``tunable`` in ``bucket`` on ``device``: the cached
    config (``"cache"``) or the kernel's default (``"default"``), decided once per process
    until :func:`reset`."""
    key = (tunable.name, device.type, device.index, bucket)
    hit = _chosen.get(key)
    if hit is None:
        entry = lookup(tunable, device, bucket)
        default = tunable.default[bucket.split("/", 1)[0]]
        hit = (dict(entry), "cache") if entry is not None else (dict(default), "default")
        _chosen[key] = hit
    return hit


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_suffix(path.suffix + ".lock")
    with open(lock, "a+") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no POSIX locks: atomic rename still prevents truncation
            pass
        yield


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory + ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _save_table(
    identity: dict[str, str], table: str, update, directory: Path | None = None
) -> Path:
    """Apply ``update(existing_table)`` to one table of ``identity``'s file, under the lock,
    written atomically; the other table is kept as it is."""
    path = cache_path(identity, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        existing = _read_file(path, identity) if path.exists() else {}
        tables = {"entries": existing.get("entries", {}), "verdicts": existing.get("verdicts", {})}
        update(tables[table])
        atomic_write_json(
            path,
            {
                "format": FORMAT_VERSION,
                "device": identity,
                "torch": torch.__version__,
                "updated": _now(),
                **tables,
            },
        )
    _loaded.clear()
    return path


def save_entries(
    identity: dict[str, str], new_entries: dict[str, dict[str, dict]], directory: Path | None = None
) -> Path:
    """Merge ``{op: {bucket: entry}}`` into the cache file of ``identity``, written atomically."""

    def update(entries: dict) -> None:
        for op, buckets in new_entries.items():
            entries.setdefault(op, {}).update(buckets)

    return _save_table(identity, "entries", update, directory)


def save_verdicts(
    identity: dict[str, str], new_verdicts: dict[str, dict], directory: Path | None = None
) -> Path:
    """Merge ``{"<op>/<dtype>": verdict}`` into the cache file of ``identity`` (atomic)."""
    return _save_table(identity, "verdicts", lambda v: v.update(new_verdicts), directory)


def make_entry(tunable: Tunable, config: dict, time_ms: float) -> dict:
    return {
        "config": dict(config),
        "time_ms": round(float(time_ms), 6),
        "source_hash": tunable.source_hash(),
        "space_hash": tunable.space_hash(),
        "tuned_at": _now(),
    }
