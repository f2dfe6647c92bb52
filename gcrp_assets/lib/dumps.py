"""Reading dumps from the inbox into canonical thread records (contract: shared design `raw-threads.md`).

`read_dump` returns the good threads and one reject per bad record, each naming the file and the
line (or row). A dump that cannot be read at all raises `DumpReadError`, naming the file (and the
line). The layout is recognised by content (`detect_layout`), so a dump is read the same way
whatever it happens to be called:

- `canonical_jsonl`: the native format, read here by `read_canonical_jsonl`;
- `post_table`: CSV, TSV or Parquet, one row per post (`importers.post_tables`);
- `sillytavern`: a SillyTavern export folder, or one chat `.jsonl` (`importers.sillytavern`).

This module also owns the contract's primitives that every importer shares (`DumpContents`,
`DumpReadError`, `_validate_thread`, `_reject`), so all layouts are checked the same way.
"""

from __future__ import annotations

import gzip
from contextlib import contextmanager
from contextvars import ContextVar
import json
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from gcrp_assets.lib.hashing import sha256_file, sha256_tree

CANONICAL_SUFFIXES = (".jsonl", ".jsonl.gz")
TABLE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet")
DUMP_SUFFIXES = CANONICAL_SUFFIXES + TABLE_SUFFIXES
LAYOUTS = ("canonical_jsonl", "post_table", "sillytavern")


POST_KINDS = ("ic", "narrator")  # a character's post | the source program's narrator or system message


class DumpReadError(RuntimeError):
    """The dump as a whole cannot be read."""


class EmptyThread(ValueError):
    """A well-formed thread with no posts: rejected as `no_posts`, not `invalid_thread`."""


@dataclass
class DumpContents:
    """What one dump yielded.

    `lines` counts the dump's records, each of which ended as exactly one thread or one reject, so
    `len(threads) + len(rejects) == lines` holds for every layout (the pipeline checks it). A record
    is a non-blank line of a canonical JSONL dump; a thread group of a post table; a chat file of a
    SillyTavern export, or a card or group file of it that could not be used.
    """

    dump: str
    lines: int = 0  # records read (see above)
    threads: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    layout: str = "canonical_jsonl"  # one of LAYOUTS
    rows: int = 0  # physical records behind them: JSONL lines, table rows, chat message lines
    ooc_rows: int = 0  # post-table rows of thread_type OOC, left out of the roleplay posts
    ooc_rows_by_thread: dict[str, int] = field(default_factory=dict)  # the same, per thread_id
    system_messages: int = 0  # SillyTavern `is_system` messages, which are not roleplay turns


def dump_name(path: Path) -> str:
    """The partition key of a dump: its file or folder name."""
    return path.name


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name == "__pycache__"


def find_dumps(inbox: Path, on_refused: Callable[[Path, str], None] | None = None) -> list[Path]:
    """Every dump in the inbox, by name: files of a known kind, and folders (one SillyTavern export each).

    Files of other kinds (notes, READMEs) are not dumps and are left alone; hidden entries are
    editor or OS litter. A folder that turns out not to be an export fails when it is read, rather
    than being skipped without a word. An entry that is a symbolic link leading outside the inbox, or
    whose name is not a safe partition key (`inbox.validate_dump_name`: a control character), or a folder
    with such a link anywhere inside it, is not a dump either: it is left out and, with `on_refused`,
    reported as (path, reason). Reading checks the same again (`inbox.resolve_dump`, `dump_digest`).
    """
    from gcrp_assets.lib.inbox import InboxError, check_inside, inbox_root, outside_link, validate_dump_name

    if not inbox.is_dir():
        raise DumpReadError(f"{inbox}: inbox folder does not exist")
    root = inbox_root(inbox)
    found = []
    for path in inbox.iterdir():
        if _is_hidden(path) or not (path.is_dir() or (path.is_file() and path.name.lower().endswith(DUMP_SUFFIXES))):
            continue
        try:
            validate_dump_name(path.name)
            if path.is_symlink() and outside_link(path, root):
                raise InboxError(f"dump {path.name!r} is a symbolic link to a place outside the inbox; refused")
            if path.is_dir():
                check_inside(path, root)
        except InboxError as exc:
            if on_refused is not None:
                on_refused(path, str(exc))
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.name)


