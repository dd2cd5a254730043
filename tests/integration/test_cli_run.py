"""`modelrunner run` and `pull` in a pseudo-terminal (pexpect) against the real daemon.

The tiny model's weights are random, so what it says cannot be checked; what can is that the
second request carries the first turn (``--debug`` prints the roles sent, and the prompt token
count the server reports grows), that ``/bye`` exits 0, and that Ctrl-C stops an answer (the
daemon's runner goes idle) while the chat goes on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.llama

BIN = Path(sys.executable).with_name("modelrunner")
CLI = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "modelrunner"]
TINY = "cli/tiny:v1"
USAGE = re.compile(r"\[debug\] usage: (\{.*\})\r\n")


def spawn(*args: str, env: dict[str, str], **extra_env: str) -> pexpect.spawn:
    return pexpect.spawn(
        CLI[0],
        [*CLI[1:], *args],
        env={**env, "TERM": "xterm", **extra_env},
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )


def close(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return int(child.exitstatus)


def usage(child: pexpect.spawn) -> dict[str, int]:
    child.expect(USAGE)
    return json.loads(child.match.group(1))


def runner_busy(daemon) -> bool:
    out = subprocess.run(
        [*CLI, "ps", "--json"], env=daemon.env, capture_output=True, text=True, check=True
    ).stdout
    return any(row.get("in_use") or row.get("in_flight") for row in json.loads(out))


def test_chat_keeps_the_conversation_and_bye_exits_0(daemon, tiny_gguf) -> None:
    """Two turns, the second a multi-line message: it is sent with the first question and answer."""
    daemon.add_model(TINY, tiny_gguf)
    child = spawn("run", TINY, "--debug", "--max-tokens", "8", env=daemon.env)
    try:
        child.expect_exact("Type '/bye' to exit")
        child.expect_exact("> ")
        child.sendline("tell me a story about the sea")
        child.expect_exact("[debug] request: 1 messages (user)")
        first = usage(child)
        child.expect_exact("> ")
        child.sendline('"""')
        child.expect_exact("... ")
        child.sendline("and then")
        child.expect_exact("... ")
        child.sendline('what?"""')
        child.expect_exact("[debug] request: 3 messages (user,assistant,user)")
        second = usage(child)
        assert second["completion_tokens"] == 8
        # The second prompt holds the first question, its answer and the new lines.
        assert second["prompt_tokens"] > first["prompt_tokens"] + 4
        child.expect_exact("> ")
        child.sendline("/bye")
        child.expect_exact("Chat session ended.")
    finally:
        status = close(child)
    assert status == 0
    assert "tell me a story about the sea" in (daemon.home / "run_history").read_text()


def test_ctrl_c_stops_the_answer_and_keeps_the_chat(daemon, tiny_gguf_factory) -> None:
    """Ctrl-C mid-answer: the runner stops, the prompt comes back, the next turn works."""
    # A 4096-token context and no --max-tokens: the answer would run for seconds.
    daemon.add_model(TINY, tiny_gguf_factory(ctx=4096))
    child = spawn("run", TINY, "--debug", env=daemon.env)
    try:
        child.expect_exact("> ")
        child.sendline("hello")
        child.expect_exact("[debug] request: 1 messages (user)\r\n")
        child.expect(r"\w+ \w+ \w+")  # the answer is streaming
        child.sendintr()
        child.expect_exact("(answer stopped)")
        child.expect_exact("> ")
        deadline = time.monotonic() + 15
        while runner_busy(daemon):  # the daemon noticed the closed connection
            assert time.monotonic() < deadline, "the runner kept generating after Ctrl-C"
            time.sleep(0.1)
        child.sendline("again")
        child.expect_exact("[debug] request: 3 messages (user,assistant,user)\r\n")
        child.expect(r"\w+ \w+ \w+")
        child.sendintr()
        child.expect_exact("(answer stopped)")
        child.expect_exact("> ")
        child.sendintr()  # at the prompt: a hint, not an exit
        child.expect_exact("Use Ctrl + d or /bye to exit.")
        child.expect_exact("> ")
        child.sendeof()
        child.expect_exact("Chat session ended.")
    finally:
        status = close(child)
    assert status == 0


@pytest.mark.registry
def test_pull_on_a_terminal_draws_bars_and_respects_no_color(daemon, registry, tmp_path) -> None:
    """On a TTY a layer gets a bar redrawn in place; colour only without NO_COLOR."""
    from scripts.make_tiny_gguf import build

    remote = f"{registry.host}/cli/tty:v1"
    daemon.add_model(remote, build(tmp_path / "padded.gguf", pad_mib=24))
    env = daemon.env
    subprocess.run([*CLI, "push", remote], env=env, capture_output=True, check=True)
    for no_color in (False, True):
        subprocess.run([*CLI, "rm", remote], env=env, capture_output=True, check=True)
        extra = {"NO_COLOR": "1"} if no_color else {}
        base = {k: v for k, v in env.items() if k != "NO_COLOR"}
        child = spawn("pull", remote, env=base, **extra)
        child.expect_exact("Model pulled successfully")
        output = child.before
        assert close(child) == 0
        assert re.search(r"Downloading \[=*>? *\]  [\d.]+[kM]?B/25\.\d\dMB", output), output
        assert "\x1b[2K" in output  # lines cleared and redrawn
        assert output.count("Pull complete") == 1
        assert ("\x1b[32m" in output) is not no_color


def test_a_daemon_that_dies_mid_answer_is_one_error_line(daemon, tiny_gguf_factory) -> None:
    """SIGKILL of the daemon while an answer streams: exit 1 and one line, no traceback."""
    daemon.add_model(TINY, tiny_gguf_factory(ctx=4096))
    child = spawn("run", TINY, "hello", env=daemon.env)
    try:
        child.expect(r"\w+ \w+ \w+")
        daemon.kill()
        child.expect_exact("modelrunner: the daemon closed the connection before the answer ended")
    finally:
        status = close(child)
    assert status == 1
    assert "Traceback" not in (child.before or "")
