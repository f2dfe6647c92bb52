"""SillyTavern exports (a folder) and single SillyTavern chats (a `.jsonl` file) into canonical threads.

One chat file is one thread: thread_id = the chat file's stem (SillyTavern's chat id), title = the
name of the group that lists the chat, forum = "sillytavern". A folder may be laid out as
SillyTavern keeps its data (`group chats/`, `chats/<character>/`, `groups/`, `characters/`) or flat;
files are recognised by content wherever they are:

- `*.jsonl` / `*.jsonl.gz`: chats, one message per line. A solo chat's first line is a header
  (`user_name`, `character_name`, `chat_metadata`, no `mes`) and is not a message; group chats
  usually have none.
- `*.json` with a `members` list: a group (`groups/<id>.json`); `members` are the member cards'
  file names and `chats`/`chat_id` the ids of its chats.
- `*.png` with a `chara`/`ccv3` chunk, and card-shaped `*.json`: member cards (`cards`).

Turns: only the chosen swipe (`mes`) is the message; the alternatives in `swipes` were rejected by
the user and are not part of the conversation. `is_system` messages are hidden notes, not roleplay;
they are skipped and counted (`DumpContents.system_messages`). `is_user` messages are the user's
persona: character = its `name`, author = the fixed pseudonymous handle `st-user`, so the real
person behind it is never named. Other messages: character = `name`, author = the member card's
file (`original_avatar`, SillyTavern's stable speaker id; display names can collide), else the
name. Each member card becomes a character with that same file as `player` and the card's
description/personality/scenario as its sheet, macros filled in.

Rejects: a malformed message line rejects its chat, naming the file and line (a chat with a
missing turn would teach replies to a message that is not there). An unreadable card or group is
recorded (`invalid_card`, `invalid_group`) and its chats are kept without that sheet or title.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from gcrp_assets.lib.dumps import DumpContents, _first_line, _reject, _validate_thread, dump_name
from gcrp_assets.lib.importers.cards import (CARD_CHUNKS, Card, CardError, card_from_json, card_from_png,
                                             card_sheet, looks_like_card, png_text_chunks)

USER_HANDLE = "st-user"
FORUM = "sillytavern"
CHAT_SUFFIXES = (".jsonl", ".jsonl.gz")
_HEADER_KEYS = ("user_name", "character_name", "chat_metadata")


def is_chat_header(obj: Any) -> bool:
    """A solo chat's first line: chat metadata, not a message (the reference's importer rule)."""
    return isinstance(obj, dict) and "mes" not in obj and any(key in obj for key in _HEADER_KEYS)


def is_chat_record(obj: Any) -> bool:
    """Whether a JSONL record is a SillyTavern chat line (a message or a solo-chat header)."""
    return isinstance(obj, dict) and ("mes" in obj or "is_user" in obj or is_chat_header(obj))


def _chat_stem(path: Path) -> str:
    name = path.name
    for suffix in CHAT_SUFFIXES[::-1]:  # longest first
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_chat_file(path: Path) -> bool:
    line = _first_line(path)
    if line is None:
        return False
    try:
        return is_chat_record(json.loads(line))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _files(folder: Path) -> list[Path]:
    """Every file under the folder except hidden ones (`.DS_Store`, `.git/`), sorted by relative path."""
    return sorted((p for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: p.relative_to(folder).as_posix())


def _is_card_file(path: Path) -> bool:
    try:
        data = path.read_bytes()
        if path.suffix.lower() == ".png":
            return any(k in png_text_chunks(data) for k in CARD_CHUNKS)
        return looks_like_card(json.loads(data.decode("utf-8-sig")))
    except (OSError, CardError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def looks_like_export(folder: Path) -> bool:
    """A folder is a SillyTavern export when it holds chats, a `groups/*.json`, or character cards."""
    for path in _files(folder):
        name = path.name.lower()
        if name.endswith(CHAT_SUFFIXES) and _is_chat_file(path):
            return True
        if name.endswith(".json") and path.parent.name == "groups":
            return True
        if name.endswith((".png", ".json")) and _is_card_file(path):
            return True
    return False


# ---------------------------------------------------------------------------------------------------
# Dates

_HUMANIZED = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})\s*@\s*(\d{1,2})h\s*(\d{1,2})m\s*(\d{1,2})s(?:\s*(\d{1,3})\s*ms)?$")
_HUMAN_FORMATS = ("%B %d, %Y %I:%M%p", "%B %d, %Y %I:%M %p", "%b %d, %Y %I:%M%p", "%b %d, %Y %I:%M %p",
                  "%B %d, %Y %H:%M", "%Y-%m-%d %H:%M:%S")


def _iso(moment: datetime) -> str:
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def parse_send_date(value: Any) -> str | None:
    """`send_date` as ISO-8601 where it can be read, else the original text (never invented).

    SillyTavern has written it as epoch milliseconds, as "January 15, 2024 12:30pm", as its
    humanized "2024-1-15@12h30m45s" and as ISO. Times without a zone stay without one: they are the
    user's local time, which the file does not record.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        try:
            return _iso(datetime.fromtimestamp(float(value) / 1000, tz=timezone.utc))
        except (OverflowError, OSError, ValueError):
            return str(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return _iso(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        pass
    match = _HUMANIZED.match(text)
    if match:
        year, month, day, hour, minute, second, millis = match.groups()
        try:
            return _iso(datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                                 int(millis or 0) * 1000))
        except ValueError:
            return text
    for fmt in _HUMAN_FORMATS:
        try:
            return _iso(datetime.strptime(text, fmt))
        except ValueError:
            continue
    return text


# ---------------------------------------------------------------------------------------------------
# Reading the parts


@dataclass
class _Group:
    name: str | None
    members: list[str]
    chats: set[str]


@dataclass
class _Chat:
    path: Path
    rel: str  # path inside the dump, as rejects name it
    thread_id: str
    text: str = ""
    header: dict | None = None
    messages: list[tuple[int, dict]] = field(default_factory=list)
    system: int = 0
    rows: int = 0
    error: tuple[int, str, str] | None = None  # (line, reason, detail)


class _Cards:
    """Member cards by the name chats and groups refer to them with (the file name, else its stem)."""

    def __init__(self) -> None:
        self.by_file: dict[str, Card] = {}
        self.by_stem: dict[str, Card] = {}

    def add(self, card: Card) -> None:
        self.by_file.setdefault(card.file.casefold(), card)
        self.by_stem.setdefault(Path(card.file).stem.casefold(), card)

    def find(self, reference: str) -> Card | None:
        key = reference.casefold()
        return self.by_file.get(key) or self.by_stem.get(Path(reference).stem.casefold())


def _read_chat(path: Path, rel: str) -> _Chat:
    chat = _Chat(path, rel, _chat_stem(path))
    try:
        data = gzip.decompress(path.read_bytes()) if path.name.lower().endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        chat.error = (1, "unreadable_file", f"cannot read chat: {exc}")
        return chat
    chat.text = data.decode("utf-8", "replace")
    first = True
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            chat.error = (number, "not_utf8", f"line {number} is not UTF-8: {exc.reason}")
            return chat
        except json.JSONDecodeError as exc:
            chat.error = (number, "invalid_json", f"invalid JSON: {exc.msg} at column {exc.colno}")
            return chat
        if first and is_chat_header(obj):
            chat.header, first = obj, False
            continue
        first = False
        chat.rows += 1
        problem = _message_problem(obj)
        if problem:
            chat.error = (number, "invalid_thread", problem)
            return chat
        if obj.get("is_system"):
            chat.system += 1
            continue
        chat.messages.append((number, obj))
    return chat


def _message_problem(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return f"a message must be a JSON object, got {type(obj).__name__}"
    if obj.get("is_system"):
        return None  # skipped, whatever else it holds
    if not isinstance(obj.get("mes"), str):
        return "message has no 'mes' text"
    if not isinstance(obj.get("name"), str) or not obj["name"].strip():
        return "message has no speaker 'name'"
    return None


def _read_group(obj: Any) -> _Group:
    if not isinstance(obj, dict) or not isinstance(obj.get("members"), list):
        raise ValueError("a group needs a 'members' list")
    members = [m for m in obj["members"] if isinstance(m, str) and m.strip()]
    chats = {str(c) for c in obj.get("chats") or [] if isinstance(c, (str, int))}
    if isinstance(obj.get("chat_id"), (str, int)):
        chats.add(str(obj["chat_id"]))
    name = obj.get("name")
    return _Group(name.strip() if isinstance(name, str) and name.strip() else None, members, chats)


# ---------------------------------------------------------------------------------------------------
# The importer


def read_sillytavern(path: Path) -> DumpContents:
    """Threads from a SillyTavern export folder, or from one chat file dropped on its own."""
    out = DumpContents(dump_name(path), layout="sillytavern")
    for kind, record in iter_sillytavern(path, out):
        (out.threads if kind == "thread" else out.rejects).append(record)
    return out


def iter_sillytavern(path: Path, out: DumpContents) -> Iterator[tuple[str, dict]]:
    """("thread", row) / ("reject", row) of a SillyTavern export, streaming one chat at a time; counters
    on `out`. Groups and cards (which any chat may use) are read first and held; chats are read once
    for the avatars they name (which JSON files are cards) and once more, one by one, to build them."""
    dump = out.dump
    in_folder = path.is_dir()
    files = _files(path) if in_folder else [path]

    def rel(file: Path) -> str:
        return file.relative_to(path).as_posix() if in_folder else file.name

    def where(relative: str, line: int | None = None) -> str:
        """`export/group chats/x.jsonl:7` inside a folder; `x.jsonl:7` for a chat dropped on its own."""
        if not in_folder:
            return f"{dump}:{line or 1}"
        return f"{dump}/{relative}" + (f":{line}" if line else "")

    def reject(line: int, reason: str, detail: str, record: str, location: str, thread_id: str | None = None):
        out.lines += 1
        return "reject", _reject(dump, line, reason, detail, record, thread_id, where=location)

    chat_files = [p for p in files if p.name.lower().endswith(CHAT_SUFFIXES)]
    json_files = [p for p in files if in_folder and p.name.lower().endswith(".json")]
    png_files = [p for p in files if in_folder and p.name.lower().endswith(".png")]

    # Groups first: their member lists say which files must be cards.
    groups: list[_Group] = []
    json_objects: list[tuple[Path, Any]] = []
    for p in json_files:
        try:
            obj = json.loads(p.read_bytes().decode("utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = "invalid_group" if p.parent.name == "groups" else "invalid_card"
            yield reject(1, reason, f"unreadable {'group' if reason == 'invalid_group' else 'card'} (not JSON): {exc}",
                         _safe_text(p), where(rel(p)))
            continue
        if p.parent.name == "groups" or (isinstance(obj, dict) and "members" in obj):
            try:
                groups.append(_read_group(obj))
            except ValueError as exc:
                yield reject(1, "invalid_group", f"unreadable group: {exc}", _safe_text(p), where(rel(p)))
            continue
        json_objects.append((p, obj))

    referenced = {m.casefold() for g in groups for m in g.members}
    referenced |= {Path(m).stem.casefold() for g in groups for m in g.members}
    for chat_file in chat_files:
        for _, message in _read_chat(chat_file, rel(chat_file)).messages:
            avatar = message.get("original_avatar")
            if isinstance(avatar, str) and avatar:
                referenced |= {avatar.casefold(), Path(avatar).stem.casefold()}

    cards = _Cards()
    for p, obj in json_objects:
        if not looks_like_card(obj) and not {p.name.casefold(), p.stem.casefold()} & referenced:
            continue  # settings, lorebooks and the like: not part of the roleplay
        try:
            cards.add(card_from_json(obj, p.name))
        except CardError as exc:
            yield reject(1, "invalid_card", f"unreadable card: {exc}", _safe_text(p), where(rel(p)))
    for p in png_files:
        try:
            cards.add(card_from_png(p.read_bytes(), p.name))
        except (OSError, CardError) as exc:
            claims = _has_card_chunk(p)
            if claims or p.name.casefold() in referenced or p.stem.casefold() in referenced:
                yield reject(1, "invalid_card", f"unreadable card: {exc}", json.dumps({"file": rel(p)}),
                             where(rel(p)))

    group_of = {chat_id: g for g in groups for chat_id in g.chats}
    seen: set[str] = set()
    for chat_file in chat_files:
        chat = _read_chat(chat_file, rel(chat_file))
        out.rows += chat.rows
        out.system_messages += chat.system
        if chat.error:
            line, reason, detail = chat.error
            yield reject(line, reason, detail, chat.text, where(chat.rel, line), chat.thread_id)
            continue
        if not chat.messages:
            yield reject(1, "no_posts", "chat has no messages (only a header or system notes)", chat.text,
                   where(chat.rel, 1), chat.thread_id)
            continue
        if chat.thread_id in seen:
            line = chat.messages[0][0]
            yield reject(line, "duplicate_thread_id", f"chat id {chat.thread_id!r} already used earlier in this dump",
                   chat.text, where(chat.rel, line), chat.thread_id)
            continue
        try:
            thread = _thread(chat, group_of.get(chat.thread_id), cards)
        except ValueError as exc:
            line = chat.messages[0][0]
            yield reject(line, "invalid_thread", str(exc), chat.text, where(chat.rel, line), chat.thread_id)
            continue
        seen.add(chat.thread_id)
        out.lines += 1
        yield "thread", {"dump": dump, "line": chat.messages[0][0], **thread}


def _safe_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


def _has_card_chunk(path: Path) -> bool:
    try:
        return any(k in png_text_chunks(path.read_bytes()) for k in CARD_CHUNKS)
    except (OSError, CardError):
        return False


def _thread(chat: _Chat, group: _Group | None, cards: _Cards) -> dict:
    """The canonical thread for one chat (validated like every other layout)."""
    user_name = next((m["name"].strip() for _, m in chat.messages if m.get("is_user")), None)
    if not user_name and chat.header and isinstance(chat.header.get("user_name"), str):
        user_name = chat.header["user_name"].strip() or None

    # The cast: (the reference chats use for the member, its card), in group order, else as they speak.
    references = list(group.members) if group else []
    for _, message in chat.messages:
        avatar = message.get("original_avatar")
        if not message.get("is_user") and isinstance(avatar, str) and avatar and avatar not in references:
            references.append(avatar)
    cast: list[tuple[str, Card]] = []
    for reference in references:
        card = cards.find(reference)
        if card and all(card is not c for _, c in cast):
            cast.append((reference, card))
    if not group and chat.header is not None:
        # A solo chat lives in chats/<card file stem>/ and names its character in the header.
        solo = cards.find(chat.path.parent.name)
        character_name = chat.header.get("character_name")
        if solo is None and isinstance(character_name, str):
            solo = next((c for c in cards.by_file.values() if c.name == character_name.strip()), None)
        if solo and all(solo is not c for _, c in cast):
            cast.append((solo.file, solo))
    reference_of_name = {card.name: reference for reference, card in cast}

    posts = []
    for number, message in chat.messages:
        name = message["name"].strip()
        avatar = message.get("original_avatar")
        if message.get("is_user"):
            author = USER_HANDLE
        elif isinstance(avatar, str) and avatar:
            author = avatar
        else:
            author = reference_of_name.get(name, name)
        posts.append({"post_id": str(number), "author": author, "character": name, "text": message["mes"],
                      "posted_at": parse_send_date(message.get("send_date"))})
    return _validate_thread({
        "thread_id": chat.thread_id,
        "title": group.name if group else None,
        "forum": FORUM,
        "url": None,
        "tags": [],
        "characters": [{"name": card.name, "player": reference, "sheet": card_sheet(card, user_name)}
                       for reference, card in cast],
        "posts": posts,
    })
