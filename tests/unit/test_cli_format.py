"""Pure CLI formatting: tables, sizes, durations, names, the ls/ps/df rows."""

from __future__ import annotations

import pytest

from modelrunner.cli import format as fmt
from modelrunner.cli.commands.df import df_rows
from modelrunner.cli.commands.list import HEADERS, filter_models
from modelrunner.cli.commands.ps import runner_name, runner_rows
from modelrunner.cli.commands.rm import removal_lines
from modelrunner.cli.commands.tag import split_target
from modelrunner.errors import InvalidReference

NOW = 1_800_000_000.0
ID = "sha256:354bf30d0aa3" + "0" * 52


def model(tags, *, created=NOW - 90 * 86400, **config):
    cfg = {
        "format": "gguf",
        "parameters": "361.82M",
        "quantization": "MOSTLY_Q4_K_M",
        "architecture": "llama",
        "size": "256.35MiB",
    }
    cfg.update(config)
    return {"id": ID, "tags": tags, "created": created, "config": cfg}


class TestTable:
    def test_columns_are_left_aligned_two_spaces_apart_without_trailing_spaces(self) -> None:
        """Docker's borderless table: the widest cell sets the column, two spaces between."""
        out = fmt.table(("A", "LONGER"), [["xyz", "1"], ["q", "22"]])
        assert out.splitlines() == ["A    LONGER", "xyz  1", "q    22"]

    def test_a_header_alone_when_there_are_no_rows(self) -> None:
        assert fmt.table(("TYPE", "SIZE"), []) == "TYPE  SIZE"


class TestSizes:
    @pytest.mark.parametrize(
        ("n", "text"),
        [(0, "0B"), (999, "999B"), (1000, "1.00kB"), (256_350_000, "256.35MB"), (2.57e9, "2.57GB")],
    )
    def test_si_size_uses_two_decimals_like_docker_df(self, n, text) -> None:
        assert fmt.si_size(n) == text

    @pytest.mark.parametrize(
        ("n", "text"),
        [(512, "512 B"), (1024, "1.00 KiB"), (268_800_000, "256.35 MiB"), (3 << 30, "3.00 GiB")],
    )
    def test_binary_size(self, n, text) -> None:
        assert fmt.binary_size(n) == text


class TestHumanDuration:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0.4, "Less than a second"),
            (1, "1 second"),
            (59, "59 seconds"),
            (60, "About a minute"),
            (119, "About a minute"),
            (120, "2 minutes"),
            (3599, "59 minutes"),
            (3600, "About an hour"),
            (5 * 3600, "5 hours"),
            (47 * 3600, "47 hours"),
            (3 * 86400, "3 days"),
            (20 * 86400, "2 weeks"),
            (90 * 86400, "3 months"),
            (800 * 86400, "2 years"),
        ],
    )
    def test_matches_go_units(self, seconds, text) -> None:
        """The same words as go-units' HumanDuration, which `docker model ls` uses."""
        assert fmt.human_duration(seconds) == text

    def test_created_ago_and_the_missing_date(self) -> None:
        assert fmt.created_ago(NOW - 120, NOW) == "2 minutes ago"
        assert fmt.created_ago(0, NOW) == "-"


class TestNames:
    @pytest.mark.parametrize(
        ("tag", "shown"),
        [
            ("docker.io/ai/smollm2:latest", "smollm2"),
            ("ai/smollm2:360M", "smollm2:360M"),
            ("index.docker.io/me/tiny:v1", "me/tiny:v1"),
            ("127.0.0.1:5000/test/tiny:latest", "127.0.0.1:5000/test/tiny"),
        ],
    )
    def test_display_name_strips_docker_defaults(self, tag, shown) -> None:
        assert fmt.display_name(tag) == shown

    def test_short_id_is_twelve_hex(self) -> None:
        assert fmt.short_id(ID) == "354bf30d0aa3"

    @pytest.mark.parametrize(
        ("raw", "shown"),
        [("MOSTLY_Q4_K_M", "Q4_K_M"), ("IQ2_XXS/Q4_K_M", "Q4_K_M"), ("F16", "F16")],
    )
    def test_quantization(self, raw, shown) -> None:
        assert fmt.quantization(raw) == shown


