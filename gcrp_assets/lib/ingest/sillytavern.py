"""SillyTavern data folders (and single SillyTavern chats, a `.jsonl` file) into canonical threads.

Layout (SillyTavern's `src/constants.js` `USER_DIRECTORY_TEMPLATE`, `src/users.js`): a data root
is `data/<user handle>/` (current) or `public/` (1.12 and before), holding `chats/<card file
stem>/*.jsonl` (solo chats), `group chats/*.jsonl`, `groups/*.json`, `characters/*.png` (cards)
and `settings.json` (personas). A dump may hold a whole install, one data root, or a flat folder
of chats and cards; files are recognised by where SillyTavern keeps them, else by content.
Skipped, as SillyTavern never reads them as chats or cards: `backups/` and `thumbnails/` at any
depth (chat backups would be duplicate threads; thumbnails are JPEGs under `.png` names or copies
of old cards), the other folders of a data root or install (`User Avatars/`, `worlds/`, `user/`,
`backgrounds/`, `themes/`, `OpenAI Settings/` and the other presets, `extensions/`, `vectors/`,
`img/`, `scripts/`, `default/`, `node_modules/`, ...), files nested deeper than SillyTavern looks
(`chats/<card>/*` one level, the others none: `characters/<name>/` holds expression sprites), and
hidden files.

Threads: one chat file is one thread. thread_id = the chat file's path inside the dump without
`.jsonl`/`.jsonl.gz` (`data/default-user/chats/Ada/Ada - 2024-1-15@12h30m45s`), so two
characters' chats with the same file name stay two threads; for a chat dropped on its own, its
name without the suffix. title = the name of the group whose `chats` list holds the chat's file
stem (groups of the same data root first); forum = "sillytavern"; `file` = the chat's path in the
dump. A chat's first line is a header when it has no `mes` and one of `user_name`,
`character_name`, `chat_metadata`; solo chats have one, group chats in versions after 1.12.

Messages:
- Only the chosen swipe (`mes`) is the message; the alternatives in `swipes` were rejected.
- `is_user` messages are the user's persona: author = the fixed pseudonymous handle `st-user`, so
  the real person behind it is never named. All `is_user` names of one chat are ONE persona (the
  user renamed it mid-chat): its posts carry its most-used name (ties: the first used), the other
  names are that character's `aliases`. Thread `human` = that name (None when the user never
  speaks). The header's `user_name` never names it (current SillyTavern writes `"unused"` there);
  a real header name only fills `{{user}}` in sheets when the user never speaks.
- Narrator and notes: `extra.type` "narrator" (`/sys`, named "System" or the chat's narrator
  name) or "comment" (`/comment`), or a message with SillyTavern's system or comment avatar ->
  a post of kind "narrator", character None, author `st-narrator`; never a roster character.
- SillyTavern's own messages (name "SillyTavern System", or `extra.type` help, welcome, group,
  empty, generic, ...: "Group chat created. Say 'Hi' to lovely people!") are the program's UI, not
  the chat: skipped. Both kinds count in `DumpContents.system_messages`.
- Hidden messages (`/hide` sets `is_system` on an ordinary message) are skipped and counted, as the
  input contract says: SillyTavern keeps them out of the prompt and out of its text export, so they are
  not part of the conversation the user kept.
- Any other message is a character's post: character = `name`, author =
  the member card's file (`original_avatar`, SillyTavern's stable speaker id; display names can
  collide), else the card file of that name, else the name. Image attachments (`extra.image`) are
  not text and are left out; `mes` is kept exactly.

Roster (`characters`): the group's member cards in group order, then cards named by messages'
`original_avatar`, then (solo chats) the card of the chat's folder, each with its file as `player`
and its sheet (`cards.card_sheet`: the card's facts, no instructions); then the persona
(player `st-user`, sheet = its persona description from the data root's `settings.json`
`power_user.persona_descriptions`, or from a persona backup there (`personas.json`: the same keys at the top,
as Persona Management → Backup writes them), found by the avatar of its messages or by its name).

Records and rejects: every chat file, and every card or group file that could not be used, is one
record (`DumpContents.lines`). Chats are read line by line with bounded memory
(`lines.iter_record_lines`); a line too long (`record_too_large`), a broken compressed stream
(`truncated`, `decompression_limit`), bad UTF-8, bad JSON (also too deeply nested, or a huge
integer) or a malformed message rejects its chat, naming file and line (a chat with a missing turn
would teach replies to a message that is not there). An unreadable card or group is recorded
(`invalid_card`, `invalid_group`, `record_too_large` for a card or group file over
`cards.MAX_CARD_BYTES`, which is not read) and its chats are kept without that sheet or title. A
chat reject's record is the chat as read, up to `lines.MAX_RECORD_BYTES`. `secrets.json` (API
keys) is never opened. No exception raised while reading one file stops the dump.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from gcrp_assets.lib.ingest import contract, lines
from gcrp_assets.lib.ingest.contract import DumpContents, DumpReadError, record_reject, validate_thread
from gcrp_assets.lib.ingest.inbox import inbox_root, outside_link
from gcrp_assets.lib.ingest import cards as card_lib
from gcrp_assets.lib.ingest.cards import (Card, CardError, CardTooLarge, card_from_json, card_sheet,
                                          has_card_chunk, looks_like_card, persona_sheet, read_card)

USER_HANDLE = "st-user"
NARRATOR_HANDLE = "st-narrator"
FORUM = "sillytavern"
CHAT_SUFFIXES = (".jsonl", ".jsonl.gz")
_HEADER_KEYS = ("user_name", "character_name", "chat_metadata")
PLACEHOLDER_NAMES = frozenset({"unused"})  # what current SillyTavern writes as a header's names
SYSTEM_USER_NAME = "SillyTavern System"
_SYSTEM_AVATARS = frozenset({"img/five.png", "/img/five.png", "img/quill.png", "/img/quill.png"})
_NARRATOR_TYPES = frozenset({"narrator", "comment"})
_SKIPPED_KINDS = ("program", "hidden")
_PROGRAM_TYPES = frozenset({"help", "welcome", "group", "empty", "generic", "slash_commands", "formatting",
                            "hotkeys", "macros", "welcome_prompt", "assistant_note"})

# SillyTavern's folders (casefolded): where it keeps chats and cards, and what it never reads as such.
_AREAS = frozenset({"chats", "group chats", "groups", "characters"})
_SKIPPED_ANYWHERE = frozenset({"backups", "thumbnails"})
_NOT_CHATS = frozenset({
    "user avatars", "worlds", "user", "backgrounds", "themes", "movingui", "extensions", "instruct", "context",
    "sysprompt", "reasoning", "quickreplies", "assets", "vectors", "openai settings", "koboldai settings",
    "novelai settings", "textgen settings", "img", "scripts", "sounds", "css", "lib", "locales", "webfonts",
    "default", "node_modules", "src", "plugins", "_storage", "_cache", "_uploads", "uploads",
})


_NEVER_READ = frozenset({"secrets.json"})  # API keys: never opened, so never quoted in a reject


def is_chat_header(obj: Any) -> bool:
    """A chat's first line: chat metadata, not a message (the reference's importer rule)."""
    return isinstance(obj, dict) and "mes" not in obj and any(key in obj for key in _HEADER_KEYS)


def is_chat_record(obj: Any) -> bool:
    """Whether a JSONL record is a SillyTavern chat line (a message or a chat header)."""
    return isinstance(obj, dict) and ("mes" in obj or "is_user" in obj or is_chat_header(obj))


def _chat_id(relative: str) -> str:
    """The path without its chat suffix: `chats/Ada/Ada - 2024-1-15@12h30m45s`."""
    for suffix in CHAT_SUFFIXES[::-1]:  # longest first
        if relative.lower().endswith(suffix):
            return relative[: -len(suffix)]
    return relative


def _stem(relative: str) -> str:
    return _chat_id(relative).rsplit("/", 1)[-1]


# ---------------------------------------------------------------------------------------------------
# Where a file is


@dataclass(frozen=True)
class _Place:
    root: str  # the data root the file belongs to ("" in a flat folder), relative to the dump
    area: str | None  # "chats", "group chats", "groups", "characters", or None in a flat folder


def _place(folders: tuple[str, ...]) -> _Place | None:
    """Where a file in these folders (relative to the dump) stands, or None when SillyTavern does not
    keep chats or cards there. Once None for a folder, None for everything below it."""
    if any(f.casefold() in _SKIPPED_ANYWHERE for f in folders):
        return None
    for i, name in enumerate(folders):
        key = name.casefold()
        if key in _AREAS:
            if len(folders) - i - 1 > (1 if key == "chats" else 0):
                return None
            return _Place("/".join(folders[:i]), key)
        if key in _NOT_CHATS:
            return None
    return _Place("", None)


@dataclass(frozen=True)
class _File:
    path: Path
    rel: str
    place: _Place

    @property
    def name(self) -> str:
        return self.path.name


def _walk(folder: Path) -> list[_File]:
    """The files SillyTavern could read as chats, groups, cards or settings, sorted by relative path;
    skipped folders are not entered."""
    out = []
    boundary = inbox_root(folder.absolute().parent)  # the inbox the dump folder sits in
    for current, dirs, files in os.walk(folder):
        base = Path(current)
        parts = base.relative_to(folder).parts
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__" and _place(parts + (d,))]
        place = _place(parts)
        if place is None:
            continue
        for name in files:
            path = base / name
            if name.startswith(".") or not path.is_file():
                continue
            if path.is_symlink() and outside_link(path, boundary):
                raise contract.DumpReadError(f"{path.relative_to(folder.parent).as_posix()}: a symbolic link to a place "
                                          "outside the inbox; refused (dumps are read from the inbox only)")
            out.append(_File(path, "/".join(parts + (name,)), place))
    return sorted(out, key=lambda f: f.rel)


def _is_chat(file: _File) -> bool:
    return file.name.lower().endswith(CHAT_SUFFIXES) and file.place.area in (None, "chats", "group chats")


def _first_record(path: Path) -> bytes | None:
    """The first non-blank line of a chat file, read with bounded memory; None when there is none."""
    try:
        for seen, record in enumerate(lines.iter_record_lines(path)):
            if record.data is None or seen > 20:
                return None
            if record.data.strip():
                return record.data
    except Exception:  # noqa: BLE001 - a sniff never fails the dump
        return None
    return None


def _looks_like_chat_file(path: Path) -> bool:
    line = _first_record(path)
    if line is None:
        return False
    try:
        return is_chat_record(json.loads(line))
    except Exception:  # noqa: BLE001
        return False


def _looks_like_card_file(file: _File) -> bool:
    try:
        if file.name.lower().endswith(".png"):
            return has_card_chunk(file.path)
        if file.path.stat().st_size > card_lib.MAX_CARD_BYTES:
            return False
        return looks_like_card(json.loads(file.path.read_bytes().decode("utf-8-sig")))
    except Exception:  # noqa: BLE001
        return False


def looks_like_export(folder: Path) -> bool:
    """A folder is a SillyTavern export when it holds chats, a `groups/*.json`, or character cards
    where SillyTavern would read them."""
    for file in _walk(folder):
        name = file.name.lower()
        if name in _NEVER_READ:
            continue
        if _is_chat(file) and _looks_like_chat_file(file.path):
            return True
        if name.endswith(".json") and file.place.area == "groups":
            return True
        if name.endswith((".png", ".json")) and file.place.area in (None, "characters") and _looks_like_card_file(file):
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
    root: str = ""


@dataclass
class _Personas:
    """A data root's `settings.json` personas: avatar file -> name, avatar file -> description."""

    names: dict[str, str] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)


