"""A shard is hashed once per process (docs/design.md §3): the first read reads it whole and checks
it against collect's record; later reads of the same, unchanged file read only what they need, and
a file changed since (or a record changed since) is read whole and checked again."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from saelineage import checksum
from saelineage.data import store
from saelineage.data.importer import write_run
from saelineage.data.store import list_shards, read_shard
from saelineage.errors import SaelineageError
from saelineage.run import RunDir
from saelineage.stats import batch
from saelineage.stats.batch import read_layers

LAYERS = (0, 1, 2)


@pytest.fixture
def run(tmp_path) -> RunDir:
    """A run of 2 shards, 3 layers, with collect's checksums recorded (write_run records them)."""
    rng = np.random.default_rng(7)
    t, d = 32 * 16, 64
    codes = {}
    for l in LAYERS:
        m = sp.random(t, d, density=0.1, random_state=rng, format="csr", dtype=np.float64)
        codes[l] = m.astype(np.float32)
    run = write_run(tmp_path / "run", codes, rng.integers(0, 500, t), window_len=16, shard_windows=16)
    shards = list_shards(run)
    assert len(shards) == 2 and all(checksum.expected(p) is not None for p in shards)
    return run


class Counter:
    """Counts checksum.digest calls and the bytes the readers read through store.read_into."""

    def __init__(self, monkeypatch) -> None:
        self.hashed = 0
        self.read = 0
        digest, read_into = checksum.digest, store.read_into

        def counting_digest(data):
            self.hashed += 1
            return digest(data)

        def counting_read_into(fh, out, offset, *a):
            self.read += out.nbytes
            return read_into(fh, out, offset, *a)

        monkeypatch.setattr(checksum, "digest", counting_digest)
        monkeypatch.setattr(store, "read_into", counting_read_into)
        monkeypatch.setattr(batch, "read_into", counting_read_into)

    def reset(self) -> None:
        self.hashed = self.read = 0


def copied(pos, codes) -> tuple[np.ndarray, dict]:
    return pos.copy(), {l: tuple(a.copy() for a in arrays) for l, arrays in codes.items()}


def test_second_read_layers_reads_only_its_tensors_and_hashes_nothing(run, monkeypatch):
    path = list_shards(run)[0]
    size = path.stat().st_size
    count = Counter(monkeypatch)
    first_stage: dict = {}
    first = copied(*read_layers(path, [1], first_stage))
    assert count.hashed == 1 and count.read == size and "file" in first_stage

    count.reset()
    second_stage: dict = {}
    pos, codes = read_layers(path, [1], second_stage)
    assert count.hashed == 0
    assert "file" not in second_stage  # the whole-file staging buffer was not used
    assert 0 < count.read < size / 2  # header and pos + one layer of three
    assert np.array_equal(pos, first[0])
    for a, b in zip(codes[1], first[1][1]):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # another layer set of the same shard: still no hashing, and the right tensors
    _, codes = read_layers(path, [2, 0], first_stage)
    assert count.hashed == 0
    pos_all, all_codes = read_layers(Path(path), [0, 1, 2])
    assert count.hashed == 0
    full = read_shard(path)
    assert np.array_equal(full.pos, pos_all)
    for l in LAYERS:
        assert all(np.array_equal(a, b) for a, b in zip(all_codes[l], full.codes[l]))


def test_second_read_shard_reads_only_its_layers_and_hashes_nothing(run, monkeypatch):
    path = list_shards(run)[1]
    size = path.stat().st_size
    count = Counter(monkeypatch)
    first = read_shard(path, [2])
    assert count.hashed == 1

    count.reset()
    again = read_shard(path, [2])
    assert count.hashed == 0 and 0 < count.read < size
    assert again.index == first.index and list(again.codes) == [2]
    for name in ("tokens", "window", "pos"):
        assert np.array_equal(getattr(again, name), getattr(first, name))
    for a, b in zip(again.codes[2], first.codes[2]):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    with pytest.raises(SaelineageError, match="no codes for layers"):
        read_shard(path, [5])


def flip_a_value(path: Path) -> None:
    """One byte of the file's last tensor data changed in place (same size, same inode)."""
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x40
    with open(path, "r+b") as fh:
        fh.write(raw)


@pytest.mark.parametrize("mtime", ["new", "restored"])
def test_a_shard_changed_after_it_was_verified_is_verified_again_and_refused(run, monkeypatch, mtime):
    path = list_shards(run)[0]
    read_layers(path, [0])
    read_shard(path, [0])
    count = Counter(monkeypatch)
    read_layers(path, [0])
    assert count.hashed == 0  # verified before: not hashed
    before = path.stat()
    time.sleep(0.05)  # past the filesystem's timestamp granularity
    flip_a_value(path)
    if mtime == "new":
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    else:  # the old mtime put back: the change time still tells
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    with pytest.raises(SaelineageError, match="is not what collect wrote") as err:
        read_layers(path, [0])
    assert str(path) in err.value.problem
    with pytest.raises(SaelineageError, match="is not what collect wrote"):
        read_shard(path, [0])
    assert count.hashed == 2


def test_a_changed_record_is_checked_again(run, monkeypatch):
    path = list_shards(run)[0]
    read_layers(path, [0])
    manifest = run.load()
    manifest.stages["collect"]["checksums"][checksum.relative(path)] = f"{checksum.ALGORITHM}:{'0' * 32}"
    run.save(manifest)
    with pytest.raises(SaelineageError, match="is not what collect wrote"):
        read_layers(path, [0])


def test_a_truncated_verified_shard_is_a_damaged_shard(run):
    path = list_shards(run)[0]
    read_layers(path, [0])
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SaelineageError, match="unreadable or truncated"):
        read_layers(path, [0])
    with pytest.raises(SaelineageError, match="unreadable or truncated"):
        read_shard(path, [0])


def test_a_run_without_records_is_read_in_parts(run, monkeypatch):
    """Nothing recorded (a run older than checksums): nothing to verify, so nothing is read whole."""
    manifest = run.load()
    manifest.stages["collect"].pop("checksums")
    run.save(manifest)
    path = list_shards(run)[0]
    assert checksum.expected(path) is None
    count = Counter(monkeypatch)
    stage: dict = {}
    pos, codes = read_layers(path, [1], stage)
    assert count.hashed == 0 and "file" not in stage and count.read < path.stat().st_size
    full = read_shard(path)
    assert np.array_equal(full.pos, pos) and all(np.array_equal(a, b) for a, b in zip(codes[1], full.codes[1]))


def test_written_digest_uses_what_the_writer_noted(tmp_path, monkeypatch):
    """A Ray worker reports (digest, mtime_ns, size) of each shard it wrote; the driver notes it
    (checksum.note) and its checksums then read nothing, unless the file changed since."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    st = path.stat()
    reported = (checksum.digest(path.read_bytes()), st.st_mtime_ns, st.st_size)
    checksum.note(path, *reported)
    read: list[Path] = []
    digest_file = checksum.digest_file
    monkeypatch.setattr(checksum, "digest_file", lambda p, *a: read.append(p) or digest_file(p, *a))
    assert checksum.written_digest(path) == reported[0] and read == []
    path.write_bytes(b"abd" * 1000)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert checksum.written_digest(path) == checksum.digest(b"abd" * 1000) and read == [path]
