"""The MLX runner's process: ``mlx_lm.server``'s handler served on a Unix socket, one model only.

Run as a script by the Python that has mlx and mlx-lm (``python <this file> --socket S --model D``),
so it imports nothing of modelrunner and only the standard library beside mlx_lm.  Why not
``python -m mlx_lm.server``: that binds a TCP port any local user can reach, and it loads whatever
model a request names (a path, or a Hugging Face download).  Here:

* the socket is bound with umask 077 in the daemon's owner-only run directory, as llama-server's;
* every request is served by the model given on the command line, whatever its ``model`` field
  names (the daemon already routed it here by name), and ``adapters``/``draft_model`` paths a client
  sends are ignored;
* the model is loaded before the socket exists, so ``GET /health`` answering 200 means ready (the
  stock server loads on the first request and is "healthy" before);
* answers are HTTP/1.1, framed (``Content-Length`` or chunked): the stock handler speaks HTTP/1.0
  and ends a stream by closing the connection, so a runner killed mid-stream looked to the daemon
  like an answer that ended normally.  Framed, a cut stream is a cut stream (reported as a crash),
  and connections are kept alive between requests.

SIGTERM ends the process at once (the default action): the daemon's stop is SIGTERM, grace, SIGKILL.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys
from http.server import ThreadingHTTPServer
from typing import Any

# Run as a script, this file's directory (modelrunner/runners) heads sys.path: nothing there may
# shadow a package mlx_lm imports.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

# Options passed through to mlx_lm's own parser (the daemon checks them against an allowlist).
_DEFAULTS = ["--host", "unix", "--port", "0"]


class UnixHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` on an AF_UNIX socket (http.server only binds TCP)."""

    address_family = socket.AF_UNIX
    daemon_threads = True

    def server_bind(self) -> None:
        path: Any = self.server_address  # a path here, whatever socketserver's types say
        if os.path.exists(path):
            os.unlink(path)
        old = os.umask(0o077)  # the socket file is the owner's only, whatever the umask was
        try:
            self.socket.bind(path)
        finally:
            os.umask(old)
        self.server_name, self.server_port = "localhost", 0

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, _ = self.socket.accept()
        # BaseHTTPRequestHandler logs client_address[0]: an AF_UNIX peer has no address.
        return conn, ("unix", 0)


class _Chunked:
    """A writer that sends each write as one HTTP/1.1 chunk."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def write(self, data: bytes) -> int:
        if data:
            self.raw.write(b"%x\r\n%s\r\n" % (len(data), data))
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


def framed(base: Any) -> Any:
    """*base* (mlx_lm's APIHandler) answering in HTTP/1.1 with every body framed."""

    class Framed(base):  # type: ignore[misc]
        protocol_version = "HTTP/1.1"

        def send_response(self, code: int, message: str | None = None) -> None:
            self._has_length = False
            self._chunked: _Chunked | None = None
            super().send_response(code, message)

        def send_header(self, keyword: str, value: str) -> None:
            if keyword.lower() == "content-length":
                self._has_length = True
            super().send_header(keyword, value)

        def end_headers(self) -> None:
            chunk = not getattr(self, "_has_length", True)
            if chunk:
                super().send_header("Transfer-Encoding", "chunked")
            super().end_headers()
            if chunk:
                raw: Any = getattr(self, "wfile")  # noqa: B009 (the base class is untyped)
                self._chunked = _Chunked(raw)
                self.wfile = self._chunked

        def _framed(self, method: Any) -> None:
            self._chunked = None
            method()  # an exception leaves the chunked body unfinished: the client sees a cut
            chunked: _Chunked | None = getattr(self, "_chunked", None)  # set by end_headers
            if chunked is not None:
                self.wfile = chunked.raw
                chunked.raw.write(b"0\r\n\r\n")
                chunked.raw.flush()
                self._chunked = None

        def do_GET(self) -> None:
            self._framed(super().do_GET)

        def do_POST(self) -> None:
            self._framed(super().do_POST)

        def do_OPTIONS(self) -> None:
            self._framed(super().do_OPTIONS)

    return Framed


def _parse(argv: list[str]) -> tuple[str, list[str]]:
    ours = argparse.ArgumentParser(description="mlx_lm.server on a Unix socket")
    ours.add_argument("--socket", required=True)
    known, rest = ours.parse_known_args(argv)
    return known.socket, rest


def main(argv: list[str] | None = None) -> None:
    sock_path, rest = _parse(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: never the network
    mx: Any = importlib.import_module("mlx.core")
    mlx_server: Any = importlib.import_module("mlx_lm.server")

    class OneModel(mlx_server.ModelProvider):  # type: ignore[misc]
        """Every request gets the command line's model: no loads by name, no adapters."""

        def load(
            self, model_path: Any, adapter_path: Any = None, draft_model_path: Any = None
        ) -> Any:
            return super().load("default_model", None, "default_model")

    parser_args = _server_args(mlx_server, [*_DEFAULTS, *rest])
    logging.basicConfig(
        level=getattr(logging, parser_args.log_level.upper(), logging.INFO),
        format="%(asctime)s - %(levelname)s - %(message)s",
        stream=sys.stderr,
    )
    mx.distributed.init()
    provider = OneModel(parser_args)
    provider.load_default()  # before the socket exists: health 200 means the model is loaded
    cache = mlx_server.LRUPromptCache(parser_args.prompt_cache_size)
    generator = mlx_server.ResponseGenerator(provider, cache)

    handler_class = framed(mlx_server.APIHandler)

    def handler(*args: Any, **kwargs: Any) -> Any:
        return handler_class(generator, *args, **kwargs)

    httpd = UnixHTTPServer(sock_path, handler)  # type: ignore[arg-type]
    logging.getLogger("modelrunner.mlx").info("mlx runner listening on %s", sock_path)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
        generator.stop_and_join()


def _server_args(mlx_server: Any, argv: list[str]) -> argparse.Namespace:
    """mlx_lm.server's own options and defaults, by running its ``main`` up to ``parse_args``.

    mlx_lm builds its parser inside ``main`` and exposes no function for it; the handler and the
    generator read dozens of its options, so copying the list would break with each release.
    """
    captured: dict[str, argparse.Namespace] = {}

    class Stop(Exception):
        pass

    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        captured["args"] = original(self, argv, namespace)
        raise Stop

    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        mlx_server.main()
    except Stop:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    return captured["args"]


if __name__ == "__main__":
    main()
