"""Markdown tables for metadata previews and reports."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from tabulate import tabulate


def md_table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    return tabulate([list(r) for r in rows], headers=list(headers), tablefmt="github", floatfmt=".4g")


def clip(text: str | None, n: int = 160) -> str:
    text = (text or "").replace("\n", " ⏎ ").replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


PREVIEW_ROWS = 10  # rows of a Markdown preview in a stage's metadata
LISTED_REJECTS = 200  # rejects listed in raw_threads' metadata (all are in rejects.parquet)
