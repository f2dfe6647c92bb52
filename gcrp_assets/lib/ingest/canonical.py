"""The native layout: canonical thread JSONL (`.jsonl`, `.jsonl.gz`), one thread per line, streamed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from gcrp_assets.lib.ingest.contract import DumpContents, DumpReadError, EmptyThread, dump_name, record_reject, validate_thread
from gcrp_assets.lib.ingest.lines import JsonLineError, check_containers, iter_record_lines, parse_json_line


def read_canonical_jsonl(path: Path) -> DumpContents:
    out = DumpContents(dump_name(path))
    return collect(iter_canonical_jsonl(path, out), out)


def _thread_id_of(obj: Any) -> str | None:
    """The record's thread_id for the rejects table when it is plain text or a number, else None."""
    value = obj.get("thread_id") if isinstance(obj, dict) else None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def iter_canonical_jsonl(path: Path, out: DumpContents,
                         max_record_bytes: int | None = None) -> Iterator[tuple[str, dict]]:
    """("thread", row) / ("reject", row) per non-blank line, in file order, streaming; counters on `out`.

    Memory: one line at a time (`iter_record_lines`: at most `max_record_bytes`, default MAX_RECORD_BYTES),
    plus the thread_ids seen (for `duplicate_thread_id`). Every failure is one reject naming the line:
    `record_too_large`, `not_utf8`, `invalid_json` (also nesting too deep or a number too long),
    `invalid_thread`, `no_posts`, `duplicate_thread_id`, and where a `.gz` breaks, `truncated` (the lines
    before it are kept) or `decompression_limit`. If no line parses at all and some line was not JSON or
    the stream broke, `DumpReadError` is raised after the last line (the caller discards what it wrote).
    Reject details never quote the line (it is in the reject's `record`).
    """
    dump = out.dump
    seen: dict[str, int] = {}
    parsed_any = False
    first_error: str | None = None
    for record_line in iter_record_lines(path, max_record_bytes):
        number, raw_line = record_line.number, record_line.data
        if raw_line is None:
            out.lines += 1
            out.rows += 1
            if record_line.error == "truncated":
                first_error = first_error or f"line {number}: {record_line.detail}"
            yield "reject", record_reject(dump, number, record_line.error, record_line.detail, "")
            continue
        if not raw_line.strip():
            continue
        out.lines += 1
        out.rows += 1
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield "reject", record_reject(dump, number, "not_utf8", f"not UTF-8: {exc.reason} at byte {exc.start + 1}",
                                    raw_line.decode("utf-8", "replace"))
            first_error = first_error or f"line {number}: not UTF-8"
            continue
        del raw_line
        try:
            check_containers(line)
            obj = parse_json_line(line)
        except JsonLineError as exc:
            yield "reject", record_reject(dump, number, "invalid_json", str(exc), line)
            first_error = first_error or f"line {number}: {exc}"
            continue
        parsed_any = True
        try:
            thread = validate_thread(obj)
        except EmptyThread as exc:
            yield "reject", record_reject(dump, number, "no_posts", str(exc), line, _thread_id_of(obj))
            continue
        except ValueError as exc:
            yield "reject", record_reject(dump, number, "invalid_thread", str(exc), line, _thread_id_of(obj))
            continue
        except (TypeError, RecursionError) as exc:  # a value too deeply nested to turn into text, ...
            why = "a value is nested too deeply" if isinstance(exc, RecursionError) else type(exc).__name__
            yield "reject", record_reject(dump, number, "invalid_thread", f"not a valid thread ({why})", line,
                                    _thread_id_of(obj))
            continue
        thread_id = thread["thread_id"]
        if thread_id in seen:
            yield "reject", record_reject(dump, number, "duplicate_thread_id",
                                    f"thread_id already used at line {seen[thread_id]} of this dump", line, thread_id)
            continue
        seen[thread_id] = number
        yield "thread", {"dump": dump, "file": dump, "line": number, **thread}

    if not parsed_any and first_error:
        raise DumpReadError(f"{path.name}: not a canonical thread JSONL dump ({first_error})")


def collect(records: Iterator[tuple[str, dict]], out: DumpContents) -> DumpContents:
    """A streaming reader's records gathered into `out`, the DumpContents that holds its counters."""
    for kind, record in records:
        (out.threads if kind == "thread" else out.rejects).append(record)
    return out
