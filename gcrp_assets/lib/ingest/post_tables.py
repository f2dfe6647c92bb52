"""Flat post tables (CSV, TSV, Parquet; one row per post; CSV/TSV may be gzipped) into canonical threads.

This is how community forum dumps are usually published (RPGuild-style CSVs, per-forum Parquet).
Columns are matched case-insensitively, through the aliases of the contract (`raw-threads.md` §2):

    thread_id  [thread_title, thread_href]   required: groups posts into threads, in row order; a
               CSV/TSV transcript without one (TV scripts such as the `friends` data set: `season`,
               `episode`, `scene`) is grouped by its scene columns instead (`SCENE_COLUMNS`)
    author     [message_username, username, speaker]  required: forum handle, or a transcript's speaker
    message    [text, content]               required: post body
    character, thread_type, posted_at, post_id, thread_tags [tags]   optional
    thread_title [title], thread_href [url], forum                   optional thread metadata

`thread_type` follows RPGuild: `IC` rows are the roleplay posts; `Characters` rows are character
sheets for the thread with the same title (RPGuild keeps them in a sibling sub-thread); `OOC` rows
are table talk, kept out of the posts and only counted (`DumpContents.ooc_rows*`). A missing or
empty type means IC.

Rows are numbered from 1 = the first row under the header (the same for Parquet), and that number
is what rejects and a thread's `line` point at: a thread's `line` is the row of its first post.

Hostile input is read with bounded memory and never fails the whole dump where one record can be
rejected instead: a row (or a thread's rows together) larger than `max_record_bytes` (default
`lines.MAX_RECORD_BYTES`) is rejected `record_too_large` without being held whole (CSV/TSV through
bounded lines, `_CsvFeed`; Parquet by its page sizes, `_parquet_rows`); a row that is not UTF-8 is
`not_utf8`, one the csv module cannot parse `invalid_csv`; a Parquet list or struct where text belongs
is rejected naming the column and the type, never stringified; where a `.csv.gz` breaks or expands past
`lines.MAX_EXPANSION_RATIO` (`truncated`, `decompression_limit`) or a Parquet row group cannot be decoded
(`invalid_parquet`), one reject names the place and the threads read before it are kept. Details name
the file, row, line and column, never a cell's content (a thread id or thread_type excepted).
One bad row (empty author or message, an unnamed sheet, a ragged CSV row) rejects its whole
thread, as a bad post does in the canonical layout: a thread with a hole in it would teach the
model replies to posts it never saw. The other threads are kept.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from gcrp_assets.lib.ingest import lines
from gcrp_assets.lib.ingest.contract import DumpContents, DumpReadError, record_reject, validate_thread
from gcrp_assets.lib.clean.markup import to_text
from gcrp_assets.lib.prompts.sheets import SheetTemplate, parse_sheet

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "thread_id": ("thread_id", "thread_title", "thread_href"),
    "author": ("author", "message_username", "username", "speaker"),
    "message": ("message", "text", "content"),
}
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "character": ("character",),
    "thread_type": ("thread_type",),
    "posted_at": ("posted_at",),
    "post_id": ("post_id",),
    "tags": ("thread_tags", "tags"),
    "title": ("thread_title", "title"),
    "url": ("thread_href", "url"),
    "forum": ("forum",),
}
# A transcript has no thread column: its threads are scenes, named by these columns where present (in this
# order), e.g. "season 1 episode 2 scene 3". `scene` (or `episode`) must be one of them.
SCENE_COLUMNS = ("season", "episode", "act", "scene")
_SCENE_KEY = "thread_parts"  # in a column map: the scene columns, tab-joined, that make the thread id
_THREAD_TYPES = {"": "ic", "ic": "ic", "ooc": "ooc", "characters": "characters", "character": "characters"}
_DELIMITERS = ("\t", ",")


@dataclass
class _Row:
    number: int
    values: dict[str, Any]  # canonical field -> cell (str, list for tags, or None)
    original: dict[str, Any]  # as in the file, for the rejects table
    problem: str | None = None  # set by the reader when the row itself is malformed (never quotes the row)
    reason: str = "invalid_thread"  # the reject reason of `problem`
    size: int = 0  # bytes of the row as read (a thread's rows add up to its record size)
    line: int | None = None  # the row's first physical line (CSV/TSV)
    brk: bool = False  # not a row: where the file breaks (`problem` says where and why); rows may be missing


@dataclass
class _Thread:
    thread_id: str
    rows: list[_Row] = field(default_factory=list)

    def first(self, key: str) -> Any:
        return next((r.values[key] for r in self.rows if r.values.get(key)), None)


# ---------------------------------------------------------------------------------------------------
# Column matching and delimiter sniffing


def _column_index(names: list[str]) -> dict[str, str]:
    index: dict[str, str] = {}
    for name in names:
        index.setdefault(str(name).strip().lower(), name)
    return index


def _resolve(index: dict[str, str], aliases: tuple[str, ...]) -> str | None:
    return next((index[a] for a in aliases if a in index), None)


def resolve_columns(names: list[str], path: Path, where: str = "", scenes: bool = True) -> dict[str, str]:
    """Canonical field -> the table's column name; `DumpReadError` naming every missing required column
    (`where`: the header's place, e.g. "line 1 (the header row)"). `scenes`: a table without a thread
    column may group its rows by its scene columns (CSV/TSV transcripts)."""
    index = _column_index(names)
    columns: dict[str, str] = {}
    missing = []
    for canonical, aliases in REQUIRED_COLUMNS.items():
        found = _resolve(index, aliases)
        if found is None and canonical == "thread_id" and scenes and _scene_columns(index):
            columns[_SCENE_KEY] = "\t".join(_scene_columns(index))
            continue
        if found is None:
            missing.append(f"{canonical!r} (or {', '.join(repr(a) for a in aliases[1:])})")
        else:
            columns[canonical] = found
    if missing:
        # The header's own cells are not shown: in a file that is not a table they are its first line.
        known = [canonical for canonical in {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}
                 if _resolve(index, {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}[canonical]) is not None]
        raise DumpReadError(f"{path.name}: {where + ': ' if where else ''}post table is missing required column "
                            f"{'; '.join(missing)}; its header "
                            f"has {len(names)} column{'s' if len(names) != 1 else ''}"
                            + (f", of which these are known: {', '.join(known)}" if known else ", none of them known"))
    for canonical, aliases in OPTIONAL_COLUMNS.items():
        found = _resolve(index, aliases)
        if found is not None:
            columns[canonical] = found
    return columns


def _scene_columns(index: dict[str, str]) -> list[str]:
    """A transcript's scene columns (see SCENE_COLUMNS), or [] when it has neither `scene` nor `episode`."""
    present = [index[name] for name in SCENE_COLUMNS if name in index]
    return present if ("scene" in index or "episode" in index) else []


def _required_score(header: list[str]) -> int:
    index = _column_index(header)
    return sum(_resolve(index, aliases) is not None or (canonical == "thread_id" and bool(_scene_columns(index)))
               for canonical, aliases in REQUIRED_COLUMNS.items())


def _split_header(line: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter), [])
    except (csv.Error, RecursionError, MemoryError):
        return []


def header_delimiter(line: str) -> str | None:
    """The delimiter under which this header line names every required column, or None.

    Used both to recognise a post table by its content and to tell CSV from TSV: message bodies
    are full of commas, so guessing from character counts is unreliable; the header is not.
    """
    complete = [(len(_split_header(line, d)), d) for d in _DELIMITERS
                if _required_score(_split_header(line, d)) == len(REQUIRED_COLUMNS)]
    return max(complete)[1] if complete else None


def _choose_delimiter(line: str, path: Path) -> str:
    found = header_delimiter(line)
    if found:
        return found
    # Incomplete header: pick the reading that matches most, so the error names the right columns.
    by_extension = "\t" if ".tsv" in path.name.lower() else ","
    scores = {d: _required_score(_split_header(line, d)) for d in _DELIMITERS}
    best = max(scores.values())
    return by_extension if scores[by_extension] == best else max(scores, key=scores.get)


# ---------------------------------------------------------------------------------------------------
# Cells and tags


def _cell(value: Any) -> str | None:
    """A cell as text; None for empty, null and NaN (pandas writes missing values as NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value)
    return text if text.strip() else None


_LIST_ITEM = re.compile(r"""'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([^,'"]+)""")
_ESCAPE = re.compile(r"\\(.)")


def parse_tags(value: Any) -> list[str]:
    """Tags from a list, a Python/JSON-list-like string ("['1x1', 'Fantasy']") or "a, b".

    Dumps written by pandas store lists as their Python repr. That text is parsed here as data,
    never evaluated, so a hostile cell cannot run anything.
    """
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = [_cell(v) for v in value]
    else:
        text = _cell(value)
        if text is None:
            return []
        text = text.strip()
        if text.startswith("[") and text.endswith("]"):
            items = [_ESCAPE.sub(r"\1", m.group(1) if m.group(1) is not None else m.group(2))
                     if m.group(3) is None else m.group(3) for m in _LIST_ITEM.finditer(text[1:-1])]
        else:
            items = text.split(",")
    tags = [t.strip() for t in items if t and t.strip()]
    return list(dict.fromkeys(tags))


# ---------------------------------------------------------------------------------------------------
# Character sheet names


@lru_cache(maxsize=1)
def _sheet_template() -> SheetTemplate:
    return SheetTemplate.load()


_DECORATION = re.compile(r"^[\s*_#=~>-]+|[\s*_#=~<-]+$")


def sheet_name(sheet: str) -> str | None:
    """The character's name from a sheet: its `Name:` field, else a short first line that reads as
    a name ("**Mira Vell**"). None when neither exists; the poster's handle is never a fallback,
    because a handle is personal data and would then be trained on as a character's name."""
    text = to_text(sheet)
    template = _sheet_template()
    labelled = parse_sheet(text, template).get(template.name_field)
    if labelled:
        name = _DECORATION.sub("", labelled.split("\n")[0])
        if name and len(name) <= 80:
            return name
    first = next((line for line in text.split("\n") if line.strip()), "")
    name = _DECORATION.sub("", first)
    if (name and len(name) <= 60 and len(name.split()) <= 6 and ":" not in name
            and not name.endswith((".", "!", "?", ",", ";"))):
        return name
    return None


# ---------------------------------------------------------------------------------------------------
# Reading rows


def _values(record: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    values = {key: _cell(record.get(column)) for key, column in columns.items() if key != _SCENE_KEY}
    if _SCENE_KEY in columns:  # a transcript: the scene is the thread
        parts = [(name, _cell(record.get(name))) for name in columns[_SCENE_KEY].split("\t")]
        values["thread_id"] = " ".join(f"{name.lower()} {value.strip()}" for name, value in parts if value) or None
    if "tags" in columns and isinstance(record.get(columns["tags"]), (list, tuple)):
        values["tags"] = list(record[columns["tags"]])  # a Parquet list column
    for key in ("thread_id", "author", "character", "thread_type", "post_id"):
        if values.get(key) is not None:
            values[key] = values[key].strip()
    return values


# ---------------------------------------------------------------------------------------------------
# CSV / TSV: csv.reader fed from bounded lines


_HEAD_BYTES = 64 * 1024  # of a row too large to hold: the start still parsed, to find the row's thread
_STOPS = ("truncated", "decompression_limit")


class _CsvFeed:
    """The lines of a CSV/TSV file (gzip too) for `csv.reader`, never holding more than `limit` bytes of a row.

    `lines.LineSource` reads each physical line bounded. While a row's lines fit the limit they are fed to
    the csv reader as they are. When a row grows past it (one huge line, or a quoted field running over
    many lines), the rest of the row is skipped without being held (`LineSource.skip_quoted`): where it
    ends is told by quote parity (with the default dialect a row ends at a newline outside quotes; the csv
    reader asks for a row's next line only from inside a quoted field, so the parity before the line that
    went over is known; a stray `"` inside an unquoted field can make the skipped row longer, never the
    memory larger). The csv reader is then handed the start of the row (`_HEAD_BYTES`, when the row began
    with the huge line) and, if it is still inside a quoted field, a closing `"`, so it ends the row and
    stays in step with the file. The consumer reads the row's state (`row_line`, `row_bytes`, `too_large`,
    `not_utf8`, `cut`) when the reader returns the row, then calls `row_done`.
    """

    def __init__(self, path: Path, limit: int):
        self.limit = limit
        self.head_bytes = min(_HEAD_BYTES, limit)
        self.source = lines.LineSource(path, limit, head_bytes=self.head_bytes, count=b'"', keep_newline=True)
        self.stop: lines.RecordLine | None = None  # the `truncated` / `decompression_limit` line, if any
        self.cut = False  # the stream stopped inside the current row
        self.rows_done = 0
        self.done = False  # every line was read
        self._reset()

    def _reset(self) -> None:
        self.row_line = 0  # the row's first physical line
        self.row_bytes = 0
        self.fed = False
        self.too_large = False
        self.not_utf8: str | None = None

    def row_done(self) -> None:
        self._reset()
        self.rows_done += 1

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._feed()
        finally:
            self.done = self.stop is None
            self.source.close()

    def _feed(self) -> Iterator[str]:
        limit = self.limit
        encoding = "utf-8-sig"  # the first line may start with a byte order mark
        for line in self.source.lines():
            data = line.data
            if line.error in _STOPS:
                self.stop = line
                self.cut = self.row_line != 0
                return
            if not self.row_line:
                self.row_line = line.number
            self.row_bytes += line.size
            if data is not None and self.row_bytes <= limit:
                self.fed = True
                try:
                    text = data.decode(encoding)
                except UnicodeDecodeError as exc:
                    self.not_utf8 = self.not_utf8 or \
                        f"line {line.number} is not UTF-8 ({exc.reason} at byte {exc.start + 1})"
                    text = data.decode(encoding, "replace")
                encoding = "utf-8"
                yield text
                continue
            # The row is over the limit with this line: none of the rest of it is held.
            encoding = "utf-8"
            self.too_large = True
            inside = self.fed  # the csv reader asked for this line, so it is inside a quoted field
            if data is not None:
                head, quotes = (b"" if self.fed else data[:self.head_bytes]), data.count(b'"')
            else:
                head, quotes = (b"" if self.fed else line.head), line.counted
            del data
            if (inside + quotes) % 2 and line.newline:  # still inside quotes: the row goes on
                skipped, _ = self.source.skip_quoted()
                self.row_bytes += skipped
            mark = self.rows_done
            if not self.fed:
                yield head.decode("utf-8", "replace")
                if self.rows_done != mark:
                    continue  # the start alone made a complete row
            yield '"'  # close the quoted field the csv reader is in: it ends the row here


def _text_rows(path: Path, limit: int) -> Iterator[_Row]:
    """Rows of a CSV or TSV file (optionally gzipped), numbered from the first row under the header.

    Memory: one row of at most `limit` bytes (`_CsvFeed`). A row over the limit, a row with bytes that
    are not UTF-8 and a row the csv module cannot parse come out with a `problem` (and `reason`) instead
    of failing the dump; where a `.gz` breaks (or expands past its ratio) the row in progress is marked
    and a final `brk` row says where, so every row before it is kept.
    """
    name = path.name
    records = lines.iter_record_lines(path, limit)
    try:
        first = next(records, None)
    finally:
        records.close()
    if first is None or (first.data is not None and not first.data.strip()):
        raise DumpReadError(f"{name}: line 1: post table has no header row"
                            + (" (the file is empty)" if first is None else ""))
    if first.data is None:
        raise DumpReadError(f"{name}: line 1 (the header row): {first.detail}")
    delimiter = _choose_delimiter(first.data.decode("utf-8-sig", "replace"), path)
    del first
    csv.field_size_limit(max(csv.field_size_limit(), limit + _HEAD_BYTES + 16))
    feed = _CsvFeed(path, limit)
    reader = csv.reader(feed, delimiter=delimiter)
    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise DumpReadError(f"{name}: line 1 (the header row): malformed CSV ({exc})") from exc
    if feed.too_large or feed.not_utf8:
        raise DumpReadError(f"{name}: line 1 (the header row): "
                            + (f"longer than max_record_bytes ({limit:,})" if feed.too_large else feed.not_utf8))
    feed.row_done()
    columns = resolve_columns(header, path, "line 1 (the header row)")
    number = good = 0
    first_not_utf8 = None
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            number += 1
            line = feed.row_line
            feed.row_done()
            yield _Row(number, {}, {}, f"row {number} (line {line}): malformed CSV ({exc})", "invalid_csv", line=line)
            continue
        number += 1
        line, size = feed.row_line, feed.row_bytes
        if feed.too_large:
            # The last field the csv reader saw was cut where the row stopped being held: keep only the ones before.
            original = dict(zip(header, fields[:-1]))
            row = _Row(number, _values(original, columns), original,
                       f"row {number} (from line {line}) is {size:,} bytes, more than max_record_bytes ({limit:,}); "
                       "skipped without being read whole", "record_too_large", size, line)
        elif feed.cut:
            original = dict(zip(header, fields[:-1]))
            row = _Row(number, _values(original, columns), original,
                       f"row {number} (from line {line}) is cut off where the file breaks", feed.stop.error, size, line)
        else:
            if not fields or not any(f.strip() for f in fields):
                feed.row_done()
                continue
            original = dict(zip(header, fields))
            problem, reason = None, "invalid_thread"
            if feed.done:  # the reader gave this row only because the file ended inside a quoted field
                problem = f"row {number} (from line {line}): a quoted field is still open at the end of the file"
                reason = "invalid_csv"
            elif feed.not_utf8:
                problem, reason = f"row {number}: {feed.not_utf8}", "not_utf8"
                first_not_utf8 = first_not_utf8 or feed.not_utf8
            else:
                good += 1
                if any(f.strip() for f in fields[len(header):]):
                    problem = f"row {number} has {len(fields)} fields, the header has {len(header)}"
            row = _Row(number, _values(original, columns), original, problem, reason, size, line)
        feed.row_done()
        yield row
    if feed.stop is not None:
        stop = feed.stop
        yield _Row(number + 1, {}, {}, stop.detail, stop.error,
                   line=stop.number, brk=True)
    if not good and first_not_utf8:
        raise DumpReadError(f"{name}: post table is not UTF-8 ({first_not_utf8})")


# ---------------------------------------------------------------------------------------------------
# Parquet: row groups in byte-bounded batches, sizes checked in Arrow before anything becomes Python


class _ParquetLayoutError(ValueError):
    """A column chunk whose page headers cannot be read."""


class _NeedMore(Exception):
    pass


class _Thrift:
    """Just enough of Thrift's compact protocol to read a Parquet PageHeader's sizes and length."""

    def __init__(self, buf: bytes):
        self.buf, self.pos, self.depth = buf, 0, 0

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise _NeedMore
        self.pos += 1
        return self.buf[self.pos - 1]

    def varint(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise _ParquetLayoutError("malformed varint in a page header")

    def zigzag(self) -> int:
        v = self.varint()
        return (v >> 1) ^ -(v & 1)

    def take(self, n: int) -> None:
        if n < 0:
            raise _ParquetLayoutError("negative length in a page header")
        if self.pos + n > len(self.buf):
            raise _NeedMore
        self.pos += n

    def skip(self, kind: int, in_container: bool = False) -> None:
        if kind in (1, 2):  # bool: in the field header, or one byte in a list/set/map
            if in_container:
                self.byte()
        elif kind == 3:
            self.byte()
        elif kind in (4, 5, 6):
            self.varint()
        elif kind == 7:
            self.take(8)
        elif kind == 8:
            self.take(self.varint())
        elif kind in (9, 10):
            h = self.byte()
            size = h >> 4
            if size == 15:
                size = self.varint()
            for _ in range(size):
                self.skip(h & 0x0F, True)
        elif kind == 11:
            size = self.varint()
            if size:
                kv = self.byte()
                for _ in range(size):
                    self.skip(kv >> 4, True)
                    self.skip(kv & 0x0F, True)
        elif kind == 12:
            self.struct(())
        else:
            raise _ParquetLayoutError(f"unknown field type {kind} in a page header")

    def struct(self, wanted: tuple[int, ...]) -> dict[int, int]:
        self.depth += 1
        if self.depth > 32:
            raise _ParquetLayoutError("page header nested too deeply")
        values: dict[int, int] = {}
        last = 0
        while True:
            h = self.byte()
            if h == 0:
                self.depth -= 1
                return values
            kind, delta = h & 0x0F, h >> 4
            last = last + delta if delta else self.zigzag()
            if last in wanted and kind in (4, 5, 6):
                values[last] = self.zigzag()
            else:
                self.skip(kind)


_PAGE_HEADER_MAX = 1 << 20


def _page_sizes(handle, start: int, end: int) -> Iterator[int]:
    """Each page's size (the larger of its uncompressed and compressed size) of the column chunk at
    [start, end) of the open Parquet file, from the page headers alone (nothing is decompressed)."""
    pos = start
    while pos < end:
        want = 256
        while True:
            handle.seek(pos)
            buf = handle.read(want)
            try:
                reader = _Thrift(buf)
                sizes = reader.struct((2, 3))  # PageHeader: 2 uncompressed_page_size, 3 compressed_page_size
                break
            except _NeedMore:
                if len(buf) < want or want >= _PAGE_HEADER_MAX:
                    raise _ParquetLayoutError("a page header runs past its column chunk") from None
                want *= 8
        if 2 not in sizes or 3 not in sizes or sizes[2] < 0 or sizes[3] < 0:
            raise _ParquetLayoutError("a page header without its sizes")
        yield max(sizes[2], sizes[3])
        pos += reader.pos + sizes[3]


def _leaf_count(kind) -> int:
    import pyarrow as pa

    if pa.types.is_struct(kind):
        return sum(_leaf_count(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_map(kind):
        return _leaf_count(kind.key_type) + _leaf_count(kind.item_type)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _leaf_count(kind.value_type)
    return 1


def _is_text_type(kind) -> bool:
    """A type whose cells read as one text value (what `_cell` turns into text)."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        return _is_text_type(kind.value_type)
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind) or pa.types.is_temporal(kind) or pa.types.is_null(kind)
            or pa.types.is_decimal(kind) or getattr(pa.types, "is_string_view", lambda _: False)(kind))


def _is_tags_type(kind) -> bool:
    import pyarrow as pa

    return _is_text_type(kind) or ((pa.types.is_list(kind) or pa.types.is_large_list(kind))
                                   and _is_text_type(kind.value_type))


def _cell_bytes(array) -> "Any":
    """Bytes of each cell of an Arrow array, as a numpy int64 array, computed in Arrow (nothing converted)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(array)
    kind = array.type
    if pa.types.is_dictionary(kind):
        lengths = _cell_bytes(array.dictionary)
        indices = array.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return lengths[indices] if len(lengths) else np.zeros(n, np.int64)
    if (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)):
        return pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        values = array.flatten()
        parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
        weights = _cell_bytes(values)
        if isinstance(weights, np.ndarray) and len(weights) != len(parents):  # a map flattens to its entries
            return np.full(n, max(1, array.nbytes // max(n, 1)), np.int64)
        return np.bincount(parents, weights=weights, minlength=n).astype(np.int64) if len(parents) else \
            np.zeros(n, np.int64)
    if pa.types.is_struct(kind):
        total = np.zeros(n, np.int64)
        for child in array.flatten():
            total += _cell_bytes(child)
        return total
    width = getattr(kind, "bit_width", 64)
    return np.full(n, max(1, width // 8), np.int64)


def _arrow_error(exc: BaseException) -> str:
    """An Arrow/OS error in one short line (its first line, clipped: never a dump of the data)."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


_BATCH_ROWS = 1024


def _parquet_rows(path: Path, limit: int) -> Iterator[_Row]:
    """Rows of a Parquet file, only the columns the contract uses, one row group at a time.

    Before a row group is decoded, the page headers of its column chunks are read (`_page_sizes`): a
    column with a page larger than `limit` is not read at all, and every row of that group is rejected
    naming the column (`record_too_large`). The other columns are read in batches of at most
    `4 * limit // largest page` rows (a cell is never larger than its page, or its dictionary page), so a
    batch holds at most ~4 x `limit` of Arrow memory; cell sizes are computed in Arrow, and a row over
    `limit` is rejected without being converted. Rows are converted to Python in slices of at most
    `limit` bytes. Columns whose type is not text (a list or struct where text belongs; only the tags
    column may be a list) are never stringified: a row with a value there is rejected naming the column
    and the type. A row group that cannot be decoded gives a `brk` row (`invalid_parquet`) and reading
    goes on with the next one.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    name = path.name
    try:
        table = pq.ParquetFile(path, buffer_size=1 << 20)
        schema = table.schema_arrow
        meta = table.metadata
        names = list(schema.names)
    except (pa.ArrowException, OSError) as exc:
        raise DumpReadError(f"{name}: cannot read Parquet post table ({_arrow_error(exc)})") from exc
    columns = resolve_columns(names, path, scenes=False)  # transcripts by scene: CSV/TSV only
    used = sorted(set(columns.values()), key=names.index)
    tags_column = columns.get("tags")
    not_text = {column: str(schema.field(column).type) for column in used
                if not (_is_tags_type if column == tags_column else _is_text_type)(schema.field(column).type)}
    if columns["thread_id"] in not_text:
        raise DumpReadError(f"{name}: column {columns['thread_id']!r} holds {not_text[columns['thread_id']]}, "
                            "not text: its rows cannot be grouped into threads")
    keys = {columns[k] for k in ("thread_id", "thread_type", "title") if k in columns}  # what a row's thread needs
    leaves: dict[str, range] = {}
    at = 0
    for field_ in schema:
        leaves[field_.name] = range(at, at + _leaf_count(field_.type))
        at += leaves[field_.name].stop - at

    number = 0
    with open(path, "rb") as handle:
        for group in range(meta.num_row_groups):
            group_meta = meta.row_group(group)
            first, rows_in_group = number + 1, group_meta.num_rows
            span = f"row group {group} (rows {first}-{first + rows_in_group - 1})"
            try:
                largest: dict[str, int] = {}
                for column in used:
                    for leaf in leaves[column]:
                        chunk = group_meta.column(leaf)
                        starts = [chunk.data_page_offset]
                        if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                            starts.append(chunk.dictionary_page_offset)
                        start = min(starts)
                        for size in _page_sizes(handle, start, start + chunk.total_compressed_size):
                            largest[column] = max(largest.get(column, 0), size)
                oversized = {c: size for c, size in largest.items() if size > limit}
                if columns["thread_id"] in oversized:
                    number += rows_in_group
                    yield _Row(first, {}, {}, f"{span}: column {columns['thread_id']!r} has a Parquet page of "
                               f"{oversized[columns['thread_id']]:,} bytes, more than max_record_bytes ({limit:,}); "
                               "not read", "record_too_large", brk=False)
                    continue
                read = [c for c in used if c not in oversized]
                batch_rows = int(max(1, min(_BATCH_ROWS, 4 * limit // max(1, max(largest.get(c, 1) for c in read)))))
                for batch in table.iter_batches(batch_size=batch_rows, row_groups=[group], columns=read,
                                                use_threads=False):
                    n = batch.num_rows
                    sizes = np.zeros(n, np.int64)
                    cells = {c: _cell_bytes(batch.column(c)) for c in read}
                    for c in read:
                        sizes += cells[c]
                    valid = {c: pc.is_valid(batch.column(c)).to_numpy(zero_copy_only=False) for c in not_text
                             if c in read}
                    too_large = sizes > limit
                    arrays = {}
                    for c in read:
                        if c in not_text:
                            continue
                        array = batch.column(c)
                        if too_large.any() and c not in keys:
                            array = pc.if_else(pa.array(too_large), pa.scalar(None, array.type), array)
                        arrays[c] = array
                    converted = pa.RecordBatch.from_pydict(arrays) if arrays else None
                    start = 0
                    while start < n:  # convert slices of at most `limit` bytes (one row at least)
                        stop, total = start, 0
                        while stop < n and (stop == start or total + (0 if too_large[stop] else sizes[stop]) <= limit):
                            total += 0 if too_large[stop] else int(sizes[stop])
                            stop += 1
                        records = converted.slice(start, stop - start).to_pylist() if converted is not None \
                            else [{} for _ in range(stop - start)]
                        for i, record in zip(range(start, stop), records):
                            row_number = number + i + 1
                            for c in oversized:
                                record[c] = None
                            for c in not_text:
                                record[c] = None
                            problem, reason = None, "invalid_thread"
                            if oversized:
                                column, size = next(iter(oversized.items()))
                                problem, reason = (f"row {row_number}: column {column!r} is in a Parquet page of "
                                                   f"{size:,} bytes in {span}, more than max_record_bytes "
                                                   f"({limit:,}); not read"), "record_too_large"
                            elif too_large[i]:
                                big = max(read, key=lambda c: cells[c][i])
                                problem, reason = (f"row {row_number} is {int(sizes[i]):,} bytes (column {big!r}: "
                                                   f"{int(cells[big][i]):,}), more than max_record_bytes ({limit:,}); "
                                                   "not read"), "record_too_large"
                            else:
                                bad = [c for c in valid if valid[c][i]]
                                if bad:
                                    problem = (f"row {row_number}: column {bad[0]!r} holds {not_text[bad[0]]}, "
                                               "not text")
                            values = _values(record, columns)
                            yield _Row(row_number, values, record if problem is None else
                                       {c: v for c, v in record.items() if c in keys}, problem, reason, int(sizes[i]))
                        start = stop
                    number += n
                number = first - 1 + rows_in_group
            except (pa.ArrowException, OSError, _ParquetLayoutError) as exc:
                number = first - 1 + rows_in_group
                yield _Row(first, {}, {}, f"{span} cannot be read ({_arrow_error(exc)}); the other row groups are read",
                           "invalid_parquet", brk=True)


def _rows(path: Path, limit: int) -> Iterator[_Row]:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"PAR1" or path.name.lower().endswith(".parquet"):
        return _parquet_rows(path, limit)
    return _text_rows(path, limit)


# ---------------------------------------------------------------------------------------------------
# Rows into threads


def _thread_type(row: _Row) -> str | None:
    """"ic", "ooc", "characters", or None for a value the contract does not know."""
    return _THREAD_TYPES.get((row.values.get("thread_type") or "").strip().lower())


def _link(row: _Row) -> str:
    """What ties IC, OOC and Characters rows of one roleplay together: the title, else the id."""
    return row.values.get("title") or row.values["thread_id"]


def _shown(value: Any) -> str:
    """A thread id or type as a reject detail names it: quoted, control characters escaped, clipped."""
    text = repr(str(value))
    return text if len(text) <= 82 else text[:78] + "...'"


_READER_REASONS = ("truncated", "decompression_limit", "invalid_parquet", "record_too_large", "invalid_csv", "not_utf8")


def _problems(rows: list[_Row], kind: str) -> list[tuple[int, int, str, str]]:
    """(priority, row, detail, reason) of every problem of these rows; a problem of the reader (the row
    could not be read as it is in the file) comes before one of the row's content."""
    found = []
    for row in rows:
        if row.problem:
            found.append((0 if row.reason in _READER_REASONS else 1, row.number, row.problem, row.reason))
            continue  # the row is not as the file meant it (cut, not text): its cells say nothing more
        if not row.values.get("author"):
            found.append((2, row.number, f"{kind} row {row.number} has an empty author", "invalid_thread"))
        if not row.values.get("message"):
            found.append((2, row.number, f"{kind} row {row.number} has an empty message", "invalid_thread"))
    return found


def _record(rows: list[_Row]) -> str:
    return json.dumps([{"row": r.number, **r.original} for r in sorted(rows, key=lambda r: r.number)],
                      ensure_ascii=False, default=str)


@dataclass
class _Plan:
    """Pass 1's view of one IC thread: its link, its first and the last row it needs (its own and its
    sheets'), its size in bytes, and a problem found by the reader after one of its rows (a break)."""
    link: str
    first_row: int
    last_row: int
    size: int = 0
    cut: tuple[int, str, str] | None = None  # (row, detail, reason)
    too_large: str | None = None  # the first of its rows that was too large to read, as its problem says
    rows: list[_Row] = field(default_factory=list)


def iter_post_table(path: Path, out: DumpContents, max_record_bytes: int | None = None) -> Iterator[tuple[str, dict]]:
    """("thread", row) / ("reject", row) of a post table, streaming; counters on `out`.

    Two passes over the rows. The first keeps per thread only its link, the number of the last row
    it needs (its own last IC row, and the last Characters row of its link) and its size in bytes, and
    per link the OOC row count; rows without a thread_id are rejected right away. The second collects each
    thread's rows and emits the threads in order of first appearance as soon as the rows they need have
    been read, freeing them. Memory is therefore the rows of the threads still open: one thread's rows at
    a time when a thread's rows are contiguous (forum dumps), the whole table at worst (a thread whose last
    post is at the end of the file). Character sheets of a link no IC thread uses are held to the end,
    where they are rejected (`no_posts`). Same records, same order as reading it whole.

    A thread is one record, so it obeys `max_record_bytes` (default `lines.MAX_RECORD_BYTES`) as a JSONL
    line does: a thread whose rows (with its sheets) are larger is rejected (`record_too_large`) and its
    rows are never collected; so is a thread with a row too large to read. Where the file breaks
    (truncated `.gz`, decompression limit, a Parquet row group that cannot be decoded) one reject names the
    place, and the thread of the last row read before it is rejected with the same reason (it may be
    missing rows); the threads before it are kept.
    """
    limit = max_record_bytes or lines.record_limit()
    dump = out.dump
    plans: dict[str, _Plan] = {}  # by thread_id, in order of first appearance
    sheet_rows: dict[str, list[int]] = {}  # link -> its Characters rows
    sheet_bytes: Counter[str] = Counter()
    sheet_thread: dict[str, str] = {}  # link -> thread_id of its first Characters row
    ooc: Counter[str] = Counter()  # OOC rows by link
    last: _Row | None = None  # the last row with a thread_id
    for row in _rows(path, limit):  # pass 1
        if row.brk:
            out.lines += 1
            yield "reject", record_reject(dump, row.number, row.reason, row.problem, "", where=f"{dump}:row {row.number}")
            if last is not None:
                link, thread_id = _link(last), last.values["thread_id"]
                for tid, plan in plans.items():
                    if plan.cut is None and (tid == thread_id or plan.link == link):
                        plan.cut = (row.number, f"its last row read, row {last.number}, is followed by a break in "
                                                f"the file at row {row.number}: rows may be missing", row.reason)
            continue
        out.rows += 1
        thread_id = row.values.get("thread_id")
        if not thread_id:
            out.lines += 1
            detail = row.problem or f"row {row.number} has an empty thread_id"
            yield "reject", record_reject(dump, row.number, row.reason if row.problem else "invalid_thread", detail,
                                    _record([row]), where=f"{dump}:row {row.number}")
            continue
        last = row
        kind = _thread_type(row)
        if kind == "ooc":
            ooc[_link(row)] += 1
        elif kind == "characters":
            link = _link(row)
            sheet_rows.setdefault(link, []).append(row.number)
            sheet_bytes[link] += row.size
            sheet_thread.setdefault(link, thread_id)
        elif thread_id in plans:
            plans[thread_id].last_row = row.number
            plans[thread_id].size += row.size
        else:  # IC, or an unknown type, which _build reports
            plans[thread_id] = _Plan(_link(row), row.number, row.number, row.size)
        if kind not in ("ooc", "characters") and row.reason == "record_too_large" and row.problem:
            plans[thread_id].too_large = plans[thread_id].too_large or row.problem
    users: Counter[str] = Counter(plan.link for plan in plans.values())
    used_links = set(users)
    for plan in plans.values():
        plan.last_row = max(plan.last_row, sheet_rows[plan.link][-1] if plan.link in sheet_rows else 0)
        plan.size += sheet_bytes.get(plan.link, 0)

    order = list(plans)
    head = 0
    sheets: dict[str, list[_Row]] = {}  # Characters rows by link, until the last thread using them is out

    def ready(upto: int) -> Iterator[tuple[str, dict]]:
        nonlocal head
        while head < len(order) and plans[order[head]].last_row <= upto:
            thread_id = order[head]
            plan = plans.pop(thread_id)
            head += 1
            out.lines += 1
            if plan.size > limit:
                yield "reject", record_reject(
                    dump, plan.first_row, "record_too_large", f"thread {_shown(thread_id)}: " + (
                        plan.too_large or f"its rows ({plan.first_row}-{plan.last_row}) and sheets are "
                                          f"{plan.size:,} bytes, more than max_record_bytes ({limit:,})"), "",
                    thread_id, where=f"{dump}:row {plan.first_row}")
            else:
                yield _build(out, _Thread(thread_id, plan.rows), sheets.get(plan.link, []), plan.cut)
            if ooc.get(plan.link):
                out.ooc_rows_by_thread[thread_id] = out.ooc_rows_by_thread.get(thread_id, 0) + ooc[plan.link]
            users[plan.link] -= 1
            if users[plan.link] == 0:
                sheets.pop(plan.link, None)

    for row in _rows(path, limit):  # pass 2
        if row.brk:
            continue
        thread_id = row.values.get("thread_id")
        if not thread_id:
            continue
        kind = _thread_type(row)
        if kind == "characters":
            if sheet_bytes[_link(row)] <= limit:
                sheets.setdefault(_link(row), []).append(row)
        elif kind != "ooc":
            plan = plans[thread_id]
            if plan.size <= limit:
                plan.rows.append(row)
        yield from ready(row.number)
    yield from ready(1 << 62)

    for link, numbers in sheet_rows.items():
        if link in used_links:
            continue
        out.lines += 1
        first = numbers[0]
        if sheet_bytes[link] > limit:
            reason, detail, record = "record_too_large", (
                f"thread {_shown(link)} has character sheets (rows {numbers[0]}-{numbers[-1]}) of "
                f"{sheet_bytes[link]:,} bytes, more than max_record_bytes ({limit:,}), and no IC posts"), ""
        else:
            rows = sheets.get(link, [])
            problems = _problems(rows, "character sheet")
            reader_problem = next((p for p in sorted(problems) if p[0] == 0), None)
            if reader_problem is not None:
                reason, detail = reader_problem[3], reader_problem[2]
            else:
                reason, detail = "no_posts", (f"thread {_shown(link)} has character sheets (rows "
                                              f"{', '.join(str(n) for n in numbers)}) but no IC posts in this dump")
            record = _record(rows)
        yield "reject", record_reject(dump, first, reason, detail, record, sheet_thread[link], where=f"{dump}:row {first}")
    for link, count in ooc.items():
        if link not in used_links:
            out.ooc_rows_by_thread[link] = count
    out.ooc_rows = sum(ooc.values())


def _build(out: DumpContents, thread: _Thread, sheet_rows: list[_Row],
           cut: tuple[int, str, str] | None = None) -> tuple[str, dict]:
    """("thread", the thread) or ("reject", one reject for it naming its first bad row)."""
    dump = out.dump
    problems = _problems(thread.rows, "post") + _problems(sheet_rows, "character sheet")
    if cut is not None:
        problems.append((0, cut[0], cut[1], cut[2]))
    for row in thread.rows:
        if _thread_type(row) is None:
            problems.append((2, row.number, f"row {row.number} has unknown thread_type "
                                            f"{_shown(row.values['thread_type'])} (expected IC, OOC or Characters)",
                             "invalid_thread"))
    characters = []
    for row in sheet_rows:
        if row.problem and row.reason in _READER_REASONS:
            continue
        name = row.values.get("character") or sheet_name(row.values.get("message") or "")
        if not name:
            problems.append((2, row.number, f"character sheet at row {row.number} names no character (no character "
                                            "column value, no Name: field, no name on its first line)",
                             "invalid_thread"))
            continue
        characters.append({"name": name, "player": row.values.get("author"), "sheet": row.values.get("message")})

    all_rows = thread.rows + sheet_rows
    if problems:
        problems.sort()
        _, first_row, first, reason = problems[0]
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        return "reject", record_reject(dump, first_row, reason, f"thread {_shown(thread.thread_id)}: {first}{more}",
                                 _record(all_rows), thread.thread_id, where=f"{dump}:row {first_row}")

    record = {
        "thread_id": thread.thread_id,
        "title": thread.first("title"),
        "forum": thread.first("forum"),
        "url": thread.first("url"),
        "tags": parse_tags(thread.first("tags")),
        "characters": characters,
        "posts": [{"post_id": row.values.get("post_id") or str(row.number),
                   "author": row.values["author"],
                   "character": row.values.get("character"),
                   "text": row.values["message"],
                   "posted_at": row.values.get("posted_at")} for row in thread.rows],
    }
    first_row = thread.rows[0].number
    try:
        canonical = validate_thread(record)
    except ValueError as exc:
        return "reject", record_reject(dump, first_row, "invalid_thread", f"thread {thread.thread_id!r}: {exc}",
                                 _record(all_rows), thread.thread_id, where=f"{dump}:row {first_row}")
    return "thread", {"dump": dump, "file": dump, "line": first_row, **canonical}
