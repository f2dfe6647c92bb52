"""Forum markup (HTML, BBCode, plain text) to clean plain text with Markdown emphasis.

BBCode is first rewritten into the equivalent HTML, then one HTML parser (selectolax) walks the
tree: paragraphs and line breaks survive, bold and italics become `**…**` and `*…*`, quoted
replies, images, scripts and link targets are dropped. `ftfy` repairs mojibake afterwards, and only
mojibake: legitimate Unicode is kept as written (curly quotes, CJK full-width punctuation and letters,
ligatures, unnormalized forms), see `fix_encoding`.

Two kinds of debris that are not forum markup go too:

- `strip_reasoning`: LLM reasoning blocks (`<think>…</think>`, `<thinking>…</thinking>`, any case), an
  unclosed opening tag with everything after it, an orphan closing tag with everything before it.
  `to_text(raw, counts)` adds the number of blocks removed to `counts["n_reasoning_blocks"]`;
- `strip_non_ascii_tags`: tag-like `<结束>`, `</回复>`, `<Ответ id=2>` (a name with a non-ASCII letter,
  which no HTML parser reads as a tag): the tags go, the words between them stay. `a < b > c`, `<3`,
  `<<цитата>>` stay as written.

Then a few conservative text repairs, each a small function with its own golden test
(PygmalionAI data-toolbox practice, roleplay-data.md §3):

- `remove_urls`: bare URLs, Markdown links (the words stay) and Markdown images go;
- `normalize_whitespace`: one space between words, no zero-width characters, at most one blank
  line between paragraphs;
- `fix_glued_emphasis`: `**bold**text` -> `**bold** text`, `said*softly*` -> `said *softly*`;
- `cap_punctuation_runs`: runs of `.`, `!`, `?`, `*`, `-` longer than three are cut to three;
- `fix_sentence_spacing`: `door.Then` -> `door. Then` (only lowercase word, punctuation, then a
  capitalised word, so abbreviations, numbers and file names stay as written).
"""

from __future__ import annotations

import re
from operator import itemgetter
from typing import Callable

import ftfy
from selectolax.lexbor import LexborHTMLParser, LexborNode

_HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^>]*>|<br\s*/?>|&[a-zA-Z]+;|&#\d+;")
_BBCODE_TAG = re.compile(r"\[/?(?:b|i|u|s|em|strong|quote|url|img|color|size|font|center|left|right|list|\*|table|tr|td|th|spoiler|code|indent|hr)\b[^\]]*\]", re.I)

# BBCode tag -> HTML. Order matters only for readability; each rule is independent.
_BBCODE_RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # Literal replacements or functions: a `\1` template is expanded by Python code for every match (table cells).
    (re.compile(r"\[(?:b|strong)\]", re.I), "<b>"),
    (re.compile(r"\[/(?:b|strong)\]", re.I), "</b>"),
    (re.compile(r"\[(?:i|em)\]", re.I), "<i>"),
    (re.compile(r"\[/(?:i|em)\]", re.I), "</i>"),
    (re.compile(r"\[/?(u|s|center|left|right|indent|font(=[^\]]*)?|size(=[^\]]*)?|color(=[^\]]*)?)\]", re.I), ""),
    (re.compile(r"\[quote(=[^\]]*)?\]", re.I), "<blockquote>"),
    (re.compile(r"\[/quote\]", re.I), "</blockquote>"),
    (re.compile(r"\[spoiler(=[^\]]*)?\]", re.I), "<div>"),
    (re.compile(r"\[/spoiler\]", re.I), "</div>"),
    (re.compile(r"\[img(=[^\]]*)?\].*?\[/img\]", re.I | re.S), ""),
    (re.compile(r"\[url=[^\]]*\]", re.I), "<a>"),
    (re.compile(r"\[url\].*?\[/url\]", re.I | re.S), ""),
    (re.compile(r"\[/url\]", re.I), "</a>"),
    (re.compile(r"\[list(=[^\]]*)?\]", re.I), "<ul>"),
    (re.compile(r"\[/list\]", re.I), "</ul>"),
    (re.compile(r"\[\*\]", re.I), "<li>"),
    (re.compile(r"\[(/?)(table|tr|td|th)\]", re.I), lambda m: f"<{m[1]}{m[2]}>"),
    (re.compile(r"\[(/?)code\]", re.I), lambda m: f"<{m[1]}pre>"),
    (re.compile(r"\[hr\]", re.I), "<br>"),
]

