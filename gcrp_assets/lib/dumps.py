"""Reading dumps from the inbox into canonical thread records (contract: shared design `raw-threads.md`).

`read_dump` returns the good threads and one reject per bad line, each naming the file and the
line. A dump that cannot be read at all raises `DumpReadError`, naming the file (and the line).
Importers for post tables and SillyTavern exports plug in beside `read_canonical_jsonl`.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANONICAL_SUFFIXES = (".jsonl", ".jsonl.gz")


class DumpReadError(RuntimeError):
    """The dump as a whole cannot be read."""


@dataclass
class DumpContents:
    dump: str
    lines: int = 0  # non-blank lines (records) read
    threads: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)


def dump_name(path: Path) -> str:
    """The partition key of a dump: its file or folder name."""
    return path.name


def find_dumps(inbox: Path) -> list[Path]:
    if not inbox.is_dir():
        raise DumpReadError(f"{inbox}: inbox folder does not exist")
    return sorted(p for p in inbox.iterdir() if p.is_file() and p.name.endswith(CANONICAL_SUFFIXES))


def _as_text(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
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


def _reject(dump: str, line: int, reason: str, detail: str, record: str, thread_id: str | None = None) -> dict:
    return {"dump": dump, "line": line, "thread_id": thread_id, "stage": "raw_threads",
            "reason": reason, "detail": f"{dump}:{line}: {detail}", "record": record}


def read_canonical_jsonl(path: Path) -> DumpContents:
    dump = dump_name(path)
    out = DumpContents(dump)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DumpReadError(f"{path}: cannot read dump: {exc}") from exc

    seen: set[str] = set()
    parsed_any = False
    first_error: str | None = None
    for number, raw_line in enumerate(data.split(b"\n"), start=1):
        if not raw_line.strip():
            continue
        out.lines += 1
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.rejects.append(_reject(dump, number, "not_utf8", str(exc), raw_line.decode("utf-8", "replace")))
            first_error = first_error or f"line {number}: not UTF-8"
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            out.rejects.append(_reject(dump, number, "invalid_json", f"invalid JSON: {exc.msg} at column {exc.colno}", line))
            first_error = first_error or f"line {number}: invalid JSON ({exc.msg})"
            continue
        parsed_any = True
        try:
            thread = _validate_thread(obj)
        except ValueError as exc:
            thread_id = obj.get("thread_id") if isinstance(obj, dict) else None
            out.rejects.append(_reject(dump, number, "invalid_thread", str(exc), line,
                                       str(thread_id) if thread_id is not None else None))
            continue
        if thread["thread_id"] in seen:
            out.rejects.append(_reject(dump, number, "duplicate_thread_id",
                                       f"thread_id {thread['thread_id']!r} already used earlier in this dump",
                                       line, thread["thread_id"]))
            continue
        seen.add(thread["thread_id"])
        out.threads.append({"dump": dump, "line": number, **thread})

    if not parsed_any and first_error:
        raise DumpReadError(f"{path}: not a canonical thread JSONL dump ({first_error})")
    return out


def read_dump(path: Path) -> DumpContents:
    if path.name.endswith(CANONICAL_SUFFIXES):
        return read_canonical_jsonl(path)
    raise DumpReadError(f"{path}: unsupported dump format (expected one of {', '.join(CANONICAL_SUFFIXES)})")
