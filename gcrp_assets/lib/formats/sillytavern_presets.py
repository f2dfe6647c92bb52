"""SillyTavern instruct/context presets for a prompt format, and SillyTavern's prompt assembly.

`instruct_preset(fmt)` and `context_preset(fmt)` give the JSON objects SillyTavern imports
(Advanced Formatting → Instruct / Context template); `assemble_group_chat` rebuilds a text
completion prompt from those two objects the way SillyTavern 1.12 does (`formatInstructModeChat`,
`formatInstructModeSystemPrompt`, `renderStoryString`, `formatInstructModePrompt`, `addChatsSeparator`
in `public/script.js` and `public/scripts/instruct-mode.js`), so the presets can be tested against
`formats.render` without a browser.

Mapping (wrap off):
- the format's separator goes at the *front* of every sequence (`input_sequence = separator +
  user prefix`), the role terminator (plus EOS for `every_turn` formats) is the suffix; the system
  prompt is the story string: `system prefix + {{system}} + card fields + {{trim}} + system suffix`.
  The prompt is then exactly `render(...)` without BOS (BOS comes from the backend's "Add BOS
  token"), and the generation line (`separator + model prefix + "Name:"`) is exactly
  `generation_prompt`. An empty story string leaves the first message with a leading separator.
- names: `Name: ` in content → `names_behavior: "always"` (SillyTavern writes `"{name}: {mes}"`);
  Herrsimian's header names (`::::user:Name: `) render the same way from `::::user:`; any other name
  template goes into the sequences as `{{name}}` with `names_behavior: "none"` (a message without a
  name then shows SillyTavern's "System"). A nameless *message* in a header-name format (e.g. a
  Herrsimian OOC line) renders without the space after the header; the system prompt is unaffected.
- `stop_sequence` holds all the format's stop strings joined by newlines: SillyTavern splits the
  sequences on newlines when it builds stop strings (`getInstructStoppingSequences`), so each line
  becomes a stop string (Herrsimian's `\\n\\n::::` becomes `::::`, which its card recommends).
- `names_as_stop_strings` is off for header-name formats (Herrsimian's card: the backend may not
  stop, or crops output), on otherwise. `chat_start` and `example_separator` are empty.
- EOS policy `last` has no counterpart at inference (a chat never ends); `every_turn` appends the
  format's literal EOS (or `eos_token`) to both suffixes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gcrp_assets.lib.formats.chat_format import ChatFormat, get_format

FIRST, LAST = 1, 2

_STORY_FIELDS = ("{{#if system}}{{system}}\n{{/if}}{{#if wiBefore}}{{wiBefore}}\n{{/if}}"
                 "{{#if description}}{{description}}\n{{/if}}{{#if personality}}{{char}}'s personality: "
                 "{{personality}}\n{{/if}}{{#if scenario}}Scenario: {{scenario}}\n{{/if}}"
                 "{{#if wiAfter}}{{wiAfter}}\n{{/if}}{{#if persona}}{{persona}}\n{{/if}}{{trim}}")


def _fmt(fmt: ChatFormat | str) -> ChatFormat:
    fmt = get_format(fmt) if not isinstance(fmt, ChatFormat) else fmt
    if fmt.is_jinja:
        raise ValueError(f"format {fmt.name!r} is a Jinja chat template; SillyTavern presets need a built-in "
                         "or YAML format (prefix/suffix sequences)")
    return fmt


def _names(fmt: ChatFormat) -> tuple[str, str]:
    """(names_behavior, name part of the sequences)."""
    if fmt.names == "none":
        return "none", fmt.nameless
    if fmt.name_template == "{name}: ":
        return "always", ""
    return "none", fmt.name_template.replace("{name}", "{{name}}")


def instruct_preset(fmt: ChatFormat | str, *, eos_token: str | None = None) -> dict:
    """SillyTavern instruct template for `fmt` (keys as in SillyTavern 1.12)."""
    fmt = _fmt(fmt)
    behavior, name_part = _names(fmt)
    eos = ""
    if fmt.eos_policy == "every_turn":
        eos = fmt.eos_token or eos_token or ""
        if not eos:
            raise ValueError(f"format {fmt.name!r} ends every turn with EOS: pass eos_token (its text)")
    sep = fmt.separator
    return {
        "name": f"gcrp-{fmt.name}",
        "input_sequence": sep + fmt.role_prefix["user"] + name_part,
        "input_suffix": fmt.suffix("user") + eos,
        "output_sequence": sep + fmt.role_prefix["model"] + name_part,
        "output_suffix": fmt.suffix("model") + eos,
        "system_sequence": sep + fmt.system_prefix,
        "system_suffix": fmt.system_suffix,
        "last_system_sequence": "",
        "system_sequence_prefix": "",
        "system_sequence_suffix": "",
        "first_input_sequence": "",
        "last_input_sequence": "",
        "first_output_sequence": "",
        "last_output_sequence": "",
        "stop_sequence": "\n".join(fmt.stop_strings),
        "user_alignment_message": "",
        "system_same_as_user": False,
        "wrap": False,
        "macro": True,
        "names_behavior": behavior,
        "skip_examples": False,
        "activation_regex": "",
        "bind_to_context": False,
    }


def context_preset(fmt: ChatFormat | str) -> dict:
    """SillyTavern context template for `fmt`: the story string is the format's system block."""
    fmt = _fmt(fmt)
    return {
        "name": f"gcrp-{fmt.name}",
        "story_string": fmt.system_prefix + _STORY_FIELDS + fmt.system_suffix,
        "example_separator": "",
        "chat_start": "",
        "use_stop_strings": False,
        "allow_jailbreak": False,
        "names_as_stop_strings": fmt.names != "header",
        "always_force_name2": True,
        "trim_sentences": False,
        "single_line": False,
    }