@dataclass
class _Chat:
    file: _File
    thread_id: str
    lines: list[str] = field(default_factory=list)  # the lines read, as the reject record (up to a limit)
    kept: int = 0  # bytes in `lines`
    clipped: bool = False  # lines past lines.MAX_RECORD_BYTES were read but not kept for the record
    header: dict | None = None
    messages: list[tuple[int, dict, str]] = field(default_factory=list)  # (line, message, kind)
    system: int = 0
    rows: int = 0
    error: tuple[int, str, str] | None = None  # (line, reason, detail)

    def keep(self, data: bytes) -> None:
        if self.kept + len(data) > lines.record_limit():
            self.clipped = True
            return
        self.kept += len(data) + 1
        self.lines.append(data.decode("utf-8", "replace"))

    @property
    def text(self) -> str:
        """The chat as read, for a reject's record; a long chat's record ends where the limit was reached."""
        return "\n".join(self.lines) + ("\n[... the rest of this chat is not kept in the record]"
                                         if self.clipped else "")


class _Cards:
    """Member cards by the name chats and groups refer to them with (the file name, else its stem),
    per data root; cards found outside any SillyTavern folder (a flat export) serve every root."""

    def __init__(self) -> None:
        self.by_root: dict[str, dict[str, Card]] = {}
        self.anywhere: dict[str, Card] = {}
        self.all: list[Card] = []

    def add(self, card: Card, place: _Place) -> None:
        keys = (card.file.casefold(), Path(card.file).stem.casefold())
        scoped = self.by_root.setdefault(place.root, {})
        for key in keys:
            scoped.setdefault(key, card)
            if place.area is None:
                self.anywhere.setdefault(key, card)
        self.all.append(card)

    def find(self, reference: str, root: str = "") -> Card | None:
        keys = (reference.casefold(), Path(reference).stem.casefold())
        scoped = self.by_root.get(root, {})
        for table in (scoped, self.anywhere):
            for key in keys:
                if key in table:
                    return table[key]
        return None


def message_kind(obj: dict) -> str:
    """"user", "narrator", "program" (SillyTavern's own UI message, skipped), "hidden" (skipped) or "character"."""
    extra = obj.get("extra")
    kind = extra.get("type") if isinstance(extra, dict) else None
    if obj.get("is_user") is True:
        return "user"
    if kind in _NARRATOR_TYPES:
        return "narrator"
    if kind in _PROGRAM_TYPES or obj.get("name") == SYSTEM_USER_NAME:
        return "program"
    if isinstance(obj.get("force_avatar"), str) and obj["force_avatar"] in _SYSTEM_AVATARS:
        return "narrator"  # a narrator or note written before messages carried `extra.type`
    if obj.get("is_system") is True:
        return "hidden"
    return "character"


def _message_problem(obj: Any, kind: str) -> str | None:
    if kind in _SKIPPED_KINDS:
        return None  # skipped, whatever else it holds
    if not isinstance(obj.get("mes"), str):
        return "message has no 'mes' text"
    if kind != "narrator" and (not isinstance(obj.get("name"), str) or not obj["name"].strip()):
        return "message has no speaker 'name'"
    return None


def _parse_line(data: bytes, number: int) -> tuple[Any, tuple[int, str, str] | None]:
    """A chat line's JSON, or the (line, reason, detail) that rejects the chat: bad UTF-8, bad JSON, JSON
    nested too deeply or with an integer longer than Python reads (`lines.parse_json_line`)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, (number, "not_utf8", f"line {number} is not UTF-8: {exc.reason}")
    try:
        return lines.parse_json_line(text), None
    except lines.JsonLineError as exc:
        return None, (number, "invalid_json", str(exc))


def _record_lines(path: Path) -> Iterator[lines.RecordLine]:
    """The chat's lines, with the limits `dumps` has at call time (tests may lower them)."""
    return lines.iter_record_lines(path)


def _read_chat(file: _File, thread_id: str) -> _Chat:
    """One chat, line by line; stops at the first line that makes it unusable (`error`)."""
    chat = _Chat(file, thread_id)
    first = True
    number = 1
    try:
        for record in _record_lines(file.path):
            number = record.number
            if record.data is None:
                chat.error = (number, record.error or "unreadable_file", record.detail)
                return chat
            chat.keep(record.data)
            if not record.data.strip():
                continue
            obj, error = _parse_line(record.data, number)
            if error:
                chat.error = error
                return chat
            if first and is_chat_header(obj):
                chat.header, first = obj, False
                continue
            first = False
            chat.rows += 1
            if not isinstance(obj, dict):
                chat.error = (number, "invalid_thread", f"a message must be a JSON object, got {type(obj).__name__}")
                return chat
            kind = message_kind(obj)
            problem = _message_problem(obj, kind)
            if problem:
                chat.error = (number, "invalid_thread", problem)
                return chat
            if kind in ("narrator", *_SKIPPED_KINDS):
                chat.system += 1
            if kind not in _SKIPPED_KINDS:
                chat.messages.append((number, obj, kind))
    except DumpReadError as exc:
        chat.error = (1, "unreadable_file", f"cannot read chat: {exc}")
    except Exception as exc:  # noqa: BLE001 - one file never stops the dump
        chat.error = (number, "unreadable_file", f"cannot read chat: {type(exc).__name__}: {str(exc)[:200]}")
    return chat


