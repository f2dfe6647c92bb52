"""Forum handles are personal data: they never reach training text, prompts or reports.

A bare mention of a handle (`nightowl_77, thoughts?`) becomes the character that member plays in
the thread when there is exactly one, and is removed otherwise. An @-mention (`@nightowl_77`) is
forum machinery, not story, and is removed, as is any other `@name` and any e-mail address.
Reply headers (`RE: …`) at the top of a post and signatures at its end (`-- handle`,
`~*~ handle ~*~`, `~ posted from my phone`, `Sent from my phone`) are dropped whole.
"""

from __future__ import annotations

import functools
import re
from typing import Iterable

import numpy as np

from gcrp_assets.lib.clean.markup import collapse_blank_lines, drop_space_before_punctuation

# Whole lines, with their newline, so no blank line is left where they stood.
_RE_LINE = re.compile(r"^[ \t]*(?:\*\*)?RE\s*:.*$", re.I)
_SIGNATURE = re.compile(r"^[ \t]*(?:--+|~+|—)[ \t]*\S[^\"“”]*$")
_SENT_FROM = re.compile(r"^[ \t]*[~\-]*[ \t]*(?:sent|posted) from my [^\"“”]*$", re.I)
_SIGNATURE_MAX_WORDS = 12
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_MENTION = re.compile(r"(?<![\w@])@[A-Za-z0-9_][\w.&'-]*(?<![.'-])([ \t]*[,:])?")
_DOUBLE_SPACE = re.compile(r"[ \t]{2,}")
_BEFORE_CLOSING = re.compile(r"[ \t]*[,;]?[ \t]+(?=[)\]])|[,;](?=[)\]])")


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex alternative for many literal words, factored by common prefixes: much faster than
    `a|b|c|…` for hundreds of handles, and it prefers the longest word like longest-first alternation."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word.lower():
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 and len(branches[0]) == 1 else "(?:" + "|".join(branches) + ")"
        if len(branches) == 1 and not ("" in node):
            return branches[0]
        return body + "?" if "" in node else body

    return build(trie)


def _is_signature(line: str) -> bool:
    return bool((_SIGNATURE.match(line) or _SENT_FROM.match(line)) and len(line.split()) <= _SIGNATURE_MAX_WORDS)


def strip_reply_headers_and_signatures(text: str) -> str:
    """`RE: title` lines at the top and signature lines at the bottom of a post go; the middle stays."""
    lines = text.split("\n")
    start, end = 0, len(lines)
    while start < end and (not lines[start].strip() or _RE_LINE.match(lines[start])):
        start += 1
    while end > start and (not lines[end - 1].strip() or _is_signature(lines[end - 1])):
        end -= 1
    return text if start == 0 and end == len(lines) else "\n".join(lines[start:end])


# ASCII text to its words (maximal runs of `\w` characters), lower-cased, as bytes: one C-level translate and split.
ASCII_WORD_BYTES = bytes(c if c < 128 and (chr(c).isalnum() or c == ord("_")) else ord(" ")
                         for c in range(256)).lower()


def _ascii_forms(handle: str) -> str | None:
    """The handle as an ASCII text would spell it under the scrubber's case-insensitive match, lower-cased; None
    when no ASCII text can match it. A non-ASCII character matches an ASCII one only through a case equivalence of
    the regular-expression engine (the Kelvin sign and `k`, dotted `İ` and `i`, long `ſ` and `s`), asked of the
    engine itself."""
    out = []
    for ch in handle:
        if ch.isascii():
            out.append(ch.lower())
            continue
        same = {a.lower() for a in map(chr, range(128)) if re.fullmatch(re.escape(ch), a, re.I)}
        if len(same) != 1:
            return None
        out.append(same.pop())
    return "".join(out)


@functools.cache
def _ascii_lookalikes() -> re.Pattern[str]:
    """The non-ASCII characters that the handle pattern's case-insensitive match equates with an ASCII letter
    (the Kelvin sign, dotted `İ`, long `ſ`, …), found by asking the regular-expression engine itself over every
    code point once."""
    # Every code point but ASCII and the surrogates, as one string decoded from UTF-32 (0.01 s; joining a
    # million `chr` calls took 0.15 s in every worker process).
    codes = np.concatenate([np.arange(0x80, 0xD800, dtype="<u4"), np.arange(0xE000, 0x110000, dtype="<u4")])
    every = codes.tobytes().decode("utf-32-le")
    found = re.findall("[a-z]", every, re.I)
    return re.compile("[" + "".join(map(re.escape, found)) + "]" if found else "(?!)")


def _key_words(handles: Iterable[str]) -> dict[bytes, list[str]] | None:
    """One word per handle that an ASCII text must hold as a whole word wherever the handle matches in it, and the
    handles of each such word.

    The handle pattern only matches after a character that is not a word character or `@` and before one that is
    not a word character, so each maximal run of word characters inside a handle is a whole word of the text too.
    None when some handle has no word character (nothing to look for: the pattern always runs)."""
    keys: dict[bytes, list[str]] = {}
    for handle in handles:
        form = _ascii_forms(handle.lower())  # the pattern's literal (`_trie_pattern` lower-cases)
        if form is None:
            continue  # no ASCII text can hold it
        words = form.encode("ascii").translate(ASCII_WORD_BYTES).split()
        if not words:
            return None
        keys.setdefault(max(words, key=len), []).append(handle)
    return keys


def _handle_pattern(handles: list[str]) -> re.Pattern[str]:
    """`handles` (longest first) as one case-insensitive pattern: an optional `@`, the handle as a whole word, and a
    `,` or `:` right after it."""
    return re.compile(r"(?<![\w@])(@?)(" + _trie_pattern(handles) + r")(?!\w)([ \t]*[,:])?", re.I)


