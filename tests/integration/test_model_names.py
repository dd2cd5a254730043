"""One name for a model everywhere: a tag with upper case (``ai/tiny:270M-Q4_K_M``) is shown as
stored by ``ls``, ``ps``, ``requests`` (the real CLI), ``/engines/ps`` and the request log, where
Docker's ``ps`` lower-cases it (``tiny:270m-q4_k_m``).  A tag is case-sensitive: the lower-cased
name is another tag, one the store does not have."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_cli import curl_json, fails, ok

pytestmark = pytest.mark.llama

TAG = "ai/tiny:270M-Q4_K_M"
SHOWN = "tiny:270M-Q4_K_M"  # Docker's short form: no ai/, no :latest; the case as stored


def column(table: str, index: int = 0) -> list[str]:
    return [line.split()[index] for line in table.splitlines()[1:]]


def test_ls_ps_requests_and_the_api_name_a_model_alike(
    daemon: DaemonHandle, tiny_gguf: Path
) -> None:
    daemon.add_model(TAG, tiny_gguf)
    env = {**daemon.env, "MODEL_RUNNER_HOME": str(daemon.home)}
    with openai.OpenAI(
        base_url=daemon.base_url + "/engines/v1", api_key="unused", max_retries=0, timeout=60
    ) as oa:
        answer = oa.chat.completions.create(
            model=TAG, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert answer.model == TAG

    assert column(ok("ls", env=env)) == [SHOWN]
    assert column(ok("ps", env=env)) == [SHOWN]
    assert column(ok("requests", env=env), 1) == [SHOWN]  # after TIME

    (runner,) = curl_json(daemon, "/engines/ps")
    assert runner["model_name"] == TAG
    assert [r["model_name"] for r in json.loads(ok("ps", "--json", env=env))] == [TAG]
    (group,) = curl_json(daemon, "/engines/requests")
    assert group["model"] == TAG
    assert [r["model"] for r in group["records"]] == [TAG]
    (model,) = curl_json(daemon, "/models")
    assert model["tags"] == ["docker.io/" + TAG]

    # The lower-cased name Docker's ps shows is not this model's: nothing answers to it.
    fails("inspect", TAG.lower(), env=env, match="not in the local store")
