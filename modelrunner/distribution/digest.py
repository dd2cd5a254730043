"""Content digests: validation before any digest becomes a path, and hashing helpers.

Only ``sha256:<64 lowercase hex>`` is accepted: a digest from a manifest, a tar or a user is
checked here before the store builds ``blobs/sha256/<hex>`` from it (no traversal, no surprises).
"""

from __future__ import annotations

import hashlib
import re

from ..errors import InvalidReference

ALGORITHM = "sha256"
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_HEX64 = re.compile(r"[a-f0-9]{64}")
_HEX12 = re.compile(r"[a-f0-9]{12}")


def is_digest(value: str) -> bool:
    """``sha256:`` and 64 lowercase hex digits, nothing else."""
    return _DIGEST.fullmatch(value) is not None


def is_full_hex(value: str) -> bool:
    return _HEX64.fullmatch(value) is not None


def is_short_id(value: str) -> bool:
    return _HEX12.fullmatch(value) is not None


def check_digest(value: object, what: str = "digest") -> str:
    """Return *value* when it is a valid sha256 digest, else raise ``InvalidReference``."""
    if not isinstance(value, str) or not is_digest(value):
        shown = repr(value)[:100]
        raise InvalidReference(f"invalid {what} {shown}: expected sha256:<64 lowercase hex>")
    return value


def hex_of(digest: str) -> str:
    """The hex part of a checked digest (what names the file)."""
    return check_digest(digest)[len(ALGORITHM) + 1 :]


def sha256_digest(data: bytes) -> str:
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def short_id(digest: str) -> str:
    """Docker's 12-hex short id of a model id."""
    return digest.removeprefix(f"{ALGORITHM}:")[:12]