# Patterns kept per scrubber for the sets of key words met in texts (see `HandleScrubber._pattern_in`).
_MAX_SUBPATTERNS = 4096


class HandleScrubber:
    """Replaces or removes every known handle in a text. Built once per dump.

    The handle pattern (one trie-shaped alternation) is tried at every position of a text, the slow part of
    cleaning; an ASCII text (most forum posts) first has its words compared with one key word per handle
    (`_key_words`), a set lookup, and only the handles whose key word the text holds go into the pattern it runs
    (the others cannot match there; the patterns are kept per set of key words). Same results either way."""

    def __init__(self, handles: Iterable[str], protected_names: Iterable[str] = ()):
        protected = {n.casefold() for n in protected_names}
        # A handle that is also a character's name is allowed to appear (contract exception).
        self.handles = sorted({h for h in handles if h and h.strip() and h.casefold() not in protected},
                              key=lambda h: (-len(h), h))
        self._pattern = _handle_pattern(self.handles) if self.handles else None
        self._canonical = {h.casefold(): h for h in self.handles}
        self._handles_of = _key_words(self.handles) if self.handles else None
        self._keys = frozenset(self._handles_of) if self._handles_of is not None else None
        self._subpatterns: dict[frozenset[bytes], re.Pattern[str]] = {}
        self._ascii_handles = all(h.isascii() for h in self.handles)

    def _pattern_in(self, text: str) -> re.Pattern[str] | None:
        """The pattern to run on `text`: None when no handle can match in it (so nothing need run).

        A text with other characters (curly quotes, accents) is looked at with those characters as separators,
        when every handle is ASCII and the text has no character that the pattern's case folding equates with
        an ASCII letter (`_ascii_lookalikes`): a handle match is then ASCII text between separators. Any other
        text runs the whole pattern."""
        if self._pattern is None:
            return None
        if self._keys is None:
            return self._pattern
        if text.isascii():
            view = text.encode("ascii")
        elif self._ascii_handles and _ascii_lookalikes().search(text) is None:
            view = text.encode("ascii", "replace")  # every other character becomes `?`, a separator
        else:
            return self._pattern
        hits = self._keys.intersection(view.translate(ASCII_WORD_BYTES).split())
        if not hits:
            return None
        pattern = self._subpatterns.get(hits)
        if pattern is None:
            if len(self._subpatterns) >= _MAX_SUBPATTERNS:
                self._subpatterns.clear()
            handles = sorted((h for key in hits for h in self._handles_of[key]), key=lambda h: (-len(h), h))
            pattern = self._subpatterns[hits] = _handle_pattern(handles)
        return pattern

    def may_contain_handle(self, text: str) -> bool:
        """False only when no handle can match in `text` (so the handle pattern need not run)."""
        return self._pattern_in(text) is not None

    def scrub(self, text: str, character_of: dict[str, str] | None = None,
              may_leak: list[str] | None = None, tidy: bool = False) -> str:
        """`text` without handles, @-mentions, e-mail addresses, reply headers and signatures.

        `may_leak`, when given, receives the result if the handle pattern ran on the text: only such a result can
        still hold a handle (e.g. `Night  Owl`, which the pattern misses, made `Night Owl` when the double space
        goes). A text that the pattern did not need to run on holds none of the handles' key words, and the
        steps after the pattern only delete characters that stand next to a non-word character (mentions,
        spaces, commas before a bracket), which never joins or cuts a word: the result holds no key word either,
        so no handle (`_facts` checks only the results in `may_leak`).

        With `tidy` the caller vouches that `text` is as `ooc.split_ooc` leaves tidy text (single spaces, no tabs,
        no space before punctuation, stripped lines, at most one blank line): when nothing else changes it, the
        tidying steps are skipped but for the one before closing brackets."""
        original = text
        text = strip_reply_headers_and_signatures(text)
        if "@" in text:
            text = _EMAIL.sub("", text)
        pattern = self._pattern_in(text)
        if pattern is not None:
            mapping = {k.casefold(): v for k, v in (character_of or {}).items()}

            def replace(m: re.Match[str]) -> str:
                if m.group(1):  # "@handle, look" -> "look": a mention is not story
                    return ""
                # "handle, look" -> "Mira Vell, look" when the member plays one character here, else "look".
                name = mapping.get(m.group(2).casefold())
                return name + (m.group(3) or "") if name else ""

            text = pattern.sub(replace, text)
        if "@" in text:
            text = _MENTION.sub("", text)
        # Tidy text that nothing above changed needs only the closing-bracket step (which adds no space, tab or
        # line break, so the text stays tidy).
        retidy = not tidy or text != original
        if retidy:
            if "  " in text or "\t" in text:
                text = _DOUBLE_SPACE.sub(" ", text)
            text = drop_space_before_punctuation(text)
        if ")" in text or "]" in text:
            text = _BEFORE_CLOSING.sub("", text)  # "(brb, @handle)" -> "(brb)"
        if retidy:
            joined = "\n".join([line.strip() for line in text.split("\n")])
            text = collapse_blank_lines(joined).strip()
        if pattern is not None and may_leak is not None:
            may_leak.append(text)
        return text

    def find(self, text: str | None) -> list[str]:
        """Handles still present in `text` (used by the privacy asset checks)."""
        pattern = self._pattern_in(text) if text else None
        if pattern is None:
            return []
        return sorted({self._canonical.get(m.group(2).casefold(), m.group(2)) for m in pattern.finditer(text)})
