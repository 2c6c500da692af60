"""Markdown tables, the one writer of every table the project prints (``reblur-eval`` reports,
``reblur-bench`` sections)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] | None = None
) -> list[str]:
    """The lines of a Markdown table of already formatted cells; ``numeric`` columns are
    right-aligned."""
    numeric = numeric or [False] * len(headers)
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines
