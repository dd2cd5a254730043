"""``GET /models/{name}?remote``: a model's manifest and config read from its registry."""

from __future__ import annotations

import json
from typing import Any

from modelrunner.config import StoreConfig
from modelrunner.distribution.reference import parse_reference
from modelrunner.distribution.registry import RegistryClient
from modelrunner.errors import RegistryError

MAX_CONFIG_BYTES = 4 * 1024 * 1024


async def remote_model(config: StoreConfig, name: str) -> dict[str, Any]:
    """Docker's ``/models`` item shape (no tags) from the registry, not the store."""
    ref = parse_reference(name)
    async with RegistryClient(config) as client:
        manifest = await client.get_manifest(ref.registry, ref.repository, ref.reference)
        try:
            doc = manifest.json()
        except ValueError as e:
            raise RegistryError(f"{ref.display}: the manifest is not JSON") from e
        config_desc = doc.get("config")
        if not isinstance(config_desc, dict) or not isinstance(config_desc.get("digest"), str):
            raise RegistryError(f"{ref.display}: the manifest has no config descriptor")
        size = config_desc.get("size", 0)
        if isinstance(size, bool) or not isinstance(size, int):
            raise RegistryError(f"{ref.display}: the manifest's config size is not a number")
        if size > MAX_CONFIG_BYTES:
            raise RegistryError(f"{ref.display}: the config blob is too large")
        data = bytearray()
        async with client.get_blob(ref.registry, ref.repository, config_desc["digest"]) as blob:
            async for chunk in blob.chunks:
                data += chunk
                if len(data) > MAX_CONFIG_BYTES:
                    raise RegistryError(f"{ref.display}: the config blob is too large")
    try:
        cfg = json.loads(bytes(data))
    except ValueError as e:
        raise RegistryError(f"{ref.display}: the config blob is not JSON") from e
    created = 0
    desc = cfg.get("descriptor") if isinstance(cfg, dict) else None
    return {
        "id": manifest.digest,
        "created": created if not isinstance(desc, dict) else _unix(desc.get("created")),
        "config": cfg.get("config", {}) if isinstance(cfg, dict) else {},
    }


def _unix(value: Any) -> int:
    from datetime import datetime

    if not isinstance(value, str):
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0
