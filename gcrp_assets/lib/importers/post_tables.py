"""Flat post tables (CSV, TSV, Parquet; one row per post; CSV/TSV may be gzipped) into canonical threads.

This is how community forum dumps are usually published (RPGuild-style CSVs, per-forum Parquet).
Columns are matched case-insensitively, through the aliases of the contract (`raw-threads.md` §2):

    thread_id  [thread_title, thread_href]   required: groups posts into threads, in row order
    author     [message_username, username]  required: forum handle
    message    [text, content]               required: post body
    character, thread_type, posted_at, post_id, thread_tags [tags]   optional
    thread_title [title], thread_href [url], forum                   optional thread metadata

`thread_type` follows RPGuild: `IC` rows are the roleplay posts; `Characters` rows are character
sheets for the thread with the same title (RPGuild keeps them in a sibling sub-thread); `OOC` rows
are table talk, kept out of the posts and only counted (`DumpContents.ooc_rows*`). A missing or
empty type means IC.

Rows are numbered from 1 = the first row under the header (the same for Parquet), and that number
is what rejects and a thread's `line` point at: a thread's `line` is the row of its first post.
One bad row (empty author or message, an unnamed sheet, a ragged CSV row) rejects its whole
thread, as a bad post does in the canonical layout: a thread with a hole in it would teach the
model replies to posts it never saw. The other threads are kept.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from gcrp_assets.lib.dumps import DumpContents, DumpReadError, _reject, _validate_thread, dump_name
from gcrp_assets.lib.markup import to_text
from gcrp_assets.lib.sheets import SheetTemplate, parse_sheet

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "thread_id": ("thread_id", "thread_title", "thread_href"),
    "author": ("author", "message_username", "username"),
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
_THREAD_TYPES = {"": "ic", "ic": "ic", "ooc": "ooc", "characters": "characters", "character": "characters"}
_DELIMITERS = ("\t", ",")
_GZIP_MAGIC = b"\x1f\x8b"
_CSV_FIELD_LIMIT = 1 << 26  # forum posts with inline HTML can exceed the csv module's 128 KiB default


@dataclass
class _Row:
    number: int
    values: dict[str, Any]  # canonical field -> cell (str, list for tags, or None)
    original: dict[str, Any]  # as in the file, for the rejects table
    problem: str | None = None  # set by the reader when the row itself is malformed


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


def resolve_columns(names: list[str], path: Path) -> dict[str, str]:
    """Canonical field -> the table's column name; `DumpReadError` naming every missing required column."""
    index = _column_index(names)
    columns: dict[str, str] = {}
    missing = []
    for canonical, aliases in REQUIRED_COLUMNS.items():
        found = _resolve(index, aliases)
        if found is None:
            missing.append(f"{canonical!r} (or {', '.join(repr(a) for a in aliases[1:])})")
        else:
            columns[canonical] = found
    if missing:
        raise DumpReadError(f"{path}: post table is missing required column {'; '.join(missing)}; "
                            f"its columns are {', '.join(repr(str(n)) for n in names)}")
    for canonical, aliases in OPTIONAL_COLUMNS.items():
        found = _resolve(index, aliases)
        if found is not None:
            columns[canonical] = found
    return columns


def _required_score(header: list[str]) -> int:
    index = _column_index(header)
    return sum(_resolve(index, aliases) is not None for aliases in REQUIRED_COLUMNS.values())


def _split_header(line: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter), [])
    except csv.Error:
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
    values = {key: _cell(record.get(column)) for key, column in columns.items()}
    if "tags" in columns and isinstance(record.get(columns["tags"]), (list, tuple)):
        values["tags"] = list(record[columns["tags"]])  # a Parquet list column
    for key in ("thread_id", "author", "character", "thread_type", "post_id"):
        if values.get(key) is not None:
            values[key] = values[key].strip()
    return values


def _open_bytes(path: Path):
    with open(path, "rb") as handle:
        packed = handle.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if packed else open(path, "rb")


