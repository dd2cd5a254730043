"""
Pure text formatting for the CLI: tables, humanised sizes and durations, display names, colour.

Nothing here reads the clock, the environment or a socket: callers pass ``now`` and the stream's
facts, so every function is a unit test away from its output.  The table and duration shapes are
Docker's (tablewriter without borders, two spaces of padding; go-units' ``HumanDuration``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_SI = ((1000**4, "TB"), (1000**3, "GB"), (1000**2, "MB"), (1000, "kB"))
_BINARY = ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB"))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, no borders, no trailing spaces (Docker's tables)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def si_size(n: int | float) -> str:
    """Bytes in SI units with two decimals, as ``docker model df``: ``256.35MB``, ``0B``."""
    for base, unit in _SI:
        if n >= base:
            return f"{n / base:.2f}{unit}"
    return f"{int(n)}B"


def binary_size(n: int | float) -> str:
    """Bytes in binary units with two decimals: ``256.35 MiB``, ``512 B``."""
    for base, unit in _BINARY:
        if n >= base:
            return f"{n / base:.2f} {unit}"
    return f"{int(n)} B"


def human_duration(seconds: float) -> str:
    """go-units' ``HumanDuration``: ``Less than a second``, ``About a minute``, ``4 months``."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def created_ago(created: int | float, now: float) -> str:
    """The CREATED column: ``4 months ago``; ``-`` when the artifact carries no date."""
    if not created or created <= 0:
        return "-"
    return human_duration(max(0.0, now - created)) + " ago"


def short_id(model_id: str) -> str:
    """The 12-hex model ID of ``sha256:<64 hex>`` (Docker's ``id[7:19]``)."""
    return model_id.removeprefix("sha256:")[:12]


def display_name(tag: str) -> str:
    """Docker's short name: strip ``docker.io/`` (or ``index.docker.io/``), ``ai/``, ``:latest``."""
    name = tag
    for prefix in ("index.docker.io/", "docker.io/"):
        if name.startswith(prefix):
            name = name.removeprefix(prefix)
            break
    name = name.removeprefix("ai/")
    return name.removesuffix(":latest")


def quantization(value: str) -> str:
    """Display form: ``MOSTLY_Q4_K_M`` -> ``Q4_K_M``, ``IQ2_XXS/Q4_K_M`` -> ``Q4_K_M``."""
    return value.rsplit("/", 1)[-1].removeprefix("MOSTLY_")


def model_rows(models: Sequence[Mapping[str, Any]], now: float) -> list[list[str]]:
    """The rows of ``ls``: one per tag (``<none>`` for an untagged model), sorted by name."""
    rows: list[tuple[str, list[str]]] = []
    for m in models:
        cfg = m.get("config") or {}
        cells = [
            str(cfg.get("parameters") or "-"),
            quantization(str(cfg.get("quantization") or "-")),
            str(cfg.get("architecture") or "-"),
            str(cfg.get("format") or "-"),
            short_id(str(m.get("id", ""))),
            created_ago(m.get("created") or 0, now),
            str(cfg.get("size") or "-"),
        ]
        for name in [display_name(t) for t in m.get("tags") or []] or ["<none>"]:
            rows.append((name, [name, *cells]))
    rows.sort(key=lambda r: _name_key(r[0]))
    return [cells for _, cells in rows]


def _name_key(name: str) -> tuple[str, int, str]:
    # Case-insensitive by base name, the variant-less name first, then by variant (Docker's order).
    base, sep, variant = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
    return (base.lower(), 1 if sep else 0, variant.lower())


def until(entry: Mapping[str, Any], now: float) -> str:
    """UNTIL in ``ps``: ``Loading...``, ``In use``, ``Forever``, ``4 minutes from now``."""
    if entry.get("loading") or entry.get("state") == "loading":
        return "Loading..."
    if entry.get("pinned"):
        return "Forever"
    if entry.get("in_use") or entry.get("in_flight"):
        return "In use"
    deadline = entry.get("until")
    if isinstance(deadline, (int, float)):
        left = deadline - now
        return "Expiring" if left <= 0 else f"{human_duration(left)} from now"
    if str(entry.get("keep_alive", "")).startswith("-"):
        return "Forever"
    return "-"


def color_enabled(env: Mapping[str, str], isatty: bool) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set (no-color.org) or TERM=dumb."""
    return isatty and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


def paint(text: str, code: str, enabled: bool) -> str:
    """Wrap *text* in an SGR code (``"1"`` bold, ``"2"`` dim, ``"32"`` green) when colour is on."""
    return f"\x1b[{code}m{text}\x1b[0m" if enabled else text
