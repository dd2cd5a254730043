"""
The one path every inference request takes to a runner, whichever transport carried it.

``pass_through`` acquires the model's runner, lets the transport's ``Lane`` forward the body and
relay the answer, and does the accounting every request gets: the request log and live counters
(``activity``), token usage for the metrics and the KV cache, and how an error ends an answer
that has already begun (an error event: no status can be sent any more), including a stream cut
by SIGTERM's drain bound.  Two lanes implement it: aiohttp's (``openai_api.serve``, used by every
API family) and the fast lane's (``fastlane.py``, the OpenAI routes served off the socket).
Knows nothing of HTTP framing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol, TypeVar

from modelrunner.errors import ModelRunnerError, UpstreamError
from modelrunner.runners.model import Mode
from modelrunner.server.observe import activity
from modelrunner.server.observe.activity import RequestInfo

if TYPE_CHECKING:
    from modelrunner.runners.supervisor import Runner
    from modelrunner.server.relay.proxy import Forwarded
    from modelrunner.server.state import ServerState

T = TypeVar("T", covariant=True)
R = TypeVar("R")


class Lane(Protocol[T]):
    """A transport's half of ``pass_through``: what it answers with is its own type *T*."""

    @property
    def upstream_path(self) -> str:
        """llama-server's endpoint the body goes to (the prompt cache's slot choice reads it)."""
        ...

    @property
    def upstream_errors(self) -> tuple[type[BaseException], ...]:
        """The errors that mean the runner's connection failed (each lane has its client)."""
        ...

    def started(self) -> bool:
        """Whether the answer's status has gone to the client."""
        ...

    async def forward(self, runner: Runner, forwarded: Forwarded) -> T:
        """Send the body to *runner* and relay its answer; fills *forwarded* on the way."""
        ...

    def preloaded(self) -> T:
        """The empty 200 of an ``X-Preload-Only`` request."""
        ...

    def gone(self, error: BaseException) -> T | None:
        """The answer for a client that left mid-relay, or None if *error* is not that."""
        ...

    async def end_with(self, forwarded: Forwarded, error: ModelRunnerError) -> T:
        """End an answer already under way with *error* (never raises)."""
        ...


async def pass_through(
    state: ServerState,
    request: RequestInfo,
    model_id: str,
    name: str,
    mode: Mode,
    body: bytes,
    keep_alive_s: float | None,
    lane: Lane[R],
    forwarded: Forwarded,
    *,
    preload_only: bool = False,
) -> R:
    """Acquire the model's runner and pass the request through *lane*; errors after the answer
    began end it with an error event instead of a status."""
    acquired = None
    turn = None
    # The request log and live counters: one record per request, fed by the relay's tap.
    recorded = activity.begin(state, request, model_id, name, body, preload=preload_only)
    recorded.feeds(forwarded)
    try:
        async with state.supervisor.acquire(model_id, mode, keep_alive_s) as runner:
            acquired = runner
            recorded.served_by(runner.backend)
            if preload_only:
                recorded.status(200)
                return lane.preloaded()
            # The slot it gets (id_slot), and what that slot's last conversation needs first.
            turn = await state.supervisor.kv.conversations.begin(
                runner, lane.upstream_path, body, forwarded.payload
            )
            if turn is not None:
                forwarded.upstream_body = turn.body
            answer = await lane.forward(runner, forwarded)
            recorded.answered(forwarded)
            return answer
    except lane.upstream_errors as e:
        gone = lane.gone(e)
        if gone is not None:
            return gone
        error: ModelRunnerError = UpstreamError(f"runner for model {name!r} failed: {e!r}")
        recorded.failed(request.path, error)
        if not lane.started():
            raise error from e
        state.metrics.stream_errors += 1
        return await lane.end_with(forwarded, error)
    except ModelRunnerError as e:
        recorded.failed(request.path, e)
        if not lane.started():
            raise
        state.metrics.stream_errors += 1
        return await lane.end_with(forwarded, e)
    except asyncio.CancelledError:
        # Cut by SIGTERM's drain bound: the stream says why before it ends (server/drain.py).
        if not lane.started() or not state.drain.was_cut():
            raise
        state.metrics.stream_errors += 1
        return await lane.end_with(forwarded, state.drain.cut_error())
    finally:
        # Here, not only after a clean end: the openai package drops the connection once it has
        # read `[DONE]`, which cancels this handler (handler_cancellation) before it returns;
        # the tokens were generated all the same.
        if forwarded.usage is not None:
            state.metrics.observe_usage(name, forwarded.usage)
            if acquired is not None:
                state.supervisor.kv.note_usage(acquired, forwarded.usage)
        if turn is not None:  # an answer with usage ended whole: its slot holds the conversation
            state.supervisor.kv.conversations.end(turn, forwarded.usage, ok=True)
        recorded.finish(forwarded)
