"""Stored artifacts no version refers to (reliability plan K9 c) are swept; referenced ones never are.

An orphan is what a registry killed between renaming the blob into the store and committing its
version leaves behind. The client saw a failed upload and retries (the retry reuses the blob);
if it never does, the blob is swept at the next start once it is older than the grace period.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from registry.app import create_app
from registry.db import SqlModelStore
from registry.domain import Principal, VersionSpec
from registry.service import RegistryService
from registry.settings import Settings
from registry.storage import LocalArtifactStore, read_chunks

HOUR = 3600.0


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _orphan(artifacts: LocalArtifactStore, data: bytes) -> Path:
    """Store ``data`` the way an upload does, with no version (as after a kill before the commit)."""
    staged = artifacts.stage(read_chunks(io.BytesIO(data)), max_bytes=1 << 20)
    assert artifacts.commit(staged)
    return artifacts.path_of(staged.sha256)


def test_only_old_unreferenced_blobs_are_swept(service: RegistryService, store: SqlModelStore,
                                               artifacts: LocalArtifactStore, trainer: Principal,
                                               make_onnx: Callable[..., bytes],
                                               make_spec: Callable[..., VersionSpec]) -> None:
    version = service.register_version(name="fraud", spec=make_spec(), artifact=[make_onnx(seed=1)], actor=trainer)
    kept = artifacts.path_of(version.sha256)
    _age(kept, 10 * HOUR)  # referenced: never swept, however old
    old_orphan = _orphan(artifacts, make_onnx(seed=2))
    _age(old_orphan, 2 * HOUR)
    young_orphan = _orphan(artifacts, make_onnx(seed=3))  # maybe a version being committed right now

    removed = artifacts.sweep_unreferenced(store.referenced_artifacts(), older_than_s=HOUR)

    assert removed == [old_orphan.name]
    assert not old_orphan.exists() and kept.exists() and young_orphan.exists()
    with artifacts.open(version.sha256) as f:
        assert f.read() == make_onnx(seed=1)


def test_a_retry_that_reuses_an_old_orphan_refreshes_it(service: RegistryService, store: SqlModelStore,
                                                        artifacts: LocalArtifactStore, trainer: Principal,
                                                        make_onnx: Callable[..., bytes],
                                                        make_spec: Callable[..., VersionSpec]) -> None:
    data = make_onnx(seed=4)
    orphan = _orphan(artifacts, data)
    _age(orphan, 2 * HOUR)
    # The client's retry: the same bytes, so the store keeps the blob it has and touches it.
    staged = artifacts.stage(read_chunks(io.BytesIO(data)), max_bytes=1 << 20)
    assert not artifacts.commit(staged)
    assert artifacts.sweep_unreferenced(store.referenced_artifacts(), older_than_s=HOUR) == []
    version = service.register_version(name="fraud", spec=make_spec(), artifact=[data], actor=trainer)
    assert artifacts.path_of(version.sha256) == orphan and orphan.exists()


def test_the_registry_sweeps_orphans_at_start_up(settings: Settings, make_onnx: Callable[..., bytes]) -> None:
    settings = settings.model_copy(update={"stale_upload_s": HOUR})
    artifacts = LocalArtifactStore(settings.artifact_root)
    old_orphan, young_orphan = _orphan(artifacts, make_onnx(seed=5)), _orphan(artifacts, make_onnx(seed=6))
    _age(old_orphan, 2 * HOUR)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
    assert not old_orphan.exists()
    assert young_orphan.exists()
