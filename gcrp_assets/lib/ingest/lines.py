"""Reading dump files line by line with bounded memory, whatever their size or compression.

`iter_record_lines` yields each line of a file (gzip by magic bytes) as a `RecordLine`, holding it only
when it fits `max_record_bytes` (`record_limit()`: the run's, set by `limit_records`, else
`MAX_RECORD_BYTES`); a longer line is skipped unheld (`record_too_large`), a broken `.gz` ends with one
`truncated` line, a stream expanding past `MAX_EXPANSION_RATIO` with `decompression_limit`.
`parse_json_line` turns every way `json.loads` can fail into `JsonLineError`; `check_containers` refuses
lines that would expand too much once parsed; `first_line` sniffs a file's first record.
"""

from __future__ import annotations

import gzip
from contextlib import contextmanager
from contextvars import ContextVar
import json
import sys
import zlib
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from gcrp_assets.lib.ingest.contract import DumpReadError


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


def check_containers(line: str) -> None:
    """`JsonLineError` for a line that would expand too much when parsed: every `{}` or `[]` becomes a Python
    dict or list of 56-64 bytes, so a 16 MiB line of `[{},{},...]` would take ~400 MB. A thread's JSON opens
    one object per post or character, each tens of bytes at least; only long lines are checked."""
    if len(line) > 1 << 16:
        opened = line.count("{") + line.count("[")
        if opened * _CONTAINER_BYTES > len(line):
            raise JsonLineError(f"invalid thread JSON: {opened:,} objects and arrays on a line of {len(line):,} "
                                f"characters (at most one per {_CONTAINER_BYTES})")


_GZIP_MAGIC = b"\x1f\x8b"


_SNIFF_LINES = 20  # blank lines tolerated before the first record when sniffing


def first_line(path: Path, max_bytes: int | None = None) -> bytes | None:
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
