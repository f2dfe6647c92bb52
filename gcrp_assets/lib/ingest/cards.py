"""Character cards (V1, V2, V3) as JSON or PNG: the name and the sheet a thread's character needs.

A card is the SillyTavern equivalent of a forum character sheet, but much of a card is not about
the character: greetings, example dialogues, notes to the card's users and instructions to the
model. The sheet (`card_sheet`) takes only the character's facts, in sections the uniform sheet
template (`templates/sheet_template.yaml`, parsed by `lib.sheets`) understands:

- `description` -> first, unlabelled, as written: its own labelled lines (`Age: 52`,
  `Appearance: ...`) reach their template fields; a prose description is free text, which the sheet
  parser keeps under Other Information (never under Appearance, as a `Description:` label did).
- `personality` -> `Personality: ...` (no template field: kept, labelled, in Other Information).
- `character_book` entries -> `Lore: <content>`, one section each, only for enabled entries whose
  `keys` name the character (its full name, a word of it, or `{{char}}`); entries about places,
  other people or the world are left out.
- `scenario` -> left out: it is the situation a chat starts in (often about `{{user}}`), not a fact
  about the character, and a group thread would get one per member.
- `first_mes`, `alternate_greetings`, `mes_example` -> left out: dialogue, not facts (the greeting
  is already the chat's first post).
- `creator_notes`, `system_prompt`, `post_history_instructions`, `extensions.depth_prompt`, `tags`,
  `creator` -> left out: notes to people and instructions to the model never reach a prompt.

Inside the kept fields, instructions to the model are stripped as well (`strip_instructions`):
SillyTavern's comment macro `{{// ...}}`, `{{trim}}`/`{{noop}}`/`{{original}}`, HTML comments,
bracketed notes `[OOC: ...]`, `(OOC: ...)`, `((...))`, `[[...]]`, `[System note: ...]`,
`[Note to AI: ...]`, `[Instructions: ...]`, `[Author's note: ...]`, lines that start `OOC:`,
`System note:`, `Instructions:`, and `<START>` separators. Then `{{char}}`/`<BOT>` become the
card's name and `{{user}}`/`<USER>` the user's persona when it is known.

Formats (see the reference's §6): V1 keeps its fields at the root; V2 (`spec: chara_card_v2`) and V3
(`spec: chara_card_v3`) under `data`. A PNG card carries base64 JSON in a tEXt chunk: `chara` (V2)
or `ccv3` (V3). SillyTavern writes both, and `ccv3` wins when both are present, as in SillyTavern's
own reader; if `ccv3` is unreadable but `chara` is fine, `chara` is used rather than losing the card.

Hostile input: a PNG is walked chunk by chunk from the file, seeking past image data, never decoded
as an image nor read whole; a text chunk (or an iTXt chunk once inflated) larger than
`MAX_CARD_BYTES` is not read (`CardTooLarge`, reason `record_too_large`, when it is a card chunk).
JSON cards larger than that are not read either. Anything undecodable (non-ASCII or broken base64,
bad UTF-8, invalid or too deeply nested JSON, huge integers) is a `CardError`, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_CHUNKS = ("ccv3", "chara")  # in order of preference
_V1_FIELDS = ("description", "personality", "scenario", "first_mes", "mes_example")
MAX_CARD_BYTES = 32 * 2**20  # a card file (JSON) or card chunk (PNG) larger than this is not read
_KEYWORD_PEEK = 80  # a PNG text chunk's keyword is at most 79 bytes, then a NUL


class CardError(ValueError):
    """This file is not a readable character card (the message says why); `reason` is the reject code."""

    reason = "invalid_card"


class CardTooLarge(CardError):
    """The card is larger than `MAX_CARD_BYTES` and was not read."""

    reason = "record_too_large"


@dataclass(frozen=True)
class BookEntry:
    """One `character_book` (lorebook) entry of a card."""

    keys: tuple[str, ...]
    content: str
    enabled: bool = True


@dataclass(frozen=True)
class Card:
    file: str  # file name inside the export: SillyTavern's stable id of a group member
    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    spec: str = "v1"  # "v1", "chara_card_v2" or "chara_card_v3"
    book: tuple[BookEntry, ...] = ()


# ---------------------------------------------------------------------------------------------------
# PNG chunks


def read_png_text(handle: BinaryIO, max_bytes: int | None = None) -> dict[str, str]:
    """Keyword (lower-cased) -> text of every tEXt and iTXt chunk, the first one winning per keyword,
    read from an open PNG without reading its image data. A text chunk over `max_bytes` (default
    `MAX_CARD_BYTES`) is skipped, or `CardTooLarge` when its keyword is a card chunk's."""
    limit = MAX_CARD_BYTES if max_bytes is None else max_bytes
    if handle.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
        raise CardError("not a PNG file")
    chunks: dict[str, str] = {}
    while True:
        head = handle.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        if kind not in (b"tEXt", b"iTXt"):
            if kind == b"IEND":
                break
            handle.seek(length + 4, io.SEEK_CUR)  # body and CRC
            continue
        name = kind.decode("latin-1")
        if length > limit:
            keyword = handle.read(min(length, _KEYWORD_PEEK)).partition(b"\0")[0].decode("latin-1").lower()
            if keyword in CARD_CHUNKS:
                raise CardTooLarge(f"PNG chunk {keyword!r} is {length:,} bytes (max {limit:,})")
            handle.seek(length - min(length, _KEYWORD_PEEK) + 4, io.SEEK_CUR)
            continue
        body = handle.read(length)
        if len(body) < length:
            raise CardError(f"PNG chunk {name!r} is truncated")
        handle.seek(4, io.SEEK_CUR)
        keyword_bytes, sep, rest = body.partition(b"\0")
        if not sep:
            continue
        keyword = keyword_bytes.decode("latin-1").lower()
        if kind == b"tEXt":
            chunks.setdefault(keyword, rest.decode("latin-1"))
        elif len(rest) >= 2:
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            try:
                if compressed:
                    inflater = zlib.decompressobj()
                    raw = inflater.decompress(text, limit + 1)
                    if len(raw) > limit:
                        if keyword in CARD_CHUNKS:
                            raise CardTooLarge(f"PNG chunk {keyword!r} inflates past {limit:,} bytes")
                        continue
                else:
                    raw = text
                chunks.setdefault(keyword, raw.decode("utf-8"))
            except (zlib.error, UnicodeDecodeError):
                pass  # an unreadable unrelated chunk must not cost the card
    return chunks