def stop_strings(fmt: ChatFormat | str, names: Iterable[str] = ()) -> list[str]:
    """The stop strings SillyTavern sends with these presets (`getStoppingStrings`): `\\n{Name}:` for
    the given participants when names are stop strings, then each non-blank line of the stop and
    role sequences."""
    fmt = _fmt(fmt)
    instruct, context = instruct_preset(fmt, eos_token="\x00"), context_preset(fmt)
    result: list[str] = []
    if context["names_as_stop_strings"]:
        result += [f"\n{name}:" for name in names]
    keys = ("stop_sequence", "input_sequence", "output_sequence", "first_output_sequence",
            "last_output_sequence", "system_sequence", "last_system_sequence")
    combined = "\n".join(instruct[k].replace("{{name}}", "") for k in keys)
    for line in combined.split("\n"):
        if line.strip():
            result.append("\n" + line if instruct["wrap"] else line)
    return list(dict.fromkeys(result))


# --------------------------------------------------------------------------------------------
# SillyTavern's assembly


_HB_TOKEN = re.compile(r"\{\{(#if\s+\w+|else|/if|[^{}]*)\}\}")


def render_story_string(template: str, params: dict) -> str:
    """The Handlebars subset SillyTavern's story strings use: `{{#if x}}…{{else}}…{{/if}}`
    (nested), `{{x}}`; `{{trim}}` removes the newlines around it; leading newlines are dropped."""
    pieces = _HB_TOKEN.split(template)  # text, tag, text, tag, …

    def block(i: int, stop: tuple[str, ...]) -> tuple[str, int]:
        out = []
        while i < len(pieces):
            if i % 2 == 0:
                out.append(pieces[i])
                i += 1
                continue
            tag = pieces[i].strip()
            if tag in stop:
                return "".join(out), i
            if tag.startswith("#if"):
                key = tag[3:].strip()
                yes, i = block(i + 1, ("else", "/if"))
                no = ""
                if pieces[i].strip() == "else":
                    no, i = block(i + 1, ("/if",))
                out.append(yes if params.get(key) else no)
                i += 1
            elif tag == "trim":
                out.append("{{trim}}")
                i += 1
            else:
                value = params.get(tag)
                out.append("" if value is None else str(value))
                i += 1
        if stop:
            raise ValueError(f"story string: unclosed {{{{#if}}}} (expected {stop})")
        return "".join(out), i

    text, _ = block(0, ())
    text = re.sub(r"(?:\r?\n)*\{\{trim\}\}(?:\r?\n)*", "", text)
    return re.sub(r"^\n+", "", text)


def _macros(text: str, user: str, char: str) -> str:
    return text.replace("{{user}}", user).replace("{{char}}", char)


