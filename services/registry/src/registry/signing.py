"""Verification of artifact signatures: Ed25519 over the statement ``schemas.signing`` defines.

The registry holds the public keys of the trainers it trusts, one PEM file per key in
``REGISTRY_SIGNING_KEYS_DIR`` (``<key id>.pub``). An upload may carry a signature; with
``REGISTRY_REQUIRE_SIGNATURE`` every upload must. A signature is checked against the sha256 the
registry computed itself while staging the bytes and against the model name of the request
path, so a tampered byte, a signature made for another model, an unknown key and a key that did
not sign all fail, each with its own message.
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path

from cryptography.exceptions import InvalidSignature as _CryptoInvalid
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import TypeAdapter, ValidationError
from schemas.signing import ArtifactSignature, KeyId, artifact_statement

from registry.errors import ArtifactSignatureInvalid, SignatureRequired

log = logging.getLogger(__name__)
_KEY_ID: TypeAdapter[str] = TypeAdapter(KeyId)


class SigningKeys:
    """The trusted public keys by key id, and the policy for unsigned uploads.

    Args:
        keys: key id -> Ed25519 public key.
        required: refuse uploads without a signature.

    """

    def __init__(self, keys: dict[str, Ed25519PublicKey], *, required: bool) -> None:
        if required and not keys:
            raise ValueError("signatures are required but no signing keys are configured "
                             "(REGISTRY_SIGNING_KEYS_DIR holds none)")
        self._keys = keys
        self.required = required

    @classmethod
    def from_dir(cls, directory: Path | None, *, required: bool) -> SigningKeys:
        """Every ``<key id>.pub`` (PEM, Ed25519) of ``directory``; none when it is None.

        Raises:
            ValueError: a file is not an Ed25519 public key or its name is not a key id.

        """
        keys: dict[str, Ed25519PublicKey] = {}
        for path in sorted(directory.glob("*.pub")) if directory is not None else []:
            try:
                key_id = _KEY_ID.validate_python(path.stem)
            except ValidationError as exc:
                raise ValueError(f"{path.name}: the file name must be a key id (letters, digits, ._-)") from exc
            key = load_pem_public_key(path.read_bytes())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{path.name} is not an Ed25519 public key")
            keys[key_id] = key
        return cls(keys, required=required)

    @property
    def key_ids(self) -> list[str]:
        """The trusted keys' ids."""
        return sorted(self._keys)

    def check(self, model: str, sha256: str, signature: ArtifactSignature | None) -> str | None:
        """The id of the key that signed artifact ``sha256`` of ``model``; None for an allowed unsigned one.

        Raises:
            SignatureRequired: no signature, and signatures are required.
            ArtifactSignatureInvalid: unknown key, malformed signature, or it does not verify.

        """
        if signature is None:
            if self.required:
                raise SignatureRequired(
                    f"this registry accepts only signed artifacts: send a 'signature' part signed with one of "
                    f"the trusted keys ({', '.join(self.key_ids)})")
            return None
        key = self._keys.get(signature.key_id)
        if key is None:
            trusted = ", ".join(self.key_ids) or "none"
            raise ArtifactSignatureInvalid(
                f"signing key {signature.key_id!r} is not trusted here; trusted keys: {trusted}")
        try:
            raw = base64.b64decode(signature.signature, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ArtifactSignatureInvalid("the signature is not valid base64") from exc
        try:
            key.verify(raw, artifact_statement(model, sha256))
        except _CryptoInvalid as exc:
            raise ArtifactSignatureInvalid(
                f"the signature of key {signature.key_id!r} does not match this artifact of model {model!r} "
                f"(sha256 {sha256}): the bytes were changed, or it was signed for another artifact or model"
            ) from exc
        return signature.key_id
