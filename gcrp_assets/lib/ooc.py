"""Out-of-character (OOC) remarks: find them, count them, strip them from roleplay text.

Forum players step out of the story with `((brb))`, `[[…]]`, `(OOC: …)` or a line starting
`OOC:`. The patterns follow the PygmalionAI data-toolbox conventions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_INLINE = re.compile(
    r"\(\((?:.|\n)*?\)\)"            # ((brb, dinner))
    r"|\[\[(?:.|\n)*?\]\]"           # [[sorry for the wait]]
    r"|\(\s*OOC\s*[:\-][^)]*\)",     # (OOC: short post)
    re.I,
)
_LINE = re.compile(r"^\s*(?:\*\*)?(?:OOC|O\.O\.C\.?)(?:\*\*)?\s*[:\-].*$", re.I | re.M)
_MANY_NEWLINES = re.compile(r"\n{3,}")
_SPACES = re.compile(r"[ \t]{2,}")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([,.;:!?])")


@dataclass(frozen=True)
class OocSplit:
    text: str          # the in-character text that remains
    remarks: list[str]  # the OOC remarks that were removed

    @property
    def is_ooc_only(self) -> bool:
        return bool(self.remarks) and not self.text


def split_ooc(text: str) -> OocSplit:
    remarks: list[str] = []

    def take(match: re.Match[str]) -> str:
        remarks.append(match.group(0).strip())
        return ""

    cleaned = _INLINE.sub(take, text)
    cleaned = _LINE.sub(take, cleaned)
    lines = [_SPACE_BEFORE_PUNCT.sub(r"\1", _SPACES.sub(" ", line)).strip() for line in cleaned.split("\n")]
    cleaned = _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()
    return OocSplit(cleaned, remarks)
