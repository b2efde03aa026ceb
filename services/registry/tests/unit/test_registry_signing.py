"""Artifact signature verification: every way a signature can be wrong is refused, with its reason."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from registry.errors import ArtifactSignatureInvalid, SignatureRequired
from registry.signing import SigningKeys
from schemas.signing import ArtifactSignature, artifact_statement

ARTIFACT = b"onnx bytes"
SHA = hashlib.sha256(ARTIFACT).hexdigest()


def _sign(key: Ed25519PrivateKey, model: str, sha: str, key_id: str = "trainer-1") -> ArtifactSignature:
    raw = key.sign(artifact_statement(model, sha))
    return ArtifactSignature(key_id=key_id, signature=base64.b64encode(raw).decode())


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def keys(key: Ed25519PrivateKey) -> SigningKeys:
    return SigningKeys({"trainer-1": key.public_key()}, required=True)


def test_a_valid_signature_names_its_key(keys: SigningKeys, key: Ed25519PrivateKey) -> None:
    assert keys.check("fraud", SHA, _sign(key, "fraud", SHA)) == "trainer-1"


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("one byte of the artifact flipped", "does not match this artifact"),
        ("signed for another model", "does not match this artifact"),
        ("signed with another key", "does not match this artifact"),
        ("unknown key id", "is not trusted here"),
        ("not base64", "not valid base64"),
        ("truncated signature", "does not match this artifact"),
    ],
)
def test_bad_signatures_are_refused_with_their_reason(keys: SigningKeys, key: Ed25519PrivateKey, case: str,
                                                      fragment: str) -> None:
    signature = _sign(key, "fraud", SHA)
    sha = SHA
    if case == "one byte of the artifact flipped":
        sha = hashlib.sha256(b"onnx bytez").hexdigest()
    elif case == "signed for another model":
        signature = _sign(key, "other-model", SHA)
    elif case == "signed with another key":
        signature = _sign(Ed25519PrivateKey.generate(), "fraud", SHA)
    elif case == "unknown key id":
        signature = _sign(key, "fraud", SHA, key_id="mallory")
    elif case == "not base64":
        signature = ArtifactSignature(key_id="trainer-1", signature="%%%not-base64%%%")
    elif case == "truncated signature":
        signature = ArtifactSignature(key_id="trainer-1", signature=signature.signature[:40])
    with pytest.raises(ArtifactSignatureInvalid, match=fragment):
        keys.check("fraud", sha, signature)


def test_unsigned_uploads_follow_the_policy(key: Ed25519PrivateKey) -> None:
    with pytest.raises(SignatureRequired, match="accepts only signed artifacts"):
        SigningKeys({"trainer-1": key.public_key()}, required=True).check("fraud", SHA, None)
    assert SigningKeys({"trainer-1": key.public_key()}, required=False).check("fraud", SHA, None) is None
    # Without keys a signature cannot be checked: it is refused, never waved through.
    with pytest.raises(ArtifactSignatureInvalid, match="trusted keys: none"):
        SigningKeys({}, required=False).check("fraud", SHA, _sign(key, "fraud", SHA))


def test_keys_load_from_a_directory_and_bad_files_are_named(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "trainer-1.pub").write_bytes(pem)
    (tmp_path / "notes.txt").write_text("ignored: not a .pub file")
    loaded = SigningKeys.from_dir(tmp_path, required=True)
    assert loaded.key_ids == ["trainer-1"]
    assert loaded.check("fraud", SHA, _sign(key, "fraud", SHA)) == "trainer-1"

    ec = generate_private_key(SECP256R1()).public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "ecdsa.pub").write_bytes(ec)
    with pytest.raises(ValueError, match=r"ecdsa\.pub is not an Ed25519 public key"):
        SigningKeys.from_dir(tmp_path, required=True)
    (tmp_path / "ecdsa.pub").unlink()
    (tmp_path / "bad name!.pub").write_bytes(pem)
    with pytest.raises(ValueError, match="must be a key id"):
        SigningKeys.from_dir(tmp_path, required=True)


def test_requiring_signatures_without_keys_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="no signing keys are configured"):
        SigningKeys.from_dir(None, required=True)