def dump_digest(path: Path, inbox: Path | None = None) -> str:
    """The dump's content fingerprint: sha256 of the file, or of every file in the folder.

    A folder is hashed over its files' relative names and contents in sorted order, so renaming,
    adding or editing any file inside an export changes the fingerprint. For a file it equals the
    plain sha256 of its bytes, so fingerprints taken before importers existed stay valid.

    Nothing outside `inbox` (default: the folder the dump sits in) is read: a dump that is, or a folder
    that holds, a symbolic link resolving outside it raises `DumpReadError` naming it.
    """
    from gcrp_assets.lib.inbox import InboxError, inbox_root, outside_link

    try:
        root = inbox_root(inbox if inbox is not None else path.absolute().parent)
        if outside_link(path, root):
            raise InboxError(f"dump {path.name!r} is a symbolic link to a place outside the inbox; refused")
        if path.is_dir():
            return sha256_tree(path, inside=root)
        return sha256_file(path)
    except (InboxError, ValueError) as exc:
        raise DumpReadError(f"{path.name}: {exc}") from exc
    except OSError as exc:
        raise DumpReadError(f"{path.name}: cannot read dump: {exc.strerror or type(exc).__name__}") from exc


def _as_text(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        # JSON may carry lone surrogate escapes ("\ud800"), which no UTF-8 writer accepts: mark them as U+FFFD.
        return str(value).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    raise ValueError(f"{where} must be a string, got {type(value).__name__}")


def _validate_thread(obj: Any) -> dict:
    """The canonical record with every field typed, or ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"a thread must be a JSON object, got {type(obj).__name__}")
    thread_id = _as_text(obj.get("thread_id"), "thread_id")
    if not thread_id:
        raise ValueError("missing required field 'thread_id'")
    if "posts" not in obj:
        raise ValueError("missing required field 'posts'")
    posts = obj["posts"]
    if not isinstance(posts, list):
        raise ValueError("'posts' must be a list")
    characters = obj.get("characters") or []
    if not isinstance(characters, list):
        raise ValueError("'characters' must be a list")
    tags = obj.get("tags") or []
    if not isinstance(tags, list):
        raise ValueError("'tags' must be a list")
    clean_characters = []
    for i, character in enumerate(characters):
        if not isinstance(character, dict) or not _as_text(character.get("name"), f"characters[{i}].name"):
            raise ValueError(f"characters[{i}] needs a 'name'")
        aliases = character.get("aliases") or []
        if not isinstance(aliases, list):
            raise ValueError(f"characters[{i}].aliases must be a list")
        clean_characters.append({
            "name": _as_text(character["name"], f"characters[{i}].name").strip(),
            "player": _as_text(character.get("player"), f"characters[{i}].player"),
            "sheet": _as_text(character.get("sheet"), f"characters[{i}].sheet"),
            "aliases": [_as_text(a, f"characters[{i}].aliases[{j}]") for j, a in enumerate(aliases)],
        })
    clean_posts = []
    for i, post in enumerate(posts):
        if not isinstance(post, dict):
            raise ValueError(f"posts[{i}] must be an object")
        for required in ("author", "text"):
            if post.get(required) is None:
                raise ValueError(f"posts[{i}] missing required field '{required}'")
        character = _as_text(post.get("character"), f"posts[{i}].character")
        kind = _as_text(post.get("kind"), f"posts[{i}].kind") or "ic"
        if kind not in POST_KINDS:
            raise ValueError(f"posts[{i}].kind must be one of {POST_KINDS}")
        clean_posts.append({
            "post_id": _as_text(post.get("post_id"), f"posts[{i}].post_id") or str(i + 1),
            "author": _as_text(post["author"], f"posts[{i}].author"),
            "character": character.strip() if character else None,
            "text": _as_text(post["text"], f"posts[{i}].text"),
            "posted_at": _as_text(post.get("posted_at"), f"posts[{i}].posted_at"),
            "kind": kind,
        })
    if not clean_posts:
        raise EmptyThread("thread has no posts ('posts' is empty)")
    human = _as_text(obj.get("human"), "human")
    return {
        "thread_id": thread_id,
        "title": _as_text(obj.get("title"), "title"),
        "forum": _as_text(obj.get("forum"), "forum"),
        "url": _as_text(obj.get("url"), "url"),
        "tags": [str(t) for t in tags],
        "human": human.strip() or None if human else None,
        "characters": clean_characters,
        "posts": clean_posts,
    }


def _reject(dump: str, line: int, reason: str, detail: str, record: str, thread_id: str | None = None,
            where: str | None = None, file: str | None = None) -> dict:
    """One rejects-table row. `file` is the record's file relative to the dump (default: the dump's own
    name, for a one-file dump); `where` is the location the detail starts with when `dump:line` is
    not enough to find the record (a row of a table, a file inside an export folder)."""
    return {"dump": dump, "file": file or dump, "line": line, "thread_id": thread_id, "stage": "raw_threads",
            "reason": reason, "detail": f"{where or f'{dump}:{line}'}: {detail}", "record": record}


def read_canonical_jsonl(path: Path) -> DumpContents:
    out = DumpContents(dump_name(path))
    return _collect(iter_canonical_jsonl(path, out), out)


MAX_RECORD_BYTES = 16 * 2**20  # one record (a JSONL line, a chat message line): longer is `record_too_large`
_RUN_RECORD_LIMIT: ContextVar[int | None] = ContextVar("max_record_bytes", default=None)


def record_limit() -> int:
    """max_record_bytes in force: the run's (`limit_records`), else MAX_RECORD_BYTES."""
    return _RUN_RECORD_LIMIT.get() or MAX_RECORD_BYTES


