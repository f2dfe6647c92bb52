"""Messy character sheets rewritten into one uniform template, by rules, inventing nothing.

A sheet (already cleaned to text with Markdown emphasis, see `markup.to_text`) is read line by
line. A line that starts with a label opens a section: `**Age:** 24`, `**Age**: 24`, `Age: 24`,
`AGE - 24`, `Race | Elf` (a BBCode/HTML table row), `- **Age**: 24`. Following lines without a
label continue it, blank lines and bullet items included, so a multi-line section stays whole; a
bullet item with a label of its own (`- Height: 5'9"` under Appearance) stays in its section
unless the label names another template field.

Labels map to template fields through the template's synonyms (case-insensitive, emphasis and
`(s)` ignored; `Race/Species` and `Appearance & Style` match by their parts). Labels may come in
any order. A label that maps to no field, a second label for a one-value field that already has
a value (`Job: Baker` then `Class: Fighter`), and text before the first label go to "Other
Information", each with its label kept (`Personality: Calm under fire.`). A line that only
repeats the character's name, and a name field whose words are all in the thread's display
name, are dropped (the display name always comes from the thread). A sheet with no known label
at all (a prose sheet) goes to "Other Information" as it is, paragraph by paragraph.

Rendering: list fields (`list: true` in the YAML) become bullet lists when the section is
list-like (bullet lines, or one line of short comma- or semicolon-separated items); prose stays
prose. Every word of the output is a template word, the display name, or a word of the sheet.

`SheetRewriter` is the seam for a rewrite by a language model (out of scope here): any callable
(name, cleaned sheet text or None, template) -> uniform sheet Markdown can replace
`normalize_sheet` in `prompts.build_samples`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field as dc_field
from importlib import resources
from pathlib import Path
from typing import Callable

import yaml

from gcrp_assets.lib.clean.markup import collapse_blank_lines

_LABEL_LINE = re.compile(
    r"^\s*(?P<bullet>[-*•]\s+)?(?:\*\*|__)?\s*(?P<label>[A-Za-z][A-Za-z /'&()-]{0,40}?)\s*"
    r"(?::\s*(?:\*\*|__)|(?:\*\*|__)\s*:|:|(?:\*\*|__)\s+-|\s+-\s+|\s*\|)\s*(?P<value>.*)$"
)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_EMPHASIS_ONLY = re.compile(r"^(\*\*|__|\*|_)(.+)\1$")
_LABEL_PARTS = re.compile(r"\s*(?:/|&|\band\b|,|\+)\s*")
_WORD = re.compile(r"[^\W_]+")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_MAX_ITEM_WORDS = 8
_LABELLED = re.compile(r"^[A-Z][A-Za-z /'&()-]{0,40}:\s")
_PLURAL_MARK = re.compile(r"\((?:s|es)\)")
_BLANK_LINE = re.compile(r"\n\s*\n")
_ITEM_SEPARATOR = re.compile(r"[;,]")
# Labels repeat from sheet to sheet ("Age", "Name"): each template maps a label to its field once, up to this many.
_MAX_CACHED_LABELS = 4096


@dataclass(frozen=True)
class SheetField:
    name: str
    synonyms: tuple[str, ...]
    is_list: bool = False


def _label_key(label: str) -> str:
    key = label.casefold().replace("_", " ").replace("*", "")
    if "(" in key:
        key = _PLURAL_MARK.sub("", key)
    return " ".join(key.replace(":", " ").split())


@dataclass(frozen=True)
class SheetTemplate:
    fields: tuple[SheetField, ...]
    other_field: str = "Other Information"
    name_field: str = "Character Name"

    def __post_init__(self) -> None:
        # Not a dataclass field: equality, hashing and repr stay the template's.
        object.__setattr__(self, "_fields_by_label", {})

    @classmethod
    def load(cls, path: str | Path | None = None) -> "SheetTemplate":
        text = (Path(path).read_text("utf-8") if path
                else resources.files("gcrp_assets.templates").joinpath("sheet_template.yaml").read_text("utf-8"))
        spec = yaml.safe_load(text)
        fields = tuple(SheetField(f["name"], tuple(_label_key(s) for s in [*f.get("synonyms", []), f["name"]]),
                                  bool(f.get("list", False))) for f in spec["fields"])
        return cls(fields, other_field=spec.get("other_field", "Other Information"),
                   name_field=spec.get("name_field", "Character Name"))

    def field_for(self, label: str) -> SheetField | None:
        known = self._fields_by_label
        if label in known:
            return known[label]
        found = self._find_field(label)
        if len(known) < _MAX_CACHED_LABELS:
            known[label] = found
        return found

    def _find_field(self, label: str) -> SheetField | None:
        key = _label_key(label)
        if not key:
            return None
        for candidate in [key] + [p for p in _LABEL_PARTS.split(key) if p and p != key]:
            for f in self.fields:
                if candidate in f.synonyms:
                    return f
        return None

    def field_named(self, name: str) -> SheetField | None:
        return next((f for f in self.fields if f.name == name), None)


SheetRewriter = Callable[[str, "str | None", SheetTemplate], str]


@dataclass
class _Section:
    field: str | None        # template field name, or None for Other Information
    label: str | None        # the label as written (kept for Other Information)
    lines: list[str] = dc_field(default_factory=list)

    def text(self) -> str:
        return collapse_blank_lines("\n".join(self.lines)).strip()


def _is_unknown_label(label: str) -> bool:
    words = label.split()
    return 1 <= len(words) <= 3 and label[:1].isupper()


def _tidy_label(label: str) -> str:
    label = label.strip()
    return label.capitalize() if label.isupper() and len(label) > 3 else label


def _words(text: str) -> set[str]:
    return {w.casefold() for w in _WORD.findall(text)}


def _only_the_name(text: str, name: str | None) -> bool:
    """`**ODETTE RAVENSWORTH**` or `Tobias Mossgrave` on a sheet for `Tobias "Tuck" Mossgrave`."""
    return bool(name) and bool(_words(text)) and _words(text) <= _words(name or "")


def _unemphasize(line: str) -> str:
    match = _EMPHASIS_ONLY.match(line)
    return match.group(2).strip() if match else line


def _sections(text: str, template: SheetTemplate) -> tuple[list[_Section], bool]:
    """The sheet's sections in order, and whether it has any label of a template field."""
    lines = text.split("\n")
    matches = [_LABEL_LINE.match(line.strip()) if line.strip() else None for line in lines]
    knows_labels = any(m and template.field_for(m.group("label")) for m in matches)
    sections: list[_Section] = []
    current: _Section | None = None
    for raw, match in zip(lines, matches):
        line = raw.strip()
        if not line:
            if current is not None:
                current.lines.append("")
            continue
        field = template.field_for(match.group("label")) if match and knows_labels else None
        bullet = bool(match and match.group("bullet"))
        opens = False
        if field is not None and not (bullet and current is not None and current.field == field.name):
            opens = True
        elif match and knows_labels and field is None and not bullet and _is_unknown_label(match.group("label")):
            opens = True
        if opens:
            value = match.group("value").strip()
            current = _Section(field.name if field else None, _tidy_label(match.group("label")))
            if value:
                current.lines.append(value)
            sections.append(current)
            continue
        if current is None:
            current = _Section(None, None)
            sections.append(current)
        current.lines.append(_unemphasize(line))
    return sections, bool(knows_labels)


