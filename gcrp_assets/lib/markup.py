"""Forum markup (HTML, BBCode, plain text) to clean plain text with Markdown emphasis.

BBCode is first rewritten into the equivalent HTML, then one HTML parser (selectolax) walks the
tree: paragraphs and line breaks survive, bold and italics become `**…**` and `*…*`, quoted
replies, images, scripts and link targets are dropped. `ftfy` repairs mojibake afterwards.

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

import ftfy
from selectolax.lexbor import LexborHTMLParser, LexborNode

_HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^>]*>|<br\s*/?>|&[a-zA-Z]+;|&#\d+;")
_BBCODE_TAG = re.compile(r"\[/?(?:b|i|u|s|em|strong|quote|url|img|color|size|font|center|left|right|list|\*|table|tr|td|th|spoiler|code|indent|hr)\b[^\]]*\]", re.I)

# BBCode tag -> HTML. Order matters only for readability; each rule is independent.
_BBCODE_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\[(/?)(b|strong)\]", re.I), r"<\1b>"),
    (re.compile(r"\[(/?)(i|em)\]", re.I), r"<\1i>"),
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
    (re.compile(r"\[(/?)(table|tr|td|th)\]", re.I), r"<\1\2>"),
    (re.compile(r"\[(/?)code\]", re.I), r"<\1pre>"),
    (re.compile(r"\[hr\]", re.I), "<br>"),
]

_DROP_TAGS = {"blockquote", "script", "style", "img", "iframe", "noscript", "head", "title", "video", "audio",
              "source", "object", "embed", "svg", "picture", "template"}
_BLOCK_TAGS = {"p", "div", "section", "article", "ul", "ol", "table", "pre", "h1", "h2", "h3", "h4", "h5", "h6"}
_BOLD = {"b", "strong"}
_ITALIC = {"i", "em"}
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_INVISIBLE = re.compile(r"[\u00ad\u200b\u2060\ufeff\ufffd]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_MANY_NEWLINES = re.compile(r"\n{3,}")

# Links and images that survive as plain text (pasted URLs, Markdown written by the poster).
_MD_IMAGE = re.compile(r"!\[[^\]\n]*\]\([^)\s]*\)")
_MD_LINK = re.compile(r"\[([^\]\n]+)\]\((?:https?://|www\.|/)[^)\s]*\)")
_URL = re.compile(r"[ \t]*\b(?:(?:https?|ftp)://|www\.)[^\s<>\"'\])}]+", re.I)
_EMPTY_BRACKETS = re.compile(r"[ \t]*(?:\(\s*\)|\[\s*\]|<\s*>)")
_ATTRIBUTE_DEBRIS = re.compile(r"[ \t]*\b(?:class|style|data-[\w-]+)=(?:\"[^\"\n]*\"|'[^'\n]*')")

_BOLD_SPAN = re.compile(r"\*\*(?=[^\s*])[^*\n]+?(?<=[^\s*])\*\*")
_ITALIC_SPAN = re.compile(r"(?<!\*)\*(?=[^\s*])[^*\n]+?(?<=[^\s*])\*(?!\*)")
_PUNCT_RUN = re.compile(r"([.!?*\-])\1{3,}")
_GLUED_SENTENCE = re.compile(r"[.!?]+(?=[A-Z][a-z])")
_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")


def looks_like_markup(text: str) -> bool:
    return bool(_HTML_TAG.search(text) or _BBCODE_TAG.search(text))


def bbcode_to_html(text: str) -> str:
    for pattern, replacement in _BBCODE_RULES:
        text = pattern.sub(replacement, text)
    return text


def _wrap(marker: str, inner: str) -> str:
    """Emphasis around the words only: `** Bold **` is not Markdown, `**Bold**` is."""
    stripped = inner.strip()
    if not stripped:
        return inner
    lead = inner[: len(inner) - len(inner.lstrip())]
    trail = inner[len(inner.rstrip()):]
    return f"{lead}{marker}{stripped}{marker}{trail}"


def _render(node: LexborNode) -> str:
    tag = node.tag
    if tag == "-text":
        return node.text_content or ""
    if tag in _DROP_TAGS or tag == "-comment":
        return ""
    if tag in ("br", "hr"):
        return "\n"
    inner = "".join(_render(child) for child in node.iter(include_text=True))
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
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\ufffd", "")


def fix_encoding(text: str) -> str:
    """Mojibake, HTML entities left in plain text and control characters, by ftfy.

    ftfy only changes non-ASCII text or text with entities; plain ASCII text only loses its
    control characters, so ftfy (the slowest step of cleaning) is skipped for it.
    """
    if text.isascii() and "&" not in text:
        return _CONTROL.sub("", text)
    return _CONTROL.sub("", ftfy.fix_text(text))


def remove_urls(text: str) -> str:
    """Bare URLs and Markdown images out; Markdown links keep their words."""
    if "](" in text:
        text = _MD_IMAGE.sub("", text)
        text = _MD_LINK.sub(r"\1", text)
    if "://" in text or "www." in text or "WWW." in text:
        text = _URL.sub("", text)
    if "=" in text:
        text = _ATTRIBUTE_DEBRIS.sub("", text)
    if "()" in text or "[]" in text or "<>" in text or "( " in text or "[ " in text or "< " in text:
        text = _EMPTY_BRACKETS.sub("", text)
    return text


def normalize_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():
        text = _INVISIBLE.sub("", text)
    lines = [line.strip() for line in _SPACES.sub(" ", text).split("\n")]
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


def _unglue(pattern: re.Pattern[str], text: str) -> str:
    out: list[str] = []
    last = 0
    for match in pattern.finditer(text):
        start, end = match.span()
        out.append(text[last:start])
        if start > 0 and text[start - 1].isalpha():
            out.append(" ")
        out.append(match.group(0))
        if end < len(text) and text[end].isalpha():
            out.append(" ")
        last = end
    out.append(text[last:])
    return "".join(out)


def fix_glued_emphasis(text: str) -> str:
    """A space between a word and emphasis glued to it: `**Run**now` -> `**Run** now`."""
    if "*" not in text:
        return text
    return _unglue(_ITALIC_SPAN, _unglue(_BOLD_SPAN, text))


def cap_punctuation_runs(text: str, limit: int = 3) -> str:
    """`Noooo!!!!!!` -> `Noooo!!!`, `......` -> `...`; runs of `.!?*-` keep at most `limit` marks."""
    return _PUNCT_RUN.sub(lambda m: m.group(1) * limit, text) if limit >= 1 else text


def fix_sentence_spacing(text: str) -> str:
    """`the door.Then she` -> `the door. Then she`; only after a lowercase word, before a capitalised one."""
    def space(m: re.Match[str]) -> str:
        before = text[max(0, m.start() - 2):m.start()]
        return m.group(0) + " " if len(before) == 2 and before[0] in _LOWER and before[1] in _LOWER else m.group(0)

    return _GLUED_SENTENCE.sub(space, text)


def fix_typography(text: str) -> str:
    return fix_sentence_spacing(cap_punctuation_runs(fix_glued_emphasis(text)))


def to_text(raw: str | None) -> str:
    """Plain text with paragraphs kept and emphasis as Markdown, from HTML, BBCode or plain text."""
    if not raw:
        return ""
    text = valid_unicode(raw)
    if looks_like_markup(text):
        # A literal newline in a forum post is a line break the author typed, whatever the markup.
        html = bbcode_to_html(text).replace("\r\n", "\n").replace("\n", "<br>")
        tree = LexborHTMLParser(f"<div>{html}</div>")
        root = tree.body
        text = "".join(_render(child) for child in root.iter(include_text=True)) if root else ""
    text = remove_urls(fix_encoding(text))
    return fix_typography(normalize_whitespace(text))
