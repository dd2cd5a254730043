"""
The CLI's only way to the daemon: blocking HTTP/1.1 over its Unix socket or ``MODEL_RUNNER_HOST``.

Owns finding the daemon (``MODEL_RUNNER_HOST`` wins, else the config's ``server.socket``, which
``MODEL_RUNNER_SOCK`` and ``MODEL_RUNNER_HOME`` feed through ``Config.load``), sending requests,
and turning the daemon's error bodies into one ``DaemonError`` carrying the HTTP status.  It uses
``http.client`` so a command starts without importing aiohttp; streams are read line by line.
It knows nothing of what the verbs print.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modelrunner import __version__
from modelrunner.config import Config
from modelrunner.errors import ModelRunnerError

USER_AGENT = f"modelrunner-cli/{__version__}"
CONNECT_TIMEOUT_S = 5.0
START_HINT = (
    "start it with `modelrunner serve` (or install the service: `modelrunner service install`)"
)


class DaemonError(ModelRunnerError):
    """The daemon answered with an error status; ``http_status`` says which."""

    def __init__(self, message: str, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status


class DaemonNotRunning(ModelRunnerError):
    """Nothing answers where the daemon should be."""

    code = "daemon_not_running"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the daemon listens: a Unix socket, or an HTTP base URL."""

    socket_path: Path | None = None
    host: str = "localhost"
    port: int = 80
    prefix: str = ""  # a path prefix from MODEL_RUNNER_HOST, without a trailing slash
    api_key: str | None = field(default=None, repr=False)  # MODEL_RUNNER_API_KEY, TCP only

    @property
    def display(self) -> str:
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        return f"http://{self.host}:{self.port}{self.prefix}"

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """``MODEL_RUNNER_HOST``: ``http://localhost:12434``, ``unix:///path``, ``host:port``"""
        raw = url.strip()
        if "://" not in raw:
            raw = "http://" + raw
        parts = urllib.parse.urlsplit(raw)
        if parts.scheme == "unix":
            return cls(socket_path=Path(parts.path))
        if parts.scheme != "http" or not parts.hostname:
            raise ModelRunnerError(
                f"MODEL_RUNNER_HOST={url!r} is not an http:// URL (e.g. http://localhost:12434)"
            )
        try:
            port = parts.port or 80
        except ValueError:
            raise ModelRunnerError(f"MODEL_RUNNER_HOST={url!r} has a bad port") from None
        return cls(host=parts.hostname, port=port, prefix=parts.path.rstrip("/"))


def resolve_endpoint(config_path: str | None, env: Mapping[str, str]) -> Endpoint:
    """``MODEL_RUNNER_HOST`` if set, else the Unix socket of the config (and its env vars)."""
    host = env.get("MODEL_RUNNER_HOST", "").strip()
    if host:
        key = env.get("MODEL_RUNNER_API_KEY", "").strip() or None
        return replace(Endpoint.from_url(host), api_key=key)
    config = Config.load(Path(config_path) if config_path else None, env)
    return Endpoint(socket_path=config.server.socket)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(str(self._path))
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _TCPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        # A bounded connect even for a stream read without a timeout (a host that drops SYNs).
        self.sock = socket.create_connection((self.host, self.port), CONNECT_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(self.timeout)


class Response:
    """An open response: read it whole (``json()``, ``text()``) or line by line (``lines()``)."""

    def __init__(self, conn: http.client.HTTPConnection, raw: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._raw = raw
        self.status = raw.status
        self.headers = raw.headers

    def text(self) -> str:
        return b"".join(self.chunks()).decode("utf-8", "replace")

    def json(self) -> Any:
        body = self.text()
        try:
            return json.loads(body) if body.strip() else None
        except ValueError:
            raise ModelRunnerError(
                f"the daemon sent a body that is not JSON: {body[:200]!r}"
            ) from None

    def lines(self) -> Iterator[str]:
        """Each line of the body as it arrives (newline stripped); closes at the end."""
        pending = b""
        for data in self.chunks():
            pending += data
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode("utf-8", "replace").rstrip("\r")
        if pending:
            yield pending.decode("utf-8", "replace").rstrip("\r")

    def chunks(self, size: int = 65536) -> Iterator[bytes]:
        """The body as it arrives; a body cut short is an error, not a quiet end.

        ``read1`` rather than ``readline``: on a chunked body ``readline`` reads through
        ``peek``, which swallows ``IncompleteRead``, so a daemon dying mid-answer would look
        like an answer that ended.
        """
        try:
            while True:
                try:
                    data = self._raw.read1(size)
                except (OSError, http.client.HTTPException) as e:
                    raise _cut_short(e) from e
                if not data:
                    if self._raw.length:  # a Content-Length body that stopped early
                        raise _cut_short(None)
                    return
                yield data
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._raw.close()
        self._conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """Blocking client of the daemon's management and OpenAI routes."""

    def __init__(self, endpoint: Endpoint, *, timeout_s: float | None = 300.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        ep = self.endpoint
        if ep.socket_path is not None:
            return _UnixConnection(ep.socket_path, timeout)
        return _TCPConnection(ep.host, ep.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> Response:
        """Send one request; ``DaemonError`` on 4xx/5xx, ``DaemonNotRunning`` if no one answers.

        ``stream=True`` reads without a timeout (a long pull or generation is not an error).
        """
        hdrs = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        if self.endpoint.api_key and self.endpoint.socket_path is None:
            hdrs["Authorization"] = f"Bearer {self.endpoint.api_key}"
        hdrs.update(headers or {})
        conn = self._connection(None if stream else self.timeout_s)
        try:
            # An iterator body goes out chunked (http.client adds the header and the framing).
            conn.request(method, self.endpoint.prefix + path, body=body, headers=hdrs)
            raw = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as e:
            conn.close()
            raise DaemonNotRunning(
                f"the modelrunner daemon is not running (nothing answers at "
                f"{self.endpoint.display}); {START_HINT}"
            ) from e
        except TimeoutError as e:
            conn.close()
            raise DaemonError(f"the daemon did not answer {method} {path} in time", 504) from e
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise ModelRunnerError(
                f"cannot talk to the daemon at {self.endpoint.display}: "
                f"{str(e) or type(e).__name__}"
            ) from e
        except BaseException:
            conn.close()
            raise
        response = Response(conn, raw)
        if raw.status >= 400:
            raise DaemonError(error_message(raw.status, response.text()), raw.status)
        return response

    def get_json(self, path: str) -> Any:
        return self.request("GET", path).json()

    def post_json(self, path: str, body: Any) -> Any:
        return self.request("POST", path, json_body=body).json()


def _cut_short(e: BaseException | None) -> ModelRunnerError:
    # The daemon went away mid-answer (stopped, crashed): one line, not a traceback.
    if isinstance(e, TimeoutError):
        return ModelRunnerError("the daemon stopped sending its answer (timed out)")
    why = f" ({str(e) or type(e).__name__})" if e is not None else ""
    return ModelRunnerError(f"the daemon closed the connection before the answer ended{why}")


def error_message(status: int, body: str) -> str:
    """The message of a daemon error body: ``{"error": "…"}``, OpenAI's shape, or plain text."""
    text = body.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str) and err:
            return err
        if isinstance(data.get("message"), str):
            return str(data["message"])
    if text:
        return text.splitlines()[0][:500]
    return f"the daemon answered HTTP {status} with no message"


def quote_ref(ref: str) -> str:
    """A model reference as a path segment; ``/`` and ``:`` stay, as DMR's ``{name...}`` wants."""
    return urllib.parse.quote(ref, safe="/:@")