def _avatars(file: _File) -> set[str]:
    """The `original_avatar`s a chat's messages name (which files must be cards); best effort."""
    found: set[str] = set()
    try:
        for record in _record_lines(file.path):
            if record.data is None:
                break
            if b"original_avatar" not in record.data:
                continue
            obj, error = _parse_line(record.data, record.number)
            if error:
                break
            avatar = obj.get("original_avatar") if isinstance(obj, dict) else None
            if _is_card_reference(avatar):
                found |= {avatar.casefold(), Path(avatar).stem.casefold()}
    except Exception:  # noqa: BLE001 - the chat itself reports what is wrong when it is read
        pass
    return found


def _is_card_reference(avatar: Any) -> bool:
    """A message's `original_avatar` names a card unless it is SillyTavern's default image (`/sendas` of a
    name without a card)."""
    return isinstance(avatar, str) and bool(avatar.strip()) and avatar != "none" and \
        not avatar.lstrip("/").startswith("img/")


def _read_group(obj: Any, root: str) -> _Group:
    if not isinstance(obj, dict) or not isinstance(obj.get("members"), list):
        raise ValueError("a group needs a 'members' list")
    members = [m for m in obj["members"] if isinstance(m, str) and m.strip()]
    chats_field = obj.get("chats")
    chats = {str(c) for c in (chats_field if isinstance(chats_field, list) else [])
             if isinstance(c, (str, int)) and not isinstance(c, bool)}
    if isinstance(obj.get("chat_id"), (str, int)) and not isinstance(obj.get("chat_id"), bool):
        chats.add(str(obj["chat_id"]))
    name = obj.get("name")
    return _Group(name.strip() if isinstance(name, str) and name.strip() else None, members, chats, root)


def _read_personas(obj: Any) -> _Personas | None:
    """The personas of a `settings.json` (`power_user.personas`, `.persona_descriptions`), or of a persona
    backup (Persona Management → Backup/Restore: the same two keys at the top), else None."""
    power_user = obj.get("power_user") if isinstance(obj, dict) else None
    if not isinstance(power_user, dict) and isinstance(obj, dict) and isinstance(obj.get("personas"), dict) \
            and isinstance(obj.get("persona_descriptions"), dict):
        power_user = obj  # a persona backup
    if not isinstance(power_user, dict):
        return None
    personas = _Personas()
    names = power_user.get("personas")
    if isinstance(names, dict):
        personas.names = {k: v.strip() for k, v in names.items() if isinstance(v, str) and v.strip()}
    descriptions = power_user.get("persona_descriptions")
    if isinstance(descriptions, dict):
        for avatar, entry in descriptions.items():
            text = entry.get("description") if isinstance(entry, dict) else None
            if isinstance(text, str) and text.strip():
                personas.descriptions[avatar] = text
    return personas