# For each of `_BBCODE_RULES`: the tag names it can match (the name after `[` or `[/`, lowercased); a rule runs only
# on a text holding one.
_BBCODE_NAMES: list[frozenset[str]] = [frozenset(names.split()) for names in (
    "b strong", "b strong", "i em", "i em", "u s center left right indent font size color", "quote", "quote",
    "spoiler", "spoiler", "img", "url", "url", "url", "list", "list", "*", "table tr td th", "code", "hr")]
_BBCODE_NAME = re.compile(r"\[/?([a-z]+|\*)")
assert len(_BBCODE_NAMES) == len(_BBCODE_RULES)
# `sub(_GROUP_1, …)` = `sub(r"\1", …)` without expanding a template in Python for every match.
_GROUP_1 = itemgetter(1)

_DROP_TAGS = {"blockquote", "script", "style", "img", "iframe", "noscript", "head", "title", "video", "audio",
              "source", "object", "embed", "svg", "picture", "template"}
_BLOCK_TAGS = {"p", "div", "section", "article", "ul", "ol", "table", "pre", "h1", "h2", "h3", "h4", "h5", "h6"}
_BOLD = {"b", "strong"}
_ITALIC = {"i", "em"}
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_INVISIBLE = re.compile(r"[\u00ad\u200b\u2060\ufeff\ufffd]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The same characters as bytes: each is one byte in UTF-8, and no byte of a longer character is one of them.
_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# The characters of `_SPACES` other than " " and "\t" (`_SPACES.sub(" ", …)` changes only a text with two
# spaces in a row or one of these).
_OTHER_SPACES = re.compile(r"[\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_SERIALIZED_BREAK = re.compile(r"(<br\s*/?>|</?(?:p|div|li|ul|ol|tr|table|blockquote|h[1-6])\b[^>]*>)[ \t]*\n", re.I)
_IDEOGRAPHIC_SPACE = "\u3000"

# Repair mojibake only. ftfy's defaults also "normalize" text that is not broken: full-width CJK
# punctuation and letters to ASCII (`！` -> `!`), curly quotes to straight ones, `ﬁ` to `fi`, and NFC
# (which rewrites CJK compatibility ideographs). All of that is legitimate text and stays as written.
_FTFY_CONFIG = ftfy.TextFixerConfig(unescape_html="auto", fix_latin_ligatures=False, fix_character_width=False,
                                    uncurl_quotes=False, normalization=None, explain=False)

# When ftfy (with `_FTFY_CONFIG`) can change a text at all. `ftfy.fix_text` fixes a text line by line, each line
# in rounds until it is stable; a first round that changes nothing returns the line as it is. A round changes a
# line only through: HTML entities (`&`), a mojibake repair (only tried when `ftfy.badness.is_bad(line)`),
# C1 controls, line-break characters, surrogates, terminal escapes and ftfy's control characters (all in
# `_FTFY_CHARS`). So a text with none of those characters and no "bad" line comes out of ftfy unchanged, and
# ftfy (the slowest step of cleaning) is skipped for it. Checking the whole text at once is the same as checking
# each line: the badness pattern has no look-around, and `^` is matched at every line start (MULTILINE); a text
# longer than ftfy's segment length (where it also cuts lines) always goes through ftfy.
_FTFY_CHARS = re.compile("[&\r\x85\u2028\u2029\x80-\x9f\ud800-\udfff"
                         + "".join(re.escape(chr(c)) for c in sorted(ftfy.chardata.CONTROL_CHARS)) + "]")
_FTFY_BAD_LINE = re.compile(ftfy.badness.BADNESS_RE.pattern, ftfy.badness.BADNESS_RE.flags | re.M)
# The badness pattern is slow (dozens of alternatives tried at every position), but each of its alternatives
# needs at least one character of its classes and literals other than the punctuation of ordinary English
# text (curly quotes, dashes, ellipsis, no-break space), which alone never makes a line bad
# (`test_markup.py` checks this on random text). A text without such a character skips the pattern.
_PLAIN_PUNCTUATION = "\u2019\u2018\u201c\u201d\u2026\u2013\u2014\u2015\xa0\xad\xb7\xb4"
_MOJIBAKE_CHARS = re.compile("[" + "".join(
    body.translate({ord(c): None for c in _PLAIN_PUNCTUATION})
    for body in ftfy.badness.MOJIBAKE_CATEGORIES.values()) + "".join(
    re.escape(c) for c in sorted(set(ftfy.badness.BADNESS_RE.pattern))
    if not c.isascii() and c not in _PLAIN_PUNCTUATION) + "]")

# LLM reasoning: `<think>…</think>` / `<thinking>…</thinking>`, any case, spaces inside the brackets allowed.
_REASONING_BLOCK = re.compile(r"<\s*(think(?:ing)?)\s*>.*?<\s*/\s*\1\s*>", re.I | re.S)
_REASONING_OPEN = re.compile(r"<\s*think(?:ing)?\s*>", re.I)
_REASONING_CLOSE = re.compile(r"<\s*/\s*think(?:ing)?\s*>", re.I)

# A tag-like `<name …>` / `</name>` / `<name/>`: no space after `<` (unlike `a < b`), a name starting with
# a letter (unlike `<3`), not inside `<<…>>` (guillemet substitutes). Only names with a non-ASCII letter
# are removed (ASCII ones were already handled, or left as text, by the HTML parser).
_TAG_LIKE = re.compile(r"(?<!<)</?([^\W\d_][\w\-.:·…]{0,40})(?:\s[^<>\n]{0,200})?/?>(?!>)")

# Links and images that survive as plain text (pasted URLs, Markdown written by the poster).
_MD_IMAGE = re.compile(r"!\[[^\]\n]*\]\([^)\s]*\)")
_MD_LINK = re.compile(r"\[([^\]\n]+)\]\((?:https?://|www\.|/)[^)\s]*\)")
_URL = re.compile(r"[ \t]*\b(?:(?:https?|ftp)://|www\.)[^\s<>\"'\])}]+", re.I)
_EMPTY_BRACKETS = re.compile(r"[ \t]*(?:\(\s*\)|\[\s*\]|<\s*>)")
# `()`, `[]`, `<>`, `( `, `[ ` or `< ` (one search: half the time of six `in` tests) before `_EMPTY_BRACKETS` runs.
_EMPTY_BRACKETS_GATE = re.compile(r"\(\)|\[\]|<>|\( |\[ |< ")
_ATTRIBUTE_DEBRIS = re.compile(r"[ \t]*\b(?:class|style|data-[\w-]+)=(?:\"[^\"\n]*\"|'[^'\n]*')")

_BOLD_SPAN = re.compile(r"\*\*(?=[^\s*])[^*\n]+?(?<=[^\s*])\*\*")
_ITALIC_SPAN = re.compile(r"(?<!\*)\*(?=[^\s*])[^*\n]+?(?<=[^\s*])\*(?!\*)")
# `[^\W\d_]` (a word character that is no digit nor `_`) holds every letter `_spaced_letter` accepts.
# (The marker comes first in each pattern: the engine then looks for that literal, fast.)
_GLUED_BOLD = re.compile(r"\*\*(?:(?<=[^\W\d_]\*\*)[^\s*]|(?<=[^\s*]\*\*)[^\W\d_])")
_GLUED_ITALIC = re.compile(r"\*(?:(?<=[^\W\d_]\*)[^\s*]|(?<=[^\s*]\*)[^\W\d_])")
_PUNCT_RUN = re.compile(r"([.!?*\-])\1{3,}")
_PUNCT_RUNS = ("....", "!!!!", "????", "****", "----")  # one of them is in every `_PUNCT_RUN` match
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+(?=[,.;:!?])")
# Whether `_SPACE_BEFORE_PUNCT` has work in a text without tabs. The search stops only at punctuation, rare next to
# the spaces between every word (six `in` tests for " ," … " ?" took half again as long).
_PUNCT_AFTER_SPACE = re.compile(r"[,.;:!?](?<=[ \t].)")
_GLUED_SENTENCE = re.compile(r"[.!?]+(?=[A-Z][a-z])")
# In every `_GLUED_SENTENCE` match a mark touches a capital; this search is three times faster (no repeat to try
# at every position), and few texts have such a pair.
_MARK_BEFORE_CAPITAL = re.compile(r"[.!?][A-Z]")
_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")


def looks_like_markup(text: str) -> bool:
    # Every HTML match starts with `<` or `&`, every BBCode match with `[`: plain text skips both searches.
    return bool(("<" in text or "&" in text) and _HTML_TAG.search(text) or "[" in text and _BBCODE_TAG.search(text))


def bbcode_to_html(text: str) -> str:
    # Every rule's match starts with `[`, and no rule writes one: a text without `[` is left as it is.
    if "[" not in text:
        return text
    if not text.isascii():  # `re.I` equates a few non-ASCII letters with ASCII ones (`ſ`, `K`): no gates
        for pattern, replacement in _BBCODE_RULES:
            text = pattern.sub(replacement, text)
        return text
    # A rule can only match a text holding one of its tag names. They are read again after a rule removed something
    # (removing `[u]` from `[[u]url]` makes a new tag); a rule that writes HTML writes no `[`, so it makes none.
    present = set(_BBCODE_NAME.findall(text.lower()))
    for (pattern, replacement), names in zip(_BBCODE_RULES, _BBCODE_NAMES):
        if not names.isdisjoint(present):
            changed = pattern.sub(replacement, text)
            if replacement == "" and changed != text:
                present = set(_BBCODE_NAME.findall(changed.lower()))
            text = changed
    return text


def _wrap(marker: str, inner: str) -> str:
    """Emphasis around the words only: `** Bold **` is not Markdown, `**Bold**` is."""
    stripped = inner.strip()
    if not stripped:
        return inner
    lead = inner[: len(inner) - len(inner.lstrip())]
    trail = inner[len(inner.rstrip()):]
    return f"{lead}{marker}{stripped}{marker}{trail}"


def _render(node: LexborNode, tag: str) -> str:
    """The element `node` (named `tag`) as text. Text nodes, line breaks and dropped elements are handled in the loop
    over the children, not by a call each (half the nodes are text: a third less time on table-heavy sheets)."""
    parts = []
    for child in node.iter(include_text=True):
        child_tag = child.tag
        if child_tag == "-text":
            parts.append(child.text_content or "")
        elif child_tag == "br" or child_tag == "hr":
            parts.append("\n")
        elif child_tag not in _DROP_TAGS and child_tag != "-comment":
            parts.append(_render(child, child_tag))
    inner = "".join(parts)
    if tag in _BOLD:
        return _wrap("**", inner)
    if tag in _ITALIC:
        return _wrap("*", inner)
    if tag == "li":
        return "\n- " + inner.strip()
    if tag in ("td", "th"):
        return inner.strip() + " | "
    if tag == "tr":
        return "\n" + inner.strip().rstrip(" |")
    if tag in _BLOCK_TAGS:
        return "\n\n" + inner + "\n\n"
    return inner


def valid_unicode(text: str) -> str:
    """Text that can be written as UTF-8: surrogate pairs joined, lone surrogates dropped.

    JSON allows `\\ud83d` escapes without their partner; Python then holds a string that no
    UTF-8 writer (Parquet, the tokenizer) accepts.
    """
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\ufffd", "")


def fix_encoding(text: str) -> str:
    """Mojibake, HTML entities left in plain text and control characters, by ftfy.

    Only repairs: `cafÃ©` -> `café`, `â€œhiâ€\x9d` -> `“hi”`, `Tom &amp; Jerry` -> `Tom & Jerry` (entities
    are unescaped unless the text also holds a literal `<`, ftfy's "auto"). Legitimate Unicode is kept:
    `「こんにちは！」`, `“curly” ‘quotes’`, `Ｆｕｌｌ　ｗｉｄｔｈ`, `ß`, `ﬁ` (see `_FTFY_CONFIG`).

    ftfy only changes non-ASCII text or text with entities; plain ASCII text only loses its
    control characters, so ftfy (the slowest step of cleaning) is skipped for it, and for any text it
    would return unchanged (`may_need_ftfy`).
    """
    if text.isascii() and "&" not in text or not may_need_ftfy(text):
        return drop_controls(text)
    return drop_controls(_fix_text(text))


def drop_controls(text: str) -> str:
    """`text` without C0 control characters other than tab and line breaks, and without DEL."""
    encoded = text.encode("utf-8", "surrogatepass")
    # Deleting bytes in C is three times faster than the regular expression's search, and most texts have none.
    if len(encoded.translate(None, _CONTROL_BYTES)) == len(encoded):
        return text
    return _CONTROL.sub("", text)


def _fix_text(text: str) -> str:
    """`ftfy.fix_text(text, _FTFY_CONFIG)`: the same loop over the same segments (lines, cut at ftfy's segment
    length; HTML unescaping off from the first segment holding `<` on), but a segment that ftfy would return
    unchanged (`may_need_ftfy`) is not handed to it."""
    config = _FTFY_CONFIG
    limit = config.max_decode_length
    out = []
    pos = 0
    while pos < len(text):
        textbreak = text.find("\n", pos) + 1
        if textbreak == 0:
            textbreak = len(text)
        if (textbreak - pos) > limit:
            textbreak = pos + limit
        segment = text[pos:textbreak]
        if config.unescape_html == "auto" and "<" in segment:
            config = config._replace(unescape_html=False)
        out.append(ftfy.fix_and_explain(segment, config)[0] if may_need_ftfy(segment) else segment)
        pos = textbreak
    return "".join(out)


def may_need_ftfy(text: str) -> bool:
    """False only when `ftfy.fix_text(text, _FTFY_CONFIG)` is certain to return `text` unchanged."""
    return (len(text) > _FTFY_CONFIG.max_decode_length or _FTFY_CHARS.search(text) is not None
            or _MOJIBAKE_CHARS.search(text) is not None and _FTFY_BAD_LINE.search(text) is not None)


def strip_reasoning(text: str) -> tuple[str, int]:
    """LLM reasoning out of a turn: (text without it, number of blocks removed).

    `<think>…</think>` and `<thinking>…</thinking>` (any case) go with their content; an opening tag
    that is never closed takes everything after it (the model was cut off while reasoning, e.g. a
    post that starts with `<think>`); a closing tag that was never opened takes everything before it
    (chat templates that put the opening tag in the prompt). Each counts as one block.
    """
    if "<" not in text or not _REASONING_OPEN.search(text) and not _REASONING_CLOSE.search(text):
        return text, 0
    text, n = _REASONING_BLOCK.subn("", text)
    close = None
    for close in _REASONING_CLOSE.finditer(text):
        pass
    if close is not None:
        text, n = text[close.end():], n + 1
    opening = _REASONING_OPEN.search(text)
    if opening is not None:
        text, n = text[:opening.start()], n + 1
    return text, n


def _spaced_letter(ch: str) -> bool:
    """A letter of a script that puts spaces between words (not CJK: Han, kana, full-width forms)."""
    return ch.isalpha() and ord(ch) < 0x2E80


def _needs_space(before: str, after: str) -> bool:
    """Whether removing a tag between two characters would glue two words (not in CJK text)."""
    return (before.isalnum() and after.isalnum()
            and ord(before) < 0x2E80 and ord(after) < 0x2E80)


def strip_non_ascii_tags(text: str) -> str:
    """`<回复>你好</回复>` -> `你好`: tag-like markup whose name has a non-ASCII letter goes, its content stays."""
    if text.isascii() or "<" not in text or ">" not in text:
        return text

    def drop(m: re.Match[str]) -> str:
        if m.group(1).isascii():
            return m.group(0)
        start, end = m.span()
        if 0 < start and end < len(text) and _needs_space(text[start - 1], text[end]):
            return " "
        return ""

    return _TAG_LIKE.sub(drop, text)


def remove_urls(text: str) -> str:
    """Bare URLs and Markdown images out; Markdown links keep their words."""
    if "](" in text:
        text = _MD_IMAGE.sub("", text)
        text = _MD_LINK.sub(_GROUP_1, text)
    if "://" in text or "www." in text or "WWW." in text:
        text = _URL.sub("", text)
    if "=" in text:
        text = _ATTRIBUTE_DEBRIS.sub("", text)
    if _EMPTY_BRACKETS_GATE.search(text):
        text = _EMPTY_BRACKETS.sub("", text)
    return text


def _one_space(m: re.Match[str]) -> str:
    """A run of only ideographic spaces (CJK text) stays one ideographic space; any other run is one space."""
    return _IDEOGRAPHIC_SPACE if m.group(0).strip(_IDEOGRAPHIC_SPACE) == "" else " "


def normalize_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    ideographic = other = False
    if not text.isascii():
        text = _INVISIBLE.sub("", text)
        ideographic = _IDEOGRAPHIC_SPACE in text
        other = ideographic or _OTHER_SPACES.search(text) is not None
    if ideographic:
        spaced = _SPACES.sub(_one_space, text)
    elif other or "  " in text or "\t" in text:
        spaced = _SPACES.sub(" ", text)
    else:
        spaced = text
    joined = "\n".join([line.strip() for line in spaced.split("\n")])
    return collapse_blank_lines(joined).strip()


def collapse_blank_lines(text: str) -> str:
    """At most one blank line in a row (for text whose lines are already stripped)."""
    return _MANY_NEWLINES.sub("\n\n", text) if "\n\n\n" in text else text


def _unglue(pattern: re.Pattern[str], text: str) -> str:
    n = len(text)

    def spaced(match: re.Match[str]) -> str:
        start, end = match.span()
        before = " " if start > 0 and _spaced_letter(text[start - 1]) else ""
        after = " " if end < n and _spaced_letter(text[end]) else ""
        return f"{before}{match.group(0)}{after}" if before or after else match.group(0)

    return pattern.sub(spaced, text)


def fix_glued_emphasis(text: str) -> str:
    """A space between a word and emphasis glued to it: `**Run**now` -> `**Run** now`."""
    if "*" not in text:
        return text
    # A span is changed only when a letter touches it from outside: a letter, its opening marker and the span's
    # first character, or the span's last character, its closing marker and a letter (`_GLUED_*`, supersets).
    if "**" in text and _GLUED_BOLD.search(text):
        text = _unglue(_BOLD_SPAN, text)
    return _unglue(_ITALIC_SPAN, text) if _GLUED_ITALIC.search(text) else text


def cap_punctuation_runs(text: str, limit: int = 3) -> str:
    """`Noooo!!!!!!` -> `Noooo!!!`, `......` -> `...`; runs of `.!?*-` keep at most `limit` marks."""
    if limit < 1 or not any(run in text for run in _PUNCT_RUNS):
        return text
    return _PUNCT_RUN.sub(lambda m: m.group(1) * limit, text)


def drop_space_before_punctuation(text: str) -> str:
    """`wait , what ?` -> `wait, what?`: spaces and tabs before `,.;:!?` go."""
    if "\t" in text or _PUNCT_AFTER_SPACE.search(text):
        return _SPACE_BEFORE_PUNCT.sub("", text)
    return text


def fix_sentence_spacing(text: str) -> str:
    """`the door.Then she` -> `the door. Then she`; only after a lowercase word, before a capitalised one."""
    def space(m: re.Match[str]) -> str:
        before = text[max(0, m.start() - 2):m.start()]
        return m.group(0) + " " if len(before) == 2 and before[0] in _LOWER and before[1] in _LOWER else m.group(0)

    return _GLUED_SENTENCE.sub(space, text) if _MARK_BEFORE_CAPITAL.search(text) else text


def fix_typography(text: str) -> str:
    return fix_sentence_spacing(cap_punctuation_runs(fix_glued_emphasis(text)))


def to_text(raw: str | None, counts: dict[str, int] | None = None) -> str:
    """Plain text with paragraphs kept and emphasis as Markdown, from HTML, BBCode or plain text.

    LLM reasoning blocks are removed (`strip_reasoning`); when `counts` is given, the number removed is
    added to `counts["n_reasoning_blocks"]` (the key is set even when none were).
    """
    if counts is not None:
        counts.setdefault("n_reasoning_blocks", 0)
    if not raw:
        return ""
    text = valid_unicode(raw)
    # Literal tags first: the HTML parser would drop `<think>` and keep what it wraps.
    text, n_reasoning = strip_reasoning(text)
    if looks_like_markup(text):
        # A literal newline in a forum post is a line break the author typed, whatever the markup; one that
        # follows a <br> or a block tag is how the forum software serialized that break (XenForo writes
        # `<br />\n`), not a second one.
        html = _SERIALIZED_BREAK.sub(_GROUP_1, bbcode_to_html(text).replace("\r\n", "\n")).replace("\n", "<br>")
        tree = LexborHTMLParser(f"<div>{html}</div>")
        root = tree.body
        text = _render(root, root.tag) if root else ""  # the body: its children's text
    text = fix_encoding(text)
    # Escaped tags (`&lt;think&gt;` in HTML) only appear now.
    text, n_escaped = strip_reasoning(text)
    if counts is not None:
        counts["n_reasoning_blocks"] += n_reasoning + n_escaped
    text = remove_urls(strip_non_ascii_tags(text))
    return fix_typography(normalize_whitespace(text))
