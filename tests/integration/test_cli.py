"""The real `modelrunner` executable against a real daemon: output and exit codes of every verb.

Each test starts one daemon (the `daemon` fixture) and runs several verbs against it, since a
daemon costs about a second here.  Errors are checked as the CLI promises them: one line on
stderr starting with ``modelrunner:``, exit code 1, nothing on stdout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.llama

BIN = Path(sys.executable).with_name("modelrunner")
CLI = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "modelrunner"]
TINY = "cli/tiny:v1"


def mr(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion with no terminal (stdin closed, or *stdin* piped in)."""
    return subprocess.run(
        [*CLI, *args],
        env=env,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(*args: str, env: dict[str, str]) -> str:
    result = mr(*args, env=env)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def fails(*args: str, env: dict[str, str], match: str) -> str:
    """The command fails with exit 1 and one `modelrunner: …` line on stderr containing *match*."""
    result = mr(*args, env=env)
    assert result.returncode == 1, (args, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("modelrunner: "), result.stderr
    assert match in lines[0], result.stderr
    return lines[0]


def curl_json(daemon, path: str) -> object:
    out = subprocess.run(
        ["curl", "-sS", "--unix-socket", str(daemon.socket_path), f"http://localhost{path}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return json.loads(out)


@pytest.fixture
def no_daemon_env():
    """An environment whose home has no daemon (and a socket path nothing listens on)."""
    home = tempfile.mkdtemp(prefix="mr-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_RUNNER")}
    env["MODEL_RUNNER_HOME"] = home
    yield env
    shutil.rmtree(home, ignore_errors=True)


class TestWithoutDaemon:
    def test_status_exits_1_and_says_how_to_start_it(self, no_daemon_env) -> None:
        """`status` and every other verb: one line naming the socket and `modelrunner serve`."""
        line = fails("status", env=no_daemon_env, match="daemon is not running")
        assert "modelrunner serve" in line
        assert no_daemon_env["MODEL_RUNNER_HOME"] in line
        fails("ls", env=no_daemon_env, match="daemon is not running")
        as_json = mr("status", "--json", env=no_daemon_env)
        assert as_json.returncode == 1
        assert json.loads(as_json.stdout)["running"] is False
        verbose = mr("-v", "ls", env=no_daemon_env)  # -v: the traceback, for bug reports
        assert verbose.returncode == 1
        assert "Traceback" in verbose.stderr
        fails("run", "ai/x", "hi", env=no_daemon_env, match="daemon is not running")

    def test_a_host_nobody_listens_on(self, no_daemon_env) -> None:
        env = dict(no_daemon_env, MODEL_RUNNER_HOST="http://127.0.0.1:1")
        fails("ps", env=env, match="http://127.0.0.1:1")
        env["MODEL_RUNNER_HOST"] = "ftp://x"
        fails("ps", env=env, match="not an http:// URL")

    def test_version_and_usage_errors(self, no_daemon_env) -> None:
        from modelrunner import __version__

        assert ok("--version", env=no_daemon_env).strip() == f"modelrunner {__version__}"
        result = mr("ls", "--bogus", env=no_daemon_env)
        assert result.returncode == 2
        assert "unrecognized arguments: --bogus" in result.stderr


def test_help_for_every_verb(capsys) -> None:
    """`--help` works for the program and every verb (argparse exits 0)."""
    from modelrunner.cli.main import discover, main

    verbs = [c.name for c in discover()]
    for verb in ("pull", "push", "package", "tag", "rm", "list", "inspect", "ps", "df"):
        assert verb in verbs
    for verb in ("unload", "logs", "configure", "status", "run", "serve"):
        assert verb in verbs
    for argv in [["--help"], *[[verb, "--help"] for verb in verbs]]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0, argv
    assert "usage: modelrunner run" in capsys.readouterr().out


def test_store_verbs(daemon, tiny_gguf) -> None:
    """ls (table, --json, -q, --openai, a filter), inspect, tag, rm, df, and their errors."""
    env = daemon.env
    assert ok("ls", env=env).splitlines() == [
        "MODEL NAME  PARAMETERS  QUANTIZATION  ARCHITECTURE  FORMAT  MODEL ID  CREATED  SIZE"
    ]
    daemon.add_model(TINY, tiny_gguf)
    header, row = ok("ls", env=env).splitlines()
    assert header.split("  ")[0] == "MODEL NAME"
    assert row.split()[:4] == ["cli/tiny:v1", "131.39K", "F32", "llama"]
    models = json.loads(ok("ls", "--json", env=env))
    model_id = models[0]["id"]
    assert models[0]["tags"] == ["docker.io/cli/tiny:v1"]
    assert ok("ls", "-q", env=env) == model_id[7:19] + "\n"
    assert row.split()[4] == "gguf"  # FORMAT
    assert row.split()[5] == model_id[7:19]
    assert re.search(r"  (Less than a second|\d+ seconds?) ago  513\.25KiB$", row), row
    openai = json.loads(ok("ls", "--openai", env=env))
    assert openai["object"] == "list"
    assert [m["id"] for m in openai["data"]] == ["docker.io/cli/tiny:v1"] or openai["data"]

    inspected = json.loads(ok("inspect", TINY, env=env))
    assert inspected["id"] == model_id
    assert inspected["config"]["architecture"] == "llama"
    assert ok("inspect", TINY, env=env).startswith('{\n    "id"')  # 4-space indent
    assert json.loads(ok("inspect", "--openai", TINY, env=env))["object"] == "model"
    assert json.loads(ok("inspect", model_id[7:19], env=env))["id"] == model_id

    out = ok("tag", TINY, "cli/other", env=env)
    assert out == 'Model "cli/tiny:v1" tagged successfully with "cli/other:latest"\n'
    names = [line.split()[0] for line in ok("ls", env=env).splitlines()[1:]]
    assert names == ["cli/other", "cli/tiny:v1"]
    assert ok("ls", "cli/other", env=env).count("\n") == 2  # header + the one match

    assert ok("rm", "cli/other", env=env) == "Untagged: docker.io/cli/other:latest\n"
    assert fails("rm", "cli/nothing-here", env=env, match="cli/nothing-here").endswith(
        "no such model: cli/nothing-here"
    )
    fails("inspect", "cli/nothing-here", env=env, match="cli/nothing-here")
    fails("inspect", "Bad//Reference", env=env, match="Bad//Reference")
    fails("tag", TINY, "cli/x@sha256:" + "a" * 64, env=env, match="cannot tag with a digest")
    fails("tag", "cli/nothing-here", "cli/y", env=env, match="cli/nothing-here")

    df = ok("df", env=env).splitlines()
    assert df[0].split() == ["TYPE", "SIZE"]
    assert re.fullmatch(r"Models +\d+\.\d\dkB", df[1]), df

    # Several references: a failure is reported and the others still go.
    result = mr("rm", "cli/nothing-here", TINY, env=env)
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["Untagged: docker.io/cli/tiny:v1", f"Deleted: {model_id}"]
    assert result.stderr == "modelrunner: no such model: cli/nothing-here\n"
    assert ok("ls", "-q", env=env) == ""


def test_package(daemon, tiny_gguf, tmp_path) -> None:
    """package builds the artifact in the CLI and loads it through the daemon's /models/load."""
    env = daemon.env
    license_ = tmp_path / "LICENSE"
    license_.write_text("Apache-2.0\n")
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    out = ok(
        "package", "--gguf", str(tiny_gguf), "--license", str(license_), "--chat-template",
        str(template), "--context-size", "256", "cli/packed:v2", env=env,
    )  # fmt: skip
    assert out.splitlines()[-1] == "Model packaged successfully as cli/packed:v2"
    model = json.loads(ok("inspect", "cli/packed:v2", env=env))
    assert model["config"]["context_size"] == 256
    args = model["llama_server_args"]["completion"]  # the runner gets the packaged template
    assert Path(args[args.index("--chat-template-file") + 1]).read_text() == template.read_text()
    assert model["tags"] == ["docker.io/cli/packed:v2"]
    fails("package", "--gguf", str(tmp_path / "missing.gguf"), "cli/x", env=env, match="missing")
    fails("package", "--gguf", str(tiny_gguf), "Not A Ref", env=env, match="Not A Ref")


def test_runner_verbs(daemon, tiny_gguf, llama_server_bin) -> None:
    """run with a prompt, ps, configure, logs, unload, status, and over TCP (MODEL_RUNNER_HOST)."""
    env = daemon.env
    daemon.add_model(TINY, tiny_gguf)
    assert ok("ps", env=env).splitlines() == ["MODEL NAME  BACKEND  MODE  MEMORY  UNTIL"]
    assert ok("run", "--detach", TINY, env=env) == ""  # loaded, nothing asked
    assert ok("ps", env=env).splitlines()[1].startswith("cli/tiny:v1  llama.cpp  completion")
    answer = mr("run", TINY, "say", "something", "--max-tokens", "8", "--debug", env=env)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip()
    usage = json.loads(answer.stderr.split("[debug] usage: ", 1)[1])
    assert usage["completion_tokens"] == 8
    piped = mr("run", TINY, "--max-tokens", "4", "--debug", env=env, stdin="a prompt from a pipe")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip()
    assert json.loads(piped.stderr.split("[debug] usage: ", 1)[1])["prompt_tokens"] > 0

    row = ok("ps", env=env).splitlines()[1].split()
    assert row[:3] == ["cli/tiny:v1", "llama.cpp", "completion"]
    assert row[4] == "MiB"  # MEMORY, e.g. "29.37 MiB"
    assert "from now" in " ".join(row[5:])

    said = ok("configure", "--context-size", "256", TINY, "--", "--temp", "0.5", env=env)
    assert said.startswith(f"Configured {TINY}: context-size 256, runtime-flags --temp 0.5")
    stored = curl_json(daemon, "/engines/_configure")
    assert stored[0]["Config"]["context-size"] == 256
    assert stored[0]["Config"]["runtime-flags"] == ["--temp", "0.5"]
    assert json.loads(ok("configure", "--show", TINY, env=env)) == stored
    fails("configure", TINY, "--", "--rpc", "x", env=env, match="--rpc")
    fails("configure", TINY, env=env, match="nothing to configure")
    fails("configure", "--context-size", "64", "cli/nothing-here", env=env, match="nothing-here")

    ok("run", TINY, "again", "--max-tokens", "4", env=env)
    runner_log = ok("logs", "--runner", TINY, env=env)
    # The runner restarted with the new context (the tiny model's own is 512).
    assert re.findall(r"n_ctx_slot = (\d+)", runner_log)[-1] == "256", runner_log[-3000:]
    assert "http.request" in ok("logs", env=env)
    fails("logs", "--runner", "cli/nothing-here", env=env, match="nothing-here")

    assert ok("unload", TINY, env=env) == "Unloaded 1 model(s).\n"
    assert ok("unload", "--all", env=env) == "No models are running.\n"
    assert ok("unload", TINY, env=env) == "No such model(s) running.\n"
    fails("unload", env=env, match="--all")

    status = ok("status", env=env)
    assert status.startswith("modelrunner daemon is running\n")
    assert f"unix://{daemon.socket_path}" in status
    assert f"Port: {daemon.port}" in status
    assert re.search(r"^llama\.cpp: Running: llama\.cpp \S+", status, re.M), status  # its version
    assert f"llama-server: {llama_server_bin}" in status
    assert json.loads(ok("status", "--json", env=env))["running"] is True
    # The port shown is the daemon's, not the one in the client's own config.
    assert f"Port: {daemon.port}\n" in ok("status", env=dict(env, MODEL_RUNNER_PORT="1"))

    tcp = {k: v for k, v in env.items() if k != "MODEL_RUNNER_SOCK"}
    tcp["MODEL_RUNNER_HOST"] = daemon.base_url
    assert "cli/tiny:v1" in ok("ls", env=tcp)
    assert f"Endpoint: {daemon.base_url}" in ok("status", env=tcp)
    # Without MODEL_RUNNER_SOCK the socket comes from the config under MODEL_RUNNER_HOME.
    home_only = {k: v for k, v in env.items() if k != "MODEL_RUNNER_SOCK"}
    assert "cli/tiny:v1" in ok("--config", str(daemon.config_path), "ls", env=home_only)


def test_logs_follow_prints_new_lines(daemon) -> None:
    """`logs -f` keeps printing what the daemon logs after it started."""
    proc = subprocess.Popen(
        [*CLI, "logs", "-f"],
        env=daemon.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline()  # the log so far: the first fetch is done
        ok("ls", "cli/marker", env=daemon.env)  # a request the daemon logs after that fetch
        for line in proc.stdout:
            if '"path": "/models"' in line:
                break
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.registry
def test_push_pull_and_run_pulls_a_missing_model(daemon, tiny_gguf, registry) -> None:
    """push to a real registry, pull it back (plain lines), and `run` pulls what is missing."""
    env = daemon.env
    remote = f"{registry.host}/cli/tiny:v1"
    daemon.add_model(TINY, tiny_gguf)
    ok("tag", TINY, remote, env=env)
    pushed = ok("push", remote, env=env).splitlines()
    assert pushed[-1] == "Model pushed successfully"
    assert any(line.endswith("kB") and ": Pushed" in line for line in pushed), pushed
    assert all("\x1b" not in line for line in pushed)  # no terminal, no escape codes
    ok("rm", "-f", TINY, remote, env=env)
    assert ok("ls", "-q", env=env) == ""

    pulled = ok("pull", remote, env=env).splitlines()
    assert pulled[-1] == "Model pulled successfully"
    # One layer (the GGUF): a line when it starts, one when it is complete.
    layer = pulled[0].split(":")[0]
    assert pulled[:2] == [f"{layer}: Downloading 536.22kB", f"{layer}: Pull complete  536.22kB"]
    assert json.loads(ok("inspect", remote, env=env))["tags"] == [remote]
    remote_view = json.loads(ok("inspect", "--remote", remote, env=env))
    assert remote_view["config"]["architecture"] == "llama"
    assert "cached" in ok("pull", remote, env=env).lower()

    fails("pull", f"{registry.host}/cli/nothing:v1", env=env, match="cli/nothing")
    fails("pull", "127.0.0.1:1/cli/tiny:v1", env=env, match="127.0.0.1:1")
    fails("pull", "Not A Ref", env=env, match="Not A Ref")
    fails("push", "cli/nothing-here", env=env, match="cli/nothing-here")
    fails("run", f"{registry.host}/cli/nothing:v1", "hi", env=env, match="cli/nothing")

    ok("rm", remote, env=env)
    answer = ok("run", remote, "hi", "--max-tokens", "4", env=env)
    assert answer.startswith(f"Unable to find model '{remote}' locally. Pulling")
    assert "Model pulled successfully\n" in answer
    assert answer.rsplit("Model pulled successfully\n", 1)[1].strip()  # then the answer
