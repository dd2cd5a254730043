"""OpenAI's Responses API on the real daemon and a real runner, driven by the real `openai`
package: create, stream, retrieve, input_items, delete, store: false, a restart, hostile input,
and (with the real Gemma) a `previous_response_id` whose answer depends on the earlier turn."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.http_json import call

pytestmark = pytest.mark.llama

MODEL = "test/tiny"


def client(d: DaemonHandle, suffix: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://localhost:{d.port}{suffix}", api_key="unused", max_retries=0, timeout=120
    )


@pytest.fixture
def served(daemon: DaemonHandle, tiny_gguf: Path) -> DaemonHandle:
    daemon.add_model(MODEL, tiny_gguf)
    return daemon


def test_create_retrieve_input_items_delete(served: DaemonHandle) -> None:
    """A stored response is retrieved by id with what went in; after delete, 404s."""
    oa = client(served)
    made = oa.responses.create(
        model=MODEL,
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": [{"type": "input_text", "text": "again"}]},
        ],
        max_output_tokens=4,
        metadata={"topic": "greeting"},
    )
    assert made.id.startswith("resp_")
    assert made.object == "response"
    assert made.output_text
    assert made.usage is not None
    assert made.usage.output_tokens == 4
    assert made.status == "incomplete"  # max_output_tokens cut it short
    assert made.model == "test/tiny:latest"

    got = oa.responses.retrieve(made.id)
    assert got.id == made.id
    assert got.output_text == made.output_text
    assert got.metadata == {"topic": "greeting"}
    assert got.instructions == "Be brief."

    items = list(oa.responses.input_items.list(made.id, order="asc"))
    assert [(i.type, getattr(i, "role", None)) for i in items] == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    newest = oa.responses.input_items.list(made.id, limit=1)  # newest first, as OpenAI's
    assert newest.data[0].id == items[-1].id
    assert newest.has_more

    deleted = oa.responses.delete(made.id)
    assert deleted is None  # the openai package returns nothing for a delete
    with pytest.raises(openai.NotFoundError) as caught:
        oa.responses.retrieve(made.id)
    assert "not found" in str(caught.value)
    with pytest.raises(openai.NotFoundError):
        oa.responses.input_items.list(made.id)
    with pytest.raises(openai.NotFoundError):
        oa.responses.delete(made.id)
    # Docker's alias, no /v1: the same store.
    assert call(served, "GET", f"/responses/{made.id}")[0] == 404


def test_streamed_events_end_with_completed_and_are_stored(served: DaemonHandle) -> None:
    """`stream=True`: created … output_text.delta … completed; the result is retrievable."""
    oa = client(served, "/engines/llama.cpp/v1")
    events = list(oa.responses.create(model=MODEL, input="hello", max_output_tokens=5, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") >= 2
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == deltas
    assert final.usage is not None
    assert final.usage.output_tokens == 5
    assert client(served).responses.retrieve(final.id).output_text == deltas

    with oa.responses.stream(model=MODEL, input="hello", max_output_tokens=3) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        done = stream.get_final_response()
    assert done.output_text == "".join(texts)

    with urllib.request.urlopen(served.base_url + "/metrics", timeout=30) as r:
        metrics = r.read().decode()
    assert 'modelrunner_tokens_total{model="test/tiny:latest",kind="completion"} 8' in metrics
    assert 'route="/engines/{backend}/v1/responses",status="200"} 2' in metrics


def test_store_false_and_unknown_ids(served: DaemonHandle) -> None:
    """`store: false` keeps nothing; unknown, malformed or unstored ids are OpenAI 404s."""
    oa = client(served)
    made = oa.responses.create(model=MODEL, input="x", max_output_tokens=2, store=False)
    assert made.store is False
    with pytest.raises(openai.NotFoundError):
        oa.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError) as caught:
        oa.responses.create(
            model=MODEL, input="x", max_output_tokens=2, previous_response_id=made.id
        )
    assert "previous_response_id" in str(caught.value)
    for rid in ("resp_0000", "../../etc/passwd", "resp_" + "0" * 32):
        status, body = call(served, "GET", f"/v1/responses/{rid}")
        assert status == 404, rid
        assert body["error"]["type"] == "not_found_error"
    assert (home_files := list((served.home / "responses").iterdir())) == [], home_files


def test_a_restart_keeps_stored_responses(served: DaemonHandle) -> None:
    """Stored on disk under the daemon's home: a new daemon process answers the same id."""
    oa = client(served)
    made = oa.responses.create(model=MODEL, input="remember me", max_output_tokens=3)
    assert (served.home / "responses" / f"{made.id}.json").is_file()
    served.restart()
    got = client(served).responses.retrieve(made.id)
    assert got.output_text == made.output_text
    items = list(client(served).responses.input_items.list(made.id))
    assert items[0].content[0].text == "remember me"  # type: ignore[union-attr]
    follow = client(served).responses.create(
        model=MODEL, input="and now?", max_output_tokens=2, previous_response_id=made.id
    )
    assert follow.previous_response_id == made.id


