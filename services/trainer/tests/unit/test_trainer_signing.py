"""The trainer's artifact signer and key generation."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from schemas.signing import artifact_statement
from trainer.cli import main as cli
from trainer.signing import ArtifactSigner, SigningKeyError, generate_key_pair


def test_a_signature_verifies_with_the_public_key_over_the_shared_statement(tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path, "trainer-1")
    signature = ArtifactSigner.from_file(private).sign("credit", b"model bytes")
    assert signature.key_id == "trainer-1"
    key = load_pem_public_key(public.read_bytes())
    assert isinstance(key, Ed25519PublicKey)
    statement = artifact_statement("credit", hashlib.sha256(b"model bytes").hexdigest())
    key.verify(base64.b64decode(signature.signature), statement)  # raises when it does not verify


def test_key_files_are_private_and_never_overwritten(tmp_path: Path) -> None:
    private, _ = generate_key_pair(tmp_path, "k1")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError, match=r"k1\.key exists"):
        generate_key_pair(tmp_path, "k1")


def test_unusable_keys_are_refused_with_the_path(tmp_path: Path) -> None:
    _, public = generate_key_pair(tmp_path, "k2")
    with pytest.raises(SigningKeyError, match="cannot read the signing key"):
        ArtifactSigner.from_file(public)  # a public key is not a private key
    with pytest.raises(SigningKeyError, match="cannot read the signing key"):
        ArtifactSigner.from_file(tmp_path / "missing.key")


def test_keygen_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["keygen", "--key-id", "trainer-7", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "trainer-7.key").is_file() and (tmp_path / "trainer-7.pub").is_file()
    assert "REGISTRY_SIGNING_KEYS_DIR" in capsys.readouterr().out
    assert cli(["keygen", "--key-id", "trainer-7", "--dir", str(tmp_path)]) == 2
    assert cli(["keygen", "--key-id", "../escape", "--dir", str(tmp_path)]) == 2
    assert "is not a key id" in capsys.readouterr().err
