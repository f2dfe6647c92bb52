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
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from gcrp_assets.lib.hashing import sha256_file, sha256_tree

CANONICAL_SUFFIXES = (".jsonl", ".jsonl.gz")
TABLE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet")
DUMP_SUFFIXES = CANONICAL_SUFFIXES + TABLE_SUFFIXES
LAYOUTS = ("canonical_jsonl", "post_table", "sillytavern")


class DumpReadError(RuntimeError):
    """The dump as a whole cannot be read."""


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


def find_dumps(inbox: Path) -> list[Path]:
    """Every dump in the inbox, by name: files of a known kind, and folders (one SillyTavern export each).

    Files of other kinds (notes, READMEs) are not dumps and are left alone; hidden entries are
    editor or OS litter. A folder that turns out not to be an export fails when it is read, rather
    than being skipped without a word.
    """
    if not inbox.is_dir():
        raise DumpReadError(f"{inbox}: inbox folder does not exist")
    return sorted((p for p in inbox.iterdir() if not _is_hidden(p) and (
        p.is_dir() or (p.is_file() and p.name.lower().endswith(DUMP_SUFFIXES)))), key=lambda p: p.name)


def dump_digest(path: Path) -> str:
    """The dump's content fingerprint: sha256 of the file, or of every file in the folder.

    A folder is hashed over its files' relative names and contents in sorted order, so renaming,
    adding or editing any file inside an export changes the fingerprint. For a file it equals the
    plain sha256 of its bytes, so fingerprints taken before importers existed stay valid.
    """
    if path.is_dir():
        return sha256_tree(path)
    try:
        return sha256_file(path)
    except OSError as exc:
        raise DumpReadError(f"{path}: cannot read dump: {exc}") from exc


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
        clean_characters.append({
            "name": _as_text(character["name"], f"characters[{i}].name").strip(),
            "player": _as_text(character.get("player"), f"characters[{i}].player"),
            "sheet": _as_text(character.get("sheet"), f"characters[{i}].sheet"),
        })
    clean_posts = []
    for i, post in enumerate(posts):
        if not isinstance(post, dict):
            raise ValueError(f"posts[{i}] must be an object")
        for required in ("author", "text"):
            if post.get(required) is None:
                raise ValueError(f"posts[{i}] missing required field '{required}'")
        character = _as_text(post.get("character"), f"posts[{i}].character")
        clean_posts.append({
            "post_id": _as_text(post.get("post_id"), f"posts[{i}].post_id") or str(i + 1),
            "author": _as_text(post["author"], f"posts[{i}].author"),
            "character": character.strip() if character else None,
            "text": _as_text(post["text"], f"posts[{i}].text"),
            "posted_at": _as_text(post.get("posted_at"), f"posts[{i}].posted_at"),
        })
    return {
        "thread_id": thread_id,
        "title": _as_text(obj.get("title"), "title"),
        "forum": _as_text(obj.get("forum"), "forum"),
        "url": _as_text(obj.get("url"), "url"),
        "tags": [str(t) for t in tags],
        "characters": clean_characters,
        "posts": clean_posts,
    }


def _reject(dump: str, line: int, reason: str, detail: str, record: str, thread_id: str | None = None,
            where: str | None = None) -> dict:
    """One rejects-table row. `where` is the location the detail starts with when `dump:line` is
    not enough to find the record (a row of a table, a file inside an export folder)."""
    return {"dump": dump, "line": line, "thread_id": thread_id, "stage": "raw_threads",
            "reason": reason, "detail": f"{where or f'{dump}:{line}'}: {detail}", "record": record}


def read_canonical_jsonl(path: Path) -> DumpContents:
    out = DumpContents(dump_name(path))
    return _collect(iter_canonical_jsonl(path, out), out)


