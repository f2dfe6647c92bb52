"""Deterministic Parquet reads and writes: same rows in, byte-identical file out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq


def write_table(rows: Iterable[dict], schema: pa.Schema, path: Path) -> int:
    """Write rows atomically (temp file + rename); returns the row count."""
    table = pa.Table.from_pylist(list(rows), schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # Fixed writer options; no pandas metadata, no timestamps: the bytes depend on the rows only.
    pq.write_table(table, tmp, compression="zstd", use_dictionary=True, write_statistics=True,
                   store_schema=True, row_group_size=4096)
    os.replace(tmp, path)
    return table.num_rows


def read_rows(path: Path, columns: list[str] | None = None) -> list[dict]:
    return pq.read_table(path, columns=columns).to_pylist()


def count_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows
