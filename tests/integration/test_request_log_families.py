"""The request log holds what every API family streamed, not only the OpenAI routes: streamed
answers from the Anthropic, Ollama and Responses routes are folded into one response body
(their relays feed the same tap as the pass-through), through each family's real client."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anthropic
import ollama
import openai
import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_cli import CLI
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


def _user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _ask_every_family(
    ac: anthropic.Anthropic, oc: ollama.Client, oa: openai.OpenAI
) -> list[tuple[str, str, str]]:
    """One request per family and form; (url, prompt, the text the client got) of each."""
    few = {"num_predict": 5}
    said: list[tuple[str, str, str]] = []
    m = ac.messages.create(model=MODEL, max_tokens=5, messages=_user("a1"))  # type: ignore[arg-type]
    said.append(("/v1/messages", "a1", "".join(b.text for b in m.content if b.type == "text")))
    with ac.messages.stream(model=MODEL, max_tokens=5, messages=_user("a2")) as stream:  # type: ignore[arg-type]
        said.append(("/v1/messages", "a2", "".join(stream.text_stream)))
    chat = oc.chat(model=MODEL, messages=_user("o1"), options=few)
    said.append(("/api/chat", "o1", chat.message.content or ""))
    parts = oc.chat(model=MODEL, messages=_user("o2"), options=few, stream=True)
    said.append(("/api/chat", "o2", "".join(p.message.content or "" for p in parts)))
    whole = oc.generate(model=MODEL, prompt="o3", options=few)
    said.append(("/api/generate", "o3", whole.response))
    pieces = oc.generate(model=MODEL, prompt="o4", options=few, stream=True)
    said.append(("/api/generate", "o4", "".join(p.response for p in pieces)))
    r = oa.responses.create(model=MODEL, input="r1", max_output_tokens=5)
    said.append(("/v1/responses", "r1", r.output_text))
    with oa.responses.stream(model=MODEL, input="r2", max_output_tokens=5) as rs:
        said.append(("/v1/responses", "r2", rs.get_final_response().output_text))
    c = oa.chat.completions.create(model=MODEL, messages=_user("c1"), max_tokens=5)  # type: ignore[arg-type]
    said.append(("/v1/chat/completions", "c1", c.choices[0].message.content or ""))
    return said


def test_every_familys_answer_is_its_text(served: DaemonHandle) -> None:
    """ANSWER is the text each real client got, never the family's JSON: Anthropic messages
    (whole and streamed), Ollama /api/chat and /api/generate (whole and streamed), Responses
    (whole and streamed), beside an OpenAI chat; in `GET /engines/requests` (its `prompt` and
    `answer`) and in the real CLI's `modelrunner requests` table."""
    base = f"http://127.0.0.1:{served.port}"
    ac = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0, timeout=60)
    oc = ollama.Client(host=base, timeout=60)
    oa = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
    try:
        said = _ask_every_family(ac, oc, oa)
    finally:
        ac.close()
        oc.close()
        oa.close()
    assert all(text.strip() for _, _, text in said), said

    (group,) = log_of(served)
    records = group["records"][-len(said) :]
    assert [(r["url"], r["prompt"]) for r in records] == [(u, p) for u, p, _ in said]
    for record, (url, _, text) in zip(records, said, strict=True):
        assert record["status_code"] == 200, record
        assert record["answer"] == text, (url, record["answer"], record["response"])
        json.loads(record["response"])  # Docker's field keeps the body itself

    table = subprocess.run(
        [*CLI, "requests"],
        env={**served.env, "MODEL_RUNNER_HOME": str(served.home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = table.splitlines()[1:]
    for url, prompt, text in said:
        shown = " ".join(text.split())[:39]
        (line,) = [r for r in rows if f"  {url}  " in r and f"  {prompt}  " in r]
        assert shown in line, (url, line)
    assert '{"' not in table, table
