"""An emulator of SillyTavern's text-completion prompt assembly for a group chat in instruct mode, for tests.

Reference: SillyTavern 1.12.6 (`package.json`; `release` branch, commit ba6f7b7, 2024-09-28), read, not
copied. The rules below are what these functions do; the emulator follows them for the settings our
presets use and SillyTavern's defaults for everything else (no world info, author's note, examples,
extensions or regex scripts; `power_user` defaults: `prefer_character_prompt` on, `collapse_newlines`
off, persona description position "in prompt", `trim_spaces` on, `allow_name1/2_display` off,
`disable_group_trimming` off, `auto_fix_generated_markdown` on). Anything outside that raises
`NotImplementedError` rather than guessing.

`public/script.js`
- `Generate` (group reply, type `group_chat`): `name1` = the persona's name, `name2` = the speaking
  member's name (`generateGroupWrapper` sets the character id and name per member). Card fields come from
  `getCharacterCardFields`. The system prompt, when `power_user.sysprompt.enabled`:
  `system = prefer_character_prompt && card.system_prompt ? card.system_prompt : baseChatReplace(sysprompt
  .content)`, then `formatInstructModeSystemPrompt(substituteParams(system))`; else `''`.
  `chat[0].mes = substituteParams(chat[0].mes)`; `coreChat` = messages without `is_system`. Each message
  is `formatMessageHistoryItem` → `formatInstructModeChat(itemName, mes, is_user, isNarrator, ...)` with
  `isNarrator = extra.type === "narrator"`, `itemName` = the message's `name` (else `name2`), and the
  force flag FIRST for the oldest message, LAST for the last user message (which wins). The story string
  is `renderStoryString({description, personality, persona (position in prompt), scenario, system, char,
  user, wiBefore, wiAfter, mesExamples, ...})`. The prompt is `storyString + mesExmString +
  addChatsSeparator(messages joined)` with the last message followed by `formatInstructModePrompt(name2)`;
  with `wrap` on, the last message loses one trailing newline (not with wrap off). `\\r` removed.
- `getCharacterCardFields`: persona = `baseChatReplace(persona_description.trim())`; description,
  personality, scenario, system (`data.system_prompt`, when `prefer_character_prompt`) of the current
  card, each trimmed and `baseChatReplace`d; in a group, `getGroupCharacterCards` replaces description,
  personality, scenario and examples when the group's `generation_mode` is not 0 (swap).
- `baseChatReplace(value)` = `substituteParams(value, name1, name2, _, _, false)` (no card macros) and
  `\\r` removed.
- `substituteParams` → `evaluateMacros` (`public/scripts/macros.js`): legacy `<USER>`, `<BOT>`, `<CHAR>`,
  `<GROUP>`, `<CHARIFNOTGROUP>` replaced; then, only if `{{` remains: `{{newline}}` → `\\n`,
  `/(?:\\r?\\n)*{{trim}}(?:\\r?\\n)*/` removed, `{{noop}}` removed, then the environment in order
  (`charPrompt`, `charJailbreak`, `description`, `personality`, `scenario`, `persona`, `mesExamples`, …
  then `user`, `char`, `group`, `charIfNotGroup`; card macros only when `_replaceCharacterCard`),
  case-insensitive, then `{{// comments}}` removed. Unknown macros stay as written.
- `getStoppingStrings`: with `names_as_stop_strings`: `\\n{name1}:` (twice, deduplicated), then
  `\\n{member}:` for every other member of the group; then `getInstructStoppingSequences`; unique.
- `cleanUpMessage` (a normal reply): each stop string that the reply *ends with a prefix of* is cut
  (the backend has already stopped at the first whole stop string and left it out); trailing spaces of
  every line removed; cut at `{name1}:` at the start or `\\n{name1}:`; cut at `<|endoftext|>`, at the whole
  `stop_sequence`, at the whole `input_sequence`; every non-blank line of `output_sequence` and
  `last_output_sequence` removed wherever it occurs; `cleanGroupMessage` cuts at `(^|\\n)Other:` for every
  other member; `(^|\\n){name2}:\\s*` removed; `fixMarkdown(text, false)` (spaces inside `*…*`/`_…_` pairs
  next to the markers removed); a leading `{name2}:` removed; trimmed (`trim_spaces`).
- `addChatsSeparator`: `chat_start` (when set) plus a newline before the messages.

`public/scripts/instruct-mode.js`
- `formatInstructModeChat`: names shown when `names_behavior` is `always` (or `force` for a group member
  who is not the user), never for the narrator. Prefix: narrator → `system_same_as_user ? input_sequence
  : system_sequence`; user → `first_input_sequence`/`last_input_sequence` when forced FIRST/LAST and set,
  else `input_sequence`; others the same with the output sequences. Suffix: narrator → system (or input)
  suffix; user → `input_suffix`; others `output_suffix`. With `macro` on, prefix and suffix go through
  `substituteParams` and `{{name}}` becomes the message's name (or `System`). No suffix and `wrap` → `\\n`.
  The text is `[prefix, (name ? "{name}: " : "") + mes + suffix]` without empty parts, joined by `\\n` when
  `wrap` (else by nothing).
- `formatInstructModeSystemPrompt`: `system_sequence_prefix` (with `{{name}}` → `System`) and
  `system_sequence_suffix` around the system prompt (separated by `\\n` when `wrap`).
- `formatInstructModePrompt` (a normal reply): sequence = `last_output_sequence || output_sequence`,
  macros and `{{name}}` → name2; names shown (always/force) → `sep + sequence + sep + filler + "{name2}:"`
  (filler: the Mistral hack, the output sequence's trailing space when only the last output sequence
  lacks it), else `sep + sequence`; `wrap` → trimmed at the end; plus `sep` when names are not shown.
- `getInstructStoppingSequences`: `stop_sequence`, `input_sequence` (`{{name}}` → name1),
  `output_sequence`, `first_output_sequence`, `last_output_sequence` (`{{name}}` → name2),
  `system_sequence`, `last_system_sequence` (`{{name}}` → `System`) joined by newlines, split into lines,
  unique; each non-blank line (prefixed by `\\n` when `wrap`) through `substituteParams` when `macro`.

`public/scripts/power-user.js`
- `renderStoryString`: Handlebars (`noEscape`) with the parameters, then `substituteParams(output, user,
  char)`, leading newlines removed, and a newline added at the end when there is none and instruct mode is
  off or `wrap` is on. Handlebars' subset used here: `{{#if x}}…{{else}}…{{/if}}` (JavaScript truthiness:
  empty string false), `{{x}}`, and its standalone rule: a block tag alone on its line takes the line's
  indentation and its newline with it.

`public/scripts/group-chats.js`
- `getGroupCharacterCards`: for each member card in group order (muted ones skipped unless they are the
  speaker, or the mode is 2), each field trimmed and, when not empty, `prefix + sep + value + sep +
  suffix` (`sep` `\\n` with `wrap`, else nothing; prefix and suffix trimmed, `<FIELDNAME>` replaced, then
  `baseChatReplace` with `{{char}}` = that member), the entries joined by `\\n`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FIRST, LAST = 1, 2


@dataclass
class Card:
    avatar: str  # file name: the group's member id
    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    mes_example: str = ""
    system_prompt: str = ""


@dataclass
class Group:
    members: list[str]
    generation_mode: int = 0
    join_prefix: str = ""
    join_suffix: str = ""
    disabled_members: list[str] = field(default_factory=list)


def _legacy(content: str, env: dict) -> str:
    for tag, key in (("<USER>", "user"), ("<BOT>", "char"), ("<CHAR>", "char"), ("<CHARIFNOTGROUP>", "group"),
                     ("<GROUP>", "group")):
        content = re.sub(re.escape(tag), lambda _m, v=env[key]: v, content, flags=re.I)
    return content


def evaluate_macros(content: str, env: dict) -> str:
    """`macros.js evaluateMacros` for the macros the presets and cards can hold."""
    if not content:
        return ""
    content = _legacy(content, env)
    if "{{" not in content:
        return content
    content = re.sub(r"\{\{newline\}\}", "\n", content, flags=re.I)
    content = re.sub(r"(?:\r?\n)*\{\{trim\}\}(?:\r?\n)*", "", content, flags=re.I)
    content = re.sub(r"\{\{noop\}\}", "", content, flags=re.I)
    for key, value in env.items():
        content = re.sub("{{" + re.escape(key) + "}}", lambda _m, v=value: v, content, flags=re.I)
    return re.sub(r"\{\{//([\s\S]*?)\}\}", "", content)


_HB = re.compile(r"\{\{(#if\s+\w+|else|/if|[^{}]*)\}\}")


def render_handlebars(template: str, params: dict) -> str:
    """The Handlebars subset story strings use, with the standalone rule for block tags."""
    # Standalone block tags: alone on their line, they take its indentation and newline.
    template = re.sub(r"(^|\n)[ \t]*(\{\{(?:#if\s+\w+|else|/if)\}\})[ \t]*(?:\r?\n|$)", r"\1\2", template)
    pieces = _HB.split(template)

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
            elif tag in params:
                out.append(str(params[tag] or ""))
            else:
                out.append("")  # Handlebars prints an unknown parameter as nothing
            i += 1
        if stop:
            raise ValueError(f"unclosed {{{{#if}}}} (expected {stop})")
        return "".join(out), i

    return block(0, ())[0]


def fix_markdown(text: str) -> str:
    """`power-user.js fixMarkdown(text, false)`: spaces next to the markers inside `*…*` / `_…_` pairs go."""
    spaces = "[\t \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000\ufeff]+"
    matches = list(re.finditer(r"([*_]{1,2})([\s\S]*?)\1", text))
    for match in reversed(matches):
        fixed = re.sub(rf"(\*|_)({spaces})|({spaces})(\*|_)", lambda m: (m.group(1) or "") + (m.group(4) or ""),
                       match.group(0))
        text = text[:match.start()] + fixed + text[match.end():]
    return text


@dataclass
class SillyTavern:
    """The state a prompt is built from: selected presets, persona, cards, group and chat."""

    instruct: dict
    context: dict
    sysprompt_content: str | None  # None: the System Prompt switched off
    persona_name: str
    persona_description: str
    cards: list[Card]
    group: Group
    chat: list[dict]

    # ---- macros with this state

    def _card(self, name: str) -> Card:
        members = [c for c in self.cards if c.avatar in self.group.members and c.name == name]
        if not members:
            raise KeyError(f"{name!r} is not a member of the group")
        return members[0]

    def _env(self, name2: str, cards: bool) -> dict:
        env = {}
        if cards:
            fields = self.card_fields(name2)
            env.update({"charPrompt": fields["system"], "charJailbreak": "", "description": fields["description"],
                        "personality": fields["personality"], "scenario": fields["scenario"],
                        "persona": fields["persona"], "mesExamples": fields["mesExamples"]})
        names = ", ".join(c.name for m in self.group.members for c in self.cards if c.avatar == m)
        env.update({"user": self.persona_name, "char": name2, "group": names, "charIfNotGroup": names})
        return env

    def substitute(self, text: str, name2: str, cards: bool = True, name1: str | None = None) -> str:
        env = self._env(name2, cards)
        if name1 is not None:
            env["user"] = name1
        return evaluate_macros(text, env)

    def base_chat_replace(self, text: str, name2: str) -> str:
        return self.substitute(text, name2, cards=False).replace("\r", "") if text else text

    def card_fields(self, name2: str) -> dict:
        """`getCharacterCardFields` for the speaking member."""
        card = self._card(name2)
        fields = {"persona": self.base_chat_replace(self.persona_description.strip(), name2),
                  "description": self.base_chat_replace(card.description.strip(), name2),
                  "personality": self.base_chat_replace(card.personality.strip(), name2),
                  "scenario": self.base_chat_replace(card.scenario.strip(), name2),
                  "mesExamples": self.base_chat_replace(card.mes_example.strip(), name2),
                  "system": self.base_chat_replace(card.system_prompt.strip(), name2)}
        if self.group.generation_mode:
            fields.update(self._joined(name2))
        return fields

    def _joined(self, name2: str) -> dict:
        """`getGroupCharacterCards`."""
        sep = "\n" if self.instruct["wrap"] else ""
        speaker = self._card(name2)

        def prepare(value: str, member: Card, field_name: str) -> str:
            value = value.strip()
            if not value:
                return ""

            def custom(text: str) -> str:
                text = (text or "").replace("<FIELDNAME>", field_name) if text else ""
                return self.base_chat_replace(text.strip(), member.name) if text else ""
            prefix, suffix = custom(self.group.join_prefix), custom(self.group.join_suffix)
            value = custom(value)
            return (prefix + sep if prefix else "") + value + (sep + suffix if suffix else "")

        out: dict[str, list[str]] = {"description": [], "personality": [], "scenario": [], "mesExamples": []}
        for avatar in self.group.members:
            member = next((c for c in self.cards if c.avatar == avatar), None)
            if member is None:
                continue
            if avatar in self.group.disabled_members and member is not speaker and self.group.generation_mode != 2:
                continue
            out["description"].append(prepare(member.description, member, "Description"))
            out["personality"].append(prepare(member.personality, member, "Personality"))
            out["scenario"].append(prepare(member.scenario, member, "Scenario"))
            out["mesExamples"].append(prepare(member.mes_example, member, "Example Messages"))
        return {key: "\n".join(v for v in values if v) for key, values in out.items()}

    # ---- instruct-mode.js

    def format_chat(self, name: str, mes: str, is_user: bool, is_narrator: bool, force: int | None,
                    name2: str) -> str:
        ins = self.instruct
        include = False if is_narrator else ins["names_behavior"] == "always"
        if not is_narrator and ins["names_behavior"] == "force" and name != self.persona_name:
            include = True
        if is_narrator:
            prefix = ins["input_sequence"] if ins["system_same_as_user"] else ins["system_sequence"]
            suffix = ins["input_suffix"] if ins["system_same_as_user"] else ins["system_suffix"]
        elif is_user:
            prefix = {FIRST: ins.get("first_input_sequence"), LAST: ins.get("last_input_sequence")}.get(force) \
                or ins["input_sequence"]
            suffix = ins["input_suffix"]
        else:
            prefix = {FIRST: ins.get("first_output_sequence"), LAST: ins.get("last_output_sequence")}.get(force) \
                or ins["output_sequence"]
            suffix = ins["output_suffix"]
        prefix, suffix = prefix or "", suffix or ""
        if ins["macro"]:
            prefix = re.sub(r"\{\{name\}\}", lambda _m: name or "System", self.substitute(prefix, name2), flags=re.I)
            suffix = re.sub(r"\{\{name\}\}", lambda _m: name or "System", self.substitute(suffix, name2), flags=re.I)
        if not suffix and ins["wrap"]:
            suffix = "\n"
        separator = "\n" if ins["wrap"] else ""
        parts = [prefix, f"{name}: {mes}" + suffix] if include and name else [prefix, mes + suffix]
        return separator.join(p for p in parts if p)

    def format_system_prompt(self, system: str) -> str:
        ins = self.instruct
        sep = "\n" if ins["wrap"] else ""
        if ins.get("system_sequence_prefix"):
            system = re.sub(r"\{\{name\}\}", "System", ins["system_sequence_prefix"], flags=re.I) + sep + system
        if ins.get("system_sequence_suffix"):
            system = system + sep + ins["system_sequence_suffix"]
        return system

    def format_prompt(self, name2: str) -> str:
        ins = self.instruct
        include = bool(name2) and ins["names_behavior"] in ("always", "force")
        sequence = ins.get("last_output_sequence") or ins["output_sequence"] or ""
        filler = ""
        if (include and ins.get("last_output_sequence") and ins["output_sequence"]
                and sequence == ins["last_output_sequence"] and ins["output_sequence"][-1:].isspace()
                and not ins["last_output_sequence"][-1:].isspace()):
            filler = ins["output_sequence"][-1]
        if ins["macro"]:
            sequence = re.sub(r"\{\{name\}\}", lambda _m: name2 or "System", self.substitute(sequence, name2),
                              flags=re.I)
        sep = "\n" if ins["wrap"] else ""
        text = sep + sequence + sep + filler + f"{name2}:" if include else sep + sequence
        return (text.rstrip() if ins["wrap"] else text) + ("" if include else sep)

    def instruct_stops(self, name2: str) -> list[str]:
        ins = self.instruct

        def named(key: str, name: str) -> str:
            return re.sub(r"\{\{name\}\}", lambda _m: name, ins.get(key) or "", flags=re.I)
        combined = "\n".join([ins.get("stop_sequence") or "", named("input_sequence", self.persona_name),
                              named("output_sequence", name2), named("first_output_sequence", name2),
                              named("last_output_sequence", name2), named("system_sequence", "System"),
                              named("last_system_sequence", "System")])
        out = []
        for line in dict.fromkeys(combined.split("\n")):
            if line and line.strip():
                line = "\n" + line if ins["wrap"] else line
                out.append(self.substitute(line, name2) if ins["macro"] else line)
        return out

    # ---- script.js

    def stopping_strings(self, name2: str) -> list[str]:
        out = []
        if self.context["names_as_stop_strings"]:
            out += [f"\n{self.persona_name}:", f"\n{self.persona_name}:"]
            out += [f"\n{c.name}:" for m in self.group.members for c in self.cards
                    if c.avatar == m and c.name and c.name != name2]
        out += self.instruct_stops(name2)
        return list(dict.fromkeys(out))

    def story_string(self, name2: str) -> str:
        fields = self.card_fields(name2)
        if fields["mesExamples"]:
            raise NotImplementedError("example messages are not emulated")
        if self.sysprompt_content is None:
            system = ""
        else:
            system = fields["system"] or self.base_chat_replace(self.sysprompt_content, name2)
            system = self.format_system_prompt(self.substitute(system, name2))
        params = {"description": fields["description"], "personality": fields["personality"],
                  "persona": fields["persona"], "scenario": fields["scenario"], "system": system, "char": name2,
                  "user": self.persona_name, "wiBefore": "", "wiAfter": "", "loreBefore": "", "loreAfter": "",
                  "mesExamples": "", "mesExamplesRaw": ""}
        output = self.substitute(render_handlebars(self.context["story_string"], params), name2)
        output = re.sub(r"^\n+", "", output)
        if output and not output.endswith("\n") and self.instruct["wrap"]:
            output += "\n"
        return output

    def history(self, name2: str) -> list[str]:
        """Each message of the chat as it enters the prompt (oldest first)."""
        chat = [dict(m) for m in self.chat]
        if chat:
            chat[0]["mes"] = self.substitute(chat[0]["mes"], name2)
        core = [m for m in chat if not m.get("is_system")]
        last_user = max((j for j, m in enumerate(core) if m.get("is_user")), default=-1)
        out = []
        for j, message in enumerate(core):
            force = LAST if j == last_user else FIRST if j == 0 else None
            is_narrator = (message.get("extra") or {}).get("type") == "narrator"
            name = message["name"] if message.get("is_user") else (message.get("name") or name2)
            out.append(self.format_chat(name, message["mes"], bool(message.get("is_user")), is_narrator, force, name2))
        if out and self.instruct["wrap"]:
            out[-1] = re.sub(r"\n?$", "", out[-1], count=1)
        return out

    def prompt(self, name2: str, *, generation_line: bool = True) -> str:
        """The prompt SillyTavern sends for `name2`'s next reply (without the generation line: the chat alone)."""
        messages = "".join(self.history(name2))
        if generation_line:
            messages += self.format_prompt(name2)
        if self.context.get("chat_start"):
            messages = self.substitute(self.context["chat_start"] + "\n", name2) + messages
        return (self.story_string(name2) + messages).replace("\r", "")

    def clean_reply(self, raw: str, name2: str) -> str:
        """What SillyTavern stores for a continuation `raw`: the backend stops at the first stop string
        (left out), then `cleanUpMessage`."""
        stops = self.stopping_strings(name2)
        cut = min((raw.find(s) for s in stops if s in raw), default=len(raw))
        message = raw[:cut]
        for stop in stops:
            for j in range(len(stop), 0, -1):
                if message[-j:] == stop[:j]:
                    message = message[:-j]
                    break
        message = re.sub(r"[^\S\r\n]+$", "", message, flags=re.M)
        name1 = self.persona_name
        if message.find(f"{name1}:") == 0:
            message = ""
        if f"\n{name1}:" in message:
            message = message[:message.index(f"\n{name1}:")]
        if "<|endoftext|>" in message:
            message = message[:message.index("<|endoftext|>")]
        ins = self.instruct
        for key in ("stop_sequence", "input_sequence"):
            if ins.get(key) and ins[key] in message:
                message = message[:message.index(ins[key])]
        for key in ("output_sequence", "last_output_sequence"):
            for line in (ins.get(key) or "").split("\n"):
                if line.strip():
                    message = message.replace(line, "")
        for avatar in self.group.members:
            member = next((c for c in self.cards if c.avatar == avatar), None)
            if member is None or member.name == name2:
                continue
            found = re.search(rf"(^|\n){re.escape(member.name)}:", message)
            if found:
                message = message[:found.start()]
        message = re.sub(rf"(^|\n){re.escape(name2)}:\s*", r"\1", message)
        message = fix_markdown(message)
        if message.startswith(name2 + ":"):
            message = message.replace(name2 + ":", "", 1).lstrip()
        return message.strip()


