"""The request log holds what every API family streamed, not only the OpenAI routes: streamed
answers from the Anthropic, Ollama and Responses routes are folded into one response body
(their relays feed the same tap as the pass-through), through each family's real client."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import ollama
import openai
import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_request_log import log_of

pytestmark = pytest.mark.llama

MODEL = "test/tiny"


@pytest.fixture
def served(daemon: DaemonHandle, tiny_gguf: Path) -> DaemonHandle:
    daemon.add_model(MODEL, tiny_gguf)
    return daemon


def test_streamed_answers_of_every_family_are_folded(served: DaemonHandle) -> None:
    base = f"http://127.0.0.1:{served.port}"
    ac = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0, timeout=60)
    with ac.messages.stream(
        model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        said = "".join(stream.text_stream)
    oc = ollama.Client(host=base, timeout=60)
    parts = oc.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        options={"num_predict": 5},
    )
    lines = list(parts)
    assert lines[-1].done
    oa = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
    events = list(oa.responses.create(model=MODEL, input="hi", max_output_tokens=5, stream=True))
    assert events[-1].type == "response.completed"

    (group,) = log_of(served)
    by_url = {r["url"]: r for r in group["records"]}
    assert {"/v1/messages", "/api/chat", "/v1/responses"} <= set(by_url), sorted(by_url)
    for url, record in by_url.items():
        assert record["status_code"] == 200, (url, record)
        assert record["response"], f"{url}: the streamed answer was not recorded"
        assert "data:" not in record["response"], f"{url}: SSE chunks, not one folded body"
        json.loads(record["response"])  # one object
    anthropic_answer = json.loads(by_url["/v1/messages"]["response"])
    assert anthropic_answer["content"][0]["text"] == said
