"""Deterministic generator for the sample forum-roleplay corpus in ``gcrp_assets/sample_corpus/inbox/``
(the package's embedded default data; this generator is development tooling and is not installed).

Run from the repository root::

    python -m tools.sample_corpus.generate

It rewrites ``inbox/moonlit_guild.jsonl`` (fantasy forum "moonlit-guild") and
``inbox/starport_forum.jsonl`` (sci-fi / modern / noir / post-apocalyptic forum "starport-rp")
byte-identically on every run: every random choice comes from ``random.Random`` seeded with a
fixed string, nothing reads the clock, and JSON is written with a fixed key order and ``\\n``.
All prose comes from the hand-written banks next to this file (``banks_*.py``).

``FEATURES`` (module level) maps each thing the pipeline must handle to the thread ids that
exercise it (or ``file:line`` for malformed lines); ``POST_COUNTS`` holds post-level tallies.
Both are computed deterministically at import, without touching the disk.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from . import banks_common as BC
from .banks_fantasy import FANTASY_SETTINGS
from .banks_fantasy import PLACE_SHORT as FANTASY_PLACE_SHORT
from .banks_people import GENRES
from .banks_starport import PLACE_SHORT as STARPORT_PLACE_SHORT
from .banks_starport import STARPORT_SETTINGS

SEED = "gcrp-sample-corpus/v1"
INBOX = Path(__file__).resolve().parents[2] / "gcrp_assets" / "sample_corpus" / "inbox"

DUMPS: dict[str, dict[str, Any]] = {
    "moonlit": {
        "file": "moonlit_guild.jsonl",
        "forum": "moonlit-guild",
        "prefix": "mg",
        "first_number": 4100,
        "handles": BC.MOONLIT_HANDLES,
        "settings": FANTASY_SETTINGS,
        "markup": (("bbcode", 45), ("html", 35), ("plain", 20)),
        "good": 38,
    },
    "starport": {
        "file": "starport_forum.jsonl",
        "forum": "starport-rp",
        "prefix": "sp",
        "first_number": 880,
        "handles": BC.STARPORT_HANDLES,
        "settings": STARPORT_SETTINGS,
        "markup": (("html", 45), ("plain", 30), ("bbcode", 25)),
        "good": 26,
    },
}
ALL_SETTINGS: dict[str, dict[str, Any]] = {**FANTASY_SETTINGS, **STARPORT_SETTINGS}
PLACE_SHORT: dict[str, str] = {**FANTASY_PLACE_SHORT, **STARPORT_PLACE_SHORT}

# Distinct characters per good thread (64 threads; every count 2..7 at least six times).
GOOD_CHARACTER_COUNTS = [2] * 10 + [3] * 14 + [4] * 14 + [5] * 12 + [6] * 8 + [7] * 6

# Post-level mess: how many posts (across all good threads) get each kind.
MESS_TARGETS = {
    "ooc_inline": 9,
    "ooc_trailing_line": 6,
    "ooc_double_bracket": 4,
    "handle_mention": 6,
    "re_title_line": 4,
    "signature": 7,
    "blockquote_reply": 3,
    "bbcode_quote_reply": 3,
    "image": 3,
    "link": 3,
    "html_entities": 4,
    "mojibake": 3,
}
ATTRIBUTION_THREADS = {"name_header": 6, "unattributable": 4, "author_single_character": 9,
                       "no_character_fields": 2, "no_player_fields": 2}
EXTRA_POST_THREADS = {"ooc_only_post": 4, "empty_post_in_good_thread": 2}

SPEECH_COLORS = ["#8fbc8f", "#c06c84", "#6c5b7b", "#3a7ca5", "#d4a017", "#a0522d", "#5f9ea0", "#b5651d"]
CP1252_EXTRA = {0x80: "€", 0x82: "‚", 0x83: "ƒ", 0x84: "„", 0x85: "…", 0x86: "†", 0x87: "‡", 0x88: "ˆ",
                0x89: "‰", 0x8A: "Š", 0x8B: "‹", 0x8C: "Œ", 0x8E: "Ž", 0x91: "‘", 0x92: "’", 0x93: "“",
                0x94: "”", 0x95: "•", 0x96: "–", 0x97: "—", 0x98: "˜", 0x99: "™", 0x9A: "š", 0x9B: "›",
                0x9C: "œ", 0x9E: "ž", 0x9F: "Ÿ"}


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
def pronouns(gender: str, prefix: str = "") -> dict[str, str]:
    if gender == "f":
        forms = {"he": "she", "He": "She", "his": "her", "His": "Her", "him": "her", "himself": "herself"}
    else:
        forms = {"he": "he", "He": "He", "his": "his", "His": "His", "him": "him", "himself": "himself"}
    return {prefix + k: v for k, v in forms.items()}


def possessive(name: str) -> str:
    return name + "'s"


ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    if n < 20:
        return ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens] + ("-" + ONES[ones] if ones else "")
    hundreds, rest = divmod(n, 100)
    return ONES[hundreds] + " hundred" + (" and " + number_words(rest) if rest else "")


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" or word.startswith("eight") else "a"


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def curlify(text: str) -> str:
    """Straight quotes to typographic ones, the way word processors and phones do it."""
    out = []
    for i, ch in enumerate(text):
        before = text[i - 1] if i else " "
        if ch == '"':
            out.append("“" if before in " \n([" else "”")
        elif ch == "'":
            out.append("‘" if before in " \n([" else "’")
        else:
            out.append(ch)
    return "".join(out)


def mojibake(text: str) -> str:
    """UTF-8 bytes read back as Windows-1252: `don’t` -> `donâ€™t`."""
    out = []
    for ch in text:
        if ord(ch) < 128:
            out.append(ch)
            continue
        for byte in ch.encode("utf-8"):
            out.append(CP1252_EXTRA.get(byte, chr(byte)))
    return "".join(out)


def word_count(text: str) -> int:
    stripped = re.sub(r"<[^>]+>|\[/?[a-z*]+(=[^\]]*)?\]", " ", text)
    return len(re.findall(r"[A-Za-z0-9’'&;-]+", stripped))


def weighted(rng: random.Random, options: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]


# ---------------------------------------------------------------------------
# Data classes
# ---------------------------------------------------------------------------
@dataclass
class Person:
    first: str
    last: str
    gender: str
    nick: str | None = None
    player: str | None = None

    @property
    def full(self) -> str:
        if not self.last:
            return self.first
        if self.nick:
            return f'{self.first} "{self.nick}" {self.last}'
        return f"{self.first} {self.last}"

    @property
    def plain_name(self) -> str:
        return f"{self.first} {self.last}".strip()

    @property
    def short(self) -> str:
        if not self.last:
            return self.first
        return self.nick or self.first


@dataclass
class Style:
    markup: str      # "html" | "bbcode" | "plain"
    layout: str      # html: "p" | "br"; bbcode/plain: "blank" | "single"
    speech: str      # "plain" | "bold" | "color"
    color: str
    italic: str      # html: "i" | "em"; plain: "*" | "_"
    curly: bool


@dataclass
class Spec:
    dump: str
    kind: str        # good | too_few_posts | single_character | too_many_characters | mostly_empty
    setting: str     #   | truncated | missing_posts
    plot: int
    place: int
    n_chars: int
    n_posts: int
    doubles: int = 0
    attribution: list[str] = field(default_factory=list)
    mess: Counter = field(default_factory=Counter)
    extra_posts: list[str] = field(default_factory=list)
    thread_id: str = ""
    number: int = 0


@dataclass
class PostPlan:
    index: int
    person: Person
    has_field: bool = True
    header: str | None = None          # "bold" | "colon" | "markup"
    event: str | None = None
    length: str = "medium"
    mess: list[str] = field(default_factory=list)
    style: Style | None = None


# ---------------------------------------------------------------------------
# Prose composition
# ---------------------------------------------------------------------------
Segment = tuple[str, str]      # ("n" narration | "q" quoted speech | "t" thought | "r" raw markup, text)
Sentence = list[Segment]

FIRST_SHAPES = [
    [["hook", "detail", "detail"], ["arrival", "gesture", "thought"], ["say0", "open_closer"]],
    [["detail", "hook", "atmos"], ["arrival", "gesture", "detail"], ["thought", "say0", "open_closer"]],
    [["arrival", "detail"], ["hook", "gesture", "say0"], ["detail", "thought", "open_closer"]],
]
SHORT_SHAPES = [
    [["react", "say"]],
    [["say", "gesture"]],
    [["react", "gesture", "say"]],
    [["gesture", "say", "closer"]],
    [["react", "thought"]],
]
MEDIUM_SHAPES = [
    [["react", "gesture", "say"], ["detail", "thought", "closer"]],
    [["react", "say"], ["gesture", "say2"]],
    [["gesture", "react", "say", "say"]],
    [["react", "thought"], ["say2", "closer"]],
    [["atmos", "react", "say"], ["gesture", "say", "closer"]],
    [["react", "say2"], ["thought", "gesture", "say"]],
    [["react", "reflect", "say"], ["gesture", "closer"]],
]
LONG_SHAPES = [
    [["detail", "react", "gesture", "say"], ["reflect", "thought", "say2"], ["atmos", "react3", "say"],
     ["detail", "gesture", "reflect"], ["say", "closer"]],
    [["react", "gesture", "say2"], ["detail", "reflect", "gesture", "say"], ["react3", "say", "gesture"],
     ["atmos", "say2"], ["reflect", "thought", "closer"]],
    [["atmos", "react", "say", "gesture"], ["detail", "reflect", "say"], ["say2", "react3", "gesture"],
     ["reflect", "detail", "say", "closer"]],
    [["react", "detail", "gesture", "say"], ["reflect", "thought", "say2"], ["react3", "gesture", "say"],
     ["detail", "reflect", "gesture"], ["say2", "closer"]],
]


class Writer:
    """Builds the sentences of one thread, avoiding repeats within the thread."""

    def __init__(self, rng: random.Random, setting: dict[str, Any], genre: dict[str, Any],
                 plot: dict[str, Any], place: str, people: list[Person], n_posts: int):
        self.rng = rng
        self.n_posts = n_posts
        self.setting = setting
        self.genre = genre
        self.plot = plot
        self.place = place
        self.people = people
        self.used: dict[str, set[int]] = {}
        self.place_named = False
        self.progress = 0.0   # how far through the thread the post being written is (0..1)

    # -- picking -----------------------------------------------------------
    def pick(self, key: str, bank: list[str], ok: Callable[[str], bool] = lambda t: True) -> str | None:
        used = self.used.setdefault(key, set())
        fresh = [i for i, t in enumerate(bank) if i not in used and ok(t)]
        if not fresh:
            allowed = [i for i, t in enumerate(bank) if ok(t)]
            if not allowed:
                return None
            used.difference_update(allowed)
            fresh = allowed
        i = self.rng.choice(fresh)
        used.add(i)
        return bank[i]

    def context(self, me: Person, other: Person, third: Person) -> dict[str, str]:
        ctx = {
            "me": me.short, "me_s": possessive(me.short),
            "other": other.short, "other_s": possessive(other.short),
            "third": third.short, "place": self.place_form(),
            "item": self.rng.choice(self.setting["items"]),
            "fixture": self.rng.choice(self.setting["fixtures"]),
            "addr": other.short, "relative": self.rng.choice(BC.RELATIVES),
        }
        ctx.update(pronouns(me.gender))
        ctx.update(pronouns(other.gender, "o"))
        return ctx

    def place_form(self) -> str:
        """The full place name until the thread has used it, then mostly the short form."""
        if not self.place_named or self.rng.random() < 0.08:
            return self.place
        return PLACE_SHORT.get(self.place, self.place)

    def template_ok(self, alone: bool) -> Callable[[str], bool]:
        few = len(self.people) < 3

        def ok(t: str) -> bool:
            if few and "{third}" in t:
                return False
            if alone and ("{o" in t or "{third}" in t or "{addr}" in t):
                return False
            return True
        return ok

    def narr(self, key: str, bank: list[str], ctx: dict[str, str], alone: bool = False) -> Sentence | None:
        t = self.pick(key, bank, self.template_ok(alone))
        return [("n", t.format(**ctx))] if t else None

    # -- sentence kinds ------------------------------------------------------
    def line(self, ctx: dict[str, str], alone: bool) -> str:
        ok = self.template_ok(alone)
        r = self.rng.random()
        t = None
        if r < 0.38:
            # Plot lines are written in story order: only those the scene has reached so far.
            lines = self.plot["lines"][:max(2, int((self.progress + 0.25) * len(self.plot["lines"])) + 1)]
            fresh = [i for i in range(len(lines)) if i not in self.used.get("plot_lines", set())]
            t = self.pick("plot_lines", lines, ok) if fresh else None
        elif r < 0.55:
            t = self.pick("genre_lines", self.genre["lines"], ok)
        if t is None:
            t = self.pick("lines", BC.LINES, ok)
        assert t is not None
        return t.format(**ctx)

    @staticmethod
    def tag_form(line: str) -> tuple[str, str]:
        if line.endswith("...") or line.endswith("—"):
            return f'"{line}"', "say"
        if line.endswith("."):
            return f'"{line[:-1]},"', "say"
        if line.endswith("?"):
            return f'"{line}"', "ask"
        if line.endswith("!"):
            return f'"{line}"', "shout"
        return f'"{line}"', "say"

    def verb(self, kind: str, ctx: dict[str, str], opening: bool = False) -> str:
        bank = {"say": BC.SAY_VERBS, "ask": BC.ASK_VERBS, "shout": BC.SHOUT_VERBS}[kind]
        if opening:
            bank = [v for v in bank if v not in ("added", "replied", "pressed")]
        verb = self.rng.choice(bank)
        if verb not in ("said", "murmured", "muttered", "replied", "offered", "admitted", "added", "asked"):
            return verb
        return verb + self.rng.choice(BC.MANNERS).format(**ctx)

    def say(self, ctx: dict[str, str], alone: bool = False, double: bool = False) -> Sentence:
        rng = self.rng
        first = self.line(ctx, alone)
        quote, kind = self.tag_form(first)
        if double:
            second = self.line(ctx, alone)
            tag = f" {ctx['me']} {self.verb(kind, ctx, alone)}. "
            return [("q", quote), ("n", tag), ("q", f'"{second}"')]
        r = rng.random()
        if r < 0.5:
            return [("q", quote), ("n", f" {ctx['me']} {self.verb(kind, ctx, alone)}.")]
        if r < 0.8 and not alone:
            beat = self.pick("beats", BC.BEATS, self.template_ok(alone)) or "sighed"
            return [("n", f"{ctx['me']} {beat.format(**ctx)}. "), ("q", f'"{first}"')]
        after = self.pick("after", BC.AFTERTHOUGHTS) or ""
        return [("q", f'"{first}"'), ("n", " " + after.format(**ctx))]

    def thought(self, ctx: dict[str, str]) -> Sentence:
        text = self.pick("thoughts", BC.THOUGHTS) or "Focus."
        if self.rng.random() < 0.5:
            return [("t", text)]
        if text.endswith("."):
            text = text[:-1] + ","
        tag = self.rng.choice(["{me} thought", "{me} told {himself}", "{he} thought grimly", "{me} thought"])
        return [("t", text), ("n", " " + tag.format(**ctx) + ".")]

    def gesture(self, ctx: dict[str, str], alone: bool) -> Sentence | None:
        if self.rng.random() < 0.25:
            s = self.narr("genre_gestures", self.genre["gestures"], ctx, alone)
            if s:
                return s
        return self.narr("gestures", BC.GESTURES, ctx, alone)

    def detail(self, ctx: dict[str, str]) -> Sentence | None:
        used = self.used.get("details", set())
        if len(used) < len(self.setting["details"]):
            return self.narr("details", self.setting["details"], ctx)
        return self.narr("atmos", BC.ATMOS, ctx)

    # -- posts -----------------------------------------------------------------
    def compose(self, plan: PostPlan, other: Person, third: Person, first_post: bool,
                first_appearance: bool) -> list[list[Sentence]]:
        rng = self.rng
        me = plan.person
        self.progress = plan.index / max(1, self.n_posts - 1)
        if first_post:
            shape = [list(p) for p in rng.choice(FIRST_SHAPES)]
        else:
            bank = {"short": SHORT_SHAPES, "medium": MEDIUM_SHAPES, "long": LONG_SHAPES}[plan.length]
            shape = [list(p) for p in rng.choice(bank)]
            if plan.event:
                target = shape[1] if len(shape) > 1 and rng.random() < 0.7 else shape[0]
                target.insert(0, "event")
            if first_appearance and rng.random() < 0.75:
                shape[0].insert(0, "arrival")
        paragraphs: list[list[Sentence]] = []
        for slots in shape:
            para: list[Sentence] = []
            named = False
            for slot in slots:
                target, bystander = (third, other) if slot == "react3" else (other, third)
                ctx = self.context(me, target, bystander)
                s = self.sentence(slot, ctx, plan, first_post)
                if not s:
                    continue
                text = "".join(t for _, t in s)
                if self.place in text:
                    self.place_named = True
                if named and rng.random() < 0.7:
                    s = self.pronominalize(s, me)
                named = named or me.short in text
                para.append(s)
            if para:
                paragraphs.append(para)
        return paragraphs

    @staticmethod
    def pronominalize(sentence: Sentence, me: Person) -> Sentence:
        """'Keri ... Keri added.' -> 'Keri ... she added.' for the second mention in a row."""
        name, forms = me.short, pronouns(me.gender)
        out = list(sentence)
        for j, (kind, text) in enumerate(out):
            if kind != "n":
                continue
            if j == 0 and text.startswith(name + "'s "):
                out[j] = (kind, forms["His"] + text[len(name) + 2:])
                break
            if j == 0 and text.startswith(name + " "):
                out[j] = (kind, forms["He"] + text[len(name):])
                break
            if j > 0 and text.startswith(f" {name} "):
                out[j] = (kind, " " + forms["he"] + text[len(name) + 1:])
                break
        return out

    def sentence(self, slot: str, ctx: dict[str, str], plan: PostPlan, alone: bool) -> Sentence | None:
        if slot == "hook":
            return [("n", self.plot["hook"].format(**ctx))]
        if slot == "event":
            return [("n", (plan.event or "").format(**ctx))]
        if slot in ("react", "react3"):
            if alone:
                return self.narr("atmos", BC.ATMOS, ctx)
            return self.narr("reactions", BC.REACTIONS, ctx)
        if slot == "gesture":
            return self.gesture(ctx, alone)
        if slot == "detail":
            return self.detail(ctx)
        if slot == "atmos":
            return self.narr("atmos", BC.ATMOS, ctx)
        if slot == "arrival":
            return self.narr("arrivals", BC.ARRIVALS, ctx)
        if slot == "thought":
            return self.thought(ctx)
        if slot == "reflect":
            return self.narr("reflections", BC.REFLECTIONS, ctx, alone)
        if slot == "closer":
            return self.narr("closers", BC.CLOSERS, ctx, alone)
        if slot == "open_closer":
            return self.narr("open_closers", BC.OPEN_CLOSERS, ctx, alone=True)
        if slot == "say0":
            return self.say(ctx, alone=True)
        if slot == "say":
            return self.say(ctx, alone=alone)
        if slot == "say2":
            return self.say(ctx, alone=alone, double=True)
        raise ValueError(slot)


# ---------------------------------------------------------------------------
# Rendering posts
# ---------------------------------------------------------------------------
def render_segment(kind: str, text: str, style: Style, entities: bool) -> str:
    if kind == "r":
        return text
    if style.curly:
        text = curlify(text)
    if style.markup == "html":
        text = text.replace("&", "&amp;")
        if entities:
            text = text.replace('"', "&quot;")
    if kind == "q":
        if style.speech == "bold":
            return {"html": f"<b>{text}</b>", "bbcode": f"[b]{text}[/b]"}.get(style.markup, text)
        if style.speech == "color":
            if style.markup == "html":
                return f'<span style="color:{style.color}">{text}</span>'
            if style.markup == "bbcode":
                return f"[color={style.color}]{text}[/color]"
        return text
    if kind == "t":
        if style.markup == "html":
            return f"<{style.italic}>{text}</{style.italic}>"
        if style.markup == "bbcode":
            return f"[i]{text}[/i]"
        return f"{style.italic}{text}{style.italic}"
    return text


def render_paragraph(para: list[Sentence], style: Style, entities: bool) -> str:
    return " ".join("".join(render_segment(k, t, style, entities) for k, t in sentence) for sentence in para)


def assemble(blocks: list[tuple[str, str]], style: Style) -> str:
    """blocks: ("p", paragraph text) or ("block", markup that stands on its own)."""
    if style.markup == "html":
        if style.layout == "p":
            return "\n".join(f"<p>{t}</p>" if kind == "p" else t for kind, t in blocks)
        return "<br>\n<br>\n".join(t for _, t in blocks)
    sep = "\n\n" if style.layout == "blank" else "\n"
    return sep.join(t for _, t in blocks)


def plain_excerpt(paragraphs: list[list[Sentence]]) -> str:
    first = paragraphs[0]
    text = " ".join("".join(t for k, t in s if k != "r") for s in first[:2])
    return text


# ---------------------------------------------------------------------------
# Character sheets
# ---------------------------------------------------------------------------
def build_profile(rng: random.Random, person: Person, setting: dict[str, Any], genre: dict[str, Any]) -> dict:
    p = pronouns(person.gender)
    race = rng.choice(genre["races"])
    lo, hi = genre["age"]
    age = rng.randint(lo, hi)
    if race in ("Elf", "Wood elf"):
        age = rng.randint(80, 340)
    hometown = rng.choice(genre["hometowns"])
    relative = rng.choice(BC.RELATIVES)
    fill = dict(p, short=person.short, hometown=hometown, relative=relative)
    height = {"words": rng.choice(BC.HEIGHTS),
              "cm": rng.choice(["158 cm", "164 cm", "171 cm", "177 cm", "183 cm", "190 cm"]),
              "imperial": rng.choice(["5'2\"", "5'5\"", "5'8\"", "5'10\"", "6'0\"", "6'3\""]),
              }[genre["height"]]
    hair = f"{rng.choice(BC.HAIR_COLORS)}, {rng.choice(BC.HAIR_STYLES)}"
    eyes = rng.choice(BC.EYES)
    build = rng.choice(BC.BUILDS)
    mark = rng.choice(BC.MARKS)
    clothes = rng.choice(genre["clothes"])
    hair_words = hair.replace(", ", " and ", 1)
    appearance = (f"{person.short} stands {height} with a {build} build. {p['His']} hair is {hair_words}, "
                  f"and {p['his']} eyes are {eyes}. Most people notice {mark} first.")
    if rng.random() < 0.6:
        appearance += f" {p['He']} usually wears {clothes}."
    appearance_list = [f"Height: {height}", f"Build: {build}", f"Hair: {hair}", f"Eyes: {eyes}",
                       f"Distinguishing marks: {mark}", f"Usually wears {clothes}"]
    traits = rng.sample(BC.TRAITS, 3)
    personality = (f"{traits[0].capitalize()}, {traits[1]} and {traits[2]}. "
                   + rng.choice(BC.PERSONALITY_LINES).format(**p))
    history_parts = [rng.choice(genre["origins"]), rng.choice(genre["turns"])]
    if rng.random() < 0.65:
        history_parts.append(rng.choice(genre["nows"]))
    history = " ".join(part.format(**fill) for part in history_parts)
    strengths = rng.sample(BC.STRENGTHS + genre["strengths"], rng.randint(2, 4))
    flaws = rng.sample(BC.FLAWS + genre["flaws"], rng.randint(2, 4))
    equipment = rng.sample(genre["equipment"], rng.randint(3, 5))
    other = rng.choice(BC.SHEET_NOTES).format(**p)
    special = {label: rng.choice(values).format(**p) for label, values in setting["special"].items()
               if rng.random() < 0.75}
    female = person.gender == "f"
    gender = rng.choice(["Female" if female else "Male", "she/her" if female else "he/him",
                         "F" if female else "M"])
    return {
        "name": person.plain_name, "nickname": person.nick, "age": age, "gender": gender, "race": race,
        "occupation": rng.choice(setting["roles"]),
        "appearance": appearance, "appearance_list": appearance_list,
        "personality": personality, "history": history, "strengths": strengths, "flaws": flaws,
        "equipment": equipment, "other": other, "special": special, "quote": rng.choice(BC.SHEET_QUOTES),
        "pronouns": p,
    }


def sheet_order(rng: random.Random, prof: dict) -> list[str]:
    basics = ["age", "gender", "race", "occupation"] + [f"special:{k}" for k in prof["special"]]
    rng.shuffle(basics)
    drop = {"gender": 0.5, "race": 0.15}
    basics = [k for k in basics if rng.random() >= drop.get(k, 0.05)]
    desc = ["appearance", "personality", "history"]
    if rng.random() < 0.5:
        rng.shuffle(desc)
    desc = [k for k in desc if rng.random() >= 0.1]
    traits = ["strengths", "flaws"] if rng.random() < 0.8 else ["flaws", "strengths"]
    traits = traits if rng.random() >= 0.15 else []
    tail = [k for k, p in (("equipment", 0.25), ("other", 0.4)) if rng.random() >= p]
    order = ["name"] + (["nickname"] if prof["nickname"] else []) + basics + desc + traits + tail
    if rng.random() < 0.1 and len(order) > 3:
        order.insert(2, order.pop(0))   # someone filled in Age before Name
    return order


LIST_KEYS = ("strengths", "flaws", "equipment")
PROSE_KEYS = ("appearance", "personality", "history")


def label_for(rng: random.Random, key: str) -> str:
    if key.startswith("special:"):
        return key.split(":", 1)[1]
    return rng.choice(BC.LABELS[key])


def value_for(prof: dict, key: str) -> Any:
    if key.startswith("special:"):
        return prof["special"][key.split(":", 1)[1]]
    return prof[key]


def sheet_html(rng: random.Random, prof: dict, order: list[str], url_slug: str) -> str:
    def esc(s: str) -> str:
        return s.replace("&", "&amp;")
    lines: list[str] = []
    if rng.random() < 0.35:
        lines.append(f'<center><i>&quot;{esc(prof["quote"])}&quot;</i></center>' if rng.random() < 0.5
                     else f'<p><i>"{esc(prof["quote"])}"</i></p>')
    if rng.random() < 0.25:
        lines.append(f'<img src="https://forum.example/uploads/sheets/{url_slug}.png" alt="">')
    variant = rng.choice(["br", "p"])
    for key in order:
        label = esc(label_for(rng, key))
        value = value_for(prof, key)
        if key == "appearance" and rng.random() < 0.3:
            value = prof["appearance_list"]
        if variant == "br":
            if isinstance(value, list):
                if rng.random() < 0.5:
                    lines.append(f"<b>{label}:</b> {esc(', '.join(value))}<br>")
                else:
                    lines.append(f"<b>{label}:</b><br>" + "".join(f"- {esc(v)}<br>" for v in value))
            elif key in PROSE_KEYS:
                lines.append(f"<b>{label}:</b><br>{esc(str(value))}<br>")
            else:
                lines.append(f"<b>{label}:</b> {esc(str(value))}<br>")
        else:
            if isinstance(value, list):
                items = "".join(f"<li>{esc(v)}</li>" for v in value)
                lines.append(f"<p><strong>{label}:</strong></p><ul>{items}</ul>")
            elif key in PROSE_KEYS:
                lines.append(f"<p><u><strong>{label}:</strong></u></p>\n<p>{esc(str(value))}</p>")
            else:
                lines.append(f"<p><strong>{label}</strong> - {esc(str(value))}</p>")
    return "\n".join(lines)


def sheet_bbcode(rng: random.Random, prof: dict, order: list[str], url_slug: str, table: bool) -> str:
    lines: list[str] = []
    if rng.random() < 0.4:
        lines.append(f"[center][size=5][b]{prof['name'].upper()}[/b][/size][/center]")
    if rng.random() < 0.4:
        lines.append(f'[center][i]"{prof["quote"]}"[/i][/center]')
    if rng.random() < 0.2:
        lines.append(f"[img]https://forum.example/uploads/sheets/{url_slug}.jpg[/img]")
    color = rng.choice(SPEECH_COLORS)
    colored = rng.random() < 0.35
    rest = list(order)
    if table:
        rows = [k for k in order if k not in PROSE_KEYS and k not in LIST_KEYS and k != "other"]
        rest = [k for k in order if k not in rows]
        cells = "".join(f"[tr][td]{label_for(rng, k)}[/td][td]{value_for(prof, k)}[/td][/tr]" for k in rows)
        lines.append(f"[table]{cells}[/table]")
    for key in rest:
        label = label_for(rng, key)
        value = value_for(prof, key)
        head = f"[color={color}][b]{label}[/b][/color]:" if colored else f"[b]{label}:[/b]"
        if key == "appearance" and rng.random() < 0.4:
            value = prof["appearance_list"]
        if isinstance(value, list):
            lines.append(head + "\n[list]" + "".join(f"[*]{v}" for v in value) + "[/list]")
        elif key in PROSE_KEYS:
            lines.append(("\n" if rng.random() < 0.5 else "") + head + "\n" + str(value))
        else:
            lines.append(f"{head} {value}")
    return "\n".join(lines)


def sheet_plain(rng: random.Random, prof: dict, order: list[str]) -> str:
    caps = rng.random() < 0.5
    lines: list[str] = []
    for key in order:
        label = label_for(rng, key)
        value = value_for(prof, key)
        if caps:
            label = label.upper()
            if isinstance(value, list):
                lines.append(f"{label}:\n" + "\n".join(f"- {v}" for v in value))
            elif key in PROSE_KEYS:
                lines.append(f"\n{label}:\n{value}")
            else:
                lines.append(f"{label}: {value}")
        else:
            if isinstance(value, list):
                value = ", ".join(value)
            lines.append(f"{label} - {value}")
    return "\n".join(lines)


def sheet_prose(rng: random.Random, prof: dict) -> str:
    p = prof["pronouns"]
    age_words = number_words(prof["age"])
    race = re.split(r"[,(]", prof["race"])[0].strip().lower()
    occupation = prof["occupation"][0].lower() + prof["occupation"][1:]
    parts = [f"{prof['name']} is {article(age_words)} {age_words}-year-old {race}."]
    if prof["nickname"]:
        parts.append(f"Most people call {p['him']} {prof['nickname']}.")
    parts.append(f"These days {p['he']} is {article(occupation)} {occupation}.")
    paragraphs = [" ".join(parts), prof["appearance"] + " " + prof["personality"], prof["history"]]
    if rng.random() < 0.6:
        paragraphs.append(f"Good at: {', '.join(s.lower() for s in prof['strengths'])}. "
                          f"Bad at: {', '.join(f.lower() for f in prof['flaws'])}.")
    if rng.random() < 0.4:
        paragraphs.append(prof["other"])
    return "\n\n".join(paragraphs)


def make_sheet(rng: random.Random, person: Person, setting: dict[str, Any], genre: dict[str, Any],
               slug: str) -> tuple[str | None, str | None, bool]:
    """(sheet text, style name, has a setting-specific field); no sheet gives (None, None, False)."""
    if rng.random() < 0.15:
        return None, None, False
    prof = build_profile(rng, person, setting, genre)
    order = sheet_order(rng, prof)
    special = any(k.startswith("special:") for k in order)
    style = weighted(rng, (("html", 33), ("bbcode", 24), ("bbcode_table", 12), ("plain_labels", 19),
                           ("plain_prose", 12)))
    if style == "html":
        return sheet_html(rng, prof, order, slug), style, special
    if style in ("bbcode", "bbcode_table"):
        return sheet_bbcode(rng, prof, order, slug, table=style == "bbcode_table"), style, special
    if style == "plain_labels":
        return sheet_plain(rng, prof, order), style, special
    return sheet_prose(rng, prof), style, False


# ---------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------
def make_plan() -> dict[str, list[tuple[str, Spec | None]]]:
    rng = random.Random(f"{SEED}:plan")
    counts = list(GOOD_CHARACTER_COUNTS)
    rng.shuffle(counts)
    split = DUMPS["moonlit"]["good"]
    good: dict[str, list[Spec]] = {"moonlit": [], "starport": []}
    for dump, dump_counts in (("moonlit", counts[:split]), ("starport", counts[split:])):
        keys = list(DUMPS[dump]["settings"])
        seq = (keys * 6)[:len(dump_counts)]
        rng.shuffle(seq)
        seen: Counter = Counter()
        for n, key in zip(dump_counts, seq):
            k = seen[key]
            seen[key] += 1
            n_posts = rng.randint(max(7, n + 2), 16)
            doubles = 0
            if n >= 3 and rng.random() < 0.5:
                doubles = 1 + (n >= 5 and rng.random() < 0.3)
            good[dump].append(Spec(dump, "good", key, k % 2, k % 3, n, n_posts, doubles=doubles))
    goods = good["moonlit"] + good["starport"]

    # Attribution cases (disjoint sets of threads).
    taken: set[int] = set()

    def choose(n: int, ok: Callable[[Spec], bool]) -> list[Spec]:
        """n threads, alternating between the two dumps so that both exercise every case."""
        picked: list[int] = []
        for j in range(n):
            dump = ("moonlit", "starport")[j % 2]
            pool = [i for i, s in enumerate(goods) if i not in taken and s.dump == dump and ok(s)]
            picked.append(rng.choice(pool))
            taken.add(picked[-1])
        return [goods[i] for i in sorted(picked)]

    for s in choose(ATTRIBUTION_THREADS["name_header"], lambda s: s.doubles >= 1):
        s.attribution.append("name_header")
    for s in choose(ATTRIBUTION_THREADS["unattributable"], lambda s: s.doubles >= 1):
        s.attribution.append("unattributable")
    for s in choose(ATTRIBUTION_THREADS["author_single_character"], lambda s: True):
        s.attribution.append("author_single_character")
    for s in choose(ATTRIBUTION_THREADS["no_character_fields"], lambda s: s.doubles == 0 and s.n_chars <= 4):
        s.attribution.append("no_character_fields")
    for s in choose(ATTRIBUTION_THREADS["no_player_fields"], lambda s: s.doubles == 0):
        s.attribution.append("no_player_fields")

    # Post-level mess, spread over good threads (at most two of a kind per thread).
    for feature, n in MESS_TARGETS.items():
        for j in range(n):
            dump = ("moonlit", "starport")[j % 2]
            while True:
                s = rng.choice(good[dump])
                if s.mess[feature] < 2:
                    s.mess[feature] += 1
                    break
    for feature, n in EXTRA_POST_THREADS.items():
        for j in range(n):
            dump = ("moonlit", "starport")[j % 2]
            pool = [s for s in good[dump] if 9 <= s.n_posts <= 15 - len(s.extra_posts)
                    and "no_character_fields" not in s.attribution and feature not in s.extra_posts]
            rng.choice(pool).extra_posts.append(feature)

    # Rejects: each kind once per dump.
    entries: dict[str, list[tuple[str, Spec | None]]] = {}
    for dump in ("moonlit", "starport"):
        keys = list(DUMPS[dump]["settings"])
        rejects = []
        for kind in ("too_few_posts", "single_character", "too_many_characters", "mostly_empty"):
            key = rng.choice(keys)
            plot, place = rng.randrange(2), rng.randrange(3)
            if kind == "too_few_posts":
                n = rng.choice([2, 3])
                spec = Spec(dump, kind, key, plot, place, n, rng.randint(max(3, n), 5))
            elif kind == "single_character":
                spec = Spec(dump, kind, key, plot, place, 1, rng.randint(7, 9))
            elif kind == "too_many_characters":
                n = rng.choice([8, 9])
                spec = Spec(dump, kind, key, plot, place, n, rng.randint(n + 3, 16), doubles=2)
            else:
                spec = Spec(dump, kind, key, plot, place, rng.choice([2, 3]), rng.randint(9, 10))
            rejects.append(spec)
        items: list[tuple[str, Spec | None]] = [("spec", s) for s in good[dump] + rejects]
        items.append(("near_copy", None) if dump == "moonlit" else ("exact_copy", None))
        rng.shuffle(items)
        if dump == "starport":
            key = rng.choice(keys)
            middle = len(items) // 2
            items.insert(middle - 3, ("spec", Spec(dump, "truncated", key, 0, 1, 3, 8)))
            items.insert(middle + 3, ("spec", Spec(dump, "missing_posts", key, 1, 2, 4, 9)))
        entries[dump] = items
    return entries


# ---------------------------------------------------------------------------
# Building threads
# ---------------------------------------------------------------------------
class Corpus:
    def __init__(self) -> None:
        self.features: dict[str, list[str]] = {}
        self.post_counts: Counter = Counter()
        self.titles: set[str] = set()
        self.lines: dict[str, list[str]] = {}
        self.threads: dict[str, dict] = {}

    def note(self, feature: str, thread_id: str) -> None:
        ids = self.features.setdefault(feature, [])
        if thread_id not in ids:
            ids.append(thread_id)

    def unique_title(self, rng: random.Random, options: list[str]) -> str:
        fresh = [t for t in options if t not in self.titles]
        if fresh:
            title = rng.choice(fresh)
        else:
            base = rng.choice(options)
            decorations = ["{t} (Open)", "[Closed] {t}", "{t}, Part II", "{t} - reboot", "[IC] {t}",
                           "{t} (Part 2)"]
            rng.shuffle(decorations)
            title = next(d.format(t=base) for d in decorations if d.format(t=base) not in self.titles)
        self.titles.add(title)
        return title


def make_people(rng: random.Random, genre: dict[str, Any], n: int) -> list[Person]:
    people: list[Person] = []
    shorts: set[str] = set()
    surnames = rng.sample(genre["surnames"], min(n, len(genre["surnames"])))
    while len(people) < n:
        last = surnames[len(people) % len(surnames)]
        if rng.random() < 0.15:
            first, nick, gender = rng.choice(genre["nicks"])
        else:
            gender = rng.choice("fm")
            first, nick = rng.choice(genre["female" if gender == "f" else "male"]), None
        short = nick or first
        if short in shorts or first in shorts:
            continue
        shorts.update({short, first})
        people.append(Person(first, last, gender, nick))
    return people


def make_style(rng: random.Random, dump: str) -> Style:
    markup = weighted(rng, DUMPS[dump]["markup"])
    if markup == "html":
        layout = rng.choice(["p", "p", "br"])
        italic = rng.choice(["i", "em"])
    else:
        layout = rng.choice(["blank", "blank", "single"])
        italic = rng.choice(["*", "*", "_"])
    speech = weighted(rng, (("plain", 55), ("bold", 25), ("color", 20))) if markup != "plain" else "plain"
    return Style(markup, layout, speech, rng.choice(SPEECH_COLORS), italic, rng.random() < 0.2)


def plan_order(rng: random.Random, n_chars: int, n_posts: int, owner: list[str]) -> list[int]:
    if n_chars == 1:
        return [0] * n_posts
    first_round = list(range(n_chars))
    rng.shuffle(first_round)
    order = list(first_round)
    while len(order) < n_posts:
        rnd = list(range(n_chars))
        rng.shuffle(rnd)
        if n_chars > 2 and rng.random() < 0.4:
            rnd.pop()
        for c in rnd:
            if order[-1] == c or (n_chars > 1 and owner[order[-1]] == owner[c] and rng.random() < 0.8):
                continue
            order.append(c)
            if len(order) >= n_posts:
                break
    return order[:n_posts]


def build_thread(corpus: Corpus, spec: Spec, dump: str) -> dict:
    tid = spec.thread_id
    rng = random.Random(f"{SEED}:{tid}")
    setting = ALL_SETTINGS[spec.setting]
    genre = GENRES[setting["genre"]]
    plot = setting["plots"][spec.plot]
    place = setting["places"][spec.place]
    forum = DUMPS[dump]["forum"]
    title = corpus.unique_title(rng, plot["titles"])
    tags = list(setting["tags"]) + ([rng.choice(["open", "closed", "mature", "slow burn", "action", "drama"])]
                                    if rng.random() < 0.5 else [])
    if rng.random() < 0.1:
        tags = []

    # People and players
    people = make_people(rng, genre, spec.n_chars)
    n_players = spec.n_chars - spec.doubles
    handles = rng.sample(DUMPS[dump]["handles"], n_players)
    slots = list(range(n_players)) + rng.sample(range(n_players), spec.doubles)
    rng.shuffle(slots)
    for person, slot in zip(people, slots):
        person.player = handles[slot]
    owned = Counter(p.player for p in people)
    for person in people:
        if owned[person.player] > 1:
            person.nick = None   # members who play two characters head posts with the plain name
        assert person.full != person.player
    styles = {h: make_style(rng, dump) for h in handles}

    # Order, lengths, events
    order = plan_order(rng, spec.n_chars, spec.n_posts, [p.player or "" for p in people])
    plans = [PostPlan(i, people[c]) for i, c in enumerate(order)]
    for plan in plans[1:]:
        plan.length = weighted(rng, (("short", 27), ("medium", 52), ("long", 21)))
    if spec.n_chars >= 8:
        for plan in plans[1:]:
            plan.length = weighted(rng, (("short", 55), ("medium", 45)))
    k = min(len(plot["events"]), max(1, round((spec.n_posts - 1) * 0.55)), spec.n_posts - 1)
    events = [plot["events"][i] for i in sorted(rng.sample(range(len(plot["events"])), k))]
    for plan, event in zip(sorted(rng.sample(plans[1:], k), key=lambda p: p.index), events):
        plan.event = event

    # Attribution cases
    posts_of: dict[str, list[PostPlan]] = {}
    for plan in plans:
        posts_of.setdefault(plan.person.full, []).append(plan)
    doubles = [p for p in people if owned[p.player] > 1]
    if "no_character_fields" in spec.attribution:
        for plan in plans:
            plan.has_field = False
        corpus.note("no_character_fields", tid)
        corpus.note("post_without_character_author_single_character", tid)
        corpus.post_counts["post_without_character_author_single_character"] += len(plans)
    if "author_single_character" in spec.attribution:
        pool = [pl for pl in plans if owned[pl.person.player] == 1]
        for pl in rng.sample(pool, min(len(pool), rng.randint(1, 3))):
            pl.has_field = False
            corpus.post_counts["post_without_character_author_single_character"] += 1
        corpus.note("post_without_character_author_single_character", tid)
    if "name_header" in spec.attribution:
        pool = [pl for pl in plans if pl.person in doubles and pl.index > 0]
        for j, pl in enumerate(rng.sample(pool, min(len(pool), rng.randint(1, 2)))):
            pl.has_field = False
            pl.header = ["bold", "colon", "markup"][(len(corpus.features.get("name_header", [])) + j) % 3]
            corpus.post_counts["post_without_character_name_header"] += 1
        corpus.note("name_header", tid)
    if "unattributable" in spec.attribution:
        pool = [pl for pl in plans
                if pl.person in doubles and len(posts_of[pl.person.full]) >= 2 and pl.index > 0]
        for pl in rng.sample(pool, min(len(pool), rng.randint(1, 2))):
            if sum(1 for q in posts_of[pl.person.full] if q.has_field) >= 2:
                pl.has_field = False
                corpus.post_counts["post_without_character_unattributable"] += 1
        corpus.note("unattributable_post", tid)
    if "no_player_fields" in spec.attribution:
        corpus.note("characters_without_player", tid)

    # Post styles (forced where a mess kind needs a particular markup)
    for plan in plans:
        plan.style = Style(**vars(styles[plan.person.player or ""]))
    mess_pool = [pl for pl in plans if pl.index > 0]
    for feature, n in spec.mess.items():
        for _ in range(n):
            pl = rng.choice(mess_pool)
            pl.mess.append(feature)
            assert pl.style is not None
            if feature in ("blockquote_reply", "html_entities"):
                pl.style.markup, pl.style.layout = "html", "p"
                if pl.style.italic not in ("i", "em"):
                    pl.style.italic = "i"
            if feature == "bbcode_quote_reply" and pl.style.markup == "html":
                pl.style.markup, pl.style.layout, pl.style.italic = "bbcode", "blank", "*"
            if feature == "html_entities":
                pl.style.curly = False
            if feature == "mojibake":
                pl.style.curly = True

    # Compose
    writer = Writer(rng, setting, genre, plot, place, people, len(plans))
    npc_name, npc_gender = rng.choice(genre["npcs"])
    npc = Person(npc_name, "", npc_gender)   # a solo thread talks to one NPC throughout
    seen_people: list[Person] = []
    structured: list[list[list[Sentence]]] = []
    for plan in plans:
        me = plan.person
        if len(people) == 1:
            other = third = npc
        else:
            prev = plans[plan.index - 1].person if plan.index else None
            others = [p for p in seen_people if p is not me] or [p for p in people if p is not me]
            other = prev if prev is not None and prev is not me else rng.choice(others)
            thirds = [p for p in people if p is not me and p is not other]
            third = rng.choice(thirds) if thirds else other
        first_appearance = me not in seen_people
        structured.append(writer.compose(plan, other, third, plan.index == 0, first_appearance))
        if me not in seen_people:
            seen_people.append(me)

    posts_out: list[dict] = []
    for plan, paragraphs in zip(plans, structured):
        text = render_post(corpus, rng, spec, plan, paragraphs, plans, structured, title, forum, tid)
        posts_out.append({"plan": plan, "text": text})

    # Extra OOC-only / empty posts by members of the thread
    for extra in spec.extra_posts:
        at = rng.randint(2, len(posts_out) - 1)
        member = rng.choice(people)
        style = styles[member.player or ""]
        if extra == "ooc_only_post":
            nxt = rng.choice([p for p in people if p.player != member.player])
            body = rng.choice(BC.OOC_ONLY).format(short=member.short, next=nxt.player)
            text = f"<p>{body}</p>" if style.markup == "html" else body
            posts_out.insert(at, {"plan": PostPlan(-1, member, has_field=False), "text": text})
            corpus.note("ooc_only_post", tid)
        else:
            blank = rng.choice(["<br>", "<br><br>", " "])
            posts_out.insert(at, {"plan": PostPlan(-1, member, has_field=True), "text": blank})
            corpus.note("empty_post_in_good_thread", tid)

    # Timestamps and ids
    when = datetime(2018, 1, 1) + timedelta(days=rng.randint(0, 5 * 365), minutes=rng.randint(0, 1439),
                                            seconds=rng.randint(0, 59))
    number = rng.randint(20000, 990000)
    posts: list[dict] = []
    for item in posts_out:
        plan = item["plan"]
        post = {"post_id": f"p{number}", "author": plan.person.player}
        if plan.has_field:
            post["character"] = plan.person.full
        post["text"] = item["text"]
        post["posted_at"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        posts.append(post)
        number += rng.randint(1, 45)
        gap = weighted(rng, (("minutes", 25), ("hours", 42), ("days", 28), ("week", 5)))
        if gap == "minutes":
            when += timedelta(minutes=rng.randint(4, 90))
        elif gap == "hours":
            when += timedelta(hours=rng.randint(1, 12), minutes=rng.randint(0, 59))
        elif gap == "days":
            when += timedelta(hours=rng.randint(12, 72), minutes=rng.randint(0, 59))
        else:
            when += timedelta(days=rng.randint(3, 9), hours=rng.randint(0, 23))

    # Characters and sheets
    characters = []
    for person in people:
        entry: dict[str, Any] = {"name": person.full}
        if "no_player_fields" not in spec.attribution:
            entry["player"] = person.player
        sheet, sheet_style, special = make_sheet(rng, person, setting, genre, slugify(person.plain_name))
        if sheet is not None:
            entry["sheet"] = sheet
            corpus.note(f"sheet_{sheet_style}", tid)
            if special:
                corpus.note("sheet_setting_specific_field", tid)
        else:
            corpus.note("character_without_sheet", tid)
        characters.append(entry)
    for plan in plans:
        corpus.note(f"post_format_{plan.style.markup if plan.style else 'plain'}", tid)
        if plan.person.nick:
            corpus.note("character_name_with_nickname", tid)
    if any(owned[p.player] > 1 for p in people):
        corpus.note("one_player_two_characters", tid)
    return {
        "thread_id": tid,
        "title": title,
        "forum": forum,
        "url": f"https://forum.example/{forum}/threads/{spec.number}-{slugify(title)}",
        "tags": tags,
        "characters": characters,
        "posts": posts,
    }


def render_post(corpus: Corpus, rng: random.Random, spec: Spec, plan: PostPlan,
                paragraphs: list[list[Sentence]], plans: list[PostPlan],
                structured: list[list[list[Sentence]]], title: str, forum: str, tid: str) -> str:
    style = plan.style
    assert style is not None
    entities = "html_entities" in plan.mess
    me = plan.person
    members = [p.person.player for p in plans if p.person.player != me.player]
    paras = [list(map(list, p)) for p in paragraphs]

    def inline(raw: str) -> None:
        para = rng.choice(paras)
        para[-1] = para[-1] + [("r", " " + raw)]

    for feature in plan.mess:
        if feature == "ooc_inline":
            inline(rng.choice(BC.OOC_INLINE))
        elif feature == "ooc_double_bracket" and rng.random() < 0.5:
            inline(rng.choice(BC.OOC_BRACKETS).format(short=me.short))
    blocks = [("p", render_paragraph(p, style, entities)) for p in paras]
    prefix: list[tuple[str, str]] = []
    suffix: list[tuple[str, str]] = []
    prev = plans[plan.index - 1] if plan.index > 0 else None
    for feature in plan.mess:
        if feature == "ooc_trailing_line":
            suffix.append(("p", rng.choice(BC.OOC_TRAILING).format(short=me.short)))
        elif feature == "ooc_double_bracket" and not any(
                k == "r" and "[[" in t for para in paras for s in para for k, t in s):
            suffix.append(("p", rng.choice(BC.OOC_BRACKETS).format(short=me.short)))
        elif feature == "handle_mention" and members:
            suffix.append(("p", rng.choice(BC.MENTIONS).format(h=rng.choice(members))))
        elif feature == "signature":
            suffix.append(("p", rng.choice(BC.SIGNATURES).format(h=me.player)))
        elif feature == "re_title_line":
            prefix.append(("p", f"RE: {title}" if style.markup != "html" or rng.random() < 0.5
                           else f"<b>RE: {title}</b>"))
        elif feature == "blockquote_reply" and prev is not None:
            excerpt = plain_excerpt(structured[prev.index]).replace("&", "&amp;")
            who = prev.person.player
            prefix.append(("block", f"<blockquote><b>{who} wrote:</b><br>{excerpt}</blockquote>"))
        elif feature == "bbcode_quote_reply" and prev is not None:
            excerpt = plain_excerpt(structured[prev.index])
            prefix.append(("block", f"[quote={prev.person.player}]{excerpt}[/quote]"))
        elif feature == "image":
            name = f"{slugify(me.plain_name)}_{rng.choice(BC.IMAGE_NAMES)}.png"
            url = f"https://forum.example/uploads/{forum}/{name}"
            img = f'<img src="{url}" alt="">' if style.markup == "html" else f"[img]{url}[/img]"
            (prefix if rng.random() < 0.5 else suffix).append(("block", img))
        elif feature == "link":
            target = f"https://forum.example/{forum}/threads/{spec.number + rng.randint(1, 40)}"
            text = rng.choice(BC.LINK_TEXTS)
            if style.markup == "html":
                link = f'<a href="{target}">{text}</a>'
            else:
                link = f"[url={target}]{text}[/url]"
            suffix.append(("p", f"(OOC: {link})" if rng.random() < 0.7 else f"((here's the {link}))"))
    body = assemble(prefix + blocks + suffix, style)
    if plan.header:
        name = me.full
        if plan.header == "bold":
            body = f"**{name}**\n\n{body}"
        elif plan.header == "colon":
            body = f"{name}: {body}" if style.markup != "html" else f"{name}:\n{body}"
        else:
            body = {"html": f"<p><b>{name}</b></p>\n", "bbcode": f"[b]{name}[/b]\n\n"}.get(
                style.markup, f"**{name}**\n") + body
    if "mojibake" in plan.mess:
        body = mojibake(body)
    for feature in plan.mess:
        corpus.note(feature, tid)
        corpus.post_counts[feature] += 1
    words = word_count(body)
    if words >= 250:
        corpus.note("long_post_250_words_plus", tid)
        corpus.post_counts["long_post_250_words_plus"] += 1
    if words < 50:
        corpus.post_counts["short_post_under_50_words"] += 1
        corpus.note("short_post_under_50_words", tid)
    return body


def build_reject(corpus: Corpus, spec: Spec, dump: str) -> dict:
    thread = build_thread(corpus, spec, dump)
    rng = random.Random(f"{SEED}:{spec.thread_id}:reject")
    if spec.kind == "mostly_empty":
        posts = thread["posts"]
        keep = rng.randint(4, 5)
        empty_at = sorted(rng.sample(range(1, len(posts)), len(posts) - keep))
        for i in empty_at:
            posts[i]["text"] = BC.EMPTY_BODIES[i % len(BC.EMPTY_BODIES)]
    return thread


def build_corpus_uncached() -> Corpus:
    corpus = Corpus()
    entries = make_plan()
    # Number and name every line first, so features can cite ids.
    copy_numbers: dict[str, int] = {}
    for dump, items in entries.items():
        rng = random.Random(f"{SEED}:numbers:{dump}")
        number = DUMPS[dump]["first_number"]
        for _, spec in items:
            number += rng.randint(1, 9)
            if spec is not None:
                spec.number = number
                spec.thread_id = f"{DUMPS[dump]['prefix']}-{number}"
            else:
                copy_numbers[dump] = number

    pick = random.Random(f"{SEED}:duplicates")
    def plain_goods(dump: str) -> list[Spec]:
        return [s for _, s in entries[dump] if s is not None and s.kind == "good" and not s.extra_posts]
    moon_goods, star_goods = plain_goods("moonlit"), plain_goods("starport")
    exact_source = pick.choice(moon_goods)
    near_source = pick.choice(star_goods)

    built: dict[str, dict] = {}
    scratch = Corpus()              # rejects and malformed lines: their incidental features are not listed
    scratch.titles = corpus.titles  # ... but titles stay unique across the whole corpus
    for dump, items in entries.items():
        for kind, spec in items:
            if spec is None:
                continue
            if spec.kind == "good":
                thread = build_thread(corpus, spec, dump)
            elif spec.kind in ("truncated", "missing_posts"):
                thread = build_thread(scratch, spec, dump)
            else:
                thread = build_reject(scratch, spec, dump)
            built[spec.thread_id] = thread
            if spec.kind == "good":
                corpus.note("good", spec.thread_id)
                corpus.note(f"good_{spec.n_chars}_characters", spec.thread_id)
            elif spec.kind not in ("truncated", "missing_posts"):
                corpus.note(f"reject_{spec.kind}", spec.thread_id)

    for dump, items in entries.items():
        out: list[str] = []
        for line_no, (kind, spec) in enumerate(items, start=1):
            if spec is None:
                source = exact_source if kind == "exact_copy" else near_source
                thread = json.loads(json.dumps(built[source.thread_id]))
                number = copy_numbers[dump]
                thread["thread_id"] = f"{DUMPS[dump]['prefix']}-{number}"
                thread["forum"] = DUMPS[dump]["forum"]
                forum = DUMPS[dump]["forum"]
                thread["url"] = f"https://forum.example/{forum}/threads/{number}-{slugify(thread['title'])}"
                if kind == "near_copy":
                    near_duplicate_edit(thread, random.Random(f"{SEED}:near"))
                    corpus.note("near_duplicate", source.thread_id)
                    corpus.note("near_duplicate", thread["thread_id"])
                else:
                    corpus.note("exact_duplicate", source.thread_id)
                    corpus.note("exact_duplicate", thread["thread_id"])
                out.append(dumps(thread))
                continue
            thread = built[spec.thread_id]
            if spec.kind == "truncated":
                text = dumps(thread)
                out.append(text[: int(len(text) * 0.57)])
                corpus.note("malformed_invalid_json", f"{DUMPS[dump]['file']}:{line_no}")
                continue
            if spec.kind == "missing_posts":
                del thread["posts"]
                corpus.note("malformed_missing_posts", f"{DUMPS[dump]['file']}:{line_no}")
            out.append(dumps(thread))
        corpus.lines[dump] = out
    corpus.threads = built
    check_corpus(corpus)
    return corpus


def check_corpus(corpus: Corpus) -> None:
    """Fail loudly if an edit to the banks or the plan broke a promise the corpus makes."""
    problems: list[str] = []

    def expect(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    feats = corpus.features
    parsed: dict[str, dict] = {}
    malformed: list[str] = []
    for dump, lines in corpus.lines.items():
        for number, line in enumerate(lines, start=1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                malformed.append(f"{DUMPS[dump]['file']}:{number}")
                continue
            if "posts" not in obj:
                malformed.append(f"{DUMPS[dump]['file']}:{number}")
                continue
            expect(obj["thread_id"] not in parsed, f"duplicate thread_id {obj['thread_id']}")
            parsed[obj["thread_id"]] = obj
        expect(1 <= len(lines) and all("\n" not in line for line in lines), f"{dump}: one record per line")
    expect(malformed == feats["malformed_invalid_json"] + feats["malformed_missing_posts"],
           f"malformed lines {malformed}")
    per_count = Counter()
    without_character = 0
    for tid in feats["good"]:
        t = parsed[tid]
        posts, chars = t["posts"], t["characters"]
        names = [c["name"] for c in chars]
        authors = {p["author"] for p in posts}
        per_count[len(chars)] += 1
        expect(7 <= len(posts) <= 16, f"{tid}: {len(posts)} posts")
        expect(2 <= len(chars) <= 7, f"{tid}: {len(chars)} characters")
        expect(len(authors) >= 2, f"{tid}: one author")
        expect(not authors & set(names), f"{tid}: a handle equals a character name")
        stamps = [p["posted_at"] for p in posts]
        expect(stamps == sorted(set(stamps)), f"{tid}: timestamps")
        expect(len({p["post_id"] for p in posts}) == len(posts), f"{tid}: post ids")
        played: dict[str, list[str]] = {}
        for c in chars:
            if c.get("player"):
                played.setdefault(c["player"], []).append(c["name"])
        speaking = set()
        turns = 0
        for p in posts:
            if not p.get("character"):
                without_character += 1
            text = p["text"].strip()
            mine = played.get(p["author"], [])
            who = p.get("character") or (mine[0] if len(mine) == 1 else None)
            if who is None:
                who = next((n for n in played.get(p["author"], [])
                            if text.startswith((f"**{n}**", f"{n}:", f"[b]{n}[/b]", f"<p><b>{n}</b>"))), None)
            ooc_only = text.startswith(("(OOC", "OOC", "((", "[[", "<p>("))
            if who and text not in ("", "<br>", "<br><br>") and not ooc_only:
                speaking.add(who)
                turns += 1
        expect(speaking == set(names), f"{tid}: speaking characters {sorted(speaking)} != {sorted(names)}")
        expect(turns >= 7, f"{tid}: only {turns} attributable in-character posts")
    for n in range(2, 8):
        expect(per_count[n] >= 2, f"only {per_count[n]} good threads with {n} characters")
    expect(without_character >= 15, f"only {without_character} posts without character")
    for name in ("post_without_character_name_header", "post_without_character_unattributable"):
        expect(corpus.post_counts[name] >= 3, f"{name}: {corpus.post_counts[name]}")
    for name, n in MESS_TARGETS.items():
        expect(corpus.post_counts[name] == n, f"{name}: {corpus.post_counts[name]} posts, wanted {n}")
    for kind in ("too_few_posts", "single_character", "too_many_characters", "mostly_empty"):
        expect(len(feats.get(f"reject_{kind}", [])) >= 2, f"reject_{kind}")
    for tid in feats["reject_too_few_posts"]:
        expect(len(parsed[tid]["posts"]) < 6, f"{tid}: too many posts for a too-few-posts reject")
    for tid in feats["reject_single_character"]:
        expect(len(parsed[tid]["characters"]) == 1, f"{tid}: not single-character")
    for tid in feats["reject_too_many_characters"]:
        expect(len({p.get("character") for p in parsed[tid]["posts"]}) >= 8, f"{tid}: fewer than 8 speakers")
    for tid in feats["reject_mostly_empty"]:
        full = [p for p in parsed[tid]["posts"]
                if p["text"].replace("<br>", "").replace("<br />", "").strip()]
        expect(len(parsed[tid]["posts"]) >= 6 > len(full), f"{tid}: not mostly empty")
    source, copy = feats["exact_duplicate"]
    expect(parsed[source]["posts"] == parsed[copy]["posts"]
           and parsed[source]["characters"] == parsed[copy]["characters"], "exact duplicate differs")
    source, copy = feats["near_duplicate"]
    a = " ".join(p["text"] for p in parsed[source]["posts"]).split()
    b = " ".join(p["text"] for p in parsed[copy]["posts"]).split()
    changed = sum(max(i2 - i1, j2 - j1) for op, i1, i2, j1, j2
                  in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if op != "equal")
    expect(parsed[source]["characters"] == parsed[copy]["characters"] and 4 <= changed <= 16,
           f"near duplicate changed {changed} words")
    for dump, lines in corpus.lines.items():
        size = sum(len(line.encode("utf-8")) + 1 for line in lines)
        expect(size < 600_000, f"{dump}: {size} bytes")
    if problems:
        raise ValueError("sample corpus check failed:\n  " + "\n  ".join(problems))


def near_duplicate_edit(thread: dict, rng: random.Random) -> None:
    """Change a handful of words (about six) across the posts; everything else stays."""
    changed = 0
    posts = thread["posts"]
    order = list(range(len(posts)))
    rng.shuffle(order)
    for i in order:
        if changed >= 6:
            break
        for old, new in BC.NEAR_DUP_SWAPS:
            pattern = re.compile(rf"\b{old}\b")
            if pattern.search(posts[i]["text"]):
                posts[i]["text"] = pattern.sub(new, posts[i]["text"], count=1)
                changed += 1
                break
    assert changed >= 5, changed


def dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=False)


@functools.lru_cache(maxsize=1)
def build_corpus() -> Corpus:
    return build_corpus_uncached()


def _features() -> dict[str, list[str]]:
    return {k: list(v) for k, v in sorted(build_corpus().features.items())}


FEATURES: dict[str, list[str]] = _features()
POST_COUNTS: dict[str, int] = dict(sorted(build_corpus().post_counts.items()))


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def write_inbox(inbox: Path = INBOX) -> dict[str, Path]:
    corpus = build_corpus()
    inbox.mkdir(parents=True, exist_ok=True)
    written = {}
    for dump, lines in corpus.lines.items():
        path = inbox / DUMPS[dump]["file"]
        path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
        written[dump] = path
    return written


def summary() -> str:
    lines = ["FEATURES (thread ids; file:line for malformed lines):"]
    for name, ids in FEATURES.items():
        shown = ", ".join(ids) if len(ids) <= 12 else ", ".join(ids[:12]) + f", ... (+{len(ids) - 12})"
        lines.append(f"  {name} [{len(ids)}]: {shown}")
    lines.append("POST_COUNTS:")
    for name, n in POST_COUNTS.items():
        lines.append(f"  {name}: {n}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    written = write_inbox()
    for dump, path in written.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        lines = len(build_corpus().lines[dump])
        print(f"wrote {path} ({path.stat().st_size} bytes, {lines} lines, sha256 {digest})")
    print(summary())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
