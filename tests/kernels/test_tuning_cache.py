"""The per-GPU autotune cache: lookups, and everything that must be ignored with one warning."""

from __future__ import annotations

import json
import multiprocessing
import warnings

import pytest
import torch

from kernels import tuning_cache as cache
from kernels.partition import kernel as permute
from kernels.tuning import LAUNCHES

CPU = torch.device("cpu")
TUNABLE = permute.PERMUTE_ROWS
BUCKET = TUNABLE.bucket(torch.float32, M=100, C=20)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERVIG_AUTOTUNE_DIR", str(tmp_path))
    cache.reset()
    yield
    cache.reset()


def _write(tmp_path, data) -> None:
    identity = cache.device_identity(CPU)
    path = cache.cache_path(identity, tmp_path)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def _valid_doc(config=None) -> dict:
    config = config or TUNABLE.interpret_space[1]
    return {
        "format": cache.FORMAT_VERSION,
        "device": cache.device_identity(CPU),
        "entries": {TUNABLE.name: {BUCKET: cache.make_entry(TUNABLE, config, 0.5)}},
    }


def _launch() -> dict:
    x = torch.randn(100, 20)
    index = torch.randperm(100, dtype=torch.int32)
    out = permute.launch_permute_rows(x, index)
    assert torch.equal(out, x[index.long()])
    bucket, config, source = LAUNCHES[TUNABLE.name]
    assert bucket == BUCKET
    return {"config": config, "source": source}


def test_valid_entry_is_used_at_launch(tmp_path):
    _write(tmp_path, _valid_doc())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid cache warns about nothing
        launch = _launch()
    assert launch == {"config": TUNABLE.interpret_space[1], "source": "cache"}


def test_missing_cache_uses_the_default_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        launch = _launch()
    assert launch == {"config": TUNABLE.default["e4"], "source": "default"}


def _expect_ignored(tmp_path, data, match):
    _write(tmp_path, data)
    with pytest.warns(cache.AutotuneCacheWarning, match=match) as record:
        first = _launch()
        second = _launch()  # the same problem is reported once
    assert len(record) == 1
    assert first == second == {"config": TUNABLE.default["e4"], "source": "default"}


def test_corrupt_file_is_ignored_with_one_warning(tmp_path):
    _expect_ignored(tmp_path, '{"format": 1, "entries": {', "unreadable")


def test_truncated_binary_garbage_is_ignored(tmp_path):
    identity = cache.device_identity(CPU)
    cache.cache_path(identity, tmp_path).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.warns(cache.AutotuneCacheWarning, match="unreadable"):
        assert _launch()["source"] == "default"


def test_file_from_another_gpu_is_ignored(tmp_path):
    doc = _valid_doc()
    doc["device"] = dict(doc["device"], name="NVIDIA H100 80GB HBM3", capability="9.0")
    _expect_ignored(tmp_path, doc, "written for")


def test_file_from_another_triton_version_is_ignored(tmp_path):
    doc = _valid_doc()
    doc["device"] = dict(doc["device"], triton="2.0")
    _expect_ignored(tmp_path, doc, "written for")


def test_file_of_another_format_is_ignored(tmp_path):
    doc = _valid_doc()
    doc["format"] = 99
    _expect_ignored(tmp_path, doc, "format")


def test_changed_kernel_source_is_ignored(tmp_path):
    doc = _valid_doc()
    doc["entries"][TUNABLE.name][BUCKET]["source_hash"] = "0123456789abcdef"
    _expect_ignored(tmp_path, doc, "another kernel source")


def test_changed_search_space_is_ignored(tmp_path):
    doc = _valid_doc()
    doc["entries"][TUNABLE.name][BUCKET]["space_hash"] = "0123456789abcdef"
    _expect_ignored(tmp_path, doc, "another kernel source or search space")


def test_config_outside_the_space_is_never_applied(tmp_path):
    doc = _valid_doc()
    doc["entries"][TUNABLE.name][BUCKET]["config"] = {
        "BLOCK_M": 7,
        "BLOCK_C": 3,
        "num_warps": 4,
        "num_stages": 1,
    }
    _expect_ignored(tmp_path, doc, "search space")


def test_shipped_defaults_are_read_and_the_user_cache_wins(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    identity = cache.device_identity(CPU)
    doc = _valid_doc(TUNABLE.interpret_space[0])
    cache.cache_path(identity, shipped).write_text(json.dumps(doc))
    monkeypatch.setattr(cache, "shipped_dir", lambda: shipped)
    assert _launch() == {"config": TUNABLE.interpret_space[0], "source": "cache"}
    cache.save_entries(
        identity,
        {TUNABLE.name: {BUCKET: cache.make_entry(TUNABLE, TUNABLE.interpret_space[1], 0.1)}},
    )
    cache.reset()
    assert _launch() == {"config": TUNABLE.interpret_space[1], "source": "cache"}


def test_save_merges_and_is_valid_json(tmp_path):
    identity = cache.device_identity(CPU)
    entry = cache.make_entry(TUNABLE, TUNABLE.interpret_space[0], 1.0)
    cache.save_entries(identity, {"a": {"b1": entry}})
    cache.save_entries(identity, {"a": {"b2": entry}, "c": {"b1": entry}})
    data = json.loads(cache.cache_path(identity).read_text())
    assert data["format"] == cache.FORMAT_VERSION and data["device"] == identity
    assert set(data["entries"]["a"]) == {"b1", "b2"} and set(data["entries"]["c"]) == {"b1"}
    assert not list(tmp_path.glob("*.tmp"))


def _writer(directory: str, worker: int, rounds: int) -> None:
    import os

    os.environ["CLUSTERVIG_AUTOTUNE_DIR"] = directory
    from kernels import tuning_cache as c
    from kernels.partition import kernel as p

    identity = c.device_identity(torch.device("cpu"))
    for i in range(rounds):
        entry = c.make_entry(p.PERMUTE_ROWS, p.PERMUTE_ROWS.interpret_space[i % 2], float(i))
        c.save_entries(identity, {"permute_rows": {f"w{worker}-r{i}": entry}})


def test_concurrent_writers_never_leave_a_truncated_file(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(str(tmp_path), w, 15)) for w in range(4)]
    for p in workers:
        p.start()
    identity = cache.device_identity(CPU)
    path = cache.cache_path(identity, tmp_path)
    reads = 0
    while any(p.is_alive() for p in workers):
        if path.exists():
            json.loads(path.read_text())  # every intermediate state parses
            reads += 1
    for p in workers:
        p.join()
        assert p.exitcode == 0
    data = json.loads(path.read_text())
    # The lock serialises read-merge-write: no writer's entries are lost.
    assert len(data["entries"]["permute_rows"]) == 4 * 15
    assert reads > 0
