"""A held stream ends when the runner closes, not when its hold's timer fires: real Unix
sockets, the daemon's event loop (uvloop) and asyncio's own."""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from modelrunner.server.relay import upstream
from modelrunner.server.relay.hangups import Hangups

from .test_fasthttp import SSE, Sink

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll: Linux only")


def loops() -> list[Callable[[], asyncio.AbstractEventLoop]]:
    factories: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]
    try:
        import uvloop
    except ImportError:
        return factories
    return [*factories, uvloop.new_event_loop]


@pytest.mark.parametrize("loop_factory", loops())
def test_a_hang_up_is_told_once_and_tokens_are_not(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        hangups = Hangups()
        told: list[int] = []
        hangups.watch(ours.fileno(), lambda: told.append(1))
        theirs.sendall(b"a token")
        await asyncio.sleep(0.05)
        assert told == []  # data arriving is not a hang-up
        theirs.close()
        async with asyncio.timeout(5):
            while not told:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert told == [1]
        hangups.close()
        ours.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop_factory", loops())
def test_a_held_stream_ends_when_the_runner_closes(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], tmp_path: Path
) -> None:
    """Held for a minute at a time: the answer can only end in time if the hang-up ends it."""
    path = tmp_path / "runner.sock"
    event = b"%x\r\n%b\r\n" % (len(SSE[0]), SSE[0])

    async def runner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + event)
        await writer.drain()
        await asyncio.sleep(0.001)
        writer.write(event)  # quick after the first: held
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(event + b"0\r\n\r\n")  # the rest comes while the stream is held
        writer.close()  # as llama-server ends every stream

    async def main() -> None:
        server = await asyncio.start_unix_server(runner, str(path))
        pool = upstream.RunnerPool(connect_timeout_s=5)
        try:
            conn = await pool.connect(path)
            conn.hold_s = 60.0
            sink = Sink()
            conn.send(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", sink)
            async with asyncio.timeout(10):
                while not sink.ended and sink.error is None:
                    await asyncio.sleep(0.01)
            assert sink.ended
            assert sink.error is None
            assert b"".join(sink.body_parts) == SSE[0] * 3
        finally:
            await pool.close()
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner_:
        runner_.run(main())
