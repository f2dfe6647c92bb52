"""Deterministic Parquet reads and writes: same rows in, byte-identical file out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

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


# Fixed writer options of `RowWriter`: with a fixed batch size, the bytes depend on the rows only.
WRITER_OPTIONS = dict(compression="zstd", use_dictionary=True, write_statistics=True, store_schema=True)
BATCH_ROWS = 512


class _AtomicParquetFile:
    """One Parquet file written in record batches of `batch` rows (`pyarrow.parquet.ParquetWriter`, one row group
    per batch, `WRITER_OPTIONS`), atomic like `write_table`: batches go to `<name>.tmp`, renamed into place by
    `close()`; `abort()` (or an exception inside a `with` block) removes the temporary file. The file exists
    (possibly with no rows) once closed. Subclasses hold what is not written yet and write it in `flush()`."""

    def __init__(self, path: Path, schema: pa.Schema, batch: int = BATCH_ROWS):
        self.path, self.schema, self.batch = Path(path), schema, max(1, int(batch))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._tmp, schema, **WRITER_OPTIONS)
        self.n = 0

    def _write_batch(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch, row_group_size=self.batch)
        self.n += batch.num_rows

    def flush(self) -> None:
        raise NotImplementedError

    def close(self) -> int:
        """Finish the file and rename it into place; returns the row count."""
        if self._writer is not None:
            self.flush()
            self._writer.close()
            self._writer = None
            os.replace(self._tmp, self.path)
        return self.n

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class RowWriter(_AtomicParquetFile):
    """Rows appended one at a time; memory holds one batch. Same rows and same `batch` in, byte-identical file
    out (see `_AtomicParquetFile`)."""

    def __init__(self, path: Path, schema: pa.Schema, batch: int = BATCH_ROWS):
        super().__init__(path, schema, batch)
        self._rows: list[dict] = []

    def add(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.batch:
            self.flush()

    def extend(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.add(row)

    def flush(self) -> None:
        if self._rows:
            self._write_batch(pa.RecordBatch.from_pylist(self._rows, schema=self.schema))
            self._rows = []


class ArrowBatchWriter(_AtomicParquetFile):
    """Arrow tables appended in any sizes, written as record batches of exactly `batch` rows (the last one
    shorter): the same rows give the same bytes as `RowWriter` with the same `batch`."""

    def __init__(self, path: Path, schema: pa.Schema, batch: int = BATCH_ROWS):
        super().__init__(path, schema, batch)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._pending.append(table.select(self.schema.names).cast(self.schema))
            self._pending_rows += table.num_rows
        while self._pending_rows >= self.batch:
            self._write_head(self.batch)

    def flush(self) -> None:
        if self._pending_rows:
            self._write_head(self._pending_rows)

    def _write_head(self, rows: int) -> None:
        table = pa.concat_tables(self._pending)
        head, rest = table.slice(0, rows), table.slice(rows)
        self._write_batch(pa.RecordBatch.from_arrays([column.combine_chunks() for column in head.columns],
                                                     schema=self.schema))
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows


def iter_rows(path: Path, columns: list[str] | None = None, batch: int = BATCH_ROWS) -> Iterator[dict]:
    """The rows of a Parquet file one at a time, read `batch` rows at a time (`iter_batches`)."""
    for part in pq.ParquetFile(path).iter_batches(batch_size=batch, columns=columns):
        yield from part.to_pylist()
