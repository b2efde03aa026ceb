"""The content-addressed artifact store: atomic, deduplicated, size-limited, confined to its root."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest
from registry.errors import ArtifactCorrupt, ArtifactMissing, ArtifactTooLarge, InsufficientStorage, InvalidName
from registry.storage import LocalArtifactStore


def test_stage_hashes_counts_and_hides_until_commit(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    data = os.urandom(3 * 1024 * 1024 + 17)
    staged = store.stage([data[:1000], data[1000:]], max_bytes=len(data))
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    assert staged.size_bytes == len(data)
    assert not store.exists(staged.sha256)
    assert staged.path.parent == tmp_path / "tmp"
    assert store.commit(staged) is True
    assert store.exists(staged.sha256)
    assert store.temporary_files() == []
    path = store.path_of(staged.sha256)
    assert path == tmp_path / "sha256" / staged.sha256[:2] / staged.sha256
    assert path.read_bytes() == data
    assert not os.access(path, os.W_OK) or os.geteuid() == 0  # read-only (root ignores modes)
    assert oct(path.stat().st_mode & 0o777) == "0o444"


def test_same_bytes_are_stored_once(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    first = store.stage([b"model bytes"], max_bytes=100)
    second = store.stage([b"model ", b"bytes"], max_bytes=100)
    assert store.commit(first) is True
    assert store.commit(second) is False
    blobs = [p for p in (tmp_path / "sha256").rglob("*") if p.is_file()]
    assert len(blobs) == 1
    assert store.temporary_files() == []


def test_oversized_upload_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    consumed: list[int] = []

    def chunks() -> object:
        for i in range(100):
            consumed.append(i)
            yield b"x" * 1024

    with pytest.raises(ArtifactTooLarge, match="larger than the limit of 10000 bytes"):
        store.stage(chunks(), max_bytes=10_000)  # type: ignore[arg-type]
    assert len(consumed) < 100  # it stopped reading at the limit instead of draining the stream
    assert store.temporary_files() == []
    assert not any(p.is_file() for p in (tmp_path / "sha256").rglob("*"))


def test_exactly_the_limit_is_accepted(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    assert store.stage([b"x" * 100], max_bytes=100).size_bytes == 100


def test_failing_stream_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)

    def broken() -> object:
        yield b"abc"
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        store.stage(broken(), max_bytes=100)  # type: ignore[arg-type]
    assert store.temporary_files() == []


def test_discard_removes_the_staged_file(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    staged = store.stage([b"abc"], max_bytes=100)
    store.discard(staged)
    store.discard(staged)
    assert store.temporary_files() == []
    assert not store.exists(staged.sha256)


@pytest.mark.parametrize(
    "digest",
    ["../../etc/passwd", "/etc/passwd", "..%2F..%2Fetc", "A" * 64, "g" * 64, "a" * 63, "a" * 65, "a" * 10_000,
     "ab/" + "c" * 61, ""],
)
def test_only_digests_name_files(tmp_path: Path, digest: str) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(InvalidName):
        store.open(digest)
    with pytest.raises(InvalidName):
        store.exists(digest)


def test_missing_artifact_says_so(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(ArtifactMissing, match="missing from the store"):
        store.open("0" * 64)


def test_a_full_disk_is_named_as_such_and_leaves_nothing(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)

    def filling() -> object:
        yield b"abc"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(InsufficientStorage, match="disk is full"):
        store.stage(filling(), max_bytes=100)  # type: ignore[arg-type]
    assert store.temporary_files() == []


def test_an_artifact_altered_on_disk_is_never_served(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    staged = store.stage([b"model bytes"], max_bytes=100)
    store.commit(staged)
    path = store.path_of(staged.sha256)
    os.chmod(path, 0o644)
    path.write_bytes(b"model bytez")
    with pytest.raises(ArtifactCorrupt, match="no longer matches its sha256"):
        store.open(staged.sha256)


def test_sweep_removes_only_stale_staged_uploads(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    old = store.stage([b"killed mid-upload"], max_bytes=100)
    young = store.stage([b"in progress elsewhere"], max_bytes=100)
    past = time.time() - 7200
    os.utime(old.path, (past, past))
    assert store.sweep_temporary(3600) == 1
    assert store.temporary_files() == [young.path]
