"""The registry's errors: one root, and one subclass per reason a request is refused.

Domain errors know nothing about HTTP; the API maps each class to a status code in one table
(:data:`registry.app.STATUS`). Every message says what failed and what to do about it.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Root of every error this service raises on purpose."""

    code: str = "registry_error"
    """A stable, machine-readable name of the error, sent next to the message."""


class InvalidName(RegistryError):
    """A model name, alias or other identifier is not allowed (path tricks, length, charset)."""

    code = "invalid_name"


class InvalidRequest(RegistryError):
    """The request is well-formed but its values contradict each other or the rules."""

    code = "invalid_request"


class NotAuthenticated(RegistryError):
    """No bearer token, or one the registry does not know (or that was revoked)."""

    code = "not_authenticated"


class PermissionDenied(RegistryError):
    """The token is valid but its roles do not allow this change."""

    code = "permission_denied"


class NotFound(RegistryError):
    """Root of the "does not exist" errors."""

    code = "not_found"


class ModelNotFound(NotFound):
    """No model of that name is registered."""

    code = "model_not_found"


class VersionNotFound(NotFound):
    """The model exists but has no such version."""

    code = "version_not_found"


class AliasNotSet(NotFound):
    """The alias does not point at any version of the model."""

    code = "alias_not_set"


class ArtifactMissing(NotFound):
    """The artifact store has no blob with that digest (the store and the database disagree)."""

    code = "artifact_missing"


class Conflict(RegistryError):
    """The change conflicts with the registry's current state; re-read and retry."""

    code = "conflict"


class SignatureConflict(Conflict):
    """Versions served together under one Triton model would have different signatures."""

    code = "signature_conflict"


class PromotionFailed(Conflict):
    """Triton refused to load the version an alias was just moved to; the alias was moved back."""

    code = "promotion_failed"


class AliasChanged(RegistryError):
    """The alias no longer points where the change's ``If-Match`` says it did."""

    code = "alias_changed"


class ArtifactTooLarge(RegistryError):
    """The upload is larger than the configured limit."""

    code = "artifact_too_large"


class InvalidModel(RegistryError):
    """The artifact is not a valid, runnable ONNX model."""

    code = "invalid_model"


class OpsetNotAllowed(InvalidModel):
    """The model's ONNX opset is outside the allowed range."""

    code = "opset_not_allowed"


class SignatureMismatch(InvalidModel):
    """The declared input/output signature differs from the model graph's."""

    code = "signature_mismatch"


class SignatureRequired(RegistryError):
    """The upload carries no signature where the registry accepts only signed artifacts."""

    code = "signature_required"


class ArtifactSignatureInvalid(RegistryError):
    """The upload's signature is from an unknown key, malformed, or does not verify."""

    code = "signature_invalid"


class StorageError(RegistryError):
    """The artifact store failed (disk full, permissions); the request can be retried."""

    code = "storage_error"


class InsufficientStorage(StorageError):
    """The artifact store's disk is full; free space or grow the volume, then retry."""

    code = "insufficient_storage"


class ArtifactCorrupt(StorageError):
    """A stored artifact no longer hashes to its digest (altered or damaged on disk); restore it."""

    code = "artifact_corrupt"


class TritonError(RegistryError):
    """Triton's model control API refused a load or unload, or could not be reached."""

    code = "triton_error"
