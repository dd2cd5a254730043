"""The request log's pure parts: folding streamed answers, shortening media, the bounds."""

from __future__ import annotations

import asyncio
import json

from modelrunner.server.observe.request_log import (
    MAX_MODELS,
    RequestLog,
    fold_stream,
    request_text,
    shorten_media,
)
from modelrunner.server.observe.sse_hub import Hub, frame


def sse(*chunks: dict[str, object], done: bool = True) -> str:
    lines = [f"data: {json.dumps(c)}\n\n" for c in chunks]
    return "".join(lines) + ("data: [DONE]\n\n" if done else "")


class TestFoldStream:
    def test_chat_deltas_become_one_message(self) -> None:
        """Content and reasoning deltas are joined; the last chunk's keys and usage stay."""
        text = sse(
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"role": "assistant"}}],
            },
            {"id": "c1", "choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]},
            {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
            {
                "id": "c1",
                "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "length"}],
            },
            {"id": "c1", "choices": [], "usage": {"completion_tokens": 2}},
        )
        response, error = fold_stream(text)
        assert error is None
        assert response is not None
        folded = json.loads(response)
        assert folded["object"] == "chat.completion"
        assert folded["usage"] == {"completion_tokens": 2}
        choice = folded["choices"][0]
        assert choice["message"] == {
            "role": "assistant",
            "content": "Hello",
            "reasoning_content": "hm",
        }
        assert choice["finish_reason"] == "length"
        assert "delta" not in choice

    def test_text_completion(self) -> None:
        text = sse(
            {"choices": [{"text": "a"}]}, {"choices": [{"text": "b", "finish_reason": "stop"}]}
        )
        response, _ = fold_stream(text)
        assert response is not None
        folded = json.loads(response)
        assert folded["object"] == "text_completion"
        assert folded["choices"][0]["text"] == "ab"

    def test_error_event(self) -> None:
        """The daemon's own error event (a runner that died mid-answer) is the record's error."""
        text = sse(
            {"choices": [{"delta": {"content": "x"}}]},
            {"error": {"message": "crashed"}},
            done=False,
        )
        response, error = fold_stream(text)
        assert response is None
        assert error is not None
        assert json.loads(error)["message"] == "crashed"

    def test_anthropic_messages(self) -> None:
        text = "event: message_start\n" + sse(
            {"type": "message_start", "message": {"id": "m", "role": "assistant"}},
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"n": 1}},
            done=False,
        )
        response, _ = fold_stream(text)
        assert response is not None
        folded = json.loads(response)
        assert folded["content"] == [{"type": "text", "text": "Hi"}]
        assert folded["stop_reason"] == "end_turn"

    def test_not_a_stream(self) -> None:
        assert fold_stream("plain") == (None, None)


class TestShortening:
    def test_data_urls_and_raw_base64_are_cut(self) -> None:
        body = {
            "messages": [
                {"content": [{"image_url": {"url": "data:image/png;base64," + "A" * 1000}}]}
            ],
            "images": ["B" * 2000],
            "prompt": "short stays",
            "words": "not base64, " * 100,
        }
        out = shorten_media(body)
        url = out["messages"][0]["content"][0]["image_url"]["url"]
        assert url == "data:image/png;base64," + "A" * 100 + "...[truncated 900 chars]"
        assert out["images"][0] == "B" * 100 + "...[truncated 1900 chars]"
        assert out["prompt"] == "short stays"
        assert out["words"] == body["words"]

    def test_request_text_is_bounded(self) -> None:
        text = request_text(json.dumps({"prompt": "word " * 1000}).encode(), 100)
        assert text.startswith('{"prompt": "word')
        assert text.endswith("bytes]")
        assert len(text) < 140


class TestBounds:
    def test_records_per_model_and_bytes(self) -> None:
        log = RequestLog(per_model=3, body_bytes=10)
        for _ in range(5):
            record = log.begin(
                model_id="m", model="ai/m", method="POST", url="/v1/x", user_agent="", body=b"{}"
            )
            record.tap(b"0123456789abcdef")
            log.finish(record, 200)
        (group,) = log.groups()
        assert group["count"] == 3
        assert group["records"][-1]["response"] == "0123456789...[truncated 6 bytes]"
        assert log.find("ai/m") == "m"

    def test_models_are_bounded(self) -> None:
        log = RequestLog()
        for i in range(MAX_MODELS + 5):
            log.begin(
                model_id=f"m{i}", model=f"m{i}", method="POST", url="/", user_agent="", body=b""
            )
        groups = log.groups()
        assert len(groups) == MAX_MODELS
        assert groups[0]["model_id"] == "m5"

    def test_an_error_status_moves_the_body_to_error(self) -> None:
        log = RequestLog()
        record = log.begin(model_id="m", model="m", method="POST", url="/", user_agent="", body=b"")
        record.tap(b"not json")
        log.finish(record, 500)
        api = record.to_api()
        assert api["response"] == ""
        assert json.loads(api["error"]) == {"error": "not json"}


class TestHub:
    def test_a_full_queue_drops_its_subscriber_only(self) -> None:
        hub = Hub("t", 2)
        closed: list[str] = []
        slow = hub.subscribe(lambda: closed.append("slow"))
        fast = hub.subscribe(lambda: closed.append("fast"))
        for i in range(3):
            hub.publish(frame("e", {"i": i}))
            fast.queue.get_nowait()  # this one keeps up
        assert closed == ["slow"]
        assert slow.dropped
        assert not fast.dropped
        assert hub.dropped == 1
        assert hub.subscribers == 1

    def test_topics_filter(self) -> None:
        hub = Hub("t", 4)
        sub = hub.subscribe(lambda: None, lambda topic: topic == "a")
        hub.publish(b"x", topic="b")
        hub.publish(b"y", topic="a")
        assert sub.queue.qsize() == 1

    def test_close_ends_every_stream(self) -> None:
        hub = Hub("t", 1)
        sub = hub.subscribe(lambda: None)
        hub.close()
        assert sub.queue.get_nowait() is None


async def test_a_big_body_is_cut_after_the_answer_not_before() -> None:
    """A request bigger than the limit is kept whole while it runs, then shortened off its path."""
    log = RequestLog(body_bytes=1024)
    body = json.dumps({"image": "data:image/png;base64," + "A" * 5000}).encode()
    record = log.begin(model_id="m", model="m", method="POST", url="/", user_agent="", body=body)
    assert record.body is body
    log.finish(record, 200)
    await asyncio.sleep(0)  # the loop runs the compaction it was handed
    assert len(record.body) < 300
    assert "[truncated 4900 chars]" in record.to_api()["request"]
