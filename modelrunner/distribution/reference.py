"""Model references, normalised as Docker Model Runner does (pure; no I/O).

``ai/smollm2`` -> registry ``docker.io``, repository ``ai/smollm2``, tag ``latest``; a bare name
gets the ``ai/`` organisation (``gemma3`` -> ``docker.io/ai/gemma3:latest``); ``name@sha256:…``
pins a manifest digest.  ``store_name`` is the form kept in ``models.json``; ``display`` elides
``docker.io/`` as Docker's CLI does.  Anything that is not a valid reference (path traversal,
an uppercase repository, a bad digest, control characters, absurd length) is refused with
``InvalidReference`` before it can reach a path or a URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidReference
from .digest import is_digest

DEFAULT_REGISTRY = "docker.io"
DEFAULT_ORG = "ai"
DEFAULT_TAG = "latest"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
MAX_INPUT = 512
MAX_NAME = 255  # distribution/reference's NameTotalLengthMax

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?|\[[a-fA-F0-9:]+\](?::[0-9]+)?"
)


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed, normalised model reference."""

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @property
    def name(self) -> str:
        """``docker.io/ai/smollm2`` (no tag, no digest)."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What the registry API is asked for: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def store_name(self) -> str:
        """``docker.io/ai/smollm2:latest``: the form kept in ``models.json``."""
        if self.tag is not None:
            return f"{self.name}:{self.tag}"
        return f"{self.name}@{self.digest}"

    @property
    def display(self) -> str:
        """``ai/smollm2:latest``: ``docker.io/`` elided as Docker's CLI does."""
        full = self.store_name
        return full.removeprefix(f"{DEFAULT_REGISTRY}/")

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        return self.store_name


def parse_reference(text: str) -> Reference:
    """Parse and normalise a user's model reference; raise ``InvalidReference`` if it is not one."""
    if not isinstance(text, str):
        raise InvalidReference(f"invalid model reference {text!r}: not a string")
    s = text.strip()
    shown = repr(s[:80] + ("…" if len(s) > 80 else ""))
    if not s:
        raise InvalidReference("invalid model reference: it is empty")
    if len(s) > MAX_INPUT:
        raise InvalidReference(f"invalid model reference {shown}: longer than {MAX_INPUT} chars")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in s) or any(c.isspace() for c in s):
        raise InvalidReference(
            f"invalid model reference {shown}: contains whitespace or control characters"
        )
    name, digest = s, None
    if "@" in s:
        name, _, digest = s.partition("@")
        if not is_digest(digest):
            raise InvalidReference(
                f"invalid model reference {shown}: the digest must be sha256:<64 lowercase hex>"
            )
    tag: str | None = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if tag == "":
            tag = None
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    if tag is not None and not _TAG.fullmatch(tag):
        raise InvalidReference(
            f"invalid model reference {shown}: bad tag {tag!r} (letters, digits, '_', '.', '-'; "
            "at most 128)"
        )
    registry, repository = _split_domain(name, shown)
    if name.startswith("hf.co/"):
        registry = "huggingface.co"
    _check_repository(repository, shown)
    if len(registry) + 1 + len(repository) > MAX_NAME:
        raise InvalidReference(f"invalid model reference {shown}: the name is too long")
    return Reference(registry, repository, tag, digest)


def _split_domain(name: str, shown: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _DOMAIN.fullmatch(first):
            raise InvalidReference(f"invalid model reference {shown}: bad registry {first!r}")
        registry = first.lower()
        if registry in DOCKER_HUB_ALIASES:
            registry = DEFAULT_REGISTRY
        repository = rest
    else:
        registry, repository = DEFAULT_REGISTRY, name
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"{DEFAULT_ORG}/{repository}"
    return registry, repository


def _check_repository(repository: str, shown: str) -> None:
    if not repository:
        raise InvalidReference(f"invalid model reference {shown}: no repository name")
    if repository != repository.lower():
        raise InvalidReference(
            f"invalid model reference {shown}: repository names must be lowercase"
        )
    for component in repository.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise InvalidReference(
                f"invalid model reference {shown}: bad path component {component!r} "
                "(lowercase letters and digits, separated by '.', '_', '__' or '-')"
            )


def try_parse(text: str) -> Reference | None:
    """``parse_reference`` that returns None instead of raising (for stored, foreign tags)."""
    try:
        return parse_reference(text)
    except InvalidReference:
        return None
