"""
A slow stream's tokens copied from the runner's socket to the client's by a thread.

At one token per read (a real model's stream, tokens tens of ms apart) each token cost the event
loop a wake-up: epoll, uvloop's callbacks and the Python of ``upstream.RunnerConnection`` and the
fast lane's sink, cache-cold every time, since llama-server's threads have run on both cores in
between.  That was 1.5-1.7x what a bare byte-copying relay costs per token; a thread that blocks
in ``recv`` and ``send``s what it got costs about what the bare relay does
(docs/benchmarks.md, "Proxy on a real model").  So once a stream has shown itself slow, its
connection's reading is paused on the loop and a ``Pump`` copies whole chunks (llama-server
writes one per token) until anything else comes: a read that is not exactly one chunk (the
answer's end, a partial chunk, several tokens at once), a read that came quick (a stream gone
fast, which the loop holds to batch), a client that cannot take a write at once (the loop's
buffering and back-pressure take over), or the end of the connection.  Then the loop reads on
from there, with nothing lost or reordered.  The per-token path is a ``recv``, a clock read,
a check and a ``send``; the bookkeeping of what was written (the request log's tap, the usage
scan) is done every ``SETTLE_EVERY`` chunks and before the loop takes over, which cost about
20 µs per token less on a Gemma stream than doing it chunk by chunk.

Knows sockets and threads only; ``Pumps`` owns the worker threads and stops what runs at close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from time import monotonic
from typing import Protocol

from modelrunner.server.relay.fasthttp import one_chunk

READ = 65536
SETTLE_EVERY = 32  # chunks written between two rounds of their bookkeeping


class Watched(Protocol):
    """What the pump keeps up to date on the runner connection it reads for."""

    last_rx: float  # when the runner last sent something (set when the loop takes over)
    received: int  # bytes of the answer so far (the silence check sees them grow)


class Pump:
    """One stretch of one stream: runner socket to client socket, chunk by chunk."""

    def __init__(
        self,
        conn: Watched,
        runner_fd: int,
        client_fd: int,
        relayed: Callable[[bytes], None],
        quick_s: float,
    ) -> None:
        self._conn = conn
        self._quick_s = quick_s  # a read sooner than this after the last goes to the loop
        self._runner = socket.socket(fileno=os.dup(runner_fd))
        self._client = socket.socket(fileno=os.dup(client_fd))
        self._relayed = relayed  # each chunk's payload, once it is written (the tap, the usage)
        self._lock = threading.Lock()  # a write and its tap, or stop: never one inside the other
        self._stopped = False
        self._kept: list[bytes] = []  # written, their bookkeeping not yet done (_settle)

    def run(self) -> tuple[bytes, bytes]:
        """Copy until the loop must take over; returns (a read not relayed, the part of a
        written chunk the client did not take).  Runs on a worker thread."""
        runner, client, conn, lock = self._runner, self._client, self._conn, self._lock
        kept, quick_s, last = self._kept, self._quick_s, conn.last_rx
        keep = kept.append
        runner.setblocking(True)  # the loop does not read it while this runs (shared flags)
        client.setblocking(False)  # the loop still reads the client (its hang-up, pipelining)
        try:
            while True:
                data = runner.recv(READ)
                now = monotonic()
                if not data or not one_chunk(data) or now - last < quick_s:
                    # The runner closed (b"": the loop's reading sees it too), or the stream
                    # went fast: the loop holds such reads to batch them, and judges this one
                    # against the last read's time (last_rx, set below).
                    return data, b""
                last = now
                conn.received += len(data)
                with lock:
                    if self._stopped:
                        return b"", b""
                    try:
                        sent = client.send(data)
                    except BlockingIOError:
                        sent = 0
                    except OSError:
                        return b"", b""  # the client left: its connection_lost ends the request
                    keep(data)
                if sent < len(data):
                    return b"", data[sent:]
                if len(kept) >= SETTLE_EVERY:
                    self._settle()
        except OSError:
            return b"", b""  # stopped (the socket shut down under the read), or reset
        finally:
            conn.last_rx = last
            self._settle()
            with contextlib.suppress(OSError):
                runner.setblocking(False)

    def _settle(self) -> None:
        """The bookkeeping of the chunks written since the last time, in one go: the tap and
        usage see each payload, in order, before the loop reads on."""
        kept, relayed = self._kept, self._relayed
        for data in kept:
            relayed(data[data.find(b"\r\n") + 2 : -2])
        kept.clear()

    def stop(self) -> None:
        """No write after this returns; the runner's connection is shut down, which ends a
        read in progress and tells llama-server to stop generating.  Any thread."""
        with self._lock:
            self._stopped = True
        with contextlib.suppress(OSError):
            self._runner.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """The pump's own handles on the two sockets (the loop's stay open)."""
        self._runner.close()
        self._client.close()


class Pumps:
    """The worker threads pumps run on; a stream that finds none free stays on the loop."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._running: set[Pump] = set()

    def start(
        self, pump: Pump, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[tuple[bytes, bytes]] | None:
        """Run *pump* on a free worker, else None (the caller keeps the stream)."""
        if len(self._running) >= self.workers:
            return None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="pump")
        self._running.add(pump)
        done = loop.run_in_executor(self._executor, pump.run)
        done.add_done_callback(lambda _: self._running.discard(pump))
        return done

    async def close(self) -> None:
        """Stop every pump and wait for its thread."""
        for pump in list(self._running):
            pump.stop()
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True)
