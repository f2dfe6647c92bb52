"""The training system prompt written with SillyTavern's own macros and card fields.

Training renders `templates/system_prompt.jinja` (or the configured `system_prompt_template`) with the
human user's character (`user.name`, `user.sheet`) and the other speaking characters in order of first
appearance (`others`: name and uniform sheet each). SillyTavern 1.12.6 has each of these as a field:

- the user's character is the persona: `{{user}}` is its name, `{{persona}}` its description (the uniform
  sheet), placed in the prompt by the macro (persona description position "In Story String / Prompt
  Manager", SillyTavern's default);
- the others are the group's member cards, each card's description field holding the character's uniform
  sheet; in a group whose generation mode is "Join character cards", `{{description}}` is every member's
  description, each wrapped in the group's join prefix and suffix (macros run per member, `{{char}}` being
  that member), the entries joined by a newline (`group-chats.js getGroupCharacterCards`).

`roster_translation(template)` finds the template's shape by rendering it with stand-in names and sheets
(one to three others, all of equal length) and reads off: the text around the roster, which becomes the
System Prompt preset (`{{user}}`, `{{persona}}`, `{{description}}` in place of the values), and the text
around each member's sheet, which becomes the join prefix/suffix. The translation is checked by rebuilding
the renders of one, two and three others from it; a template of another shape (a roster that is not one
repeated block per character, text that depends on the count, the user's sheet inside the roster) gets
`None` and the reason, and no system prompt preset is written for it.

What SillyTavern does differently, and the translation accounts for or documents:
- it trims the join prefix and suffix: edge whitespace is kept by a `{{noop}}` macro (removed after the
  trim);
- the entries are joined with a newline, so the block must end with one (moved out of the suffix);
- each sheet and the persona description are trimmed, and macros inside them (`{{user}}`, `{{char}}`,
  `<USER>`, `<BOT>`, …) are replaced: a sheet with edge whitespace or macro-like text differs (the model
  card says so);
- no roster entry for a group of no other members leaves an extra newline (groups always have one).
"""

from __future__ import annotations

from dataclasses import dataclass

import jinja2

# Stand-ins of equal length, so that every roster block renders to the same length.
_USER, _PERSONA = "\x01U0\x01", "\x01P0\x01"
_NAMES = ("\x01C1\x01", "\x01C2\x01", "\x01C3\x01")
_SHEETS = ("\x01S1\x01", "\x01S2\x01", "\x01S3\x01")
NOOP = "{{noop}}"


@dataclass(frozen=True)
class RosterTranslation:
    """The training system prompt in SillyTavern terms."""

    system_prompt: str   # System Prompt preset content: macros {{user}}, {{persona}}, {{description}}
    join_prefix: str     # the group's generation_mode_join_prefix (before each member's description)
    join_suffix: str     # the group's generation_mode_join_suffix (after it)


def _render(template: jinja2.Template, others: int) -> str:
    return template.render(user={"name": _USER, "sheet": _PERSONA, "placeholder": "{user}"},
                           others=[{"name": _NAMES[i], "sheet": _SHEETS[i], "placeholder": f"{{char{i + 1}}}"}
                                   for i in range(others)],
                           names="real").strip()  # samples.build_samples strips the render


def _keep_edges(text: str) -> str:
    """`text` surviving SillyTavern's trim of a join prefix/suffix: {{noop}} guards whitespace at either end."""
    if not text:
        return ""
    return (NOOP if text[:1].isspace() else "") + text + (NOOP if text[-1:].isspace() else "")


def expand_join(prefix: str, suffix: str, members: list[tuple[str, str]]) -> str:
    """What `{{description}}` becomes for these (name, sheet) members with this join prefix/suffix and
    wrap off (`getGroupCharacterCards`, `replaceAndPrepareForJoin`), for the macros this module writes."""
    def fill(text: str, name: str) -> str:
        return text.strip().replace("{{char}}", name).replace(NOOP, "")

    entries = []
    for name, sheet in members:
        sheet = sheet.strip()
        if sheet:
            entries.append(fill(prefix, name) + sheet + fill(suffix, name))
    return "\n".join(entries)


def roster_translation(template: jinja2.Template) -> tuple[RosterTranslation | None, str | None]:
    """(translation, None), or (None, why the template cannot be written in SillyTavern's fields)."""
    try:
        renders = {n: _render(template, n) for n in (1, 2, 3)}
    except Exception as exc:  # noqa: BLE001 - a template that needs other variables cannot be probed
        return None, f"the system prompt template cannot be rendered with a user and other characters: {exc}"
    text = renders[3]
    if "{{" in text.replace(_USER, "").replace(_PERSONA, "") or any(
            text.count(s) != 1 for s in (*_SHEETS,)):
        return None, ("the system prompt template must print each sheet once and no `{{` of its own "
                      "(SillyTavern would read it as a macro)")
    first, second = text.find(_NAMES[0]), text.find(_NAMES[1])
    if first < 0 or second < 0:
        return None, "the system prompt template does not name each other character"
    size = second - first
    start = first
    swap = {_NAMES[0]: _NAMES[1], _SHEETS[0]: _SHEETS[1]}

    def same(a: str, b: str) -> bool:
        for old, new in swap.items():
            a = a.replace(old, new)
        return a == b

    # The block may start anywhere the render keeps repeating with the block's period; of those starts,
    # the one nearest the first name whose block ends with a newline (SillyTavern's joiner).
    lowest = start
    while lowest > 0 and same(text[lowest - 1], text[lowest - 1 + size]) and "\x01" not in text[lowest - 1]:
        lowest -= 1
    start = next((s for s in range(first, lowest - 1, -1) if text[s + size - 1] == "\n"), first)
    block = text[start:start + size]
    head, tail = text[:start], text[start + 3 * size:]
    expected = {n: head + "".join(block.replace(_NAMES[0], _NAMES[i]).replace(_SHEETS[0], _SHEETS[i])
                                  for i in range(n)) + tail for n in (1, 2, 3)}
    if expected != renders or _SHEETS[0] not in block or any(s in head + tail for s in (*_NAMES, *_SHEETS)):
        return None, ("the system prompt template's roster is not one repeated block per other character "
                      "around a fixed text")
    if not block.endswith("\n"):
        return None, ("each roster entry must end with a newline: SillyTavern joins the members' entries "
                      "with one")
    before, after = block.split(_SHEETS[0])
    after = after[:-1]  # the newline SillyTavern joins with
    prefix, suffix = (_keep_edges(part.replace(_NAMES[0], "{{char}}")) for part in (before, after))
    system = (head + "{{description}}\n" + tail).replace(_USER, "{{user}}").replace(_PERSONA, "{{persona}}")
    if "\x01" in system + prefix + suffix:
        return None, "the system prompt template prints the user's character inside the roster"
    return RosterTranslation(system, prefix, suffix), None