# --------------------------------------------------------------------------------------------
# State from files, as SillyTavern would hold it after loading them


def read_card_png(path) -> Card:
    """The V2/V3 card in a PNG (`ccv3` first, as SillyTavern reads it), through the project's chunk reader."""
    import base64
    import json
    from pathlib import Path

    from gcrp_assets.lib.ingest.cards import read_png_text

    with open(path, "rb") as handle:
        chunks = read_png_text(handle)
    data = json.loads(base64.b64decode(chunks.get("ccv3") or chunks["chara"]).decode("utf-8"))["data"]
    return Card(avatar=Path(path).name, name=data["name"], description=data["description"],
                personality=data["personality"], scenario=data["scenario"], mes_example=data["mes_example"],
                system_prompt=data["system_prompt"])


def load_export(folder, presets: dict, thread_key: str, *, system_prompt_on: bool = True) -> "SillyTavern":
    """The state after importing `presets` (a Master Import object: instruct, context, sysprompt), copying the
    exported data folder into SillyTavern, restoring its personas and opening the chat of `thread_key`."""
    import json
    from pathlib import Path

    folder = Path(folder)
    index = {t["thread_key"]: t for t in json.loads((folder / "gcrp-export.json").read_text())["threads"]}[thread_key]
    group = json.loads((folder / index["group"]).read_text())
    lines = [json.loads(line) for line in (folder / index["chat"]).read_text().split("\n")]
    header, chat = lines[0], lines[1:]
    personas = json.loads((folder / "personas.json").read_text())
    avatar = header["chat_metadata"]["persona"]  # the chat's locked persona
    cards = [read_card_png(path) for path in sorted((folder / "characters").glob("*.png"))]
    sysprompt = presets.get("sysprompt")
    return SillyTavern(
        instruct=presets["instruct"], context=presets["context"],
        sysprompt_content=(sysprompt["content"] if sysprompt else "") if system_prompt_on else None,
        persona_name=personas["personas"][avatar],
        persona_description=personas["persona_descriptions"][avatar]["description"],
        cards=cards,
        group=Group(members=group["members"], generation_mode=group["generation_mode"],
                    join_prefix=group["generation_mode_join_prefix"], join_suffix=group["generation_mode_join_suffix"],
                    disabled_members=group["disabled_members"]),
        chat=chat)