def _other_entry(section: _Section, text: str) -> str:
    if section.label is None:
        return text
    lines = [l for l in text.split("\n") if l.strip()]
    if len(lines) > 1 and all(_BULLET.match(l) for l in lines):
        return f"{section.label}:\n" + "\n".join("  - " + _BULLET.sub("", l).strip() for l in lines)
    return f"{section.label}: {' '.join(l.strip() for l in lines)}" if lines else f"{section.label}:"


def parse_sheet(text: str, template: SheetTemplate, name: str | None = None) -> dict[str, str]:
    """Field name -> text, in template order. Unknown sections land in Other Information.

    The name field holds the sheet's own name value, as written (`render_sheet` always shows the
    thread's display name instead). `name`, the display name, lets lines that only repeat it be
    dropped, and a name value that says more than it be kept in Other Information.
    """
    values: dict[str, list[str]] = {}
    other: list[str] = []
    sections, labelled = _sections(text or "", template)
    for section in sections:
        value = section.text()
        if section.field == template.name_field:
            if value and template.name_field not in values:
                values[template.name_field] = [value]  # as written (importers read names from it)
            if value and name and not _only_the_name(value, name):
                other.append(f"{section.label}: {value}")  # says more than the display name: kept
            continue
        if section.field == template.other_field:
            other.extend(p.strip() for p in _BLANK_LINE.split(value) if p.strip())
            continue
        if section.field is None:
            if section.label is None:
                # Text outside any labelled section: a quote or title above a labelled sheet (one entry
                # per line), or a whole prose sheet (one entry per paragraph, kept as written).
                pieces = value.split("\n") if labelled else _BLANK_LINE.split(value)
                other.extend(p.strip() for p in pieces if p.strip() and not _only_the_name(p, name))
            elif section.label:
                other.append(_other_entry(section, value))
            continue
        spec = template.field_named(section.field)
        if section.field in values and values[section.field] and not (spec and spec.is_list):
            if value:
                other.append(_other_entry(section, value))  # a second value for a one-value field
            continue
        if value:
            values.setdefault(section.field, []).append(value)
        else:
            values.setdefault(section.field, [])
    if other:
        values.setdefault(template.other_field, []).extend(other)
    out: dict[str, str] = {}
    for f in template.fields:
        parts = [p for p in values.get(f.name, []) if p.strip()]
        if not parts:
            continue
        joiner = "\n\n" if f.name == template.other_field else "\n"
        out[f.name] = joiner.join(parts).strip()
    return out


