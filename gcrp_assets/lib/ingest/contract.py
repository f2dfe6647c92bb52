"""The input contract's primitives (shared design `raw-threads.md`), shared by every importer.

`validate_thread` turns one source record into the canonical thread with every field typed (or says
what is wrong); `record_reject` makes one rejects-table row; `DumpContents` counts what a dump yielded;
`DumpReadError` is a dump that cannot be read at all. Extensions of the contract that real sources need:
a thread's `human` (the character the dump marks as the human user's), `posts[].kind` (`ic` or
`narrator`), `characters[].aliases`; records are identified by (`file`, `line`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


def _as_text(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        # JSON may carry lone surrogate escapes ("\ud800"), which no UTF-8 writer accepts: mark them as U+FFFD.
        return str(value).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    raise ValueError(f"{where} must be a string, got {type(value).__name__}")


def validate_thread(obj: Any) -> dict:
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


def record_reject(dump: str, line: int, reason: str, detail: str, record: str, thread_id: str | None = None,
            where: str | None = None, file: str | None = None) -> dict:
    """One rejects-table row. `file` is the record's file relative to the dump (default: the dump's own
    name, for a one-file dump); `where` is the location the detail starts with when `dump:line` is
    not enough to find the record (a row of a table, a file inside an export folder)."""
    return {"dump": dump, "file": file or dump, "line": line, "thread_id": thread_id, "stage": "raw_threads",
            "reason": reason, "detail": f"{where or f'{dump}:{line}'}: {detail}", "record": record}