def png_text_chunks(data: bytes) -> dict[str, str]:
    """`read_png_text` of PNG bytes already in memory."""
    return read_png_text(io.BytesIO(data))


def _decode_chunk(text: str, keyword: str) -> Any:
    """A card chunk's JSON: base64 of UTF-8 JSON (some tools store the JSON itself)."""
    text = text.strip()
    try:
        if not text.startswith("{"):
            raw = text.encode("ascii")  # base64 is ASCII; anything else is not a card (UnicodeEncodeError)
            text = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=False).decode("utf-8")
        return json.loads(text)
    except (binascii.Error, ValueError, RecursionError) as exc:  # ValueError: bad ASCII/UTF-8/JSON, huge ints
        raise CardError(f"PNG chunk {keyword!r} is not base64 JSON: {type(exc).__name__}: {_short(exc)}") from exc


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "…"


# ---------------------------------------------------------------------------------------------------
# Card JSON


def looks_like_card(obj: Any) -> bool:
    """Whether a JSON object claims to be a character card (so a broken one is worth reporting)."""
    if not isinstance(obj, dict):
        return False
    spec = obj.get("spec")
    if isinstance(spec, str) and spec.startswith("chara_card_v"):
        return True
    return isinstance(obj.get("name"), str) and any(key in obj for key in _V1_FIELDS)


