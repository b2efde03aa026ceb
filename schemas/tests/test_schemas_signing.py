"""The signed statement's bytes are a contract: a change would invalidate every signature made."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from schemas.signing import ArtifactSignature, artifact_statement


def test_the_statement_bytes_are_fixed() -> None:
    digest = "AB" * 32
    assert artifact_statement("credit-default", digest) == (
        b'{"artifact_sha256":"' + b"ab" * 32 + b'","model":"credit-default","type":"tributary.model-artifact.v1"}'
    )


@pytest.mark.parametrize("body", [{"key_id": "../k", "signature": "x"}, {"key_id": "k", "signature": ""},
                                  {"key_id": "k", "signature": "x", "extra": 1}, {"signature": "x"}])
def test_malformed_signature_parts_are_refused(body: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        ArtifactSignature.model_validate(body)