@contextmanager
def limit_records(max_record_bytes: int | None):
    """Every reader inside the block (all layouts) enforces `max_record_bytes` (None: the default)."""
    token = _RUN_RECORD_LIMIT.set(max_record_bytes)
    try:
        yield
    finally:
        _RUN_RECORD_LIMIT.reset(token)

# Decompressed bytes allowed per compressed byte of a `.gz` dump, past the first MAX_RECORD_BYTES: real text
# compresses 3-10x; a compression bomb 1000x. Past it the dump stops being read (`decompression_limit`).
MAX_EXPANSION_RATIO = 200
# The readers take both limits as arguments; None means the module value *at call time*, so a caller (or a
# test) can lower them for a whole run by setting `dumps.MAX_RECORD_BYTES`.


class RecordLine(NamedTuple):
    """One physical line of a dump file, read with bounded memory.

    `data` is the line without its `\n` (a `\r` stays; with `keep_newline`, the `\n` too), or None when it
    was not held: `error` then says why (`record_too_large`: the line is `size` bytes, more than the limit,
    and was skipped without being held whole; `truncated`: the compressed stream broke inside this line,
    nothing after it can be read; `decompression_limit`: the stream expanded past MAX_EXPANSION_RATIO).
    After `truncated` or `decompression_limit` no more lines follow. `detail` never quotes the line.

    Of a line too large to hold, `head` is its first `head_bytes` (for a reader that can still use the
    start of the record, as the CSV reader does to find the row's thread) and `counted` how often the
    `count` byte occurs in it (the CSV reader's quote parity). `newline`: whether the line ended with
    `\n` (only the file's last line may not).
    """

    number: int
    data: bytes | None
    size: int = 0
    error: str | None = None
    detail: str = ""
    head: bytes = b""
    counted: int = 0
    newline: bool = False


_SKIP_BLOCK = 1 << 20


