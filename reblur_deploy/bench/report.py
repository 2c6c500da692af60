"""Markdown of a run: the header naming the machine, and ``section`` and ``ending``, with which
each section module renders its caption, its rows and its notes."""

from __future__ import annotations

from collections.abc import Sequence

from ..tables import markdown_table


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) < 0.01:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict], columns: list[tuple], digits: dict | None = None) -> list[str]:
    """Markdown table of ``rows``; ``columns`` are (key, title); ``digits`` per key (default 2)."""
    digits = digits or {}
    cells = [[fmt(row.get(key), digits.get(key, 2)) for key, _ in columns] for row in rows]
    return markdown_table([title for _, title in columns], cells)


def section(caption: str, rows: list[dict], columns: list[tuple], digits: dict | None = None,
            after: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """A section's caption, the table of its ``rows`` (see ``table``), then the lines ``after``
    it."""
    return [caption, "", *table(rows, columns, digits), *after]


def ending(s: dict) -> list[str]:
    """A section's notes, one bullet each, and the blank line that ends it."""
    return [f"- {n}" for n in s.get("notes", [])] + [""]


def header(report: dict) -> list[str]:
    """The run's heading: date, device, versions and the load at the start."""
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    device = m.get("gpu") or f"CPU: {m['cpu']}, {m['cpu_threads']} threads"
    lines = [
        f"### {m['date']}: {device}" + (" (`--quick`)" if report.get("quick") else ""),
        "",
        f"Device `{m['device']}`; {m['platform']}; Python {m['python']}; {versions}. "
        f"Load average at the start: {fmt(m.get('load_average'))} (other jobs on the machine "
        "slow every row, multi-threaded ones most).",
        "",
    ]
    return lines
