"""SillyTavern presets that rebuild the training prompt: instruct, context, system prompt, sampler.

`build_presets(fmt, ...)` gives the four JSON objects SillyTavern 1.12.6 imports (Advanced Formatting →
Master Import takes all of them in one file: `{"instruct", "context", "sysprompt", "preset"}`,
`preset-manager.js performMasterImport`), and the reasons, if any, why the format cannot be expressed
(then no presets: a broken preset is worse than none). `write_presets(folder, fmt, ...)` writes them
and never raises for a format SillyTavern cannot express. The assembly rules these presets rely on are
written down, from SillyTavern's source, in `gcrp_assets_tests/st_prompt_emulator.py`, which the tests
run against the training render.

How a format maps onto SillyTavern (instruct "wrap" off, so sequences are written exactly):
- The separator between blocks goes at the *end* of every suffix (`input_suffix = user terminator +
  separator`), so the first block never has one in front: with an empty system prompt the chat starts
  at its first message, as in training.
- The system block is the story string: `{{#if system}}` system prefix, `{{system}}`, system suffix and
  separator `{{/if}}`; the System Prompt preset holds the training system prompt written with macros
  (`sillytavern_roster`): `{{user}}` and `{{persona}}` (the user's persona: the human's character and its
  uniform sheet), `{{description}}` (the group's member cards joined with a prefix and suffix the group
  sets). With the system prompt switched off nothing is emitted, as training renders an empty one.
- Names: `Name: ` before the text (`{name}: `, content or header placement) is SillyTavern's
  `names_behavior: "always"`; any other name template goes into the sequences as `{{name}}` with
  `names_behavior: "none"`, and `last_output_sequence` is the output sequence without its trailing
  spaces, so the generation line ends as `generation_prompt` does (the space belongs to the reply's first
  token).
- Narrator messages (`/sys`) use the system sequence: it is the user prefix plus the nameless name slot
  and the user terminator, the way training renders an out-of-character turn (a nameless user turn).
- Stop strings: SillyTavern splits the stop sequence (and each role sequence) on newlines, one stop
  string per non-blank line (`getInstructStoppingSequences`). The stop sequence holds the format's stop
  strings, its terminators (so `[/INST]` ends a reply instead of being stored in it) and its role
  prefixes without names (a custom name template puts the speaker's name into SillyTavern's own role
  stop strings, which would then catch only that speaker's header).
- `bind_to_context` is left out: a preset that names it switches the user's own setting when selected.
  `activation_regex` matches the model name, so the instruct preset selects itself.
- The sampler preset carries the model card's temperature and min_p, no penalties, the format's BOS
  (`add_bos_token`), and `skip_special_tokens: false` so that stop strings made of special tokens are seen.
- EOS: `every_turn` formats append the EOS text to every suffix; `last` has no counterpart (a chat never
  ends) and is said in the notes.
- Jinja formats are expressed when a prefix/suffix format with `Name: ` names renders the same text on a
  probe conversation (system prompt, named and nameless user turns, consecutive model turns); otherwise
  they cannot be, and the notes say why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import jinja2

from gcrp_assets.lib.formats.chat_format import ChatFormat, get_format, render
from gcrp_assets.lib.formats.sillytavern_roster import RosterTranslation, roster_translation

# File names written by `write_presets`, in this order.
MASTER = "sillytavern-master.json"
INSTRUCT = "sillytavern-instruct.json"
CONTEXT = "sillytavern-context.json"
SYSPROMPT = "sillytavern-sysprompt.json"
TEXTGEN = "sillytavern-textgen.json"
# SillyTavern replaces these in sequences and the story string (`macros.js evaluateMacros`, legacy tags).
_LEGACY_TAGS = re.compile(r"<(?:USER|BOT|CHAR|CHARIFNOTGROUP|GROUP)>", re.I)


@dataclass(frozen=True)
class SillyTavernPresets:
    """The presets of one format (None where not written) and what the model card must say about them."""

    name: str
    instruct: dict | None
    context: dict | None
    sysprompt: dict | None
    textgen: dict | None
    roster: RosterTranslation | None
    cannot_express: list[str] = field(default_factory=list)  # why no presets were written (empty: written)
    differences: list[str] = field(default_factory=list)     # what SillyTavern does differently, documented

    @property
    def written(self) -> bool:
        return self.instruct is not None

    def master(self) -> dict:
        """The Master Import file: every preset in one JSON object."""
        sections = {"instruct": self.instruct, "context": self.context, "sysprompt": self.sysprompt,
                    "preset": self.textgen}
        return {key: value for key, value in sections.items() if value is not None}


@dataclass(frozen=True)
class PresetFiles:
    """What `write_presets` wrote (file name → path; empty when the format cannot be expressed) and the notes."""

    paths: dict[str, Path]
    presets: SillyTavernPresets

    @property
    def notes(self) -> list[str]:
        return self.presets.cannot_express + self.presets.differences


# --------------------------------------------------------------------------------------------
# The format as SillyTavern sequences


def sequence_format(fmt: ChatFormat) -> tuple[ChatFormat | None, str | None]:
    """`fmt` as a prefix/suffix format, or (None, why not). A Jinja format qualifies when a prefix/suffix
    format with `Name: ` names (its probed sequences) renders the same text on a probe conversation."""
    if not fmt.is_jinja:
        return fmt, None
    candidate = replace(fmt, jinja=None, eos_policy="none", names="content", name_template="{name}: ",
                        nameless="")
    probe = {"sample_id": "probe", "system": "Rules.", "turns": [
        {"role": "user", "name": "Ann", "text": "Hello."}, {"role": "user", "name": None, "text": "(OOC: brb)"},
        {"role": "model", "name": "Bo", "text": "Hi."}, {"role": "model", "name": "Cy", "text": "Hey."},
        {"role": "user", "name": "Ann", "text": "Bye."}]}
    try:
        same = render(probe, fmt, "<s>", eos_token="</s>").text == render(probe, candidate, "<s>", eos_token="</s>").text
    except ValueError as exc:
        return None, f"its chat template cannot render a group chat: {exc}"
    if not same:
        return None, ("its Jinja chat template is not a fixed prefix/suffix per role with `Name: ` before the text, "
                      "which is all SillyTavern's instruct sequences can say")
    return candidate, None


def _names(fmt: ChatFormat) -> tuple[str, str]:
    """(names_behavior, the name slot written into the sequences)."""
    if fmt.names == "none":
        return "none", fmt.nameless
    if fmt.name_template == "{name}: ":
        return "always", ""
    return "none", fmt.name_template.replace("{name}", "{{name}}")


def _eos(fmt: ChatFormat, eos_token: str | None) -> str:
    return (fmt.eos_token or eos_token or "") if fmt.eos_policy == "every_turn" else ""


def _stop_lines(fmt: ChatFormat, eos_token: str | None) -> list[str]:
    """The format's stop strings, terminators and role prefixes, one non-blank line each (as SillyTavern
    splits them)."""
    candidates = [*fmt.stop_strings, fmt.suffix("model"), fmt.suffix("user"), fmt.system_suffix,
                  fmt.role_prefix["user"], fmt.role_prefix["model"], fmt.system_prefix]
    if fmt.eos_policy in ("every_turn", "last"):
        candidates.append(fmt.eos_token or eos_token or "")
    lines = [line for text in candidates for line in text.split("\n") if line.strip()]
    return list(dict.fromkeys(lines))


def js_regex_literal(text: str) -> str:
    """`/text/i` with the regular-expression characters escaped (SillyTavern's `regexFromString`)."""
    return "/" + re.sub(r"[.*+?^${}()|[\]\\/]", lambda m: "\\" + m.group(0), text) + "/i"


def instruct_preset(fmt: ChatFormat | str, *, eos_token: str | None = None, model_name: str | None = None) -> dict:
    """SillyTavern instruct template for `fmt` (keys as in SillyTavern 1.12.6); `ValueError` when the
    format cannot be expressed (`build_presets` says why instead of raising)."""
    fmt = _sequences_or_raise(fmt)
    behavior, slot = _names(fmt)
    eos = _eos(fmt, eos_token)
    if fmt.eos_policy == "every_turn" and not eos:
        raise ValueError(f"format {fmt.name!r} ends every turn with EOS: pass eos_token (its text)")
    sep = fmt.separator
    output = fmt.role_prefix["model"] + slot
    name = model_name or f"gcrp-{fmt.name}"
    return {
        "name": name,
        "input_sequence": fmt.role_prefix["user"] + slot,
        "input_suffix": fmt.suffix("user") + eos + sep,
        "output_sequence": output,
        "output_suffix": fmt.suffix("model") + eos + sep,
        "system_sequence": fmt.role_prefix["user"] + fmt.nameless,
        "system_suffix": fmt.suffix("user") + eos + sep,
        "last_system_sequence": "",
        "system_sequence_prefix": "",
        "system_sequence_suffix": "",
        "first_input_sequence": "",
        "last_input_sequence": "",
        "first_output_sequence": "",
        "last_output_sequence": output.rstrip(" ") if behavior == "none" and output.endswith(" ") else "",
        "stop_sequence": "\n".join(_stop_lines(fmt, eos_token)),
        "user_alignment_message": "",
        "system_same_as_user": False,
        "wrap": False,
        "macro": True,
        "names_behavior": behavior,
        "skip_examples": False,
        "activation_regex": js_regex_literal(name),
    }


def context_preset(fmt: ChatFormat | str, *, model_name: str | None = None) -> dict:
    """SillyTavern context template for `fmt`: the story string is the format's system block around
    `{{system}}`, emitted only when there is a system prompt."""
    fmt = _sequences_or_raise(fmt)
    return {
        "name": model_name or f"gcrp-{fmt.name}",
        "story_string": ("{{#if system}}" + fmt.system_prefix + "{{system}}" + fmt.system_suffix + fmt.separator
                         + "{{/if}}"),
        "example_separator": "",
        "chat_start": "",
        "use_stop_strings": False,
        "allow_jailbreak": False,
        "names_as_stop_strings": fmt.names != "header",  # Herrsimian's card: the backend may crop on names
        "always_force_name2": True,
        "trim_sentences": False,
        "single_line": False,
    }


def sysprompt_preset(roster: RosterTranslation, *, name: str) -> dict:
    """SillyTavern System Prompt preset: the training system prompt written with macros."""
    return {"name": name, "content": roster.system_prompt}


def textgen_preset(fmt: ChatFormat, sampling: dict, *, name: str) -> dict:
    """A Text Completion preset with the model card's sampling: temperature and min_p, nothing else
    truncating or penalising (penalties would hit the turn markers)."""
    return {
        "name": name, "temp": sampling["temperature"], "temperature_last": True, "top_p": 1, "top_k": 0,
        "top_a": 0, "tfs": 1, "epsilon_cutoff": 0, "eta_cutoff": 0, "typical_p": 1, "min_p": sampling["min_p"],
        "rep_pen": 1, "rep_pen_range": 0, "rep_pen_decay": 0, "rep_pen_slope": 1, "no_repeat_ngram_size": 0,
        "penalty_alpha": 0, "num_beams": 1, "length_penalty": 1, "min_length": 0, "encoder_rep_pen": 1,
        "freq_pen": 0, "presence_pen": 0, "skew": 0, "do_sample": True, "early_stopping": False,
        "dynatemp": False, "smoothing_factor": 0, "dry_multiplier": 0, "mirostat_mode": 0,
        "add_bos_token": fmt.add_bos, "ban_eos_token": False, "skip_special_tokens": False,
        "ignore_eos_token": False,
    }


def _sequences_or_raise(fmt: ChatFormat | str) -> ChatFormat:
    fmt = get_format(fmt)
    sequences, why = sequence_format(fmt)
    if sequences is None:
        raise ValueError(f"format {fmt.name!r} cannot be expressed in SillyTavern: {why}")
    return sequences


def _literal_problems(fmt: ChatFormat) -> list[str]:
    """Text of the format that SillyTavern would not keep as written."""
    problems = []
    pieces = {"system prefix": fmt.system_prefix, "system suffix": fmt.system_suffix, "separator": fmt.separator,
              "user prefix": fmt.role_prefix["user"], "model prefix": fmt.role_prefix["model"],
              "user suffix": fmt.suffix("user"), "model suffix": fmt.suffix("model"),
              "name template": fmt.name_template, "nameless slot": fmt.nameless}
    for label, text in pieces.items():
        if "{{" in text.replace("{name}", "") or _LEGACY_TAGS.search(text):
            problems.append(f"its {label} {text!r} holds `{{{{` or a tag SillyTavern replaces as a macro")
    if fmt.system_prefix.startswith("\n"):
        problems.append("its system prefix starts with a newline, which SillyTavern strips from the story string")
    if fmt.system_prefix.endswith("\\"):
        problems.append("its system prefix ends with a backslash, which escapes the story string's {{system}}")
    return problems


def build_presets(fmt: ChatFormat | str, *, sampling: dict, eos_token: str | None = None,
                  model_name: str | None = None, system_template: jinja2.Template | None = None) -> SillyTavernPresets:
    """Every preset for `fmt`, or none and the reasons (`cannot_express`); never raises for a format."""
    original = get_format(fmt)
    name = model_name or f"gcrp-{original.name}"
    fmt, why = sequence_format(original)
    reasons = [why] if why else []
    if fmt is not None:
        reasons += _literal_problems(fmt)
        if fmt.eos_policy == "every_turn" and not (fmt.eos_token or eos_token):
            reasons.append("it ends every turn with an EOS whose text is unknown (no eos_token)")
    if reasons:
        return SillyTavernPresets(name, None, None, None, None, None,
                                  [f"Format `{original.name}` cannot be expressed in SillyTavern: {r}." for r in reasons])
    if system_template is None:
        from gcrp_assets.lib.prompts.samples import load_system_template
        system_template = load_system_template()
    roster, roster_why = roster_translation(system_template)
    differences = differences_of(fmt)
    if roster is None:
        differences.insert(0, f"No System Prompt preset: {roster_why}; paste the training system prompt into "
                              "SillyTavern's System Prompt by hand.")
    return SillyTavernPresets(
        name=name,
        instruct=instruct_preset(fmt, eos_token=eos_token, model_name=name),
        context=context_preset(fmt, model_name=name),
        sysprompt=sysprompt_preset(roster, name=name) if roster else None,
        textgen=textgen_preset(fmt, sampling, name=name),
        roster=roster,
        differences=differences,
    )


def differences_of(fmt: ChatFormat) -> list[str]:
    """What SillyTavern's prompt does differently from the training render, for the model card."""
    out = []
    if fmt.add_bos:
        out.append("BOS: the backend adds it (the sampler preset turns on `add_bos_token`); it is not in the "
                   "prompt text.")
    if fmt.eos_policy == "last":
        out.append(f"Training ends the sample's final turn with EOS ({fmt.eos_token or 'the EOS token'}); a "
                   "chat in SillyTavern never ends, so no prompt has it.")
    for stop in fmt.stop_strings:
        if "\n" in stop.strip("\n") or (stop != stop.strip("\n") and stop.strip()):
            lines = [line for line in stop.split("\n") if line.strip()]
            out.append(f"Stop string {stop!r} becomes {', '.join(repr(x) for x in lines)} in SillyTavern (one stop "
                       "string per line).")
    behavior, _ = _names(fmt)
    if behavior == "none" and fmt.names != "none" and fmt.name_template.endswith(" "):
        out.append("Continue (extending a reply) writes the speaker's header without the space after the name.")
    out.append("Sheets are trimmed and macros inside them (`{{user}}`, `{{char}}`, `<USER>`, `<BOT>`) are "
               "replaced by SillyTavern; a sheet with such text, or with spaces at its ends, differs.")
    return out


def write_presets(folder: Path, fmt: ChatFormat | str, *, sampling: dict, eos_token: str | None = None,
                  model_name: str | None = None, system_template: jinja2.Template | None = None) -> PresetFiles:
    """Write the Master Import file and each preset on its own into `folder`; nothing when the format
    cannot be expressed. Returns the paths written and the presets with their notes; never raises for
    a format SillyTavern cannot express (the notes say why)."""
    presets = build_presets(fmt, sampling=sampling, eos_token=eos_token, model_name=model_name,
                            system_template=system_template)
    paths: dict[str, Path] = {}
    if presets.written:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {MASTER: presets.master(), INSTRUCT: presets.instruct, CONTEXT: presets.context,
                 SYSPROMPT: presets.sysprompt, TEXTGEN: presets.textgen}
        for file_name, content in files.items():
            if content is None:
                continue
            path = folder / file_name
            path.write_text(json.dumps(content, indent=4, ensure_ascii=False) + "\n", "utf-8")
            paths[file_name] = path
    return PresetFiles(paths, presets)
