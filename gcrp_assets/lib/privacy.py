"""Forum handles are personal data: they never reach training text, prompts or reports.

A mention of a handle (`@nightowl_77`, or the bare handle) becomes the character that member
plays in the thread when there is exactly one, and is removed otherwise. Reply headers (`RE: …`)
and signatures (`-- handle`, `~ posted from my phone`) are dropped whole.
"""

from __future__ import annotations

import re
from typing import Iterable

# Whole lines, with their newline, so no blank line is left where they stood.
_RE_LINE = re.compile(r"^[ \t]*(?:\*\*)?RE\s*:.*(?:\n|$)", re.I | re.M)
_SIGNATURE = re.compile(r"^[ \t]*(?:--+|~+|—)[ \t]*\S.*(?:\n|$)", re.M)
_SENT_FROM = re.compile(r"^[ \t]*(?:sent|posted) from my .*(?:\n|$)", re.I | re.M)
_MANY_NEWLINES = re.compile(r"\n{3,}")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([,.;:!?])")
_DOUBLE_SPACE = re.compile(r"[ \t]{2,}")


class HandleScrubber:
    """Replaces or removes every known handle in a text. Built once per dump."""

    def __init__(self, handles: Iterable[str], protected_names: Iterable[str] = ()):
        protected = {n.casefold() for n in protected_names}
        # A handle that is also a character's name is allowed to appear (contract exception).
        self.handles = sorted({h for h in handles if h and h.strip() and h.casefold() not in protected},
                              key=len, reverse=True)
        self._pattern = (
            re.compile(r"(?<![\w@])@?(" + "|".join(re.escape(h) for h in self.handles) + r")(?![\w])([ \t]*[,:])?",
                       re.I)
            if self.handles else None
        )
        self._canonical = {h.casefold(): h for h in self.handles}

    def scrub(self, text: str, character_of: dict[str, str] | None = None) -> str:
        text = _RE_LINE.sub("", text)
        text = _SENT_FROM.sub("", text)
        text = _SIGNATURE.sub("", text)
        if self._pattern is not None:
            mapping = {k.casefold(): v for k, v in (character_of or {}).items()}
            # "@handle, look" -> "Mira Vell, look" when the member plays one character here, else "look".
            text = self._pattern.sub(
                lambda m: (mapping[m.group(1).casefold()] + (m.group(2) or "")) if m.group(1).casefold() in mapping
                else "", text)
        text = _DOUBLE_SPACE.sub(" ", text)
        text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
        lines = [line.strip() for line in text.split("\n")]
        return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()

    def find(self, text: str) -> list[str]:
        """Handles still present in `text` (used by the privacy asset check)."""
        if self._pattern is None or not text:
            return []
        return sorted({self._canonical.get(m.group(1).casefold(), m.group(1)) for m in self._pattern.finditer(text)})
