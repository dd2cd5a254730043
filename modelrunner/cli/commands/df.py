"""`modelrunner df`: disk used by the model store and the inference engine."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from modelrunner.cli.base import Command, connect
from modelrunner.cli.format import si_size, table


def df_rows(usage: Mapping[str, Any]) -> list[list[str]]:
    rows = [["Models", si_size(int(usage.get("models_disk_usage") or 0))]]
    engine = int(usage.get("default_backend_disk_usage") or 0)
    if engine:
        rows.append(["Inference engine", si_size(engine)])
    kv = int(usage.get("kv_cache_disk_usage") or 0)
    if kv:
        rows.append(["Prompt cache", si_size(kv)])
    return rows


class Df(Command):
    name = "df"
    help = "Show the disk space used by models and the inference engine"
    epilog = "example:\n  modelrunner df"

    def run(self, args: argparse.Namespace) -> int:
        print(table(("TYPE", "SIZE"), df_rows(connect(args).get_json("/engines/df") or {})))
        return 0
