"""Character cards (V1, V2, V3) as JSON or PNG: the name and the sheet a thread's character needs.

A card is the SillyTavern equivalent of a forum character sheet. Only what describes the character
goes into the sheet: `description`, `personality` and `scenario`, labelled so the sheet parser
downstream sees sections. `first_mes`, example dialogues, `creator_notes` and system prompts are
not a character's sheet (creator notes must never reach a prompt) and are left out.

Formats (see the reference's §6): V1 keeps its fields at the root; V2 (`spec: chara_card_v2`) and V3
(`spec: chara_card_v3`) under `data`. A PNG card carries base64 JSON in a tEXt chunk: `chara` (V2)
or `ccv3` (V3). SillyTavern writes both, and `ccv3` wins when both are present, as in SillyTavern's
own reader; if `ccv3` is unreadable but `chara` is fine, `chara` is used rather than losing the card.
The PNG is walked chunk by chunk, never decoded as an image, so a large or odd image cannot stop
a card from being read.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_CHUNKS = ("ccv3", "chara")  # in order of preference
_V1_FIELDS = ("description", "personality", "scenario", "first_mes", "mes_example")


class CardError(ValueError):
    """This file is not a readable character card (the message says why)."""


@dataclass(frozen=True)
class Card:
    file: str  # file name inside the export: SillyTavern's stable id of a group member
    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    spec: str = "v1"  # "v1", "chara_card_v2" or "chara_card_v3"


def png_text_chunks(data: bytes) -> dict[str, str]:
    """Keyword (lower-cased) -> text of every tEXt and iTXt chunk; the first one wins per keyword."""
    if not data.startswith(PNG_SIGNATURE):
        raise CardError("not a PNG file")
    chunks: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) < length:
            raise CardError(f"PNG chunk {kind.decode('latin-1')!r} is truncated")
        if kind == b"tEXt":
            keyword, sep, text = body.partition(b"\0")
            if sep:
                chunks.setdefault(keyword.decode("latin-1").lower(), text.decode("latin-1"))
        elif kind == b"iTXt":
            keyword, sep, rest = body.partition(b"\0")
            if sep and len(rest) >= 2:
                compressed, rest = rest[0], rest[2:]
                _language, _, rest = rest.partition(b"\0")
                _translated, _, text = rest.partition(b"\0")
                try:
                    raw = zlib.decompress(text) if compressed else text
                    chunks.setdefault(keyword.decode("latin-1").lower(), raw.decode("utf-8"))
                except (zlib.error, UnicodeDecodeError):
                    pass  # an unreadable unrelated chunk must not cost the card
        elif kind == b"IEND":
            break
        pos += 12 + length  # length, type, body, CRC
    return chunks


def _decode_chunk(text: str, keyword: str) -> Any:
    """A card chunk's JSON: base64 of UTF-8 JSON (some tools store the JSON itself)."""
    text = text.strip()
    try:
        if not text.startswith("{"):
            text = base64.b64decode(text + "=" * (-len(text) % 4), validate=False).decode("utf-8")
        return json.loads(text)
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"PNG chunk {keyword!r} is not base64 JSON: {exc}") from exc


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
                personality=_text_field(data, "personality"), scenario=_text_field(data, "scenario"), spec=spec)


def card_from_png(data: bytes, file: str) -> Card:
    """The card embedded in a PNG: `ccv3` if readable, else `chara`."""
    chunks = png_text_chunks(data)
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


def read_card(path: Path, file: str | None = None) -> Card:
    """The card in a `.png` or `.json` file; `file` is the name recorded as its id (default: its name)."""
    file = file or path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CardError(f"cannot read card: {exc}") from exc
    if data.startswith(PNG_SIGNATURE):
        return card_from_png(data, file)
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"card is neither a PNG nor JSON: {exc}") from exc
    return card_from_json(obj, file)


_CHAR_MACRO = re.compile(r"\{\{char\}\}|<BOT>", re.I)
_USER_MACRO = re.compile(r"\{\{user\}\}|<USER>", re.I)


def replace_macros(text: str, char_name: str, user_name: str | None) -> str:
    """`{{char}}`/`<BOT>` -> the card's name; `{{user}}`/`<USER>` -> the user's persona when known
    (left as is otherwise, rather than guessing a name)."""
    text = _CHAR_MACRO.sub(lambda _: char_name, text)
    if user_name:
        text = _USER_MACRO.sub(lambda _: user_name, text)
    return text


def card_sheet(card: Card, user_name: str | None = None) -> str | None:
    """The labelled sheet: "Description: …\\nPersonality: …\\nScenario: …", empty parts left out."""
    parts = [(label, value.strip()) for label, value in
             (("Description", card.description), ("Personality", card.personality), ("Scenario", card.scenario))
             if value and value.strip()]
    if not parts:
        return None
    return "\n".join(f"{label}: {replace_macros(value, card.name, user_name)}" for label, value in parts)
