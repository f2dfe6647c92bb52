"""Threads to training samples: a system prompt that names the human user's character and lists
the others with their uniform sheets, then the turns as `user` (the user's character) or `model`
(everyone else), each with its speaker's name. Turn text is kept exactly as cleaned.

Which character the human plays: when the dump says (the thread's `human`, e.g. SillyTavern's `is_user`
persona), always that character, one sample, whatever the strategy: training the human's own turns as
model turns would teach the model to write for the user. Otherwise `user_character` decides:

- `starter`: the thread's first speaker (one sample per thread);
- `each`: every speaking character in turn, in order of first appearance, at most `max_variants`
  (0 = all) samples per thread;
- `random`: one character drawn with a generator seeded by `seed` and the thread key, so the
  choice is the same on every run and independent of the other threads.

All samples of one thread share its `thread_key`, so the thread-level train/eval split never puts
two variants of a thread on different sides; `sample_id` is unique per (thread, user character).

Names (`names`): `real` puts each speaker's name on its turns; `placeholder` puts `{user}`,
`{char1}`, `{char2}`, … there instead (the 12B Party card's notation; `{charN}` numbered by first
appearance among the other characters), and the system prompt's roster pairs each real name with
its placeholder (`Name # {char1}`). Either way `name_map` (JSON) maps every placeholder to the real
name, so a later stage can switch between the two.

A name-less OOC turn (`kind == "ooc"`, FilterConfig.ooc_policy `keep`) becomes a `user` turn
without a name: the human steps out of the story, as the Herrsimian card trains it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2

from gcrp_assets.lib.clean.parallel import workers_setting
from gcrp_assets.lib.hashing import short, sha256_text
from gcrp_assets.lib.prompts.sheets import SheetRewriter, SheetTemplate, normalize_sheet

USER_CHARACTER_STRATEGIES = ("starter", "each", "random")
NAME_MODES = ("real", "placeholder")
USER_PLACEHOLDER = "{user}"


@dataclass(frozen=True)
class PromptOptions:
    """Who the user plays and how speakers are named (also `PromptConfig`'s fields: one declaration,
    `orchestration.settings`)."""
    user_character: str = field(default="starter", metadata={
        "help": "Which character the human user plays: 'starter' (the thread's first speaker), 'each' (every "
                "character in turn, one sample each, up to max_variants), or 'random' (one, drawn with seed and "
                "the thread key).",
        "choices": USER_CHARACTER_STRATEGIES})
    max_variants: int = field(default=3, metadata={
        "help": "'each': at most this many samples per thread (0 = every character)."})
    seed: int = field(default=0, metadata={"help": "'random': seed of the draw (combined with the thread key)."})
    names: str = field(default="real", metadata={
        "help": "Speaker names on turns: 'real' (character names) or 'placeholder' ('{user}', '{char1}', ... with "
                "the roster 'Name # {char1}' in the system prompt; the mapping is the name_map column).",
        "choices": NAME_MODES})
    workers: int = workers_setting()

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = every usable core), got {self.workers}")
        if self.user_character not in USER_CHARACTER_STRATEGIES:
            raise ValueError(f"unknown user-character strategy {self.user_character!r}; "
                             f"choose one of {USER_CHARACTER_STRATEGIES}")
        if self.names not in NAME_MODES:
            raise ValueError(f"unknown name mode {self.names!r}; choose one of {NAME_MODES}")
        if self.max_variants < 0:
            raise ValueError("max_variants must be >= 0 (0 = every character)")


class SystemTemplate:
    """The system prompt's Jinja template; it pickles as its source, so that worker processes
    (`run_augmented` with `workers` > 1) compile the same template again."""

    def __init__(self, source: str):
        self.source = source
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                                 trim_blocks=False, autoescape=False)
        self._template = env.from_string(source)

    def render(self, *args, **kwargs) -> str:
        return self._template.render(*args, **kwargs)

    def __reduce__(self):
        return SystemTemplate, (self.source,)


def load_system_template(path: str | Path | None = None) -> SystemTemplate:
    source = (Path(path).read_text("utf-8") if path
              else resources.files("gcrp_assets.templates").joinpath("system_prompt.jinja").read_text("utf-8"))
    return SystemTemplate(source)


def thread_key(dump: str, thread_id: str) -> str:
    return f"{dump}/{thread_id}"


def _is_ooc(turn: dict) -> bool:
    return turn.get("kind") == "ooc"


def human_turns_trained(sample: dict, human: str | None, aliases: dict[str, str] | None = None) -> int:
    """Model turns of `sample` spoken by the character the dump marks as human (by real name): must be 0."""
    if not human:
        return 0
    real = json.loads(sample["name_map"]) if sample.get("name_map") else {}
    aliases = aliases or {}
    count = 0
    for turn in sample["turns"]:
        name = real.get(turn.get("name"), turn.get("name"))
        if turn["role"] == "model" and aliases.get(name, name) == human:
            count += 1
    return count


def speaking_characters(thread: dict) -> list[str]:
    """Characters with at least one roleplay turn, in order of first appearance."""
    return list(dict.fromkeys(t["character"] for t in thread["turns"] if t.get("character") and not _is_ooc(t)))


def marked_human(thread: dict) -> str | None:
    """The speaking character the dump marks as the human user's, or None when the dump does not say."""
    human = thread.get("human")
    return human if human and human in speaking_characters(thread) else None


