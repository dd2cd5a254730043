"""A runner that does not answer within ``server.upstream_read_timeout_s`` is a timeout, not
"overloaded": HTTP 504 in each API family's shape, on both lanes (the fast lane and aiohttp's),
through the real `openai`, `anthropic` and `ollama` packages.

The runner is a real llama-server, made to take as long as the test needs by SIGSTOP once it
has loaded (it then answers nothing, as one deep in a long non-streamed generation does), and
SIGCONT afterwards; the daemon's read timeout is 1 s.  Once resumed it serves again: a timeout
releases the request, it does not fail the runner.  The slow test does it the way users met it:
the real Gemma model, non-streamed, with more tokens to write than the timeout allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import psutil
import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_daemon import MODEL, client

pytestmark = pytest.mark.llama

TIMEOUT_S = 1
HI: list[Any] = [{"role": "user", "content": "hi"}]
LANES = [pytest.param(True, id="fast-lane"), pytest.param(False, id="aiohttp-lane")]


def runner_of(d: DaemonHandle) -> psutil.Process:
    (runner,) = [p for p in psutil.Process(d.pid).children(recursive=True) if "llama" in p.name()]
    return runner


@pytest.fixture
def make_daemon(
    daemon_factory: Callable[..., DaemonHandle], request: pytest.FixtureRequest
) -> Callable[[Path], DaemonHandle]:
    """A daemon with a 1 s read timeout on the lane the test is parametrized with, *gguf* in
    its store as MODEL and its runner loaded."""

    def make(gguf: Path) -> DaemonHandle:
        d = daemon_factory(
            server={"upstream_read_timeout_s": TIMEOUT_S, "fast_lane": request.param}
        )
        d.add_model(MODEL, gguf)
        client(d).chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
        return d

    return make


@pytest.fixture
def silent(make_daemon: Callable[[Path], DaemonHandle], tiny_gguf: Path) -> Iterator[DaemonHandle]:
    """The daemon, its runner stopped (SIGSTOP) for the test and resumed after it."""
    d = make_daemon(tiny_gguf)
    runner = runner_of(d)
    runner.suspend()
    try:
        yield d
    finally:
        runner.resume()


def check_timeout_message(message: str) -> None:
    assert MODEL in message
    assert f"{TIMEOUT_S}s" in message
    assert "server.upstream_read_timeout_s" in message


@pytest.mark.parametrize("make_daemon", LANES, indirect=True)
def test_a_silent_runner_is_a_timeout_in_each_familys_shape(silent: DaemonHandle) -> None:
    """openai and anthropic, plain and streamed, and ollama: 504, OpenAI's ``timeout`` type,
    Anthropic's ``api_error`` (not ``overloaded_error``), Ollama's ``{"error": ...}``; then,
    the runner resumed, the same model answers."""
    oa = client(silent)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as raised:
            oa.chat.completions.create(model=MODEL, messages=HI, max_tokens=2, stream=stream)
        assert raised.value.status_code == 504
        assert raised.value.type == "timeout"
        assert raised.value.code == "upstream_timeout"
        check_timeout_message(raised.value.message)

    ac = anthropic.Anthropic(
        base_url=f"http://localhost:{silent.port}", api_key="unused", max_retries=0, timeout=60
    )
    for stream in (False, True):
        with pytest.raises(anthropic.InternalServerError) as caught:
            ac.messages.create(model=MODEL, max_tokens=2, messages=HI, stream=stream)
        assert caught.value.status_code == 504
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["type"] == "error"
        assert body["error"]["type"] == "api_error"
        check_timeout_message(body["error"]["message"])

    oc = ollama.Client(host=f"http://127.0.0.1:{silent.port}", timeout=60)
    with pytest.raises(ollama.ResponseError) as failed:
        oc.chat(model=MODEL, messages=HI, options={"num_predict": 2})
    assert failed.value.status_code == 504
    check_timeout_message(failed.value.error)

    runner_of(silent).resume()
    answer = oa.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    assert answer.choices[0].finish_reason == "length"


@pytest.mark.parametrize("make_daemon", LANES, indirect=True)
def test_a_stream_the_runner_stops_feeding_ends_with_a_timeout_event(
    make_daemon: Callable[[Path], DaemonHandle], tiny_gguf_factory: Callable[..., Path]
) -> None:
    """A stream under way when its runner falls silent cannot change its 200 any more: it ends
    with an error event carrying the timeout, which the openai package raises."""
    d = make_daemon(tiny_gguf_factory(seed=3, name="long", ctx=8192))
    runner = runner_of(d)
    stream = client(d).chat.completions.create(
        model=MODEL,
        messages=HI,
        max_tokens=8000,
        stream=True,
        extra_body={"ignore_eos": True},  # 8,000 tokens: seconds of answer still to come
    )
    chunks = iter(stream)
    next(chunks)  # the answer is under way: its 200 has gone
    runner.suspend()
    try:
        with pytest.raises(openai.APIError) as raised:
            list(chunks)
    finally:
        runner.resume()
        stream.close()
    assert raised.value.code == "upstream_timeout"
    assert raised.value.type == "timeout"
    check_timeout_message(raised.value.message)


@pytest.mark.slow
@pytest.mark.parametrize("make_daemon", LANES, indirect=True)
def test_a_long_non_streamed_generation_times_out(
    make_daemon: Callable[[Path], DaemonHandle], gemma_gguf: Path
) -> None:
    """Gemma asked for 2,000 tokens, not streamed: llama-server writes nothing until the last,
    far beyond 1 s.  openai gets a 504 ``timeout``, anthropic a 504 ``api_error``."""
    d = make_daemon(gemma_gguf)
    long = {"ignore_eos": True}  # the whole 2,000 tokens, whatever the model would say
    with pytest.raises(openai.InternalServerError) as raised:
        client(d).chat.completions.create(
            model=MODEL, messages=HI, max_tokens=2000, extra_body=long
        )
    assert raised.value.status_code == 504
    assert raised.value.type == "timeout"
    ac = anthropic.Anthropic(
        base_url=f"http://localhost:{d.port}", api_key="unused", max_retries=0, timeout=60
    )
    with pytest.raises(anthropic.InternalServerError) as caught:
        ac.messages.create(model=MODEL, max_tokens=2000, messages=HI, extra_body=long)
    assert caught.value.status_code == 504
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "api_error"
