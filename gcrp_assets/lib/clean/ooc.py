"""Out-of-character (OOC) remarks: find them, count them, strip them from roleplay text.

Forum players step out of the story with `((brb))`, `[[…]]`, `(OOC: …)`, `[OOC: …]`, a line
starting `OOC:`, an `OOC:` tail after the last sentence of a line, or a tag line aimed at the
next player (`@handle your move!`). The patterns follow the PygmalionAI data-toolbox conventions.

What happens to the remarks is the OOC policy (`OOC_POLICIES`, chosen in `FilterConfig`):

- `strip` (default): the remarks are removed, the in-character text stays;
- `keep`: the remarks are removed from the post and kept as a name-less turn `(OOC: …)` right
  after it (Herrsimian-style: OOC trained without a character name);
- `drop_post`: a post with any OOC remark is dropped whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gcrp_assets.lib.clean.markup import collapse_blank_lines, drop_space_before_punctuation

OOC_POLICIES = ("strip", "keep", "drop_post")

_INLINE = re.compile(
    r"\(\((?:.|\n)*?\)\)"            # ((brb, dinner))
    r"|\[\[(?:.|\n)*?\]\]"           # [[sorry for the wait]]
    r"|\(\s*OOC\s*[:\-][^)]*\)"      # (OOC: short post)
    r"|\[\s*OOC\s*[:\-][^\]]*\]",    # [OOC: short post]
    re.I,
)
_LINE = re.compile(r"^\s*(?:\*\*)?(?:OOC|O\.O\.C\.?)(?:\*\*)?\s*[:\-].*$", re.I | re.M)
# "She left. OOC: brb" -- an OOC tail after a finished sentence on the same line.
_TAIL = re.compile(r"(?<=[.!?\"”*)])[ \t]+(?:\*\*)?OOC(?:\*\*)?\s*:.*$", re.M)
# "@handle your move!" -- a short line that only pings the next player.
_TAG_LINE = re.compile(r"^[ \t]*@[^\s@]+[^\n\"“”]*$", re.M)
_TAG_LINE_MAX_WORDS = 8
_GONE = "\x00"
_SPACES = re.compile(r"[ \t]{2,}")
_WRAPPERS = [
    re.compile(r"^\(\((.*)\)\)$", re.S),
    re.compile(r"^\[\[(.*)\]\]$", re.S),
    re.compile(r"^[(\[]\s*(?:OOC|O\.O\.C\.?)\s*[:\-]\s*(.*?)[)\]]$", re.S | re.I),
    re.compile(r"^(?:\*\*)?(?:OOC|O\.O\.C\.?)(?:\*\*)?\s*[:\-]\s*(.*)$", re.S | re.I),
]


@dataclass(frozen=True)
class OocSplit:
    text: str          # the in-character text that remains
    remarks: list[str]  # the OOC remarks that were removed

    @property
    def is_ooc_only(self) -> bool:
        return bool(self.remarks) and not self.text


def split_ooc(text: str, tidy: bool = False) -> OocSplit:
    """The OOC remarks out of `text`. With `tidy` the caller vouches that `text` is tidy, as `markup.to_text` writes
    it (single spaces, no tabs, stripped lines, at most one blank line, no control characters): when no remark is
    taken out, only spaces before punctuation can change."""
    remarks: list[str] = []

    def take(match: re.Match[str]) -> str:
        remarks.append(match.group(0).strip())
        return ""

    def take_line(match: re.Match[str]) -> str:
        take(match)
        return _GONE  # the whole line goes, with its line break

    def take_tag(match: re.Match[str]) -> str:
        if len(match.group(0).split()) > _TAG_LINE_MAX_WORDS:
            return match.group(0)
        return take_line(match)

    # Each pattern runs only where its literal part occurs (`OOC` in any case: `re.I` folds `o` and `c` to
    # nothing else): most posts have no OOC at all, and every pass scans the whole post.
    folded = text.lower()
    says_ooc = "ooc" in folded or "o.o.c" in folded
    cleaned = _INLINE.sub(take, text) if says_ooc or "((" in text or "[[" in text else text
    if says_ooc:
        cleaned = _LINE.sub(take_line, cleaned)
    if "OOC" in text:
        cleaned = _TAIL.sub(take, cleaned)
    if "@" in text:
        cleaned = _TAG_LINE.sub(take_tag, cleaned)
    if tidy and not remarks:  # nothing taken out (every replacement records a remark): the text is as it came
        return OocSplit(drop_space_before_punctuation(text), [])
    if "  " in cleaned or "\t" in cleaned:
        cleaned = _SPACES.sub(" ", cleaned)
    cleaned = drop_space_before_punctuation(cleaned)
    lines = [line.strip() for line in cleaned.split("\n") if line.strip() != _GONE]
    cleaned = "\n".join(lines)
    cleaned = collapse_blank_lines(cleaned).strip()
    return OocSplit(cleaned, [r for r in remarks if r])


def ooc_inner(remark: str) -> str:
    """The words of a remark without its wrapper: `((brb))` -> `brb`, `OOC: back later` -> `back later`."""
    text = remark.strip()
    changed = True
    while changed and text:  # `[[OOC: x]]` loses both wrappers
        changed = False
        for pattern in _WRAPPERS:
            match = pattern.match(text)
            if match:
                text = match.group(1).strip()
                changed = True
                break
    return text


def format_ooc(remarks: list[str]) -> str:
    """The name-less OOC turn of one post: `(OOC: brb, dinner)`, one line per remark; "" if none has words."""
    inner = [ooc_inner(r) for r in remarks]
    return "\n".join(f"(OOC: {text})" for text in inner if text)