def choose_user_characters(thread: dict, strategy: str, max_variants: int = 3, seed: int = 0) -> list[str]:
    speakers = speaking_characters(thread)
    if strategy not in USER_CHARACTER_STRATEGIES:
        raise ValueError(f"unknown user-character strategy {strategy!r}; choose one of {USER_CHARACTER_STRATEGIES}")
    if not speakers:
        return []
    human = marked_human(thread)
    if human:
        return [human]
    if strategy == "starter":
        return speakers[:1]
    if strategy == "each":
        return speakers[:max_variants] if max_variants > 0 else speakers
    rng = random.Random(f"{seed}\0{thread_key(thread['dump'], thread['thread_id'])}")
    return [rng.choice(speakers)]


def placeholders(user_name: str, speakers: list[str]) -> dict[str, str]:
    """Real name -> placeholder: the user's character `{user}`, the others `{char1}`, `{char2}`, …"""
    out = {user_name: USER_PLACEHOLDER}
    for name in speakers:
        if name != user_name:
            out[name] = f"{{char{len(out)}}}"
    return out


def build_samples(thread: dict, sheet_template: SheetTemplate, system_template: SystemTemplate | jinja2.Template,
                  strategy: str = "starter", *, options: PromptOptions | None = None,
                  sheet_rewriter: SheetRewriter = normalize_sheet) -> list[dict]:
    """One sample per chosen user character. `options` (when given) overrides `strategy`."""
    options = options or PromptOptions(user_character=strategy)
    sheets = {c["name"]: sheet_rewriter(c["name"], c.get("sheet"), sheet_template) for c in thread["characters"]}
    speakers = speaking_characters(thread)
    for name in speakers:  # a speaker without an entry in characters[] still gets a (name-only) sheet
        if name not in sheets:
            sheets[name] = sheet_rewriter(name, None, sheet_template)
    key = thread_key(thread["dump"], thread["thread_id"])
    chosen = choose_user_characters(thread, options.user_character, options.max_variants, options.seed)
    human = marked_human(thread)
    aliases = {alias: c["name"] for c in thread["characters"] for alias in c.get("aliases") or []}
    samples = []
    for variant, user_name in enumerate(chosen):
        slots = placeholders(user_name, speakers)
        shown = (lambda n: slots.get(n, n)) if options.names == "placeholder" else (lambda n: n)
        others = [{"name": n, "sheet": sheets[n], "placeholder": slots.get(n, "")} for n in speakers if n != user_name]
        system = system_template.render(
            user={"name": user_name, "sheet": sheets[user_name], "placeholder": USER_PLACEHOLDER},
            others=others, names=options.names).strip()
        turns = []
        for t in thread["turns"]:
            if _is_ooc(t):
                turns.append({"role": "user", "name": None, "text": t["text"]})
            else:
                name = t.get("character")
                turns.append({"role": "user" if name == user_name else "model",
                              "name": shown(name) if name else None, "text": t["text"]})
        samples.append({
            "sample_id": short(sha256_text(f"{key}\0{user_name}")),
            "thread_key": key,
            "dump": thread["dump"],
            "thread_id": thread["thread_id"],
            "user_character": user_name,
            "variant": variant,
            "system": system,
            "turns": turns,
            "sheets": json.dumps(sheets, ensure_ascii=False, sort_keys=True),
            "name_map": json.dumps({p: n for n, p in slots.items()}, ensure_ascii=False, sort_keys=True),
            "human_marked": human is not None and user_name == human,
            "aliases": json.dumps(aliases, ensure_ascii=False, sort_keys=True),
        })
    return samples