def _format_chat(instruct: dict, name: str, mes: str, is_user: bool, is_narrator: bool, force: int | None,
                 user: str, char: str) -> str:
    """formatInstructModeChat, in a group chat."""
    include_names = False if is_narrator else instruct["names_behavior"] == "always"
    if not is_narrator and instruct["names_behavior"] == "force" and name != user:
        include_names = True
    if is_narrator:
        prefix = instruct["input_sequence"] if instruct["system_same_as_user"] else instruct["system_sequence"]
        suffix = instruct["input_suffix"] if instruct["system_same_as_user"] else instruct["system_suffix"]
    elif is_user:
        prefix = {FIRST: instruct.get("first_input_sequence"), LAST: instruct.get("last_input_sequence")}.get(force)
        prefix = prefix or instruct["input_sequence"]
        suffix = instruct["input_suffix"]
    else:
        prefix = {FIRST: instruct.get("first_output_sequence"), LAST: instruct.get("last_output_sequence")}.get(force)
        prefix = prefix or instruct["output_sequence"]
        suffix = instruct["output_suffix"]
    prefix, suffix = prefix or "", suffix or ""
    if instruct.get("macro"):
        prefix = _macros(prefix, user, char).replace("{{name}}", name or "System")
        suffix = _macros(suffix, user, char).replace("{{name}}", name or "System")
    if not suffix and instruct["wrap"]:
        suffix = "\n"
    separator = "\n" if instruct["wrap"] else ""
    parts = [prefix, f"{name}: {mes}" + suffix] if include_names and name else [prefix, mes + suffix]
    return separator.join(p for p in parts if p)


def _format_prompt(instruct: dict, name: str, user: str, char: str) -> str:
    """formatInstructModePrompt for a normal (not impersonated, not quiet) reply in a group chat."""
    include_names = bool(name) and instruct["names_behavior"] in ("always", "force")
    sequence = instruct.get("last_output_sequence") or instruct["output_sequence"] or ""
    filler = ""
    if (include_names and instruct.get("last_output_sequence") and instruct["output_sequence"]
            and sequence == instruct["last_output_sequence"] and instruct["output_sequence"][-1:].isspace()
            and not instruct["last_output_sequence"][-1:].isspace()):
        filler = instruct["output_sequence"][-1]
    if instruct.get("macro"):
        sequence = _macros(sequence, user, char).replace("{{name}}", name or "System")
    separator = "\n" if instruct["wrap"] else ""
    text = separator + sequence + separator + filler + f"{name}:" if include_names else separator + sequence
    return (text.rstrip() if instruct["wrap"] else text) + ("" if include_names else separator)


def assemble_group_chat(instruct: dict, context: dict, system: str, messages: list[dict], *,
                        speaker: str | None = None, bos_token: str = "", user: str = "", char: str = "",
                        card: dict | None = None) -> str:
    """The text completion prompt SillyTavern builds for a group chat from these presets.

    `messages`: `{"role": "user"|"model"|"assistant"|"system", "name", "content"}` (as from
    `formats.sample_messages`); system messages are narrator messages. `speaker`: append the
    generation line for that character, as SillyTavern does before generating. `bos_token`: what the
    backend's "Add BOS token" puts in front. `user`/`char`: `{{user}}`/`{{char}}`; `card`: the other
    story string fields (description, personality, scenario, persona, wiBefore, wiAfter).
    """
    if system:  # formatInstructModeSystemPrompt
        sep = "\n" if instruct["wrap"] else ""
        if instruct.get("system_sequence_prefix"):
            system = instruct["system_sequence_prefix"].replace("{{name}}", "System") + sep + system
        if instruct.get("system_sequence_suffix"):
            system = system + sep + instruct["system_sequence_suffix"]
    params = {"system": system, "char": char, "user": user, **(card or {})}
    story = _macros(render_story_string(context["story_string"], params), user, char)
    if story and not story.endswith("\n") and instruct["wrap"]:
        story += "\n"

    last_user = max((j for j, m in enumerate(messages) if m["role"] == "user"), default=-1)
    chat = []
    for j, message in enumerate(messages):
        is_user, is_narrator = message["role"] == "user", message["role"] == "system"
        name = message.get("name") or ("" if is_user or is_narrator else char)
        force = LAST if j == last_user else FIRST if j == 0 else None
        chat.append(_format_chat(instruct, name, message["content"], is_user, is_narrator, force, user, char))
    if chat and instruct["wrap"]:
        chat[-1] = re.sub(r"\n?$", "", chat[-1], count=1)
    text = "".join(chat)
    if speaker is not None:
        text += _format_prompt(instruct, speaker, user, char)
    if context.get("chat_start"):
        text = _macros(context["chat_start"] + "\n", user, char) + text
    return bos_token + story + text
