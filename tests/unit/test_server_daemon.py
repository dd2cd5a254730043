"""Daemon helpers in-process: the log file's rotation, the loopback rule, the socket check."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrunner.config import Config
from modelrunner.errors import ConfigError
from modelrunner.server.daemon import LogFile, check_host, clear_socket, is_loopback


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_log_file_rotates_past_its_size(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "logs" / "daemon.log", max_bytes=100)
    for i in range(30):
        log.write(f"line {i:02d}\n")
    log.close()
    current = (tmp_path / "logs" / "daemon.log").read_text()
    rotated = (tmp_path / "logs" / "daemon.log.1").read_text()
    assert current.endswith("line 29\n")
    assert rotated.startswith("line ")
    assert len(rotated) <= 108


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("192.168.1.2", False),
        ("example.com", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_remote_host_needs_allow_remote() -> None:
    remote = Config.from_mapping({"server": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match="--allow-unauthenticated"):
        check_host(remote)
    check_host(Config.from_mapping({"server": {"host": "0.0.0.0", "allow_remote": True}}))
    check_host(Config.from_mapping({"server": {"host": "0.0.0.0", "allow_unauthenticated": "yes"}}))
    check_host(Config.from_mapping({"server": {"host": "0.0.0.0", "api_keys": ["k"]}}))
    ollama_only = {"host": "0.0.0.0", "port": 0, "ollama_port": 11434}
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0:11434 without API keys"):
        check_host(Config.from_mapping({"server": ollama_only}))
    check_host(Config.from_mapping({"server": {"host": "0.0.0.0", "port": 0}}))  # no TCP at all


async def test_stale_socket_is_removed_live_one_refused(short_dir: Path) -> None:
    path = short_dir / "d.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    await clear_socket(path)
    assert not path.exists()

    server = await asyncio.start_unix_server(lambda r, w: w.close(), path=str(path))
    try:
        with pytest.raises(ConfigError, match="already listening"):
            await clear_socket(path)
        assert path.exists()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_regular_file_in_the_way_is_refused(short_dir: Path) -> None:
    path = short_dir / "d.sock"
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        await clear_socket(path)
