"""Which character wrote a post, by the contract's rules, in order:

1. the post's own `character` field;
2. the only character its author plays in the thread's `characters[]`;
3. a leading name header (`**Name**` or `Name:`) naming one of the author's characters;
4. otherwise unattributed (counted by the caller, never silently dropped).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Attribution:
    character: str | None
    method: str  # "field" | "only_character" | "name_header" | "unattributed"
    text: str    # post text with a recognised name header removed


@functools.lru_cache(maxsize=4096)
def _header_pattern(name: str) -> re.Pattern[str]:
    escaped = re.escape(name)
    return re.compile(
        rf"^\s*(?:\*\*\s*{escaped}\s*:?\s*\*\*\s*:?|{escaped}\s*:)[ \t]*\n?", re.I)


def attribute(author: str, character_field: str | None, text: str,
              characters_by_player: dict[str, list[str]]) -> Attribution:
    """`text` is already cleaned (Markdown emphasis), so an HTML `<b>Name</b>` header reads `**Name**`."""
    played = characters_by_player.get(author, [])
    if character_field:
        return Attribution(character_field, "field", _strip_header(text, [character_field]))
    if len(played) == 1:
        return Attribution(played[0], "only_character", _strip_header(text, played))
    for name in sorted(played, key=len, reverse=True):  # longest first: "Mira Vell" before "Mira"
        match = _header_pattern(name).match(text)
        if match:
            return Attribution(name, "name_header", text[match.end():].lstrip())
    return Attribution(None, "unattributed", text)


def _strip_header(text: str, names: list[str]) -> str:
    """A post that repeats its speaker's name as a header would otherwise say `Name: Name: …`."""
    for name in names:
        match = _header_pattern(name).match(text)
        if match and text[match.end():].strip():
            return text[match.end():].lstrip()
    return text
