"""docs/openapi.yaml fuzzed with schemathesis against the running daemon: no 5xx, no response
that breaks its documented schema, status or content type."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import psutil

from tests.reliability.conftest import Target, pid_of

ROOT = Path(__file__).resolve().parents[2]
# Pulls and pushes would reach out to registries named by random strings; they are fuzzed by the
# hostile-input tests with hand-picked references instead. Purge would empty the store mid-run.
EXCLUDE = r"^/models/(create|load|purge)$|/push$"


async def test_schemathesis_finds_nothing(target: Target, tmp_path: Path) -> None:
    """Bounded run (~1 min): every response is a documented status with a valid body."""
    st = Path(sys.executable).with_name("schemathesis")
    proc = await asyncio.create_subprocess_exec(
        str(st),
        "run",
        str(ROOT / "docs" / "openapi.yaml"),
        "--url",
        target.base_url,
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        "--exclude-path-regex",
        EXCLUDE,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "15",
        "--max-time",
        "60",
        "--request-timeout",
        "10",
        "--seed",
        "7",
        "--no-shrink",
        "--workers",
        "2",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
        cwd=tmp_path,  # schemathesis writes a .schemathesis/ cache where it runs
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 150)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert psutil.pid_exists(pid_of(target.handle))