def _stream_error(exc: BaseException) -> str:
    """Why a compressed stream broke, in words that never quote its bytes (BadGzipFile shows some)."""
    if isinstance(exc, EOFError):
        return "the compressed stream ends before its end marker (the file is truncated)"
    if isinstance(exc, zlib.error):
        return "the compressed data is corrupt"
    if isinstance(exc, gzip.BadGzipFile):
        return "what follows is not gzip data"
    return f"read error: {getattr(exc, 'strerror', None) or type(exc).__name__}"


class LineSource:
    """The lines of one dump file (gzip too, by magic bytes), read with bounded memory: `lines()` yields a
    `RecordLine` per physical line, each held only if it fits `max_record_bytes`.

    Memory: at most `max_record_bytes` + 1 bytes of one line (a longer line is skipped 1 MiB at a time),
    plus one 1 MiB block read ahead by `skip_quoted`. A gzip stream may expand to `max_record_bytes` +
    `max_expansion_ratio` x its compressed size; past that it stops with `decompression_limit`. Raises
    `DumpReadError` only when the file cannot be opened at all; a stream that breaks part-way (truncated
    or corrupt `.gz`) ends with one `truncated` RecordLine numbered as the line it broke in, so every line
    before it is kept. After such a stop no more lines follow.
    """

    def __init__(self, path: Path, max_record_bytes: int | None = None, max_expansion_ratio: float | None = None,
                 *, head_bytes: int = 0, count: bytes | None = None, keep_newline: bool = False):
        self.limit = max_record_bytes or record_limit()
        self.ratio = max_expansion_ratio or MAX_EXPANSION_RATIO
        self.head_bytes, self.count, self.keep_newline = head_bytes, count, keep_newline
        try:
            with open(path, "rb") as raw:
                packed = raw.read(2) == _GZIP_MAGIC
            self.compressed_size = path.stat().st_size
            self.handle = gzip.open(path, "rb") if packed else open(path, "rb")
        except OSError as exc:
            raise DumpReadError(f"{path.name}: cannot read dump: {exc.strerror or type(exc).__name__}") from exc
        self.budget = self.limit + self.ratio * max(self.compressed_size, 1) if packed else None
        self.number = 0  # physical lines begun so far
        self.total = 0  # bytes read so far (decompressed)
        self.stopped: RecordLine | None = None
        self._pending, self._at = b"", 0  # read ahead by `skip_quoted`, handed out first

    def close(self) -> None:
        self.handle.close()

    def _readline(self, size: int) -> bytes:
        if self._at < len(self._pending):
            end = self._pending.find(b"\n", self._at, self._at + size)
            stop = end + 1 if end >= 0 else min(len(self._pending), self._at + size)
            piece = self._pending[self._at:stop]
            self._at = stop
            if end >= 0 or len(piece) == size:
                return piece
            return piece + self.handle.readline(size - len(piece))
        return self.handle.readline(size)

    def _block(self) -> bytes:
        if self._at < len(self._pending):
            piece = self._pending[self._at:]
        else:
            piece = self.handle.read(_SKIP_BLOCK)
        self._pending, self._at = b"", 0
        return piece

    def _over_budget(self, extra: int = 0) -> bool:
        return self.budget is not None and self.total + extra > self.budget

    def _limit_stop(self, number: int) -> RecordLine:
        self.stopped = RecordLine(number, None, 0, "decompression_limit", (
            f"stopped at line {number}: {self.total:,} bytes decompressed from {self.compressed_size:,} compressed "
            f"(more than {self.ratio:g}x); the rest is not read"))
        return self.stopped

    def _break_stop(self, number: int, exc: BaseException) -> RecordLine:
        self.stopped = RecordLine(number, None, 0, "truncated", (
            f"the file breaks at line {number}: {_stream_error(exc)}; the lines before it are kept, nothing after "
            "it can be read"))
        return self.stopped

    def lines(self) -> Iterator[RecordLine]:
        limit, count, budget, keep = self.limit, self.count, self.budget, self.keep_newline
        readline = self.handle.readline
        while True:
            if self.stopped is not None:  # `skip_quoted` ran into the end of what can be read
                yield self.stopped
                return
            self.number += 1
            number = self.number
            try:
                chunk = self._readline(limit + 1) if self._at < len(self._pending) else readline(limit + 1)
                if not chunk:
                    self.number -= 1
                    return
                size = len(chunk)
                newline = chunk[-1] == 10  # b"\n"
                if size <= limit or newline:
                    self.total += size
                    line = RecordLine(number, chunk if keep or not newline else chunk[:-1], size, None, "", b"", 0,
                                      newline)
                    del chunk
                else:
                    head = chunk[:self.head_bytes]
                    counted = chunk.count(count) if count else 0
                    del chunk  # never hold the whole line: skip to its end a block at a time
                    cut = False
                    while True:
                        if self._over_budget(size):
                            cut = True
                            break
                        block = self._readline(_SKIP_BLOCK)
                        size += len(block)
                        if count:
                            counted += block.count(count)
                        if not block or block.endswith(b"\n"):
                            newline = block.endswith(b"\n")
                            break
                    self.total += size
                    line = RecordLine(number, None, size, "record_too_large",
                                      f"line {number} is {size:,} bytes{' or more' if cut else ''}, more than "
                                      f"max_record_bytes ({limit:,}); skipped without being read whole",
                                      head, counted, newline)
            except (OSError, EOFError, zlib.error) as exc:
                yield self._break_stop(number, exc)
                return
            yield line
            if budget is not None and self.total > budget and self.stopped is None:
                yield self._limit_stop(number + 1)
                return

    def skip_quoted(self) -> tuple[int, bool]:
        """Skip the rest of a CSV row that is inside a quoted field (the default dialect: `"` quotes, `""`
        inside quotes is a quote), without holding it: up to and including the newline that ends the row
        (the first one outside quotes). Returns (bytes skipped, whether it ended with a newline, not the end
        of the file). Line numbers advance by the newlines skipped. A break or the expansion guard sets
        `stopped` (the next `lines()` step yields it)."""
        inside, size = True, 0
        while True:
            if self._over_budget(size):
                self.total += size
                self._limit_stop(self.number + 1)
                return size, False
            try:
                block = self._block()
            except (OSError, EOFError, zlib.error) as exc:
                self.total += size
                self._break_stop(self.number + 1, exc)
                return size, False
            if not block:
                self.total += size
                return size, False
            at = 0
            while True:
                if inside:
                    quote = block.find(b'"', at)
                    if quote < 0:
                        break
                    inside, at = False, quote + 1
                    continue
                quote, newline = block.find(b'"', at), block.find(b"\n", at)
                if newline >= 0 and (quote < 0 or newline < quote):
                    self.number += block.count(b"\n", 0, newline + 1)
                    size += newline + 1
                    self.total += size
                    self._pending, self._at = block, newline + 1
                    return size, True
                if quote < 0:
                    break
                inside, at = True, quote + 1
            self.number += block.count(b"\n")
            size += len(block)


