"""API keys: the key ring, where a key is read from, and the middleware on a real TCP listener
and a real Unix socket (aiohttp's own server, no daemon)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from modelrunner.config import Config
from modelrunner.errors import ConfigError
from modelrunner.server.auth import (
    KeyRing,
    make_auth_middleware,
    parser_error_summary,
    read_keys_file,
)
from modelrunner.server.middleware import make_cors_middleware, make_error_middleware

KEY = "sk-unit-5a7c9e1b3d"


class TestKeyRing:
    def test_accepts_only_its_keys(self) -> None:
        ring = KeyRing([KEY, "other"])
        assert ring.accepts(KEY)
        assert ring.accepts("other")
        assert not ring.accepts(KEY[:-1])
        assert not ring.accepts("")

    def test_empty_keys_are_ignored_and_an_empty_ring_is_false(self) -> None:
        assert not KeyRing(["", ""])
        assert len(KeyRing([KEY, KEY])) == 1

    def test_repr_never_shows_a_key(self) -> None:
        assert KEY not in repr(KeyRing([KEY]))


class TestKeysFile:
    def test_one_key_a_line_with_comments_and_blanks(self, tmp_path: Path) -> None:
        path = tmp_path / "keys"
        path.write_text(f"# team\n\n  {KEY}  \nsecond\n")
        assert read_keys_file(path) == [KEY, "second"]

    def test_a_file_without_keys_is_an_error_not_auth_off(self, tmp_path: Path) -> None:
        path = tmp_path / "keys"
        path.write_text("# nothing yet\n\n")
        with pytest.raises(ConfigError, match="holds no keys"):
            read_keys_file(path)

    def test_a_missing_file_names_the_setting(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"server\.api_keys_file: cannot read"):
            read_keys_file(tmp_path / "absent")


class TestConfig:
    def test_model_runner_api_keys_is_comma_separated(self) -> None:
        config = Config.load(env={"MODEL_RUNNER_API_KEYS": f" {KEY}, second ,"})
        assert config.server.api_keys == (KEY, "second")

    def test_keys_are_not_in_the_config_repr(self) -> None:
        config = Config.from_mapping({"server": {"api_keys": [KEY]}})
        assert KEY not in repr(config)

    def test_a_malformed_key_list_is_not_echoed(self) -> None:
        with pytest.raises(ConfigError) as caught:
            Config.from_mapping({"server": {"api_keys": {KEY: True}}})
        assert KEY not in caught.value.message
        assert "server.api_keys: must be a list of strings, got dict" in caught.value.message


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def keyed_app() -> web.Application:
    app = web.Application(
        middlewares=[
            make_error_middleware(),
            make_cors_middleware(["http://localhost:*"]),
            make_auth_middleware(KeyRing([KEY])),
        ]
    )
    app.router.add_get("/models", hello)
    app.router.add_get("/engines/v1/models", hello)
    return app


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Basic {KEY}"}, 401),  # only the Bearer scheme carries a key
        ({"Authorization": "Bearer "}, 401),
        ({"Authorization": f"Bearer {KEY}"}, 200),
        ({"Authorization": f"bearer  {KEY} "}, 200),
        ({"x-api-key": KEY}, 200),
        ({"Authorization": "Bearer wrong", "x-api-key": KEY}, 401),  # Bearer is read first
    ],
)
async def test_tcp_requests_need_a_key(
    aiohttp_client: Any, headers: dict[str, str], status: int
) -> None:
    client = await aiohttp_client(keyed_app())
    resp = await client.get("/models", headers=headers)
    assert resp.status == status
    if status == 401:
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="modelrunner"'
        body = await resp.json()
        assert isinstance(body["error"], str)  # the management shape
        assert KEY not in body["error"]
        assert "wrong" not in body["error"]


async def test_openai_routes_get_openai_shape_and_preflights_pass(aiohttp_client: Any) -> None:
    client = await aiohttp_client(keyed_app())
    resp = await client.get("/engines/v1/models")
    assert resp.status == 401
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "authentication_error"
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"}
    resp = await client.options("/engines/v1/models", headers=preflight)
    assert resp.status == 204


@pytest.fixture
async def unix_url() -> AsyncIterator[tuple[str, Path]]:
    root = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))
    path = root / "a.sock"
    runner = web.AppRunner(keyed_app())
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    try:
        yield "http://localhost", path
    finally:
        await runner.cleanup()
        path.unlink(missing_ok=True)
        root.rmdir()


async def test_the_unix_socket_never_asks(unix_url: tuple[str, Path]) -> None:
    base, path = unix_url
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as http:
        async with http.get(base + "/models") as resp:
            assert resp.status == 200
        async with http.get(base + "/models", headers={"Authorization": "Bearer x"}) as resp:
            assert resp.status == 200


@pytest.mark.parametrize(
    ("message", "summary"),
    [
        (
            f"Invalid header value char:\n\n  b'Authorization: Bearer {KEY}\\x01'\n   ^",
            "Invalid header value char",
        ),
        (
            f"Got more than 8190 bytes when reading: b'Bearer {KEY}aaa...'.",
            "a request line or header is longer than 8190 bytes",
        ),
        (f"Invalid header token:\n\n  b'x-api-key : {KEY}'", "Invalid header token"),
        ("Bad status line 'x'", "Bad status line 'x'"),
    ],
)
def test_parser_errors_lose_their_excerpt(message: str, summary: str) -> None:
    """aiohttp quotes the header it refused; only its first words reach the log and the client."""
    assert parser_error_summary(message) == summary