def _split_items(line: str) -> list[str] | None:
    """`knife, lighter; radio` -> three items; None when the line reads as prose."""
    if _SENTENCE_END.search(line.rstrip(".")) or len(line) > 200 or not ("," in line or ";" in line):
        return None
    parts = [p.strip() for p in _ITEM_SEPARATOR.split(line.rstrip(".")) if p.strip()]
    if len(parts) < 2 or any(len(p.split()) > _MAX_ITEM_WORDS for p in parts):
        return None
    return parts


def list_items(value: str) -> list[str] | None:
    """The items of a list-like section, or None when it is prose (kept as written)."""
    lines = [l.strip() for l in value.split("\n") if l.strip()]
    if not lines:
        return None
    if all(_BULLET.match(l) for l in lines):
        return [_BULLET.sub("", l).strip() for l in lines]
    if len(lines) == 1:
        return _split_items(lines[0])
    if all(len(l.split()) <= _MAX_ITEM_WORDS and not _SENTENCE_END.search(l.rstrip(".")) for l in lines):
        return [_BULLET.sub("", l).strip() for l in lines]  # one short item per line
    return None


def _render_other(value: str) -> list[str]:
    entries = [e.strip() for e in value.split("\n\n") if e.strip()]
    if all("\n" not in e and (len(e) > 200 or len(_SENTENCE_END.findall(e)) > 1) and not _LABELLED.match(e)
           for e in entries):
        return ["\n\n".join(entries)]  # paragraphs of prose stay paragraphs
    out = []
    for entry in entries:
        first, *rest = entry.split("\n")
        out.append(f"- {first}")
        out.extend(rest)
    return out


def render_sheet(name: str, fields: dict[str, str], template: SheetTemplate) -> str:
    """The uniform sheet in Markdown; the character's display name always comes from the thread."""
    lines = [f"**{template.name_field}**: {name}"]
    for f in template.fields:
        if f.name == template.name_field or f.name not in fields:
            continue
        value = fields[f.name]
        if f.name == template.other_field:
            lines.append(f"**{f.name}**:")
            lines.extend(_render_other(value))
            continue
        items = list_items(value) if f.is_list else None
        if items is not None:
            lines.append(f"**{f.name}**:")
            lines.extend(f"- {item}" for item in items)
        elif "\n" in value or len(value) > 80:
            lines.append(f"**{f.name}**:")
            lines.append(value)
        else:
            lines.append(f"**{f.name}**: {value}")
    return "\n".join(lines)


def normalize_sheet(name: str, sheet_text: str | None, template: SheetTemplate) -> str:
    """The rule-based `SheetRewriter`."""
    return render_sheet(name, parse_sheet(sheet_text or "", template, name), template)
