"""docs/openapi.yaml and the app's router describe the same API, in both directions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "openapi.yaml"
METHODS = {"get", "post", "put", "delete", "patch"}
SAMPLES = {"name": "ai/smollm2:latest", "backend": "llama.cpp"}


def spec_operations() -> set[tuple[str, str]]:
    """(METHOD, path template) for every operation in the OpenAPI document."""
    doc = yaml.safe_load(SPEC.read_text())
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


def concrete(template: str) -> str:
    """A URL path for a template, with sample values (names contain slashes, as Docker's)."""
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: SAMPLES.get(m.group(1), "x"), template)


def template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{\w+\}", template)
    return re.compile("^" + ".+".join(re.escape(p) for p in parts) + "$")


@pytest.fixture
def app() -> web.Application:
    """The real app's router; the store and supervisor are not touched while routes are added."""
    server_app = pytest.importorskip("modelrunner.server.app", reason="server not written yet")
    from modelrunner.config import Config

    stand_in = cast(Any, object())
    built: web.Application = server_app.make_app(Config(), stand_in, stand_in)
    return built


def test_spec_is_valid_openapi() -> None:
    """The document loads as OpenAPI 3 and has every operation schemathesis will fuzz."""
    import schemathesis

    schema = schemathesis.openapi.from_path(str(SPEC))
    assert sum(1 for _ in schema.get_all_operations()) == len(spec_operations())


async def unrouted(app: web.Application) -> list[str]:
    """Documented operations the app's router does not serve (404/405 on a sample URL)."""
    missing = []
    for method, template in sorted(spec_operations()):
        request = make_mocked_request(method, concrete(template), app=app)
        match = await app.router.resolve(request)
        if match.http_exception is not None:
            missing.append(f"{method} {template} -> {match.http_exception.status}")
    return missing


def undocumented(app: web.Application) -> list[str]:
    """Routes the app serves that match no documented path and method."""
    documented = [(m, template_regex(t)) for m, t in spec_operations()]
    found = []
    for route in app.router.routes():
        if route.method in {"HEAD", "OPTIONS", "*"}:
            continue
        info = route.get_info()
        template = info.get("formatter") or info.get("path") or ""
        if not template or "prefix" in info:
            continue
        path = concrete(template)
        if not any(m == route.method and rx.match(path) for m, rx in documented):
            found.append(f"{route.method} {template}")
    return found


async def test_every_documented_route_exists(app: web.Application) -> None:
    """Each path/method in docs/openapi.yaml resolves to a handler, not a 404/405."""
    missing = await unrouted(app)
    assert not missing, "documented but not routed:\n" + "\n".join(missing)


def test_every_route_is_documented(app: web.Application) -> None:
    """Each route the app serves matches a documented path and method."""
    extra = undocumented(app)
    assert not extra, "routed but not in docs/openapi.yaml:\n" + "\n".join(extra)


async def test_the_checks_catch_drift() -> None:
    """The two checks pass on an app built from the document and catch one missing/extra route."""

    async def handler(_: web.Request) -> web.Response:
        return web.Response()

    def build(skip: tuple[str, str] | None, extra: bool) -> web.Application:
        app = web.Application()
        # Longest first, as a real router must order `{name:.+}` against its suffixes.
        for method, template in sorted(spec_operations(), key=lambda o: -len(o[1])):
            if (method, template) != skip:
                path = template.replace("{name}", "{name:.+}")
                app.router.add_route(method, path, handler)
        if extra:
            app.router.add_get("/secret/debug", handler)
        return app

    whole = build(None, extra=False)
    assert await unrouted(whole) == []
    assert undocumented(whole) == []
    assert await unrouted(build(("POST", "/models/{name}/tag"), extra=False))
    assert undocumented(build(None, extra=True)) == ["GET /secret/debug"]
