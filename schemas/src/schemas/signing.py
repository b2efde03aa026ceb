"""What a signed model artifact says, shared by the signer (trainer) and the verifier (registry).

A trainer signs a statement naming the model and the sha256 of the ONNX bytes with its Ed25519
key; the registry, holding the trainers' public keys, verifies it before it stores a version.
The statement binds the artifact to its model name, so a signature cannot be replayed for
another model, and to its bytes, so one flipped byte breaks it. Only the statement's exact bytes
are signed: :func:`artifact_statement` is the one place that makes them.
"""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

STATEMENT_TYPE = "tributary.model-artifact.v1"

KeyId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")]
"""A signing key's name: letters, digits and ``._-``, at most 64 characters."""


def artifact_statement(model: str, sha256: str) -> bytes:
    """The exact bytes signed for the artifact ``sha256`` of ``model`` (canonical JSON)."""
    body = {"artifact_sha256": sha256.lower(), "model": model, "type": STATEMENT_TYPE}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class ArtifactSignature(BaseModel):
    """The ``signature`` part of a version upload: who signed, and the Ed25519 signature."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: KeyId = Field(description="Name of the signing key; the registry holds its public key.")
    signature: str = Field(min_length=1, max_length=512,
                           description="Base64 of the Ed25519 signature of the artifact statement.")