def _text_field(data: dict, key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise CardError(f"card field {key!r} must be a string, got {type(value).__name__}")


def _book(data: dict) -> tuple[BookEntry, ...]:
    """The card's `character_book` entries (V2/V3 list, or SillyTavern world-info dict); malformed
    entries are left out, the book being optional."""
    book = data.get("character_book")
    entries = book.get("entries") if isinstance(book, dict) else None
    if isinstance(entries, dict):
        entries = list(entries.values())
    if not isinstance(entries, list):
        return ()
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        keys = entry.get("keys", entry.get("key"))
        keys = [keys] if isinstance(keys, str) else keys
        content = entry.get("content")
        if not isinstance(keys, list) or not isinstance(content, str):
            continue
        enabled = entry.get("enabled", not entry.get("disable", False))
        out.append(BookEntry(tuple(k for k in keys if isinstance(k, str)), content, enabled is not False))
    return tuple(out)


def card_from_json(obj: Any, file: str) -> Card:
    """A `Card` from a parsed V1, V2 or V3 card object; `CardError` saying what is missing."""
    if not isinstance(obj, dict):
        raise CardError(f"a card must be a JSON object, got {type(obj).__name__}")
    spec = obj.get("spec")
    if isinstance(spec, str) and spec.startswith("chara_card_v"):
        data = obj.get("data")
        if not isinstance(data, dict):
            raise CardError(f"{spec} card has no 'data' object")
    else:
        spec, data = "v1", obj
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CardError("card has no 'name'")
    return Card(file=file, name=name.strip(), description=_text_field(data, "description"),
                personality=_text_field(data, "personality"), scenario=_text_field(data, "scenario"), spec=spec,
                book=_book(data))


def card_from_chunks(chunks: dict[str, str], file: str) -> Card:
    """The card in a PNG's text chunks: `ccv3` if readable, else `chara`."""
    present = [k for k in CARD_CHUNKS if k in chunks]
    if not present:
        raise CardError("PNG has no 'chara' or 'ccv3' text chunk")
    first_error: CardError | None = None
    for keyword in present:
        try:
            return card_from_json(_decode_chunk(chunks[keyword], keyword), file)
        except CardError as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def card_from_png(data: bytes, file: str) -> Card:
    """The card embedded in PNG bytes: `ccv3` if readable, else `chara`."""
    return card_from_chunks(png_text_chunks(data), file)


def read_card(path: Path, file: str | None = None) -> Card:
    """The card in a `.png` or `.json` file; `file` is the name recorded as its id (default: its name).
    Reads at most `MAX_CARD_BYTES` of JSON, and only the text chunks of a PNG."""
    file = file or path.name
    try:
        with open(path, "rb") as handle:
            if handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE:
                handle.seek(0)
                return card_from_chunks(read_png_text(handle), file)
            handle.seek(0)
            data = handle.read(MAX_CARD_BYTES + 1)
    except OSError as exc:
        raise CardError(f"cannot read card: {exc.strerror or type(exc).__name__}") from exc
    if len(data) > MAX_CARD_BYTES:
        raise CardTooLarge(f"card file is larger than {MAX_CARD_BYTES:,} bytes")
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:
        raise CardError(f"card is neither a PNG nor JSON: {type(exc).__name__}: {_short(exc)}") from exc
    return card_from_json(obj, file)


def has_card_chunk(path: Path) -> bool:
    """Whether a PNG file claims to be a card (has a `chara`/`ccv3` chunk), reading only its text chunks."""
    try:
        with open(path, "rb") as handle:
            chunks = read_png_text(handle)
        return any(k in chunks for k in CARD_CHUNKS)
    except CardTooLarge:
        return True
    except (OSError, CardError):
        return False


# ---------------------------------------------------------------------------------------------------
# The sheet

_CHAR_MACRO = re.compile(r"\{\{char\}\}|<BOT>", re.I)
_USER_MACRO = re.compile(r"\{\{user\}\}|<USER>", re.I)
_INSTRUCTION_PATTERNS = (
    re.compile(r"\{\{//.*?\}\}", re.S),                                     # {{// a comment for the card's reader}}
    re.compile(r"\{\{(?:trim|noop|original)\}\}", re.I),
    re.compile(r"<!--.*?-->", re.S),
    re.compile(r"\(\((?:.|\n)*?\)\)|\[\[(?:.|\n)*?\]\]"),                  # ((...)) [[...]]
    re.compile(r"[\[(]\s*(?:OOC|O\.O\.C\.?|System(?:\s+note)?|Note\s+to\s+(?:the\s+)?(?:AI|model|bot|LLM)"
               r"|AI\s+note|Instructions?|Directive|Author'?s\s+note|Jailbreak)\s*[:\-][^\])]*[\])]", re.I),
    re.compile(r"^[ \t]*(?:OOC|System\s+note|Note\s+to\s+(?:the\s+)?(?:AI|model|bot)|AI\s+note|Instructions?)"
               r"[ \t]*:.*$", re.I | re.M),
    re.compile(r"^[ \t]*<START>[ \t]*$", re.I | re.M),
)
_GONE = "\x00"
_AROUND_GONE = re.compile(r"[ \t]*\x00[ \t]*")


def strip_instructions(text: str) -> str:
    """`text` without instructions to the model or notes to the reader (see the module docstring).
    A line that held only such an instruction goes; other lines keep their words."""
    marked = text.replace(_GONE, "")
    for pattern in _INSTRUCTION_PATTERNS:
        marked = pattern.sub(_GONE, marked)
    lines = []
    for line in marked.split("\n"):
        if _GONE in line:
            line = _AROUND_GONE.sub(" ", line).strip()
            if not line:
                continue
        lines.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def replace_macros(text: str, char_name: str, user_name: str | None) -> str:
    """`{{char}}`/`<BOT>` -> the card's name; `{{user}}`/`<USER>` -> the user's persona when known
    (left as is otherwise, rather than guessing a name)."""
    text = _CHAR_MACRO.sub(lambda _: char_name, text)
    if user_name:
        text = _USER_MACRO.sub(lambda _: user_name, text)
    return text


def _clean(text: str, char_name: str, user_name: str | None) -> str:
    return replace_macros(strip_instructions(text), char_name, user_name).strip()


def _name_keys(name: str) -> set[str]:
    words = {w for w in re.split(r"[^\w']+", name.casefold()) if len(w) >= 3}
    return {name.casefold(), "{{char}}", "<bot>"} | words


def is_about(entry: BookEntry, name: str) -> bool:
    """Whether a lorebook entry is about the character: one of its keys is the name, a word of it, or `{{char}}`."""
    names = _name_keys(name)
    return any(key.strip().casefold() in names for key in entry.keys)


def card_sheet(card: Card, user_name: str | None = None) -> str | None:
    """The character's sheet from its card (mapping in the module docstring): the description, then
    `Personality: ...`, then `Lore: ...` per lorebook entry about the character; None when empty."""
    parts = []
    description = _clean(card.description, card.name, user_name)
    if description:
        parts.append(description)
    personality = _clean(card.personality, card.name, user_name)
    if personality:
        parts.append(f"Personality: {personality}")
    for entry in card.book:
        if entry.enabled and is_about(entry, card.name):
            content = _clean(entry.content, card.name, user_name)
            if content:
                parts.append(f"Lore: {content}")
    return "\n\n".join(parts) or None


def persona_sheet(description: str, user_name: str) -> str | None:
    """A persona's sheet: its description (SillyTavern's persona description), cleaned like a card's."""
    text = _USER_MACRO.sub(lambda _: user_name, strip_instructions(description)).strip()
    return text or None
