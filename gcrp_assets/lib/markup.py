"""Forum markup (HTML, BBCode, plain text) to clean plain text with Markdown emphasis.

BBCode is first rewritten into the equivalent HTML, then one HTML parser (selectolax) walks the
tree: paragraphs and line breaks survive, bold and italics become `**…**` and `*…*`, quoted
replies, images, scripts and link targets are dropped. `ftfy` repairs mojibake afterwards.
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

_DROP_TAGS = {"blockquote", "script", "style", "img", "iframe", "noscript", "head", "title"}
_BLOCK_TAGS = {"p", "div", "section", "article", "ul", "ol", "table", "pre", "h1", "h2", "h3", "h4", "h5", "h6"}
_BOLD = {"b", "strong"}
_ITALIC = {"i", "em"}
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


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
    if tag == "br":
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


def normalize_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


def to_text(raw: str) -> str:
    """Plain text with paragraphs kept and emphasis as Markdown, from HTML, BBCode or plain text."""
    if not raw:
        return ""
    text = raw
    if looks_like_markup(text):
        # A literal newline in a forum post is a line break the author typed, whatever the markup.
        html = bbcode_to_html(text).replace("\r\n", "\n").replace("\n", "<br>")
        tree = LexborHTMLParser(f"<div>{html}</div>")
        root = tree.body
        text = "".join(_render(child) for child in root.iter(include_text=True)) if root else ""
    return normalize_whitespace(ftfy.fix_text(text))
