"""Messy character sheets rewritten into one uniform template, by rules, inventing nothing.

A sheet (already cleaned to text with Markdown emphasis) is read line by line. A line that starts
with a label (`**Age:** 24`, `Age: 24`, `AGE - 24`, `Race | Elf`) opens a section; following lines
without a label continue it. Labels map to template fields through synonyms; a label that maps to
no field, and text before the first label, go to "Other Information" with the label kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

_LABEL_LINE = re.compile(
    r"^\s*(?:[-*•]\s+)?(?:\*\*|__)?\s*(?P<label>[A-Za-z][A-Za-z /'&()-]{0,40}?)\s*(?::\s*(?:\*\*|__)|(?:\*\*|__)\s*:|:|(?:\*\*|__)\s+-|\s+-\s+|\s*\|)\s*(?P<value>.*)$"
)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_EMPHASIS_ONLY = re.compile(r"^(\*\*|__|\*)(.*)\1$")


@dataclass(frozen=True)
class SheetField:
    name: str
    synonyms: tuple[str, ...]
    is_list: bool = False


@dataclass(frozen=True)
class SheetTemplate:
    fields: tuple[SheetField, ...]
    other_field: str = "Other Information"
    name_field: str = "Character Name"

    @classmethod
    def load(cls, path: str | Path | None = None) -> "SheetTemplate":
        text = (Path(path).read_text("utf-8") if path
                else resources.files("gcrp_assets.templates").joinpath("sheet_template.yaml").read_text("utf-8"))
        spec = yaml.safe_load(text)
        fields = tuple(SheetField(f["name"], tuple(s.casefold() for s in f.get("synonyms", [])) + (f["name"].casefold(),),
                                  bool(f.get("list", False))) for f in spec["fields"])
        return cls(fields)

    def field_for(self, label: str) -> SheetField | None:
        key = " ".join(label.casefold().replace("_", " ").split())
        for field in self.fields:
            if key in field.synonyms:
                return field
        return None


def _items(value: str) -> list[str]:
    lines = [l.strip() for l in value.split("\n") if l.strip()]
    if len(lines) == 1 and not _BULLET.match(lines[0]) and len(lines[0]) < 200 and re.search(r"[,;]", lines[0]):
        lines = [p.strip() for p in re.split(r"[;,]", lines[0]) if p.strip()]
    return [_BULLET.sub("", l).strip() for l in lines]


def parse_sheet(text: str, template: SheetTemplate) -> dict[str, str]:
    """Field name -> text, in template order. Unknown sections land in Other Information."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    knows_labels = any(
        (m := _LABEL_LINE.match(line)) and template.field_for(m.group("label")) for line in text.split("\n"))
    for raw in text.split("\n"):
        line = raw.strip()
        match = _LABEL_LINE.match(line) if line else None
        field = template.field_for(match.group("label")) if match else None
        if match and field is None and knows_labels and _is_unknown_label(match.group("label")):
            label = match.group("label").strip()
            value = match.group("value").strip()
            sections.setdefault(template.other_field, []).append(f"{label}: {value}" if value else f"{label}:")
            current = template.other_field
            continue
        if field is not None:
            current = field.name
            value = match.group("value").strip()
            if value:
                sections.setdefault(current, []).append(value)
            else:
                sections.setdefault(current, [])
            continue
        if not line:
            if current:
                sections.setdefault(current, []).append("")
            continue
        line = _EMPHASIS_ONLY.sub(r"\2", line).strip() if _EMPHASIS_ONLY.match(line) else line
        sections.setdefault(current or template.other_field, []).append(line)
    out: dict[str, str] = {}
    for field in template.fields:
        lines = sections.get(field.name)
        if lines is None:
            continue
        value = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        if value:
            out[field.name] = value
    return out


def _is_unknown_label(label: str) -> bool:
    words = label.split()
    return 1 <= len(words) <= 3 and label[:1].isupper()


def render_sheet(name: str, fields: dict[str, str], template: SheetTemplate) -> str:
    """The uniform sheet in Markdown; the character's display name always comes from the thread."""
    lines = [f"**{template.name_field}**: {name}"]
    for field in template.fields:
        if field.name == template.name_field or field.name not in fields:
            continue
        value = fields[field.name]
        if field.is_list:
            items = _items(value)
            lines.append(f"**{field.name}**:")
            lines.extend(f"- {item}" for item in items)
        elif "\n" in value or len(value) > 80:
            lines.append(f"**{field.name}**:")
            lines.append(value)
        else:
            lines.append(f"**{field.name}**: {value}")
    return "\n".join(lines)


def normalize_sheet(name: str, sheet_text: str | None, template: SheetTemplate) -> str:
    return render_sheet(name, parse_sheet(sheet_text or "", template), template)
