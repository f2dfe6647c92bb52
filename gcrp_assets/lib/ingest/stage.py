"""The `raw_threads` stage as a plain streaming function: one dump -> `threads.parquet` + `rejects.parquet`.

The asset (`gcrp_assets.defs.data_stages`) and `benchmarks/data_stages.py` both call `run_raw`, so the
benchmark measures the code the pipeline runs. Memory: one record at a time plus the thread ids seen
(see `dumps.DumpReader` per layout); outputs written a batch at a time (`parquet.RowWriter`), so the same
input gives a byte-identical file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gcrp_assets.lib import schemas
from gcrp_assets.lib.ingest.dumps import iter_dump
from gcrp_assets.lib.ingest.lines import MAX_RECORD_BYTES, limit_records
from gcrp_assets.lib.parquet import BATCH_ROWS, RowWriter
from gcrp_assets.lib.tables import clip
from gcrp_assets.lib.tables import LISTED_REJECTS, PREVIEW_ROWS


# ---------------------------------------------------------------------------------------------------
# raw_threads
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawSettings:
    """The raw stage's settings (also `RawConfig`'s fields: one declaration, `orchestration.settings`)."""
    max_record_bytes: int = field(default=MAX_RECORD_BYTES, metadata={
        "help": "Largest record read (a JSONL line, a chat message line, a table row or thread, a card): a longer "
                "one is rejected record_too_large without being held in memory."})


def run_raw(path: Path, folder: Path, batch: int = BATCH_ROWS,
            on_reject: Callable[[dict], None] | None = None, max_record_bytes: int | None = None) -> dict:
    """One dump (any layout) -> `threads.parquet` (RAW_THREADS) and `rejects.parquet` (REJECTS) in `folder`.

    Raises `dumps.DumpReadError` when the dump cannot be read at all (no file is left in place then).
    `on_reject` sees every reject as it is written (the asset logs it). `max_record_bytes` (None: the
    default, `lines.MAX_RECORD_BYTES`): every reader enforces it, a longer record is `record_too_large`.
    """
    with limit_records(max_record_bytes):
        return _run_raw(path, folder, batch, on_reject)


def _run_raw(path: Path, folder: Path, batch: int, on_reject: Callable[[dict], None] | None) -> dict:
    reader = iter_dump(path)
    threads = RowWriter(folder / "threads.parquet", schemas.RAW_THREADS, batch)
    rejects = RowWriter(folder / "rejects.parquet", schemas.REJECTS, batch)
    posts, preview, listed = 0, [], []
    try:
        for kind, record in reader:
            if kind == "thread":
                threads.add(record)
                posts += len(record["posts"])
                if len(preview) < PREVIEW_ROWS:
                    preview.append((record["thread_id"], clip(record["title"], 40), len(record["characters"]),
                                    len(record["posts"])))
            else:
                rejects.add(record)
                if on_reject is not None:
                    on_reject(record)
                if len(listed) < LISTED_REJECTS:
                    listed.append((record["dump"], record["line"], record["reason"], clip(record["detail"], 120)))
    except BaseException:
        threads.abort()
        rejects.abort()
        raise
    stats = reader.stats
    return {"layout": stats.layout, "lines": stats.lines, "records_read": stats.rows, "ooc_rows": stats.ooc_rows,
            "system_messages": stats.system_messages, "threads": threads.close(),
            "rejected_lines": rejects.close(), "posts": posts, "rejects_listed": listed, "preview": preview}
