"""The compiled CPU kernels of the graph ops (each op's ``kernels/<op>/*.c``), built on first use.

On the CPU, k-means, the partition order and the in-partition k-NN are loops over a few hundred
nodes: as PyTorch ops their dispatch and padding cost more than their arithmetic (with the
aggregation they were ~30% of a CViG-Ti forward at batch 8). Their C twins (and the
aggregation's forward) run the same contracts as their references, one call per op; each op's
``native.py`` declares and calls its functions (:func:`function`, :func:`run_parallel`).
Like Triton's launcher stubs, they are compiled by the system's C compiler (``$CC``, else
``cc``) the first time a process needs them, into ``$XDG_CACHE_HOME/clustervig/native`` (else
``~/.cache/clustervig/native``; ``CLUSTERVIG_NATIVE_DIR`` overrides it), and loaded with
:mod:`ctypes`. The file name carries a hash of the sources, the compiler, its flags and the CPU
(``-march=native``), so a change of any of them builds a new library.

Nothing is lost without a compiler: :func:`available` is False, one warning says why, and the
ops run the PyTorch references. A cached library that cannot be loaded or reports another
interface version is reported and rebuilt, never used.

A library is code this process runs (``dlopen`` runs its constructors before any check), so the
cache must not be a place where someone else can plant one: the directory is created private
(0700), and one owned by another user or writable by group or others is refused (one warning;
the references run). Each library this project builds is recorded with its SHA-256 beside it
(``<name>.so.sha256``) and loaded only if the file still has that hash: a planted, truncated
(which would kill the process with SIGBUS when mapped) or corrupt file is rebuilt instead. When
the cache cannot be written, a private temporary directory is used and removed at exit.

Results: labels, neighbours and iteration counts are those of the references up to rounding
(sums and dot products are accumulated in another order, so a node almost equidistant from two
centroids may go the other way); float32 arithmetic, as the references use for every dtype but
float64.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

__all__ = [
    "available",
    "build_error",
    "cache_dir",
    "function",
    "library_path",
    "pointer",
    "require",
    "run_parallel",
    "sources",
]

#: Must equal ``cvig_abi_version()`` in ``csrc/abi.c``.
ABI_VERSION = 2
ENV_DIR = "CLUSTERVIG_NATIVE_DIR"
#: Tried in order: the first set the compiler accepts builds the library.
FLAG_SETS = (
    ("-O3", "-march=native", "-std=gnu11", "-fPIC", "-shared"),
    ("-O3", "-std=gnu11", "-fPIC", "-shared"),
)
#: Work (multiply-adds) below which a call stays on one thread: a thread hand-off costs
#: tens of microseconds.
PARALLEL_WORK = 1 << 22


class NativeBuildWarning(UserWarning):
    """The compiled CPU kernels could not be built or loaded; the references run instead."""


_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib", "path", "error": the outcome of the one build attempt
_pool: ThreadPoolExecutor | None = None


def _after_fork_in_child() -> None:
    """A forked child (a DataLoader worker, a multiprocessing pool) inherits the pool object but
    not its threads, and maybe a lock held by another thread: work sent there would never run."""
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _package_dir() -> Path:
    return Path(__file__).resolve().parent


def _include_dir() -> Path:
    """The shared sources: the interface version (``abi.c``) and the headers (``dots.h``)."""
    return _package_dir() / "csrc"


def sources() -> list[Path]:
    """Every C source of the library: ``csrc/abi.c`` and each op folder's ``*.c`` (found on
    disk: an op adds a C twin by adding the file to its folder)."""
    ops = sorted(p for p in _package_dir().glob("*/*.c") if p.parent != _include_dir())
    return [_include_dir() / "abi.c", *ops]


def _headers() -> list[Path]:
    return sorted(_include_dir().glob("*.h"))


def cache_dir() -> Path:
    """Where compiled libraries are kept (see the module docstring)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clustervig" / "native"


