"""
Hang-ups of runner connections whose reading is paused, noticed as they happen.

``upstream.RunnerConnection`` holds a fast stream (stops reading it for a few ms) so that
several tokens share a read and a write.  llama-server closes a streamed answer's connection
right after its last chunk, but a connection that is not being read reports nothing: without
this, the end of an answer waited for the hold's timer (up to 16 ms), a delay on every fast
stream's last tokens.  ``Hangups`` keeps an epoll set of its own (Linux) with each runner
connection registered for the peer's hang-up only (``EPOLLRDHUP``, edge-triggered: tokens that
arrive do not wake it), and the loop watches that set as one file descriptor.  Where there is
no epoll (macOS) it notices nothing, and a hold ends by its timer as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections.abc import Callable

_EPOLL = getattr(select, "epoll", None)
_MASK = getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLET", 0)


class Hangups:
    """One loop's watch for peers that hang up; each registered fd's callback runs once."""

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: dict[int, Callable[[], None]] = {}

    def watch(self, fd: int, on_hangup: Callable[[], None]) -> None:
        """Call *on_hangup* when the peer of socket *fd* hangs up (at most once; the fd's
        registration ends when it is closed, or with ``forget``)."""
        epoll = self._epoll
        if epoll is None:
            if _EPOLL is None or self._loop is not None:
                return  # no epoll here, or it failed once: holds end by their timers
            self._loop = asyncio.get_running_loop()
            try:
                epoll = self._epoll = _EPOLL()
                self._loop.add_reader(epoll.fileno(), self._ready)
            except OSError:
                self._epoll = None
                return
        try:
            epoll.register(fd, _MASK)
        except FileExistsError:  # registered already (the kernel drops an fd when it closes)
            epoll.modify(fd, _MASK)
        except OSError:
            return
        self._calls[fd] = on_hangup

    def forget(self, fd: int, on_hangup: Callable[[], None]) -> None:
        """The socket is closed: its callback goes (the kernel dropped its registration)."""
        if self._calls.get(fd) == on_hangup:
            del self._calls[fd]

    def _ready(self) -> None:
        if self._epoll is None:
            return
        for fd, _ in self._epoll.poll(0):
            call = self._calls.pop(fd, None)
            if call is not None:
                call()

    def close(self) -> None:
        epoll, self._epoll = self._epoll, None
        self._calls.clear()
        if epoll is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(epoll.fileno())
            with contextlib.suppress(OSError):
                epoll.close()
