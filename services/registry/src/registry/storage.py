"""Content-addressed artifact storage: a small interface and its local-disk implementation.

An artifact is stored once under its sha256, whoever uploads it and however often. Uploads go
in two steps so that nothing unvalidated ever becomes visible: :meth:`ArtifactStore.stage`
streams the bytes into a private temporary file while hashing and counting them (refusing
past the size limit), the caller validates that file, and :meth:`ArtifactStore.commit` moves it
under its digest with an atomic rename (or drops it when the digest is already stored).
An S3 implementation stages locally the same way and uploads in ``commit``.

Paths are derived only from a validated digest (:func:`registry.names.check_sha256`) and are
checked to stay under the store's root, so no request can name a file outside it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from registry.errors import (
    ArtifactCorrupt,
    ArtifactMissing,
    ArtifactTooLarge,
    InsufficientStorage,
    InvalidName,
    StorageError,
)
from registry.names import check_sha256

CHUNK = 1024 * 1024
"""Bytes read or written at a time."""


@dataclass(frozen=True)
class StagedArtifact:
    """Bytes written to a private temporary file, not yet visible in the store."""

    path: Path
    sha256: str
    size_bytes: int


class ArtifactStore(Protocol):
    """Where model artifacts live, addressed by sha256."""

    def stage(self, chunks: Iterable[bytes], *, max_bytes: int) -> StagedArtifact:
        """Write ``chunks`` to a temporary file, hashing them.

        Raises:
            ArtifactTooLarge: more than ``max_bytes`` arrived; nothing is kept.
            StorageError: the file could not be written.

        """
        ...

    def commit(self, staged: StagedArtifact) -> bool:
        """Make ``staged`` visible under its digest; True when new, False when it was already stored."""
        ...

    def discard(self, staged: StagedArtifact) -> None:
        """Delete a staged file that will not be committed (safe to call twice)."""
        ...

    def exists(self, sha256: str) -> bool:
        """Whether an artifact with this digest is stored."""
        ...

    def open(self, sha256: str) -> BinaryIO:
        """The stored bytes, for reading, after checking they still hash to ``sha256``.

        Raises:
            ArtifactMissing: no blob with that digest.
            ArtifactCorrupt: the blob's bytes no longer match the digest.

        """
        ...

    def sweep_unreferenced(self, referenced: set[str], older_than_s: float) -> list[str]:
        """Delete stored blobs not in ``referenced`` and untouched for ``older_than_s``; their digests."""
        ...


class LocalArtifactStore:
    """Artifacts on a local (or mounted) file system: ``<root>/sha256/<ab>/<abcdef...>``.

    Temporary files live in ``<root>/tmp`` on the same file system, so the final rename is
    atomic, and they are fsynced before it so a crash never leaves a truncated artifact.

    >>> import tempfile
    >>> store = LocalArtifactStore(Path(tempfile.mkdtemp()))
    >>> staged = store.stage([b"hello ", b"world"], max_bytes=100)
    >>> staged.sha256[:12], staged.size_bytes
    ('b94d27b9934d', 11)
    >>> store.commit(staged), store.commit(store.stage([b"hello world"], max_bytes=100))
    (True, False)
    >>> with store.open(staged.sha256) as f:
    ...     f.read()
    b'hello world'
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._blobs = self.root / "sha256"
        self._tmp = self.root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path_of(self, sha256: str) -> Path:
        """Where the artifact ``sha256`` is (or would be) stored.

        Raises:
            InvalidName: ``sha256`` is not a digest, or the path would leave the store.

        """
        digest = check_sha256(sha256)
        path = (self._blobs / digest[:2] / digest).resolve()
        if not path.is_relative_to(self._blobs):
            raise InvalidName("artifact path leaves the store")  # unreachable with a checked digest
        return path

    def stage(self, chunks: Iterable[bytes], *, max_bytes: int) -> StagedArtifact:
        """See :meth:`ArtifactStore.stage`."""
        digest = hashlib.sha256()
        size = 0
        try:
            fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self._tmp)
        except OSError as exc:
            raise _storage_error(f"cannot create a temporary file in {self._tmp}", exc) from exc
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise ArtifactTooLarge(
                            f"artifact is larger than the limit of {max_bytes} bytes; "
                            "shrink the model or raise REGISTRY_MAX_ARTIFACT_BYTES"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException as exc:
            path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _storage_error("cannot write the upload", exc) from exc
            raise
        return StagedArtifact(path=path, sha256=digest.hexdigest(), size_bytes=size)

    def commit(self, staged: StagedArtifact) -> bool:
        """See :meth:`ArtifactStore.commit`."""
        final = self.path_of(staged.sha256)
        if final.exists():
            self.discard(staged)
            # A fresh mtime keeps the blob out of an orphan sweep until its version is committed.
            with contextlib.suppress(OSError):
                os.utime(final)
            return False
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(staged.path, 0o444)
            os.replace(staged.path, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            self.discard(staged)
            raise _storage_error(f"cannot store artifact {staged.sha256}", exc) from exc
        return True

    def discard(self, staged: StagedArtifact) -> None:
        """See :meth:`ArtifactStore.discard`."""
        staged.path.unlink(missing_ok=True)

    def exists(self, sha256: str) -> bool:
        """See :meth:`ArtifactStore.exists`."""
        return self.path_of(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        """See :meth:`ArtifactStore.open`.

        The whole file is hashed before it is handed out, so a blob altered on disk is never
        served or copied into the Triton repository under the digest it no longer has.
        """
        try:
            f = self.path_of(sha256).open("rb")
        except FileNotFoundError:
            raise ArtifactMissing(
                f"artifact {sha256} is registered but missing from the store at {self.root}; restore it from backup"
            ) from None
        digest = hashlib.sha256()
        for chunk in read_chunks(f):
            digest.update(chunk)
        if digest.hexdigest() != sha256:
            f.close()
            raise ArtifactCorrupt(f"artifact {sha256} in the store at {self.root} no longer matches its sha256 "
                                  f"(it hashes to {digest.hexdigest()}); it was altered or damaged on disk: "
                                  "restore it from backup")
        f.seek(0)
        return f

    def sweep_temporary(self, older_than_s: float) -> int:
        """Delete staged uploads older than ``older_than_s`` (left by a killed process); how many."""
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.temporary_files():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
        return removed

    def sweep_unreferenced(self, referenced: set[str], older_than_s: float) -> list[str]:
        """See :meth:`ArtifactStore.sweep_unreferenced`.

        Orphans come from a process killed between the blob's rename and its version's database
        commit (the upload was refused to the client, which retries). The age threshold spares
        a blob whose version is being committed right now; the registry sweeps at start-up,
        before it takes uploads.
        """
        cutoff = time.time() - older_than_s
        removed = []
        for path in sorted(self._blobs.glob("*/*")):
            digest = path.name
            if digest in referenced or path.parent.name != digest[:2] or len(digest) != 64:
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed.append(digest)
        return removed

    def temporary_files(self) -> list[Path]:
        """Staged files not yet committed or discarded (normally none between requests)."""
        return sorted(self._tmp.iterdir())


def read_chunks(stream: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    """``stream`` in chunks of ``size`` bytes."""
    while chunk := stream.read(size):
        yield chunk


def _storage_error(what: str, exc: OSError) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return InsufficientStorage(f"{what}: the artifact store's disk is full ({exc.strerror}); "
                                   "free space or grow the volume, then retry")
    return StorageError(f"{what}: {exc}")


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is; not every platform allows it.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