def iter_record_lines(path: Path, max_record_bytes: int | None = None, max_expansion_ratio: float | None = None,
                      *, head_bytes: int = 0, count: bytes | None = None) -> Iterator[RecordLine]:
    """The file's lines (gzip too, by magic bytes), streaming, each held only if it fits `max_record_bytes`
    (default MAX_RECORD_BYTES); see `LineSource` for memory, the expansion guard and where a stream breaks.
    `head_bytes` and `count` fill `RecordLine.head` and `.counted`."""
    source = LineSource(path, max_record_bytes, max_expansion_ratio, head_bytes=head_bytes, count=count)
    try:
        yield from source.lines()
    finally:
        source.close()


class JsonLineError(ValueError):
    """A line that is not a JSON value; the message says why without quoting the line."""


def parse_json_line(line: str | bytes) -> Any:
    """`json.loads`, with every way it can fail as `JsonLineError`: malformed JSON, nesting deeper than the
    interpreter's recursion limit (RecursionError), an integer longer than Python's digit limit (a
    ValueError from int parsing), bytes that are not UTF-8/16/32."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise JsonLineError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise JsonLineError("invalid JSON: nested too deeply to read") from None
    except UnicodeDecodeError as exc:
        raise JsonLineError(f"not UTF-8: {exc.reason} at byte {exc.start + 1}") from None
    except ValueError as exc:
        if "digits" in str(exc):
            raise JsonLineError("invalid JSON: a number has more digits than Python reads "
                                f"({sys.get_int_max_str_digits()})") from None
        raise JsonLineError(f"invalid JSON ({type(exc).__name__})") from None


_CONTAINER_BYTES = 16  # a line may open at most one JSON object or array per this many bytes


def _check_containers(line: str) -> None:
    """`JsonLineError` for a line that would expand too much when parsed: every `{}` or `[]` becomes a Python
    dict or list of 56-64 bytes, so a 16 MiB line of `[{},{},...]` would take ~400 MB. A thread's JSON opens
    one object per post or character, each tens of bytes at least; only long lines are checked."""
    if len(line) > 1 << 16:
        opened = line.count("{") + line.count("[")
        if opened * _CONTAINER_BYTES > len(line):
            raise JsonLineError(f"invalid thread JSON: {opened:,} objects and arrays on a line of {len(line):,} "
                                f"characters (at most one per {_CONTAINER_BYTES})")


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
            yield "reject", _reject(dump, number, record_line.error, record_line.detail, "")
            continue
        if not raw_line.strip():
            continue
        out.lines += 1
        out.rows += 1
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield "reject", _reject(dump, number, "not_utf8", f"not UTF-8: {exc.reason} at byte {exc.start + 1}",
                                    raw_line.decode("utf-8", "replace"))
            first_error = first_error or f"line {number}: not UTF-8"
            continue
        del raw_line
        try:
            _check_containers(line)
            obj = parse_json_line(line)
        except JsonLineError as exc:
            yield "reject", _reject(dump, number, "invalid_json", str(exc), line)
            first_error = first_error or f"line {number}: {exc}"
            continue
        parsed_any = True
        try:
            thread = _validate_thread(obj)
        except EmptyThread as exc:
            yield "reject", _reject(dump, number, "no_posts", str(exc), line, _thread_id_of(obj))
            continue
        except ValueError as exc:
            yield "reject", _reject(dump, number, "invalid_thread", str(exc), line, _thread_id_of(obj))
            continue
        except (TypeError, RecursionError) as exc:  # a value too deeply nested to turn into text, ...
            why = "a value is nested too deeply" if isinstance(exc, RecursionError) else type(exc).__name__
            yield "reject", _reject(dump, number, "invalid_thread", f"not a valid thread ({why})", line,
                                    _thread_id_of(obj))
            continue
        thread_id = thread["thread_id"]
        if thread_id in seen:
            yield "reject", _reject(dump, number, "duplicate_thread_id",
                                    f"thread_id already used at line {seen[thread_id]} of this dump", line, thread_id)
            continue
        seen[thread_id] = number
        yield "thread", {"dump": dump, "file": dump, "line": number, **thread}

    if not parsed_any and first_error:
        raise DumpReadError(f"{path.name}: not a canonical thread JSONL dump ({first_error})")


def _collect(records: Iterator[tuple[str, dict]], out: DumpContents) -> DumpContents:
    """A streaming reader's records gathered into `out`, the DumpContents that holds its counters."""
    for kind, record in records:
        (out.threads if kind == "thread" else out.rejects).append(record)
    return out


