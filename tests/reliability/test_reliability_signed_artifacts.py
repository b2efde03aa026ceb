"""Signed artifacts (reliability plan S7, S8 d): the trainer signs, the registry refuses everything else.

A registry process requiring signatures, with one trusted trainer key; the trainer's own registry
client signs with that key. Pass criteria:
- the trainer's signed upload registers;
- unsigned (S7 a), one byte flipped after signing (S7 b), signed with an untrusted key under the
  trusted key's name (S7 e), signed for another model (S7 f, S8 d) and an unknown key id are each
  refused with 422 and a reason naming the cause;
- a refusal leaves nothing behind: no version, no stored blob, no staged file; and each refusal
  is in the registry's log as an audit record (``artifact signature refused``, with the key id).
(S7 c/d, config.pbtxt edited or files added, do not apply: a version is one ONNX file and the
registry writes Triton's config itself.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from trainer.errors import RegistryRefused
from trainer.registry_client import RegistryClient
from trainer.signing import ArtifactSigner, generate_key_pair

from deploy.localstack import ServiceProcess, free_port
from tests.reliability.test_reliability_registry import linear_onnx, metadata

pytestmark = pytest.mark.integration


class SignedRegistry:
    """A registry requiring signatures from ``trainer-1``, with a trainer token."""

    def __init__(self, root: Path, kafka_bootstrap: str) -> None:
        self.keys = root / "trusted"
        self.private, _ = generate_key_pair(root / "trainer-keys", "trainer-1")
        self.keys.mkdir()
        (self.keys / "trainer-1.pub").write_bytes((root / "trainer-keys" / "trainer-1.pub").read_bytes())
        self.port = free_port()
        self.artifacts = root / "artifacts"
        self.log = root / "registry.log"
        env = {"REGISTRY_DATA_DIR": str(root / "data"), "REGISTRY_ARTIFACT_DIR": str(self.artifacts),
               "REGISTRY_KAFKA_BOOTSTRAP": kafka_bootstrap, "REGISTRY_PORT": str(self.port),
               "REGISTRY_SIGNING_KEYS_DIR": str(self.keys), "REGISTRY_REQUIRE_SIGNATURE": "true",
               "REGISTRY_LOG_LEVEL": "INFO"}
        self.process = ServiceProcess("registry", "registry", env, ready_url=f"{self.url}/readyz", log_path=self.log)
        self.process.start()
        cli = Path(sys.executable).with_name("tributary-registry-cli")
        done = subprocess.run([str(cli), "tokens", "create", "--name", "trainer-ci", "--role", "trainer"],
                              env=self.process.env, capture_output=True, text=True, timeout=60, check=True)
        self.token = done.stdout.strip().splitlines()[-1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, signer: ArtifactSigner | None) -> RegistryClient:
        return RegistryClient(self.url, trainer_token=self.token, operator_token=self.token, signer=signer)

    def upload(self, name: str, data: bytes, signature: str | None) -> httpx.Response:
        parts = {"metadata": (None, metadata(4, 1, "cmd"), "application/json"),
                 "artifact": ("model.onnx", data, "application/octet-stream")}
        if signature is not None:
            parts["signature"] = (None, signature, "application/json")
        return httpx.post(f"{self.url}/v1/models/{name}/versions", headers={"Authorization": f"Bearer {self.token}"},
                          files=parts, timeout=60)


@pytest.fixture
def registry(tmp_path: Path, kafka_bootstrap: str) -> Iterator[SignedRegistry]:
    started = SignedRegistry(tmp_path, kafka_bootstrap)
    try:
        yield started
    finally:
        started.process.stop()


def _versions(registry: SignedRegistry, name: str) -> list[int]:
    response = httpx.get(f"{registry.url}/v1/models/{name}/versions", timeout=30)
    return [] if response.status_code == 404 else [v["version"] for v in response.json()["data"]]


def test_only_the_trusted_trainers_signed_artifacts_register(registry: SignedRegistry) -> None:
    signer = ArtifactSigner.from_file(registry.private)
    model = linear_onnx(4, 1)
    impostor = ArtifactSigner(Ed25519PrivateKey.generate(), "trainer-1")

    refusals = {
        "unsigned": (model, None, "signature_required"),
        "byte flipped after signing": (model.replace(b"reliability", b"reliabilitz"),
                                       signer.sign("fraud", model).model_dump_json(), "signature_invalid"),
        "untrusted key under the trusted name": (model, impostor.sign("fraud", model).model_dump_json(),
                                                 "signature_invalid"),
        "signed for another model": (model, signer.sign("payments", model).model_dump_json(), "signature_invalid"),
        "unknown key id": (model, ArtifactSigner(Ed25519PrivateKey.generate(), "mallory")
                           .sign("fraud", model).model_dump_json(), "signature_invalid"),
    }
    for case, (data, signature, code) in refusals.items():
        response = registry.upload("fraud", data, signature)
        assert response.status_code == 422, f"{case}: {response.status_code} {response.text}"
        assert response.json()["code"] == code, case
    assert _versions(registry, "fraud") == []
    assert not any(p.is_file() for p in (registry.artifacts / "sha256").rglob("*"))
    assert list((registry.artifacts / "tmp").glob("upload-*")) == []
    audit = [json.loads(line) for line in registry.log.read_text().splitlines()
             if line.startswith("{") and "artifact signature refused" in line]
    assert len(audit) == len(refusals)
    assert {a.get("key_id") for a in audit} == {None, "trainer-1", "mallory"}

    # The trainer's client without its key is refused with the registry's reason ...
    unsigned = registry.client(None)
    try:
        with pytest.raises(RegistryRefused, match="signature_required"):
            unsigned.register("fraud", model, json.loads(metadata(4, 1, "cmd-1")))
    finally:
        unsigned.close()
    # ... and with it, registers.
    signed = registry.client(signer)
    try:
        version = signed.register("fraud", model, json.loads(metadata(4, 1, "cmd-2")))
    finally:
        signed.close()
    assert version["version"] == 1
    assert _versions(registry, "fraud") == [1]
