"""Progress rendering of pull/push streams: bars, ETA, terminal redraws and plain lines."""

from __future__ import annotations

import io
import json

import pytest

from modelrunner.cli.progress import Layer, ProgressRenderer, bar, eta, follow, layer_line
from modelrunner.errors import ModelRunnerError

A = "sha256:a5fd3b62e1f2" + "1" * 52
B = "sha256:d0ce8fae0000" + "2" * 52


def event(layer_id, current, size, kind="progress", mode="pull"):
    return {
        "type": kind,
        "message": "",
        "total": size,
        "layer": {"id": layer_id, "size": size, "current": current},
        "mode": mode,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestPieces:
    @pytest.mark.parametrize(
        ("current", "total", "shown"),
        [
            (0, 100, "[          ]"),
            (50, 100, "[====>     ]"),
            (99, 100, "[========> ]"),
            (100, 100, "[==========]"),
            (5, 0, "[          ]"),
        ],
    )
    def test_bar(self, current, total, shown) -> None:
        assert bar(current, total, width=10) == shown

    @pytest.mark.parametrize(
        ("s", "shown"), [(0, "0s"), (8.4, "8s"), (65, "1m05s"), (7380, "2h03m")]
    )
    def test_eta(self, s, shown) -> None:
        assert eta(s) == shown

    def test_layer_line_shows_bytes_speed_and_eta(self) -> None:
        """Speed counts only what moved since the layer was first seen (a resume starts high)."""
        layer = Layer(A, 100_000_000, 60_000_000, first_seen=10.0, first_current=40_000_000)
        line = layer_line(layer, "pull", now=12.0)
        assert line.startswith("a5fd3b62e1f2: Downloading [")
        assert "60.00MB/100.00MB" in line
        assert "10.00MB/s" in line
        assert line.endswith("ETA 4s")

    def test_layer_line_when_done_and_when_pushing(self) -> None:
        done = Layer(A, 1000, 1000, 0.0, 0)
        assert layer_line(done, "pull", 1.0) == "a5fd3b62e1f2: Pull complete  1.00kB"
        assert layer_line(done, "push", 1.0) == "a5fd3b62e1f2: Pushed  1.00kB"
        assert "\x1b[32m" in layer_line(done, "pull", 1.0, color=True)

    @pytest.mark.parametrize("columns", [200, 80, 60, 40, 20])
    def test_a_line_never_wraps_the_terminal(self, columns) -> None:
        """The bar narrows, then goes, then the line is cut: redraws count one row per layer."""
        layer = Layer(A, 100_000_000, 60_000_000, first_seen=10.0, first_current=40_000_000)
        line = layer_line(layer, "pull", now=12.0, columns=columns)
        assert len(line) < columns
        assert ("[" in line) is (columns >= 80)
        if columns >= 80:
            assert line.endswith("ETA 4s")

    def test_no_speed_before_bytes_move(self) -> None:
        line = layer_line(Layer(A, 100, 0, 5.0, 0), "pull", 5.0)
        assert "/s" not in line
        assert "ETA" not in line


class TestPlainLines:
    def test_one_line_when_a_layer_starts_and_one_when_it_completes(self) -> None:
        """Not a terminal: no cursor codes, no line per chunk."""
        out = io.StringIO()
        r = ProgressRenderer(out, tty=False, clock=Clock())
        for current in (0, 10, 500, 1000):
            r.feed(event(A, current, 1000))
        r.feed(event(B, 13, 13))
        assert out.getvalue().splitlines() == [
            "a5fd3b62e1f2: Downloading 1.00kB",
            "a5fd3b62e1f2: Pull complete  1.00kB",
            "d0ce8fae0000: Pull complete  13B",
        ]

    def test_id_less_messages_are_printed(self) -> None:
        out = io.StringIO()
        ProgressRenderer(out, tty=False).feed(
            {"type": "progress", "message": "Fetching file list..."}
        )
        assert out.getvalue() == "Fetching file list...\n"


class TestTerminal:
    def test_redraws_every_layer_in_place(self) -> None:
        out = io.StringIO()
        clock = Clock()
        r = ProgressRenderer(out, tty=True, clock=clock)
        r.feed(event(A, 0, 1000))
        r.feed(event(B, 0, 2000))
        clock.now += 1
        r.feed(event(A, 500, 1000))
        frames = out.getvalue()
        assert frames.count("\x1b[2K") == 1 + 2 + 2  # one line, then two, then two again
        assert "\x1b[2F" in frames  # cursor back up over both lines before the last redraw
        last = frames.rsplit("\x1b[2F", 1)[1]
        assert "500B/1.00kB" in last
        assert "500B/s" in last

    def test_redraws_are_throttled_but_completions_always_draw(self) -> None:
        out = io.StringIO()
        clock = Clock()
        r = ProgressRenderer(out, tty=True, clock=clock)
        r.feed(event(A, 0, 1000))
        before = out.getvalue()
        r.feed(event(A, 10, 1000))  # same instant: skipped
        assert out.getvalue() == before
        r.feed(event(A, 1000, 1000))  # completion: drawn
        assert out.getvalue().endswith("Pull complete  1.00kB\n")

    def test_repeated_events_and_a_clean_finish_draw_nothing_more(self) -> None:
        out = io.StringIO()
        clock = Clock()
        r = ProgressRenderer(out, tty=True, clock=clock)
        r.feed(event(A, 1000, 1000))
        frames = out.getvalue()
        clock.now += 5
        r.feed(event(A, 1000, 1000))
        done = json.dumps({"type": "success", "message": "ok"})
        assert follow([done], r, warn=io.StringIO()) == "ok"
        assert out.getvalue() == frames

    def test_a_throttled_change_is_drawn_at_the_end(self) -> None:
        out = io.StringIO()
        r = ProgressRenderer(out, tty=True, clock=Clock())
        r.feed(event(A, 0, 1000))
        r.feed(event(A, 400, 1000))  # same instant: not drawn yet
        assert "400B" not in out.getvalue()
        follow([json.dumps({"type": "success", "message": "ok"})], r, warn=io.StringIO())
        assert "400B/1.00kB" in out.getvalue()


class TestFollow:
    def lines(self, *events):
        return [json.dumps(e) for e in events]

    def test_returns_the_success_message(self) -> None:
        out = io.StringIO()
        stream = self.lines(
            event(A, 1000, 1000),
            {"type": "success", "message": "Model pulled successfully", "mode": "pull"},
        )
        message = follow(stream, ProgressRenderer(out, tty=False), warn=io.StringIO())
        assert message == "Model pulled successfully"

    def test_an_error_line_raises_its_message(self) -> None:
        stream = self.lines(event(A, 10, 1000), {"type": "error", "message": "registry gone"})
        with pytest.raises(ModelRunnerError, match="registry gone"):
            follow(stream, ProgressRenderer(io.StringIO(), tty=False), warn=io.StringIO())

    def test_plain_text_after_the_stream_started_is_an_error(self) -> None:
        stream = [*self.lines(event(A, 10, 1000)), "error while pulling model: boom"]
        with pytest.raises(ModelRunnerError, match="boom"):
            follow(stream, ProgressRenderer(io.StringIO(), tty=False), warn=io.StringIO())

    def test_a_stream_that_stops_early_is_an_error(self) -> None:
        with pytest.raises(ModelRunnerError, match="before it finished"):
            follow(
                self.lines(event(A, 10, 1000)),
                ProgressRenderer(io.StringIO(), tty=False),
                warn=io.StringIO(),
            )

    def test_warnings_go_to_the_warning_stream(self) -> None:
        warn = io.StringIO()
        stream = self.lines(
            {"type": "warning", "message": "slow"}, {"type": "success", "message": "ok"}
        )
        assert follow(stream, ProgressRenderer(io.StringIO(), tty=False), warn=warn) == "ok"
        assert warn.getvalue() == "warning: slow\n"
