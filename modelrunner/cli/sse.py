"""Reading a server-sent event stream from the daemon: (event, data) pairs as they arrive.

Used by the verbs that follow the daemon live (``requests -f``, ``ps -w``).  Comment lines (the
daemon's keep-alives) and ``id:`` lines are skipped; a frame without ``event:`` is ``message``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def read_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Each complete frame of *lines* (``Response.lines()``) as ``(event, data)``."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", list[str]()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield event, "\n".join(data)