def _text_rows(path: Path) -> Iterator[_Row]:
    """Rows of a CSV or TSV file (optionally gzipped), numbered from the first row under the header."""
    try:
        with _open_bytes(path) as raw:
            head = raw.readline()
    except OSError as exc:
        raise DumpReadError(f"{path}: cannot read dump: {exc}") from exc
    if not head.strip():
        raise DumpReadError(f"{path}: post table has no header row")
    delimiter = _choose_delimiter(head.decode("utf-8-sig", "replace"), path)
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    number = 0
    reader = None
    try:
        with _open_bytes(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
            reader = csv.reader(text, delimiter=delimiter)
            header = next(reader, [])
            columns = resolve_columns(header, path)
            for fields in reader:
                number += 1
                if not fields or not any(f.strip() for f in fields):
                    continue
                problem = None
                extra = fields[len(header):]
                if any(f.strip() for f in extra):
                    problem = f"row {number} has {len(fields)} fields, the header has {len(header)}"
                original = dict(zip(header, fields))
                yield _Row(number, _values(original, columns), original, problem)
    except UnicodeDecodeError as exc:
        raise DumpReadError(f"{path}: not UTF-8 (near row {number + 1}): {exc.reason}") from exc
    except csv.Error as exc:
        line = reader.line_num if reader is not None else 1
        raise DumpReadError(f"{path}: line {line}: malformed CSV: {exc}") from exc
    except (OSError, EOFError) as exc:
        raise DumpReadError(f"{path}: cannot read dump (near row {number + 1}): {exc}") from exc


def _parquet_rows(path: Path) -> Iterator[_Row]:
    """Rows of a Parquet file, read in batches of only the columns the contract uses."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        names = list(table.schema_arrow.names)
    except (pa.ArrowException, OSError) as exc:
        raise DumpReadError(f"{path}: cannot read Parquet post table: {exc}") from exc
    columns = resolve_columns(names, path)
    number = 0
    try:
        for batch in table.iter_batches(columns=sorted(set(columns.values()))):
            for record in batch.to_pylist():
                number += 1
                yield _Row(number, _values(record, columns), record)
    except (pa.ArrowException, OSError) as exc:
        raise DumpReadError(f"{path}: cannot read Parquet post table (near row {number + 1}): {exc}") from exc


def _rows(path: Path) -> Iterator[_Row]:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"PAR1" or path.name.lower().endswith(".parquet"):
        return _parquet_rows(path)
    return _text_rows(path)


# ---------------------------------------------------------------------------------------------------
# Rows into threads


def _thread_type(row: _Row) -> str | None:
    """"ic", "ooc", "characters", or None for a value the contract does not know."""
    return _THREAD_TYPES.get((row.values.get("thread_type") or "").strip().lower())


def _link(row: _Row) -> str:
    """What ties IC, OOC and Characters rows of one roleplay together: the title, else the id."""
    return row.values.get("title") or row.values["thread_id"]


def _problems(rows: list[_Row], kind: str) -> list[tuple[int, str]]:
    found = []
    for row in rows:
        if row.problem:
            found.append((row.number, row.problem))
        if not row.values.get("author"):
            found.append((row.number, f"{kind} row {row.number} has an empty author"))
        if not row.values.get("message"):
            found.append((row.number, f"{kind} row {row.number} has an empty message"))
    return found


def _record(rows: list[_Row]) -> str:
    return json.dumps([{"row": r.number, **r.original} for r in sorted(rows, key=lambda r: r.number)],
                      ensure_ascii=False, default=str)


def read_post_table(path: Path) -> DumpContents:
    """Threads from a CSV, TSV or Parquet post table; see the module docstring for the rules."""
    out = DumpContents(dump_name(path), layout="post_table")
    for kind, record in iter_post_table(path, out):
        (out.threads if kind == "thread" else out.rejects).append(record)
    return out


@dataclass
class _Plan:
    """Pass 1's view of one IC thread: its link, and the last row it needs (its own and its sheets')."""
    link: str
    last_row: int
    rows: list[_Row] = field(default_factory=list)


def iter_post_table(path: Path, out: DumpContents) -> Iterator[tuple[str, dict]]:
    """("thread", row) / ("reject", row) of a post table, streaming; counters on `out`.

    Two passes over the rows. The first keeps per thread only its link and the number of the last row
    it needs (its own last IC row, and the last Characters row of its link), and per link the OOC row
    count; rows without a thread_id are rejected right away. The second collects each thread's rows
    and emits the threads in order of first appearance as soon as the rows they need have been read,
    freeing them. Memory is therefore the rows of the threads still open: one thread's rows at a time
    when a thread's rows are contiguous (forum dumps), the whole table at worst (a thread whose last
    post is at the end of the file). Character sheets of a link no IC thread uses are held to the end,
    where they are rejected (`no_posts`). Same records, same order as reading it whole.
    """
    dump = out.dump
    plans: dict[str, _Plan] = {}  # by thread_id, in order of first appearance
    sheet_last: dict[str, int] = {}  # link -> last Characters row
    ooc: Counter[str] = Counter()  # OOC rows by link
    for row in _rows(path):  # pass 1
        out.rows += 1
        thread_id = row.values.get("thread_id")
        if not thread_id:
            out.lines += 1
            yield "reject", _reject(dump, row.number, "invalid_thread", f"row {row.number} has an empty thread_id",
                                    _record([row]), where=f"{dump}:row {row.number}")
            continue
        kind = _thread_type(row)
        if kind == "ooc":
            ooc[_link(row)] += 1
        elif kind == "characters":
            sheet_last[_link(row)] = row.number
        elif thread_id in plans:
            plans[thread_id].last_row = row.number
        else:  # IC, or an unknown type, which _build reports
            plans[thread_id] = _Plan(_link(row), row.number)
    users: Counter[str] = Counter(plan.link for plan in plans.values())
    used_links = set(users)
    for plan in plans.values():
        plan.last_row = max(plan.last_row, sheet_last.get(plan.link, 0))

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
            yield _build(out, _Thread(thread_id, plan.rows), sheets.get(plan.link, []))
            if ooc.get(plan.link):
                out.ooc_rows_by_thread[thread_id] = out.ooc_rows_by_thread.get(thread_id, 0) + ooc[plan.link]
            users[plan.link] -= 1
            if users[plan.link] == 0:
                sheets.pop(plan.link, None)

    for row in _rows(path):  # pass 2
        thread_id = row.values.get("thread_id")
        if not thread_id:
            continue
        kind = _thread_type(row)
        if kind == "characters":
            sheets.setdefault(_link(row), []).append(row)
        elif kind != "ooc":
            plans[thread_id].rows.append(row)
        yield from ready(row.number)
    yield from ready(1 << 62)

    for link, rows in sheets.items():
        if link in used_links:
            continue
        out.lines += 1
        first = rows[0].number
        yield "reject", _reject(
            dump, first, "no_posts", f"thread {link!r} has character sheets (rows "
            f"{', '.join(str(r.number) for r in rows)}) but no IC posts in this dump", _record(rows),
            rows[0].values["thread_id"], where=f"{dump}:row {first}")
    for link, count in ooc.items():
        if link not in used_links:
            out.ooc_rows_by_thread[link] = count
    out.ooc_rows = sum(ooc.values())


def _build(out: DumpContents, thread: _Thread, sheet_rows: list[_Row]) -> tuple[str, dict]:
    """("thread", the thread) or ("reject", one reject for it naming its first bad row)."""
    dump = out.dump
    problems = _problems(thread.rows, "post") + _problems(sheet_rows, "character sheet")
    for row in thread.rows:
        if _thread_type(row) is None:
            problems.append((row.number, f"row {row.number} has unknown thread_type {row.values['thread_type']!r} "
                                         "(expected IC, OOC or Characters)"))
    characters = []
    for row in sheet_rows:
        name = row.values.get("character") or sheet_name(row.values.get("message") or "")
        if not name:
            problems.append((row.number, f"character sheet at row {row.number} names no character (no character "
                                         "column value, no Name: field, no name on its first line)"))
            continue
        characters.append({"name": name, "player": row.values.get("author"), "sheet": row.values.get("message")})

    all_rows = thread.rows + sheet_rows
    if problems:
        problems.sort()
        first_row, first = problems[0]
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        return "reject", _reject(dump, first_row, "invalid_thread", f"thread {thread.thread_id!r}: {first}{more}",
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
        canonical = _validate_thread(record)
    except ValueError as exc:
        return "reject", _reject(dump, first_row, "invalid_thread", f"thread {thread.thread_id!r}: {exc}",
                                 _record(all_rows), thread.thread_id, where=f"{dump}:row {first_row}")
    return "thread", {"dump": dump, "line": first_row, **canonical}
