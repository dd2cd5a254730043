"""docs/benchmarks.md: replace one "## Title" section (or append it), leaving the others."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(title: str, body: str, path: Path = BENCHMARKS) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    heading = f"## {title}"
    section = f"{heading}\n\n{body.strip()}\n"
    start = text.find(heading + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + ("" if end == -1 else text[end:])
    path.write_text(text, encoding="utf-8")


def section_body(intro: str, table: str, bullets: list[str], command: str) -> str:
    """A section's text: the method, the table, ``- `` notes, then the command that made it."""
    return "\n".join(
        [*intro.splitlines(), "", table, "", *bullets, "", "Command:", "", "```", command, "```"]
    )
