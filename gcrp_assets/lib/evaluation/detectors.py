"""Failure detectors on a continuation: speaker headers, impersonation of the user's character."""

from __future__ import annotations

import re

from gcrp_assets.lib.formats.chat_format import ChatFormat


def _header_pattern(names, fmt: ChatFormat) -> re.Pattern | None:
    names = [n for n in dict.fromkeys(names) if n]
    if not names:
        return None
    heads = sorted({re.escape(p.lstrip("\n")) for p in fmt.role_prefix.values() if p.strip()}, key=len, reverse=True)
    lead = "|".join(["^", "\n", *heads])
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?:{lead})[ \t]*(?:\*\*)?(?P<name>{alternatives})(?:\*\*)?[ \t]*:", re.I)


def speaker_headers(text: str, names, fmt: ChatFormat) -> list[tuple[int, str]]:
    """`(offset, name)` of every speaker header `Name:` for one of `names` in `text`: at the start of a line
    (optionally in `**bold**`) or right after one of the format's role headers (`::::user:Name:`)."""
    pattern = _header_pattern(names, fmt)
    if pattern is None:
        return []
    canonical = {n.lower(): n for n in names if n}
    return [(m.start(), canonical.get(m.group("name").lower(), m.group("name"))) for m in pattern.finditer(text)]


def impersonation_offset(text: str, user_character: str, fmt: ChatFormat) -> int | None:
    """Character offset where a stop on the user's name (SillyTavern `\\n{user}:`) would fire in `text`, or None."""
    hits = speaker_headers(text, [user_character], fmt)
    return hits[0][0] if hits else None


def impersonates(continuation: str, user_character: str, fmt: ChatFormat) -> bool:
    """The continuation writes a turn for the user's character, inside the reply or after it (stops off)."""
    return impersonation_offset(continuation, user_character, fmt) is not None
