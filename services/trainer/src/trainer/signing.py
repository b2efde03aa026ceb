"""Signing of model artifacts with the trainer's Ed25519 key (the registry verifies them).

The statement signed is ``schemas.signing.artifact_statement``: the model name and the sha256
of the ONNX bytes. ``tributary-trainer-cli keygen`` makes a key pair: the private key stays with
the trainer (``TRAINER_SIGNING_KEY``), the public key goes to the registry's
``REGISTRY_SIGNING_KEYS_DIR`` as ``<key id>.pub``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from schemas.signing import ArtifactSignature, artifact_statement

from trainer.errors import TrainerError


class SigningKeyError(TrainerError):
    """The configured signing key cannot be read or is not an Ed25519 private key."""


class ArtifactSigner:
    """Signs artifacts as ``key_id`` with an Ed25519 private key."""

    def __init__(self, key: Ed25519PrivateKey, key_id: str) -> None:
        self._key = key
        self.key_id = key_id

    @classmethod
    def from_file(cls, path: Path, key_id: str | None = None) -> ArtifactSigner:
        """The signer of the PEM private key at ``path``; the key id defaults to the file's stem.

        Raises:
            SigningKeyError: unreadable, encrypted, or not Ed25519.

        """
        try:
            key = load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise SigningKeyError(f"cannot read the signing key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{path} is not an Ed25519 private key")
        return cls(key, key_id or path.stem)

    def sign(self, model: str, artifact: bytes) -> ArtifactSignature:
        """The signature part for ``artifact`` of ``model``."""
        statement = artifact_statement(model, hashlib.sha256(artifact).hexdigest())
        return ArtifactSignature(key_id=self.key_id, signature=base64.b64encode(self._key.sign(statement)).decode())


def generate_key_pair(directory: Path, key_id: str) -> tuple[Path, Path]:
    """Write ``<key id>.key`` (private, mode 0600) and ``<key id>.pub`` in ``directory``.

    Raises:
        FileExistsError: a key of that id is already there (never overwritten).

    """
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{key_id}.key", directory / f"{key_id}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; choose another key id or directory")
    key = Ed25519PrivateKey.generate()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path