HOSTILE: list[tuple[str, str, bytes | dict[str, Any] | None]] = [
    ("POST", "/v1/responses", b"{not json"),
    ("POST", "/v1/responses", b"[]"),
    ("POST", "/responses", b""),
    ("POST", "/v1/responses", {"model": 3, "input": "x"}),
    ("POST", "/v1/responses", {"model": MODEL}),
    ("POST", "/v1/responses", {"model": MODEL, "input": 42}),
    ("POST", "/v1/responses", {"model": MODEL, "input": [1, 2]}),
    ("POST", "/v1/responses", {"model": MODEL, "input": [{"role": "robot", "content": "x"}]}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "x", "max_output_tokens": 10**15}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "x", "max_output_tokens": "many"}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "x", "stream": "yes"}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "x", "temperature": "hot"}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "x", "tool_choice": 7}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "x", "text": {"format": {"type": "?"}}}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "x", "background": True}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "x", "previous_response_id": 5}),
    ("POST", "/engines/nope/v1/responses", {"model": MODEL, "input": "x"}),
    ("GET", "/v1/responses/resp_nope/input_items?limit=0", None),
]


def test_hostile_input_gets_openai_errors(served: DaemonHandle) -> None:
    """Bad JSON, wrong types, a huge max_output_tokens: 4xx in OpenAI's shape; the daemon and
    its runner go on answering."""
    for method, path, body in HOSTILE:
        status, answer = call(served, method, path, body)
        assert 400 <= status < 500, (path, body, status, answer)
        assert isinstance(answer["error"]["message"], str), (path, body, answer)
        assert answer["error"]["type"] == "invalid_request_error", (path, body, answer)
    status, answer = call(served, "POST", "/v1/responses", {"model": "ai/absent", "input": "x"})
    assert status == 404
    assert "ai/absent" in answer["error"]["message"]
    assert client(served).responses.create(model=MODEL, input="ok?", max_output_tokens=2).id


def test_function_tools_and_structured_output_reach_the_runner(served: DaemonHandle) -> None:
    """Function tools, an object tool_choice and text.format are translated for chat
    completions (the runner accepts them: no 4xx/5xx), and echoed on the response."""
    oa = client(served)
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    made = oa.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
        tools=[tool],  # type: ignore[list-item]
        tool_choice="auto",
        max_output_tokens=4,
    )
    assert made.tools[0].name == "get_weather"  # type: ignore[union-attr]
    kinds = [i.type for i in oa.responses.input_items.list(made.id, order="asc")]
    assert kinds == ["message", "function_call", "function_call_output"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_previous_response_id_carries_the_earlier_turn(
    daemon: DaemonHandle, gemma_gguf: Path
) -> None:
    """With the real Gemma 3 270M at temperature 0 (greedy, so the same prompt gives the same
    answer): the follow-up's prompt holds turn 1 (its input tokens exceed the same question
    asked alone by more than turn 1's input), and its answer repeats turn 1's name."""
    daemon.add_model("ai/gemma3", gemma_gguf)
    conf = {"model": "ai/gemma3", "context-size": 1024}
    assert call(daemon, "POST", "/engines/_configure", conf)[0] == 202
    oa = client(daemon)
    first = oa.responses.create(
        model="ai/gemma3",
        input="My name is Zorblax. Say hello to me by name.",
        max_output_tokens=20,
        temperature=0,
    )
    question = {"model": "ai/gemma3", "input": "What is my name?", "max_output_tokens": 12}
    alone = oa.responses.create(**question, temperature=0)  # type: ignore[arg-type]
    follow = oa.responses.create(
        **question,  # type: ignore[arg-type]
        temperature=0,
        previous_response_id=first.id,
    )
    assert first.usage is not None
    assert alone.usage is not None
    assert follow.usage is not None
    assert follow.usage.input_tokens > alone.usage.input_tokens + first.usage.input_tokens - 5
    assert "Zor" in follow.output_text, follow.output_text
    assert "Zor" not in alone.output_text, alone.output_text
    assert follow.previous_response_id == first.id

    # Structured output: text.format becomes the runner's response_format (a grammar).
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    shaped = oa.responses.create(
        model="ai/gemma3",
        input="Is Paris in France?",
        max_output_tokens=24,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "verdict", "schema": schema}},
    )
    assert json.loads(shaped.output_text)["answer"] in ("yes", "no"), shaped.output_text


def test_the_readme_examples_run_as_written(daemon: DaemonHandle, tiny_gguf: Path) -> None:
    """The README's `anthropic` and `client.responses` examples, on this daemon's port (the
    tiny model stands in under the default model's tag: the examples are about the API)."""
    import re
    import subprocess
    import sys

    daemon.add_model("ai/gemma3:270M-Q4_K_M", tiny_gguf)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)
    chosen = [b for b in blocks if "import anthropic" in b or "client.responses" in b]
    assert len(chosen) == 2
    for block in chosen:
        done = subprocess.run(
            [sys.executable, "-c", block.replace("localhost:12434", f"localhost:{daemon.port}")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()
