"""Pure parts of the registry client: challenges, Docker credentials, token cache, hosts."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from modelrunner.config import StoreConfig
from modelrunner.distribution.auth import (
    Challenge,
    Credentials,
    TokenCache,
    api_host,
    load_credentials,
    parse_challenge,
    scope_for,
)
from modelrunner.distribution.registry import RegistryClient
from modelrunner.distribution.wire import plain_http_allowed, registry_errors, split_host
from modelrunner.errors import ConfigError


class TestParseChallenge:
    def test_docker_hub_bearer(self) -> None:
        h = (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:ai/smollm2:pull"'
        )
        assert parse_challenge(h) == Challenge(
            "bearer",
            "https://auth.docker.io/token",
            "registry.docker.io",
            "repository:ai/smollm2:pull",
        )

    def test_basic(self) -> None:
        assert parse_challenge('Basic realm="basic-realm"') == Challenge("basic", "basic-realm")

    def test_scheme_is_case_insensitive_and_spaces_are_allowed(self) -> None:
        c = parse_challenge('bearer realm = "http://x/token" , service=svc')
        assert c == Challenge("bearer", "http://x/token", "svc", None)

    @pytest.mark.parametrize("header", ["", "Negotiate abc", "Bearer service=x"])
    def test_unusable_challenges_are_none(self, header: str) -> None:
        """A Bearer challenge without a realm cannot be answered."""
        assert parse_challenge(header) is None


def write_config(tmp_path: Path, auths: dict[str, object]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class TestLoadCredentials:
    def test_base64_auth_by_host(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, {"reg.example:5000": {"auth": b64("u:p:with:colons")}})
        assert load_credentials(path, "reg.example:5000") == Credentials("u", "p:with:colons")

    def test_username_password_under_a_url_key(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path, {"https://reg.example/v2/": {"username": "u", "password": "p"}}
        )
        assert load_credentials(path, "reg.example") == Credentials("u", "p")

    def test_docker_hub_under_its_legacy_key(self, tmp_path: Path) -> None:
        """`docker login` stores Hub credentials as https://index.docker.io/v1/."""
        path = write_config(tmp_path, {"https://index.docker.io/v1/": {"auth": b64("me:tok")}})
        assert load_credentials(path, "docker.io") == Credentials("me", "tok")

    def test_other_registry_or_no_file_is_none(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, {"other.example": {"auth": b64("u:p")}})
        assert load_credentials(path, "reg.example") is None
        assert load_credentials(tmp_path / "missing.json", "reg.example") is None

    def test_garbage_is_a_clear_config_error(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, {"reg.example": {"auth": "%%%"}})
        with pytest.raises(ConfigError, match=r"auths\['reg.example'\]"):
            load_credentials(path, "reg.example")
        path.write_text("{not json")
        with pytest.raises(ConfigError, match="cannot read Docker credentials"):
            load_credentials(path, "reg.example")


class TestTokenCache:
    def test_expires_with_a_margin(self) -> None:
        now = [100.0]
        cache = TokenCache(clock=lambda: now[0])
        cache.put("r", "repository:a:pull", "t1", 300)
        assert cache.get("r", "repository:a:pull") == "t1"
        now[0] += 300 - 31
        assert cache.get("r", "repository:a:pull") == "t1"
        now[0] += 2  # within 30 s of expiry: renewed early
        assert cache.get("r", "repository:a:pull") is None

    def test_scopes_are_separate_but_push_serves_pull(self) -> None:
        cache = TokenCache(clock=lambda: 0.0)
        cache.put("r", "repository:a:pull", "pull-a", None)
        assert cache.get("r", "repository:a:pull,push") is None
        assert cache.get("r", "repository:b:pull") is None
        assert cache.get("other", "repository:a:pull") is None
        cache.put("r", "repository:b:pull,push", "push-b", 60)
        assert cache.get("r", "repository:b:pull") == "push-b"

    def test_drop(self) -> None:
        cache = TokenCache(clock=lambda: 0.0)
        cache.put("r", scope_for("a", push=True), "t", 60)
        cache.drop("r", scope_for("a", push=False))
        assert cache.get("r", scope_for("a", push=False)) is None


class TestHosts:
    def test_docker_hub_api_host(self) -> None:
        assert api_host("docker.io") == "registry-1.docker.io"
        assert api_host("index.docker.io") == "registry-1.docker.io"
        assert api_host("ghcr.io") == "ghcr.io"

    @pytest.mark.parametrize(
        ("hostport", "host"),
        [("127.0.0.1:5000", "127.0.0.1"), ("[::1]:5000", "::1"), ("::1", "::1"), ("a.b", "a.b")],
    )
    def test_split_host(self, hostport: str, host: str) -> None:
        assert split_host(hostport) == host

    def test_plain_http_only_for_loopback_and_listed(self) -> None:
        insecure = frozenset({"lab.local:5000", "other.lan"})
        for yes in ("localhost:5000", "127.0.0.1:1", "[::1]:80", "lab.local:5000", "other.lan:8"):
            assert plain_http_allowed(yes, insecure), yes
        for no in ("lab.local:6000", "registry-1.docker.io", "10.0.0.1:5000"):
            assert not plain_http_allowed(no, insecure), no

    def test_client_urls(self, tmp_path: Path) -> None:
        client = RegistryClient(StoreConfig(insecure_registries=("lab.local:5000",)))
        assert client.scheme("docker.io") == "https"
        assert client.scheme("lab.local:5000") == "http"
        url = client._url("docker.io", "ai/smollm2", "manifests", "latest")
        assert str(url) == "https://registry-1.docker.io/v2/ai/smollm2/manifests/latest"


def test_registry_error_bodies() -> None:
    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}'
    assert registry_errors(body) == ("MANIFEST_UNKNOWN", "manifest unknown")
    assert registry_errors(b"<html>bad gateway</html>") == ("", "<html>bad gateway</html>")