class TestModelRows:
    def test_one_row_per_tag_sorted_with_the_plain_name_first(self) -> None:
        rows = fmt.model_rows(
            [model(["docker.io/ai/zeta:latest"]), model(["ai/smollm2:360M", "ai/smollm2:latest"])],
            NOW,
        )
        assert [r[0] for r in rows] == ["smollm2", "smollm2:360M", "zeta"]
        assert rows[0][1:] == [
            "361.82M",
            "Q4_K_M",
            "llama",
            "gguf",
            "354bf30d0aa3",
            "3 months ago",
            "256.35MiB",
        ]
        assert len(rows[0]) == len(HEADERS)

    def test_an_untagged_model_shows_none(self) -> None:
        assert fmt.model_rows([model([])], NOW)[0][0] == "<none>"

    def test_missing_config_values_show_a_dash(self) -> None:
        rows = fmt.model_rows([{"id": ID, "tags": ["a/b:c"], "created": 0, "config": {}}], NOW)
        assert rows[0] == ["a/b:c", "-", "-", "-", "-", "354bf30d0aa3", "-", "-"]

    def test_ls_filter_keeps_matching_tags_and_whole_models_by_id(self) -> None:
        m = model(["docker.io/ai/smollm2:360M", "docker.io/me/other:latest"])
        for pattern in ("smollm2", "ai/smollm2:360M", "SmolLM2:360m"):
            assert filter_models([m], pattern)[0]["tags"] == ["docker.io/ai/smollm2:360M"]
        assert filter_models([m], "me/other")[0]["tags"] == ["docker.io/me/other:latest"]
        assert filter_models([m], "354bf30d0aa3") == [m]
        assert filter_models([m], "smol") == []


class TestPsRows:
    def test_until_column(self) -> None:
        assert fmt.until({"loading": True}, NOW) == "Loading..."
        assert fmt.until({"pinned": True}, NOW) == "Forever"
        assert fmt.until({"in_use": True}, NOW) == "In use"
        assert fmt.until({"until": NOW + 240}, NOW) == "4 minutes from now"
        assert fmt.until({"until": NOW - 1}, NOW) == "Expiring"
        assert fmt.until({"keep_alive": "-1"}, NOW) == "Forever"
        assert fmt.until({}, NOW) == "-"

    def test_runner_rows(self) -> None:
        rows = runner_rows(
            [
                {
                    "backend_name": "llama.cpp",
                    "model_name": "docker.io/ai/smollm2:360M-Q4_K_M",
                    "mode": "completion",
                    "rss_bytes": 3 << 20,
                    "until": NOW + 300,
                }
            ],
            NOW,
        )
        # The tag's case is kept, as ls shows it (Docker's ps lower-cases it).
        assert rows == [
            ["smollm2:360M-Q4_K_M", "llama.cpp", "completion", "3.00 MiB", "5 minutes from now"]
        ]
        assert runner_name(ID) == "354bf30d0aa3"


class TestOtherVerbs:
    def test_df_rows_hide_an_empty_engine_line(self) -> None:
        assert df_rows({"models_disk_usage": 2_570_000_000, "default_backend_disk_usage": 0}) == [
            ["Models", "2.57GB"]
        ]
        assert df_rows({"models_disk_usage": 0, "default_backend_disk_usage": 41_050_000})[1] == [
            "Inference engine",
            "41.05MB",
        ]

    def test_removal_lines(self) -> None:
        lines = removal_lines([{"Untagged": "docker.io/ai/x:latest"}, {"Deleted": ID}])
        assert lines == ["Untagged: docker.io/ai/x:latest", f"Deleted: {ID}"]

    @pytest.mark.parametrize(
        ("target", "split"),
        [
            ("me/tiny", ("me/tiny", "latest")),
            ("me/tiny:v2", ("me/tiny", "v2")),
            ("127.0.0.1:5000/me/tiny", ("127.0.0.1:5000/me/tiny", "latest")),
            ("127.0.0.1:5000/me/tiny:v2", ("127.0.0.1:5000/me/tiny", "v2")),
        ],
    )
    def test_tag_target_split(self, target, split) -> None:
        assert split_target(target) == split

    @pytest.mark.parametrize("target", ["me/tiny@sha256:" + "a" * 64, "me/tiny:", ":v1"])
    def test_tag_target_refused(self, target) -> None:
        with pytest.raises(InvalidReference):
            split_target(target)


class TestColor:
    def test_no_color_and_dumb_terminals_turn_it_off(self) -> None:
        assert fmt.color_enabled({}, True)
        assert not fmt.color_enabled({}, False)
        assert not fmt.color_enabled({"NO_COLOR": "1"}, True)
        assert fmt.color_enabled({"NO_COLOR": ""}, True)
        assert not fmt.color_enabled({"TERM": "dumb"}, True)
        assert fmt.paint("x", "1", False) == "x"
        assert fmt.paint("x", "1", True) == "\x1b[1mx\x1b[0m"


class TestLogsFollow:
    def test_new_part_of_a_growing_tail(self) -> None:
        from modelrunner.cli.commands.logs import new_part

        assert new_part(b"", b"a\n") == b"a\n"
        assert new_part(b"a\n", b"a\nb\n") == b"b\n"
        assert new_part(b"a\nb\n", b"a\nb\n") == b""

    def test_new_part_after_the_window_slid_or_the_file_rotated(self) -> None:
        from modelrunner.cli.commands.logs import new_part

        assert new_part(b"x\nline 1\nline 2\n", b"line 1\nline 2\nline 3\n") == b"line 3\n"
        assert new_part(b"old stuff\n", b"fresh\n") == b"fresh\n"