def _compiler() -> list[str] | None:
    """The compiler command: ``$CC`` (which may carry options, e.g. ``gcc -m64``), else ``cc``;
    None if its program is not on PATH."""
    command = shlex.split(os.environ.get("CC") or "cc") or ["cc"]
    program = shutil.which(command[0])
    return None if program is None else [program, *command[1:]]


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags where Linux lists them."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build_key(compiler: list[str]) -> str:
    digest = hashlib.sha256()
    try:
        version = subprocess.run(
            [*compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    for part in (str(ABI_VERSION), repr(compiler), version, repr(FLAG_SETS), _cpu_signature()):
        digest.update(part.encode())
    for path in (*sources(), *_headers()):
        digest.update(path.relative_to(_package_dir()).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _unsafe(path: Path) -> str | None:
    """Why ``path`` (the cache directory or a file in it) is not this user's alone, or None."""
    info = path.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"owned by uid {info.st_uid}, not by this user (uid {os.getuid()})"
    if info.st_mode & 0o022:
        who = " and ".join(
            w for w, bit in (("group", 0o020), ("others", 0o002)) if info.st_mode & bit
        )
        return f"writable by {who} (mode {info.st_mode & 0o777:o})"
    return None


def _verified(library: Path) -> str | None:
    """Why the cached ``library`` must not be loaded (None: it is the file this project built,
    unchanged since)."""
    record = _record_path(library)
    if not record.is_file():
        return "no record of its SHA-256 (not built here, or from an older version)"
    why = _unsafe(library) or _unsafe(record)
    if why:
        return why
    if record.read_text().strip() != _digest(library):
        return "its SHA-256 differs from the one recorded when it was built (truncated or replaced)"
    return None


def _load(path: Path) -> ctypes.CDLL:
    """Load ``path`` and declare its functions; raises OSError if it is not our library."""
    lib = ctypes.CDLL(str(path))
    try:
        version = lib.cvig_abi_version()
    except AttributeError as exc:
        raise OSError("no cvig_abi_version symbol: not a clustervig library") from exc
    if version != ABI_VERSION:
        raise OSError(f"interface version {version}, expected {ABI_VERSION}")
    return lib


def _compile(compiler: list[str], directory: Path, final: Path) -> ctypes.CDLL:
    """Build into a private file, load it from there, then move it to ``final`` (atomic, so a
    process racing this one sees either no file or a whole one). Raises RuntimeError."""
    files = [str(path) for path in sources()]
    errors = []
    for flags in FLAG_SETS:
        fd, tmp = tempfile.mkstemp(prefix=final.stem + "-", suffix=".so", dir=directory)
        os.close(fd)
        try:
            done = subprocess.run(
                [*compiler, *flags, "-I", str(_include_dir()), "-o", tmp, *files, "-lm"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode == 0:
                lib = _load(Path(tmp))  # loaded from its private name: never a stale handle
                record = _record_path(final)
                record_tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
                record_tmp.write_text(_digest(Path(tmp)) + "\n")
                os.replace(record_tmp, record)
                os.replace(tmp, final)
                return lib
            lines = (done.stderr or done.stdout).strip().splitlines()
            message = " / ".join(lines[:3]) or f"exit status {done.returncode}"
        except (OSError, subprocess.SubprocessError) as exc:
            message = str(exc)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        errors.append(f"{' '.join(flags)}: {message}")
    raise RuntimeError("; ".join(errors))


class UnsafeCacheError(OSError):
    """The cache directory is not this user's alone: nothing in it may be loaded."""


def _writable_cache_dir() -> Path:
    """:func:`cache_dir` (created private), or a fresh private temporary directory, removed at
    exit, when that cannot be written (a read-only home): the kernels are then rebuilt by every
    process, but they still run. Raises :class:`UnsafeCacheError` for a directory another user
    owns or others can write."""
    directory = cache_dir()
    try:
        existed = directory.is_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not existed:
            directory.chmod(0o700)  # mkdir's mode is masked by the umask
        why = _unsafe(directory)
        if why:
            raise UnsafeCacheError(
                f"refusing the CPU kernel cache {directory}: {why}; make it private "
                f"(chmod 700) or point {ENV_DIR} at a directory of your own"
            )
        if _writable(directory):
            return directory
    except UnsafeCacheError:
        raise
    except OSError:
        pass
    fallback = Path(tempfile.mkdtemp(prefix="clustervig-native-"))
    atexit.register(shutil.rmtree, fallback, ignore_errors=True)
    return fallback


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK)


def _build() -> None:
    compiler = _compiler()
    if compiler is None:
        _state["error"] = f"no C compiler ({os.environ.get('CC') or 'cc'}) on PATH"
        return
    try:
        directory = _writable_cache_dir()
    except UnsafeCacheError as exc:
        _state["error"] = str(exc)
        return
    final = directory / f"clustervig_cpu-{_build_key(compiler)}.so"
    if final.exists():
        try:
            why = _verified(final)
            if why:
                raise OSError(why)
            _state["lib"], _state["path"] = _load(final), final
            return
        except OSError as exc:
            warnings.warn(
                f"clustervig: the cached CPU kernels {final} are unusable ({exc}); rebuilding",
                NativeBuildWarning,
                stacklevel=4,
            )
    try:
        _state["lib"], _state["path"] = _compile(compiler, directory, final), final
    except (OSError, RuntimeError) as exc:
        _state["error"] = f"{shlex.join(compiler)} failed: {exc}"


def _library() -> ctypes.CDLL | None:
    if "lib" not in _state and "error" not in _state:
        with _lock:
            if "lib" not in _state and "error" not in _state:
                _build()
                if "error" in _state:
                    warnings.warn(
                        "clustervig: the compiled CPU kernels are unavailable "
                        f"({_state['error']}); the CPU graph ops run on the PyTorch references "
                        "(slower). CLUSTERVIG_BACKEND=torch chooses them without trying.",
                        NativeBuildWarning,
                        stacklevel=4,
                    )
    return _state.get("lib")  # type: ignore[return-value]


def available() -> bool:
    """Whether the compiled CPU kernels can run (builds them on the first call)."""
    return _library() is not None


def build_error() -> str | None:
    """Why :func:`available` is False (None if it is True or nothing was tried yet)."""
    return _state.get("error")  # type: ignore[return-value]


def library_path() -> Path | None:
    """The loaded library's file (builds it on the first call)."""
    _library()
    return _state.get("path")  # type: ignore[return-value]


def require() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError(
            f"backend 'native': the compiled CPU kernels are unavailable ({_state['error']})"
        )
    return lib


_declared: dict[tuple[int, str], object] = {}


def function(name: str, argtypes: list, restype) -> ctypes._CFuncPtr:
    """The library's function ``name`` with its ctypes argument and result types declared
    (once per process); builds the library on the first call (:func:`require`)."""
    lib = require()
    fn = _declared.get((id(lib), name))
    if fn is None:
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
        _declared[(id(lib), name)] = fn
    return fn


def pointer(t: torch.Tensor) -> int:
    """The address of a contiguous CPU tensor's data, as the C functions take it."""
    return t.data_ptr()


def run_parallel(function, count: int, work: int, arguments) -> None:
    """Call ``function(*arguments(lo, hi))`` over ``[0, count)``: in one call, or split into
    contiguous ranges over torch's CPU threads when the work repays it (ctypes releases the GIL,
    so the ranges run in parallel)."""
    global _pool
    threads = min(torch.get_num_threads(), count, max(1, work // PARALLEL_WORK))
    if threads <= 1:
        status = [function(*arguments(0, count))]
    else:
        if _pool is None or _pool._max_workers < threads:  # noqa: SLF001 (a size check only)
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clustervig-cpu")
        bounds = [count * t // threads for t in range(threads + 1)]
        jobs = [
            _pool.submit(function, *arguments(lo, hi))
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        status = [job.result() for job in jobs]
    if any(status):  # an int function's -1; void functions return None
        raise MemoryError("clustervig CPU kernel: could not allocate its scratch memory")