_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_SNIFF_LINES = 20  # blank lines tolerated before the first record when sniffing


def _first_line(path: Path, max_bytes: int | None = None) -> bytes | None:
    """The first non-blank line of a (possibly gzipped) text file, or None if there is none, it cannot be
    read (the reader proper then reports why, with the line), or it is longer than `max_bytes` (default
    MAX_RECORD_BYTES; never read whole: the reader proper rejects it as `record_too_large`)."""
    limit = max_bytes or record_limit()
    try:
        with open(path, "rb") as raw:
            packed = raw.read(2) == _GZIP_MAGIC
        opener = gzip.open if packed else open
        with opener(path, "rb") as handle:
            for _ in range(_SNIFF_LINES):
                line = handle.readline(limit + 1)
                if not line:
                    return None
                if len(line) > limit and not line.endswith(b"\n"):
                    return None
                if line.strip():
                    return line
    except (OSError, EOFError, zlib.error):
        return None
    return None


def detect_layout(path: Path) -> str:
    """Which importer reads `path`: "canonical_jsonl", "post_table" or "sillytavern".

    Content decides, the name only breaks ties: a SillyTavern chat saved as `.jsonl` must not be
    read as canonical threads (every line would be rejected), and a table with an unexpected
    extension is still a table. Raises `DumpReadError` when nothing fits. Reads at most one line of
    MAX_RECORD_BYTES (`_first_line`); a first line too long to sniff leaves the decision to the name.
    """
    # Importers build on the primitives above, so they are imported when used (no import cycle).
    from gcrp_assets.lib.importers import post_tables, sillytavern

    if path.is_dir():
        if sillytavern.looks_like_export(path):
            return "sillytavern"
        raise DumpReadError(f"{path.name}: folder is not a SillyTavern export "
                            "(no chat .jsonl, groups/*.json or character cards in it)")
    name = path.name.lower()
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise DumpReadError(f"{path.name}: cannot read dump: {exc.strerror or type(exc).__name__}") from exc
    if magic == _PARQUET_MAGIC or name.endswith(".parquet"):
        return "post_table"
    first = _first_line(path)
    if first is not None and first.lstrip().startswith(b"{"):
        try:
            record = parse_json_line(first)
        except JsonLineError:
            record = None
        if isinstance(record, dict):
            if sillytavern.is_chat_record(record) and not ("thread_id" in record or "posts" in record):
                return "sillytavern"
            return "canonical_jsonl"
    if first is not None and post_tables.header_delimiter(first.decode("utf-8-sig", "replace")):
        return "post_table"
    if name.endswith(CANONICAL_SUFFIXES):
        return "canonical_jsonl"  # its reader reports what is wrong, with the line
    if name.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
        return "post_table"  # its reader reports the missing columns
    raise DumpReadError(f"{path.name}: unrecognised dump layout (expected canonical thread JSONL, a CSV/TSV/Parquet "
                        "post table, or a SillyTavern export)")


