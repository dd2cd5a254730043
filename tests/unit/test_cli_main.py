"""The entry point: which verb is asked for, and that only its module is imported for it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelrunner.cli.main import _verb, discover


@pytest.mark.parametrize(
    ("argv", "verb"),
    [
        (["ls"], "ls"),
        (["-v", "--config", "c.yaml", "run", "x"], "run"),
        (["--config=c.yaml", "ps"], "ps"),
        (["--help"], None),
        (["--version"], None),
        ([], None),
    ],
)
def test_the_verb_is_found_past_the_global_options(argv, verb) -> None:
    assert _verb(argv) == verb


def test_an_alias_finds_its_verb_alone_and_an_unknown_verb_finds_every_verb() -> None:
    assert [c.name for c in discover("ls")] == ["list"]
    assert [c.name for c in discover("stop")] == ["unload"]
    assert len(discover("no-such-verb")) > 10
    assert discover("") == []


def test_a_client_verb_does_not_import_aiohttp() -> None:
    """Start-up stays fast: the client verbs never import the server's stack (aiohttp)."""
    verbs = ["ls", "run", "pull", "push", "status", "ps", "logs", "rm", "inspect", "configure"]
    code = (
        "import sys; from modelrunner.cli.main import main\n"
        f"for verb in {verbs!r}:\n"
        "    try:\n        main([verb, '--help'])\n    except SystemExit:\n        pass\n"
        "print('aiohttp' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip().endswith("False")


def test_prompt_words_may_follow_run_s_flags() -> None:
    """`run MODEL --max-tokens 3 hello world` is the prompt "hello world", as before the flags."""
    from modelrunner.cli.main import parse

    for argv in (
        ["run", "m", "--max-tokens", "3", "hello", "world"],
        ["run", "m", "hello", "--max-tokens", "3", "world"],
        ["run", "--max-tokens", "3", "m", "hello", "world"],
    ):
        _, args = parse(argv)
        assert (args.model, args.prompt, args.max_tokens) == ("m", ["hello", "world"], 3), argv


@pytest.mark.parametrize(
    "argv", [["run", "m", "--max-tokens", "3", "hi", "--bogus"], ["ls", "--json", "extra", "x"]]
)
def test_other_leftovers_are_still_usage_errors(argv, capsys) -> None:
    from modelrunner.cli.main import parse

    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
