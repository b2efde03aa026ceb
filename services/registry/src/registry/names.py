"""What a model name, an alias and a digest may look like; the first line of path safety.

Model names become directory names in the Triton model repository and digests become file
names in the artifact store, so both are checked against a strict allow-list before they are
used anywhere: lower-case letters, digits, ``_`` and ``-`` only (no dots, so no ``..``; no
separators, so no absolute or nested paths), at most 128 characters.

>>> check_model_name("fraud-detector_v2")
'fraud-detector_v2'
>>> check_model_name("../etc")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
registry.errors.InvalidName: model name '../etc' is not allowed: use 1-128 characters ...
"""

from __future__ import annotations

import re
from typing import Final, Literal

from registry.errors import InvalidName

MODEL_NAME_MAX: Final = 128
"""Longest model name accepted."""

NAME_PATTERN: Final = r"[a-z0-9][a-z0-9_-]{0,127}"
"""The allowed model names (a regular expression, also published in the OpenAPI document)."""
_MODEL_NAME = re.compile(NAME_PATTERN)
_SHA256 = re.compile(r"[0-9a-f]{64}")

Alias = Literal["champion", "canary", "shadow"]
ALIASES: Final[tuple[Alias, ...]] = ("champion", "canary", "shadow")
"""The aliases a model can have: what serves, what takes a share of traffic, what runs in shadow."""


def check_model_name(name: str) -> str:
    """``name`` if it is an allowed model name.

    Raises:
        InvalidName: it is empty, too long, or has a character outside ``[a-z0-9_-]``.

    """
    if not _MODEL_NAME.fullmatch(name):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise InvalidName(
            f"model name {shown!r} is not allowed: use 1-{MODEL_NAME_MAX} characters from a-z, 0-9, "
            "'_' and '-', starting with a letter or digit"
        )
    return name


def check_alias(alias: str) -> Alias:
    """``alias`` if it is one of :data:`ALIASES`.

    Raises:
        InvalidName: any other value.

    """
    if alias not in ALIASES:
        shown = alias if len(alias) <= 64 else alias[:64] + "..."
        raise InvalidName(f"alias {shown!r} does not exist: use one of {', '.join(ALIASES)}")
    return alias


def check_sha256(digest: str) -> str:
    """``digest`` if it is a lower-case hex sha256.

    Raises:
        InvalidName: anything else.

    """
    if not _SHA256.fullmatch(digest):
        raise InvalidName("artifact digest must be 64 lower-case hex characters (sha256)")
    return digest