class DumpReader:
    """One dump read as a stream: iterate it for ("thread", row) and ("reject", row) in dump order, each
    row as `DumpContents.threads` / `.rejects` hold them; `stats` (a DumpContents whose lists stay empty)
    has the counters (`lines`, `rows`, `ooc_rows`, `system_messages`, `layout`), final once iterated.

    Memory per layout: canonical JSONL, one line at a time (plus the thread_ids seen); post tables, two
    passes over the rows, holding only the rows of threads not yet complete (one thread at a time when
    a thread's rows are contiguous, as in forum dumps; see `importers.post_tables`); SillyTavern, one
    chat at a time (cards and groups, which every chat may refer to, are held).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.layout = detect_layout(self.path)
        self.stats = DumpContents(dump_name(self.path), layout=self.layout)

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        from gcrp_assets.lib.importers import post_tables, sillytavern

        if self.layout == "post_table":
            return post_tables.iter_post_table(self.path, self.stats)
        if self.layout == "sillytavern":
            return sillytavern.iter_sillytavern(self.path, self.stats)
        return iter_canonical_jsonl(self.path, self.stats)


def iter_dump(path: Path) -> DumpReader:
    """The streaming reader of one dump, whatever its layout (see `DumpReader`)."""
    return DumpReader(path)


def read_dump(path: Path) -> DumpContents:
    """The threads and rejects of one dump, whatever its layout, in memory (`iter_dump` streams)."""
    reader = iter_dump(path)
    return _collect(iter(reader), reader.stats)