def _iter_lines(path: Path) -> Iterator[bytes]:
    """The file's lines without their `\\n` (a `\\r` stays), read as a stream (gzip too)."""
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as handle:
            for line in handle:
                yield line[:-1] if line.endswith(b"\n") else line
    except (OSError, EOFError, zlib.error) as exc:
        raise DumpReadError(f"{path}: cannot read dump: {exc}") from exc


def iter_canonical_jsonl(path: Path, out: DumpContents) -> Iterator[tuple[str, dict]]:
    """("thread", row) / ("reject", row) per non-blank line, in file order, streaming; counters on `out`.

    Memory: one line at a time, plus the set of thread_ids seen (for `duplicate_thread_id`). If no
    line parses at all, `DumpReadError` is raised after the last line (the caller discards what it
    wrote)."""
    dump = out.dump
    seen: set[str] = set()
    parsed_any = False
    first_error: str | None = None
    for number, raw_line in enumerate(_iter_lines(path), start=1):
        if not raw_line.strip():
            continue
        out.lines += 1
        out.rows += 1
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield "reject", _reject(dump, number, "not_utf8", str(exc), raw_line.decode("utf-8", "replace"))
            first_error = first_error or f"line {number}: not UTF-8"
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield "reject", _reject(dump, number, "invalid_json", f"invalid JSON: {exc.msg} at column {exc.colno}",
                                    line)
            first_error = first_error or f"line {number}: invalid JSON ({exc.msg})"
            continue
        parsed_any = True
        try:
            thread = _validate_thread(obj)
        except ValueError as exc:
            thread_id = obj.get("thread_id") if isinstance(obj, dict) else None
            yield "reject", _reject(dump, number, "invalid_thread", str(exc), line,
                                    str(thread_id) if thread_id is not None else None)
            continue
        if thread["thread_id"] in seen:
            yield "reject", _reject(dump, number, "duplicate_thread_id",
                                    f"thread_id {thread['thread_id']!r} already used earlier in this dump",
                                    line, thread["thread_id"])
            continue
        seen.add(thread["thread_id"])
        yield "thread", {"dump": dump, "line": number, **thread}

    if not parsed_any and first_error:
        raise DumpReadError(f"{path}: not a canonical thread JSONL dump ({first_error})")


def _collect(records: Iterator[tuple[str, dict]], out: DumpContents) -> DumpContents:
    """A streaming reader's records gathered into `out`, the DumpContents that holds its counters."""
    for kind, record in records:
        (out.threads if kind == "thread" else out.rejects).append(record)
    return out


_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_SNIFF_LINES = 20  # blank lines tolerated before the first record when sniffing


def _first_line(path: Path) -> bytes | None:
    """The first non-blank line of a (possibly gzipped) text file, or None if there is none or it
    cannot be read (the reader proper then reports why, with the line)."""
    try:
        with open(path, "rb") as raw:
            packed = raw.read(2) == _GZIP_MAGIC
        opener = gzip.open if packed else open
        with opener(path, "rb") as handle:
            for _ in range(_SNIFF_LINES):
                line = handle.readline()
                if not line:
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
    extension is still a table. Raises `DumpReadError` when nothing fits.
    """
    # Importers build on the primitives above, so they are imported when used (no import cycle).
    from gcrp_assets.lib.importers import post_tables, sillytavern

    if path.is_dir():
        if sillytavern.looks_like_export(path):
            return "sillytavern"
        raise DumpReadError(f"{path}: folder is not a SillyTavern export "
                            "(no chat .jsonl, groups/*.json or character cards in it)")
    name = path.name.lower()
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise DumpReadError(f"{path}: cannot read dump: {exc}") from exc
    if magic == _PARQUET_MAGIC or name.endswith(".parquet"):
        return "post_table"
    first = _first_line(path)
    if first is not None and first.lstrip().startswith(b"{"):
        try:
            record = json.loads(first)
        except (UnicodeDecodeError, json.JSONDecodeError):
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
    raise DumpReadError(f"{path}: unrecognised dump layout (expected canonical thread JSONL, a CSV/TSV/Parquet "
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