def _read_json(path: Path) -> Any:
    """A JSON file of at most MAX_CARD_BYTES; CardTooLarge / ValueError / RecursionError otherwise."""
    with open(path, "rb") as handle:
        data = handle.read(card_lib.MAX_CARD_BYTES + 1)
    if len(data) > card_lib.MAX_CARD_BYTES:
        raise CardTooLarge(f"file is larger than {card_lib.MAX_CARD_BYTES:,} bytes")
    return json.loads(data.decode("utf-8-sig"))


def _safe_text(path: Path, limit: int = 1 << 20) -> str:
    """The start of a file, for a reject's record (never more than `limit` bytes)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if not isinstance(exc, CardError) else text


# ---------------------------------------------------------------------------------------------------
# The importer


def iter_sillytavern(path: Path, out: DumpContents) -> Iterator[tuple[str, dict]]:
    """("thread", row) / ("reject", row) of a SillyTavern export, streaming one chat at a time; counters
    on `out`. Groups, cards and personas (which any chat may use) are read first and held; chats are
    read once for the avatars they name (which JSON files are cards) and once more, one by one, to
    build them."""
    dump = out.dump
    in_folder = path.is_dir()
    files = _walk(path) if in_folder else [_File(path, path.name, _Place("", None))]

    def where(file: _File, line: int | None = None) -> str:
        """`export/group chats/x.jsonl:7` inside a folder; `x.jsonl:7` for a chat dropped on its own."""
        if not in_folder:
            return f"{dump}:{line or 1}"
        return f"{dump}/{file.rel}" + (f":{line}" if line else "")

    def reject(file: _File, line: int, reason: str, detail: str, record: str, thread_id: str | None = None,
               located: bool = True):
        out.lines += 1
        return "reject", record_reject(dump, line, reason, detail, record, thread_id,
                                 where=where(file, line if located else None),
                                 file=file.rel if in_folder else dump)

    chat_files = [f for f in files if _is_chat(f)] if in_folder else files
    json_files = [f for f in files if in_folder and f.name.lower().endswith(".json")
                  and f.place.area in (None, "groups", "characters") and f.name.casefold() not in _NEVER_READ]
    png_files = [f for f in files if in_folder and f.name.lower().endswith(".png")
                 and f.place.area in (None, "characters")]

    # Groups first: their member lists say which files must be cards. Personas from settings.json.
    groups: list[_Group] = []
    personas: dict[str, _Personas] = {}
    cards = _Cards()
    other_json: list[_File] = []
    for file in json_files:
        is_group_file = file.place.area == "groups"
        try:
            obj = _read_json(file.path)
        except Exception as exc:  # noqa: BLE001 - not JSON, too large, too deep: a reject, never a crash
            reason = exc.reason if isinstance(exc, CardTooLarge) else (
                "invalid_group" if is_group_file else "invalid_card")
            what = "group" if is_group_file else "card"
            yield reject(file, 1, reason, f"unreadable {what} (not JSON): {_why(exc)}", _safe_text(file.path),
                         located=False)
            continue
        if is_group_file or (file.place.area is None and isinstance(obj, dict) and "members" in obj):
            try:
                groups.append(_read_group(obj, file.place.root if is_group_file else "*"))
            except ValueError as exc:
                yield reject(file, 1, "invalid_group", f"unreadable group: {exc}", _safe_text(file.path),
                             located=False)
            continue
        if file.place.area is None and isinstance(obj, dict) and (file.name.casefold() == "settings.json"
                                                                  or "power_user" not in obj):
            found = _read_personas(obj)  # settings.json, or a persona backup (`personas.json`)
            if found is not None:
                known = personas.setdefault(file.rel.rpartition("/")[0], _Personas())
                known.names = {**found.names, **known.names}
                known.descriptions = {**found.descriptions, **known.descriptions}
                continue
        if looks_like_card(obj):
            try:
                cards.add(card_from_json(obj, file.name), file.place)
            except CardError as exc:
                yield reject(file, 1, exc.reason, f"unreadable card: {exc}", _safe_text(file.path), located=False)
        else:
            other_json.append(file)  # settings, lorebooks and the like, unless a chat names it

    referenced = {m.casefold() for g in groups for m in g.members}
    referenced |= {Path(m).stem.casefold() for g in groups for m in g.members}
    for file in chat_files:
        referenced |= _avatars(file)

    def is_referenced(file: _File) -> bool:
        return bool({file.name.casefold(), file.path.stem.casefold()} & referenced)

    for file in other_json:
        if not is_referenced(file):
            continue
        try:
            cards.add(card_from_json(_read_json(file.path), file.name), file.place)
        except Exception as exc:  # noqa: BLE001
            reason = exc.reason if isinstance(exc, CardError) else "invalid_card"
            yield reject(file, 1, reason, f"unreadable card: {_why(exc)}", _safe_text(file.path), located=False)
    for file in png_files:
        too_large = False
        try:
            too_large = file.path.stat().st_size > card_lib.MAX_CARD_BYTES
            if too_large:  # never read whole; looked at only where a card must be
                raise CardTooLarge(f"card file is larger than {card_lib.MAX_CARD_BYTES:,} bytes")
            cards.add(read_card(file.path, file.name), file.place)
        except Exception as exc:  # noqa: BLE001 - a hostile card is a reject, never a crash
            # An image that is no card is not a problem; a broken card, or any file a group or chat
            # names as a member, is.
            if is_referenced(file) or (too_large and file.place.area == "characters") or (
                    not too_large and has_card_chunk(file.path)):
                reason = exc.reason if isinstance(exc, CardError) else "invalid_card"
                yield reject(file, 1, reason, f"unreadable card: {_why(exc)}", json.dumps({"file": file.rel}),
                             located=False)

    group_of: dict[tuple[str, str], _Group] = {}  # (data root, or "*" for a group outside one, chat stem)
    for group in groups:
        for stem in group.chats:
            group_of.setdefault((group.root, stem), group)
    seen: set[str] = set()
    for file in chat_files:
        thread_id = _chat_id(file.rel)
        chat = _read_chat(file, thread_id)
        out.rows += chat.rows
        out.system_messages += chat.system
        if chat.error:
            line, reason, detail = chat.error
            yield reject(file, line, reason, detail, chat.text, thread_id)
            continue
        if not chat.messages:
            yield reject(file, 1, "no_posts", "chat has no messages (only a header or SillyTavern's own messages)",
                         chat.text, thread_id)
            continue
        line = chat.messages[0][0]
        if thread_id in seen:
            yield reject(file, line, "duplicate_thread_id", f"chat id {thread_id!r} already used earlier in this dump",
                         chat.text, thread_id)
            continue
        stem = _stem(file.rel)
        group = group_of.get((file.place.root, stem)) or group_of.get(("*", stem))
        try:
            thread = _thread(chat, group, cards, personas.get(file.place.root) or personas.get(""))
        except Exception as exc:  # noqa: BLE001 - one chat never stops the dump
            yield reject(file, line, "invalid_thread", _why(exc) if not isinstance(exc, ValueError) else str(exc),
                         chat.text, thread_id)
            continue
        seen.add(thread_id)
        out.lines += 1
        yield "thread", {"dump": dump, "file": file.rel if in_folder else dump, "line": line, **thread}


def _persona(chat: _Chat) -> tuple[str | None, list[str], str | None]:
    """(name, aliases, avatar file) of the chat's persona: its most-used `is_user` name (ties: the first
    used), its other names, and the persona avatar its messages show most."""
    names: Counter[str] = Counter()
    avatars: Counter[str] = Counter()
    for _, message, kind in chat.messages:
        if kind != "user":
            continue
        names[message["name"].strip()] += 1
        avatar = message.get("force_avatar")
        if isinstance(avatar, str) and avatar.startswith("User Avatars/"):
            avatars[avatar[len("User Avatars/"):]] += 1
    if not names:
        return None, [], None
    order = list(names)  # first use order (Counter keeps insertion order)
    best = max(order, key=lambda n: (names[n], -order.index(n)))
    avatar = max(avatars, key=lambda a: (avatars[a], -list(avatars).index(a))) if avatars else None
    return best, [n for n in order if n != best], avatar


def _persona_description(personas: _Personas | None, avatar: str | None, names: list[str]) -> str | None:
    if personas is None:
        return None
    if avatar and avatar in personas.descriptions:
        return personas.descriptions[avatar]
    matches = [a for a, n in personas.names.items() if n in names and a in personas.descriptions]
    return personas.descriptions[matches[0]] if len(matches) == 1 else None


def _header_name(chat: _Chat, key: str) -> str | None:
    value = chat.header.get(key) if chat.header else None
    if not isinstance(value, str) or not value.strip() or value.strip().casefold() in PLACEHOLDER_NAMES:
        return None
    return value.strip()


def _thread(chat: _Chat, group: _Group | None, cards: _Cards, personas: _Personas | None) -> dict:
    """The canonical thread for one chat (validated like every other layout)."""
    root = chat.file.place.root
    human, aliases, avatar = _persona(chat)
    user_name = human or _header_name(chat, "user_name")  # only for {{user}} in sheets

    # The cast: (the reference chats use for the member, its card), in group order, else as they speak.
    references = list(group.members) if group else []
    for _, message, kind in chat.messages:
        avatar_ref = message.get("original_avatar")
        if kind == "character" and _is_card_reference(avatar_ref) and avatar_ref not in references:
            references.append(avatar_ref)
    cast: list[tuple[str, Card]] = []
    for reference in references:
        card = cards.find(reference, root)
        if card and all(card is not c for _, c in cast):
            cast.append((reference, card))
    if group is None and chat.file.place.area in ("chats", None):
        # A solo chat lives in chats/<card file stem>/ and may name its character in the header.
        solo = cards.find(chat.file.path.parent.name, root) if chat.file.place.area == "chats" else None
        character_name = _header_name(chat, "character_name")
        if solo is None and character_name:
            solo = next((c for c in cards.all if c.name == character_name), None)
        if solo and all(solo is not c for _, c in cast):
            cast.append((solo.file, solo))
    reference_of_name = {card.name: reference for reference, card in cast}

    posts = []
    for number, message, kind in chat.messages:
        character: str | None
        if kind == "user":
            author, character = USER_HANDLE, human
        elif kind == "narrator":
            author, character = NARRATOR_HANDLE, None
        else:
            character = message["name"].strip()
            avatar_ref = message.get("original_avatar")
            author = avatar_ref if _is_card_reference(avatar_ref) else reference_of_name.get(character, character)
        posts.append({"post_id": str(number), "author": author, "character": character, "text": message["mes"],
                      "posted_at": parse_send_date(message.get("send_date")),
                      "kind": "narrator" if kind == "narrator" else "ic"})
    characters = [{"name": card.name, "player": reference, "sheet": card_sheet(card, user_name), "aliases": []}
                  for reference, card in cast]
    if human:
        description = _persona_description(personas, avatar, [human, *aliases])
        characters.append({"name": human, "player": USER_HANDLE,
                           "sheet": persona_sheet(description, human) if description else None, "aliases": aliases})
    return validate_thread({
        "thread_id": chat.thread_id,
        "title": group.name if group else None,
        "forum": FORUM,
        "url": None,
        "tags": [],
        "human": human,
        "characters": characters,
        "posts": posts,
    })
