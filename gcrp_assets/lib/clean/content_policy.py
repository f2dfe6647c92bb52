"""Content that must never reach training: sexual content involving minors (issue 11).

One real export held sexual roleplay framed around minors. `check_thread` looks at a cleaned thread
(`turns: [{"character", "text", "kind"}]`, `characters: [{"name", "sheet"}]`, `title`) and returns a
`Violation` with reason `minor_sexual_content`, or None. It is on by default (`PolicyConfig.content_policy`).

The rule lists live in `gcrp_assets/templates/content_policy.yaml` (sexual terms, child and school words,
age patterns, exclusions, past markers); a user file (`PolicyConfig.content_policy_rules`) extends them: its
lists are appended to the defaults, its scalars replace them.

The rule. Text is looked at in units: the title, each turn, each character sheet.

1. Prefilter: a thread with no sexual term anywhere (after `sexual_exclusions`: "the opposite sex",
   "naked blade", …) is kept at once. A non-sexual thread with a 15-year-old character, a school, a
   teacher or "kid" as slang is therefore never rejected.
2. Minor indicators are found in every unit: ages up to `max_minor_age` (`Age: 15`, `she was 14`,
   `a 16-year-old`, `fifteen years old`, `Mira (15)`, `16th birthday`, …), child words (`child`, `kid`,
   `little girl`, `underage`, …) and school words (`7th grader`, `middle schooler`, `freshman in high
   school`; not "student", "school", "teacher" or a plain "freshman"). Ignored: ages from 18 on,
   `minor_exclusions` ("with child", "like a kid", "grade school teacher"), `age_exclusions` right after
   the age ("a 12-year-old whisky", "16 years ago", "15 centuries"), ordinals ("18th century"), and
   numbers that are part of a larger one ("twenty-five", "1,015").
3. Reject when either holds:
   a. **Nearby**: a minor indicator and a sexual term within `window_words` words (default 25) of each
      other in the same unit (a turn, a sheet, the title). Any indicator counts here, in the past or not.
   b. **Attached**: an indicator makes a character a minor, and that character is in sexual content.
      A character is a minor when its sheet states it (`Age: 15`, `She is 15`, `Grade: 8th grade`,
      `She is a seventh grader`), or a turn does: `Mira is 15`, `Mira (15)`, `Mira, 15,`, `I'm 15`
      (the turn's author), `she was 14` / `she is a middle schooler` / `she's just a kid` (she/he/who:
      the last character named before it in the turn, else the turn's author; they/you/we are not
      attached, they are often a group). Descriptions of someone else ("a 15-year-old boy", "her
      12-year-old brother", "a girl aged 15", "children under the age of 12") never attach, and neither
      does an age in the past: a past marker (`past_markers_before`/`_after`: "when", "since", "at",
      "years ago", …) within a few words of it in the same sentence. A character is in sexual content
      when it wrote a turn with a sexual term, its sheet holds one, or its name is within
      `window_words` of a sexual term.

So a childhood memory in a thread between adults ("when she was 12 she moved to Paris") does not make
anyone a minor (3b), and the thread is kept unless the memory sits within `window_words` words of
sexual vocabulary (3a): sexual text right next to a child's age is the pattern of the real export, and a
false positive there costs one thread. Slang ("come on, kid") is likewise rejected only next to sexual
vocabulary. The detail of a violation holds only counts and rule names; the evidence (short snippets
with where they are, for the rejects table, never for previews) holds the text.

Cost: the prefilter looks for literal anchors of the sexual terms (`literal_anchors`: "rape" for
`rap(?:e|ed|…)`) in the lower-cased text with one trie-shaped regex (`anchor_regex`), a necessary
condition several times cheaper than the terms' regex; only units holding one run that regex. Age
patterns run only around numbers, copula patterns only before child and school words, all of it only
in threads with a sexual term.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable

import yaml

MINOR_SEXUAL_CONTENT = "minor_sexual_content"
REASONS = {MINOR_SEXUAL_CONTENT: "sexual content together with a participant who is a minor (content policy)"}

_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_ORDINAL_WORDS = {w: i + 1 for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
    "fifteenth sixteenth seventeenth".split())}
_LARGER = re.compile(r"(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|million)"
                     r"(?:[ \t-]+and)?[ \t-]*$", re.I)
# "zero" and "one" are no ages in words ("she was one of them", "he is the one").
_AGE = (r"(?<![\w.,'’-])(?P<age>\d{1,3}(?!\d|[.,:]\d)|(?:"
        + "|".join(sorted((w for w, n in _NUMBER_WORDS.items() if n >= 2), key=len, reverse=True)) + r")\b)")
_SUBJECT = r"(?<![\w'’])(?P<subject>[^\W\d_][\w'’-]*)"
_PRONOUNS_SELF = {"i", "me"}
_PRONOUNS_OTHER = {"she", "he", "who", "xe", "ze"}  # not they/you/we: often a group, or unknown
_NOT_A_PERSON = {"it", "this", "that", "there", "here", "which", "what", "everything", "nothing", "something",
                 "anything", "all", "score", "time", "total", "number", "count"}
_SENTENCE_END = re.compile(r"[.!?\n]")
_WORD = re.compile(r"\S+")
_SPACE_RUN = re.compile(r"\s+")

_LIST_KEYS = ("sexual_terms", "sexual_exclusions", "child_terms", "school_terms", "minor_exclusions",
              "age_patterns", "age_exclusions", "past_markers_before", "past_markers_after")
_SCALAR_KEYS = ("window_words", "max_minor_age", "past_window_words", "attach_copula")
_ATTACH_KINDS = ("subject", "context", "none")


@dataclass(frozen=True)
class PolicyConfig:
    """Whether the policy runs and which extra rules it reads (also `FilterConfig`'s fields: one declaration,
    `orchestration.settings`). Off only on purpose: sexual content with minors must never be trained on."""
    content_policy: bool = field(default=True, metadata={
        "help": "Reject threads where sexual content co-occurs with signs that a participant is a minor "
                "(minor_sexual_content); evidence is kept in rejects.parquet only."})
    content_policy_rules: str = field(default="", metadata={
        "help": "Extra YAML rule file merged with the shipped templates/content_policy.yaml (its lists extend "
                "the shipped ones, its scalars replace them)."})


@dataclass
class Violation:
    reason: str
    detail: str                     # counts and rule names only, safe to log and to show
    evidence: list[str] = field(default_factory=list)  # short snippets with their place: rejects table only


@dataclass(frozen=True)
class _AgeRule:
    name: str
    attach: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class ContentPolicy:
    enabled: bool
    window_words: int
    max_minor_age: int
    past_window_words: int
    sexual: re.Pattern[str]
    sexual_exclusions: re.Pattern[str] | None
    child: re.Pattern[str]
    school: re.Pattern[str]
    minor_exclusions: re.Pattern[str] | None
    age_rules: tuple[_AgeRule, ...]
    age_exclusions: re.Pattern[str] | None
    past_before: re.Pattern[str] | None
    past_after: re.Pattern[str] | None
    attached_term: re.Pattern[str]
    sexual_anchors: frozenset[str] | None   # one of these is in the folded text of every sexual term match
    minor_anchors: frozenset[str] | None    # likewise for child and school terms
    sexual_anchor_re: re.Pattern[str] | None = None   # the anchors as one trie regex (None: always run)
    minor_anchor_re: re.Pattern[str] | None = None


# --- literal anchors: a cheap necessary condition before a regex runs ---------------------------------
_ZERO_WIDTH_ESCAPES = set("bBAZ")
_QUANTIFIER = re.compile(r"(?:\?|\*|\+|\{(\d*)(?:,\d*)?\})[?+]?")  # lazy and possessive too


def _closing(pattern: str, i: int, open_: str, close: str) -> int:
    """The index of the bracket closing the one at `i` (escapes and classes skipped), or -1."""
    depth, j = 0, i
    while j < len(pattern):
        ch = pattern[j]
        if ch == "\\":
            j += 2
            continue
        if ch == "[" and open_ == "(":
            k = _closing(pattern, j, "[", "]")
            if k < 0:
                return -1
            j = k + 1
            continue
        if ch == open_ and (open_ == "(" or depth == 0):
            depth += 1
        elif ch == close and (j > i + 1 or open_ == "("):
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return -1


def _split_top(pattern: str) -> list[str] | None:
    parts, depth, start, j = [], 0, 0, 0
    while j < len(pattern):
        ch = pattern[j]
        if ch == "\\":
            j += 2
            continue
        if ch == "[":
            k = _closing(pattern, j, "[", "]")
            if k < 0:
                return None
            j = k + 1
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(pattern[start:j])
            start = j + 1
        j += 1
    return [*parts, pattern[start:]]


def _literal(text: str) -> str | None:
    """`text` as the literal it matches, or None when it holds any regex syntax."""
    out, j = [], 0
    while j < len(text):
        ch = text[j]
        if ch == "\\" and j + 1 < len(text) and not text[j + 1].isalnum():
            out.append(text[j + 1])
            j += 2
            continue
        if ch in "\\.^$*+?{}[]()|":
            return None
        out.append(ch)
        j += 1
    return "".join(out)


def _class_chars(body: str) -> set[str] | None:
    """The characters of a small literal class (`[- ]`, `'’`), None for ranges, negation or escapes."""
    if not body or body[0] == "^" or "\\" in body or len(body) > 8:
        return None
    if any(body[i] == "-" for i in range(1, len(body) - 1)):
        return None
    return set(body)


def literal_anchors(term: str) -> frozenset[str] | None:
    """Lower-case strings one of which every match of `term` contains, or None when none is found (3+ chars).

    Reads the top-level sequence of `term`: literal characters and groups of literal alternatives that
    are not optional; anything else only ends a run. A term that is an alternation gets the union.
    """
    parts = _split_top(term)
    if parts is None:
        return None
    if len(parts) > 1:
        found: set[str] = set()
        for part in parts:
            anchors = literal_anchors(part)
            if anchors is None:
                return None
            found |= anchors
        return frozenset(found)
    items: list[set[str]] = []
    current: set[str] = {""}        # the literals of the run being read (a product over literal groups)

    def flush() -> None:
        nonlocal current
        if current != {""}:
            items.append(current)
        current = {""}

    j = 0
    while j < len(term):
        ch = term[j]
        atom: set[str] | None = None        # the literal strings this atom matches, None when not literal
        zero_width = False
        if ch == "\\":
            nxt = term[j + 1:j + 2]
            zero_width = nxt in _ZERO_WIDTH_ESCAPES
            atom = None if nxt.isalnum() or not nxt else {nxt}
            j += 2
        elif ch == "[":
            k = _closing(term, j, "[", "]")
            if k < 0:
                return None
            atom = _class_chars(term[j + 1:k])
            j = k + 1
        elif ch == "(":
            k = _closing(term, j, "(", ")")
            if k < 0:
                return None
            inner: str | None = term[j + 1:k]
            j = k + 1
            if inner.startswith(("?=", "?!", "?<=", "?<!")):
                zero_width = True
            else:
                if inner.startswith("?:"):
                    inner = inner[2:]
                elif inner.startswith("?P<"):
                    inner = inner[inner.find(">") + 1:]
                elif inner.startswith("?"):
                    inner = None
                alternatives = _split_top(inner) if inner is not None else None
                literals = [_literal(a) for a in alternatives or []]
                atom = set(literals) if literals and all(a is not None for a in literals) else None
        elif ch in ".^$":
            zero_width = ch != "."
            j += 1
        else:
            atom = {ch}
            j += 1
        quantifier = _QUANTIFIER.match(term, j)
        optional = repeated = False
        if quantifier:
            j = quantifier.end()
            minimum = quantifier.group(1)
            if quantifier.group(0)[0] == "?" and atom is not None:
                atom, quantifier = atom | {""}, None      # `s?`, `(?:ly)?`, `[- ]?`: this or nothing
            else:
                optional = quantifier.group(0)[0] == "*" or quantifier.group(0)[0] == "{" and minimum in ("", "0")
                repeated = True
        if zero_width:
            continue  # matches no text: the run goes on ("sex\\b" is still "sex")
        if atom is None or optional:
            flush()
            continue
        if len(current) * len(atom) > 8:  # few anchors scan faster than many
            flush()
        current = {c + a for c in current for a in atom}
        if repeated:  # `x+`, `(?:ab){2}`: one copy is required, what follows is not adjacent
            flush()
    flush()
    usable = [alts for alts in items if min(len(a) for a in alts) >= 3 and all(a.isascii() for a in alts)]
    if not usable:
        return None
    best = max(usable, key=lambda alts: (min(len(a) for a in alts), -len(alts)))  # longest (rarest), then fewest
    return frozenset(a.lower() for a in best)


def _anchor_set(terms: Iterable[str]) -> frozenset[str] | None:
    """The anchors of all terms, without those that hold a shorter one ("raped" goes when "rape" is
    there: text holding it holds "rape"); None when one term has none (its regex always runs)."""
    found: set[str] = set()
    for term in terms:
        anchors = literal_anchors(str(term))
        if anchors is None:
            return None
        found |= anchors
    return frozenset(a for a in found if not any(b != a and b in a for b in found))


def _fold(text: str) -> str:
    """Text in the case the anchors are in: what re.IGNORECASE matches to an ASCII letter becomes it."""
    if text.isascii():
        return text.lower()
    return text.casefold().replace("\u0307", "").replace("\u0131", "i")


def anchor_regex(anchors: frozenset[str] | None) -> re.Pattern[str] | None:
    """The anchors as one regex shaped like a trie (`s(?:ex|mut)|…`): one pass over the text for all."""
    if anchors is None:
        return None
    trie: dict = {}
    for anchor in anchors:
        node = trie
        for ch in anchor:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict) -> str:
        if "" in node:  # no anchor holds another (see _anchor_set): an anchor ends at a leaf
            return ""
        alternatives = [re.escape(ch) + build(child) for ch, child in sorted(node.items())]
        return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"

    return re.compile(build(trie)) if anchors else re.compile(r"(?!)")


def _has_anchor(folded: str, anchors: re.Pattern[str] | None) -> bool:
    return anchors is None or anchors.search(folded) is not None


# --- loading -----------------------------------------------------------------------------------------
def _read_rules(text: str, source: str) -> dict:
    try:
        spec = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"content policy {source}: not valid YAML: {exc}") from exc
    if not isinstance(spec, dict):
        raise ValueError(f"content policy {source}: expected a mapping of rule lists")
    unknown = set(spec) - set(_LIST_KEYS) - set(_SCALAR_KEYS)
    if unknown:
        raise ValueError(f"content policy {source}: unknown keys {sorted(unknown)}; "
                         f"known: {sorted(_LIST_KEYS + _SCALAR_KEYS)}")
    for key in _LIST_KEYS:
        if key in spec and not isinstance(spec[key] or [], list):
            raise ValueError(f"content policy {source}: {key} must be a list")
        entry_type = dict if key == "age_patterns" else str
        for entry in spec.get(key) or []:
            if not isinstance(entry, entry_type):
                raise ValueError(f"content policy {source}: {key} entries must be "
                                 f"{'mappings' if entry_type is dict else 'strings'} (quote a regex holding "
                                 f"': '), got {entry!r}")
    return spec


def merge_rules(base: dict, extra: dict) -> dict:
    """`extra`'s lists appended to `base`'s, its scalars replacing `base`'s."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = [*(base.get(key) or []), *(value or [])] if key in _LIST_KEYS else value
    return merged


def default_rules() -> dict:
    text = resources.files("gcrp_assets.templates").joinpath("content_policy.yaml").read_text("utf-8")
    return _read_rules(text, "content_policy.yaml")


def _compile(pattern: str, key: str, flags: int = re.I) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(f"content policy {key}: bad regular expression {pattern!r}: {exc}") from exc


def _words(terms: Iterable[str], key: str) -> re.Pattern[str] | None:
    terms = [str(t) for t in terms or [] if str(t).strip()]
    for term in terms:
        _compile(term, key)  # one bad entry is named, not the whole alternation
    return _compile(r"(?<!\w)(?:" + "|".join(f"(?:{t})" for t in terms) + r")(?!\w)", key) if terms else None


def _expand(pattern: str) -> str:
    return pattern.replace("{age}", _AGE).replace("{subject}", _SUBJECT)


def compile_rules(spec: dict, enabled: bool = True) -> ContentPolicy:
    age_rules = []
    for rule in spec.get("age_patterns") or []:
        if not isinstance(rule, dict) or "pattern" not in rule:
            raise ValueError(f"content policy age_patterns: each entry needs a pattern, got {rule!r}")
        attach = rule.get("attach", "none")
        if attach not in _ATTACH_KINDS:
            raise ValueError(f"content policy age_patterns: attach must be one of {_ATTACH_KINDS}, got {attach!r}")
        if "{age}" not in rule["pattern"] or (attach == "subject") != ("{subject}" in rule["pattern"]):
            raise ValueError(f"content policy age_patterns: {rule['pattern']!r} needs {{age}}, and {{subject}} "
                             "exactly when attach is subject")
        age_rules.append(_AgeRule(str(rule.get("name") or "age"), attach,
                                  _compile(_expand(str(rule["pattern"])), "age_patterns")))
    sexual = _words(spec.get("sexual_terms"), "sexual_terms")
    child = _words(spec.get("child_terms"), "child_terms")
    school = _words(spec.get("school_terms"), "school_terms")
    if sexual is None or child is None or school is None:
        raise ValueError("content policy: sexual_terms, child_terms and school_terms must not be empty")
    copula = str(spec.get("attach_copula") or "")
    if "{subject}" not in copula:
        raise ValueError("content policy attach_copula: needs {subject}")
    terms = [*(spec.get("school_terms") or []), *(spec.get("child_terms") or [])]
    attached = _compile(_expand(copula) + r"(?P<term>(?<!\w)(?:" + "|".join(f"(?:{t})" for t in terms) + r")(?!\w))",
                        "attach_copula")
    after = [str(p) for p in spec.get("age_exclusions") or []]
    sexual_anchors = _anchor_set(spec.get("sexual_terms") or [])
    minor_anchors = _anchor_set(terms)
    return ContentPolicy(
        enabled=enabled,
        window_words=int(spec.get("window_words", 25)),
        max_minor_age=int(spec.get("max_minor_age", 17)),
        past_window_words=int(spec.get("past_window_words", 5)),
        sexual=sexual,
        sexual_exclusions=_words(spec.get("sexual_exclusions"), "sexual_exclusions"),
        child=child,
        school=school,
        minor_exclusions=_words(spec.get("minor_exclusions"), "minor_exclusions"),
        age_rules=tuple(age_rules),
        age_exclusions=_compile("(?:" + "|".join(f"(?:{p})" for p in after) + ")", "age_exclusions") if after else None,
        past_before=_words(spec.get("past_markers_before"), "past_markers_before"),
        past_after=_words(spec.get("past_markers_after"), "past_markers_after"),
        attached_term=attached,
        sexual_anchors=sexual_anchors,
        minor_anchors=minor_anchors,
        sexual_anchor_re=anchor_regex(sexual_anchors),
        minor_anchor_re=anchor_regex(minor_anchors),
    )


def load_policy(config: PolicyConfig | None = None) -> ContentPolicy:
    """The shipped rules, extended by `config.content_policy_rules`, compiled once (call once per run)."""
    config = config or PolicyConfig()
    spec = default_rules()
    if config.content_policy_rules:
        path = Path(config.content_policy_rules)
        if not path.is_file():
            raise ValueError(f"content policy rules file {str(path)!r} is not a file")
        spec = merge_rules(spec, _read_rules(path.read_text("utf-8"), str(path)))
    return compile_rules(spec, enabled=config.content_policy)


# --- matching ----------------------------------------------------------------------------------------
@dataclass
class _Unit:
    where: str              # "title", "turn[3] (Mira Vell)", "sheet of Mira Vell"
    author: str | None      # the character a first-person statement is about
    text: str
    sexual: list[tuple[int, int]]
    word_starts: list[int] | None = None

    def word_index(self, pos: int) -> int:
        if self.word_starts is None:
            self.word_starts = [m.start() for m in _WORD.finditer(self.text)]
        return bisect.bisect_right(self.word_starts, pos)


@dataclass
class _Hit:
    start: int
    end: int
    rule: str
    past: bool = False
    subject: str | None = None      # as written, for `subject` rules
    attach: str = "none"


def _spans(pattern: re.Pattern[str] | None, text: str) -> list[tuple[int, int]]:
    return [m.span() for m in pattern.finditer(text)] if pattern is not None else []


def _outside(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    return not any(s < end and start < e for s, e in spans)


def _sexual_spans(policy: ContentPolicy, text: str, folded: str) -> list[tuple[int, int]]:
    if not _has_anchor(folded, policy.sexual_anchor_re):
        return []
    hits = _spans(policy.sexual, text)
    if hits and policy.sexual_exclusions is not None:
        excluded = _spans(policy.sexual_exclusions, text)
        hits = [h for h in hits if _outside(excluded, *h)]
    return hits


def _age_value(token: str) -> int | None:
    token = token.lower()
    if token.isdigit():
        return int(token)
    return _NUMBER_WORDS.get(token, _ORDINAL_WORDS.get(token))


def _sentence_before(text: str, pos: int, n_words: int) -> str:
    chunk = text[max(0, pos - 200):pos]
    ends = list(_SENTENCE_END.finditer(chunk))
    if ends:
        chunk = chunk[ends[-1].end():]
    return " ".join(chunk.split()[-n_words:]) if n_words > 0 else ""


def _sentence_after(text: str, pos: int) -> str:
    chunk = text[pos:pos + 80]
    end = _SENTENCE_END.search(chunk)
    return " ".join((chunk[:end.start()] if end else chunk).split()[:4])


def _is_past(policy: ContentPolicy, text: str, start: int, end: int) -> bool:
    before = _sentence_before(text, start, policy.past_window_words)
    if policy.past_before is not None and before and policy.past_before.search(before):
        return True
    after = _sentence_after(text, end)
    return bool(policy.past_after is not None and after and policy.past_after.match(after))


_DIGITS = re.compile(r"\d+")
_CANDIDATE_WORDS = tuple(_NUMBER_WORDS) + ("birthday",)
_CANDIDATE_REACH = 100   # characters around a number that an age statement may span


def _age_windows(text: str, folded: str) -> list[tuple[int, int]]:
    """Stretches of `text` around its numbers (digits, number words, "birthday"), merged.

    Age patterns run only there: at every position of the text they would cost more than all the rest.
    `folded` (same length as `text` when ASCII; else positions are found in `text` itself).
    """
    source = folded if len(folded) == len(text) else text.lower()
    if len(source) != len(text):
        return [(0, len(text))]
    points = [m.start() for m in _DIGITS.finditer(source)]
    for word in _CANDIDATE_WORDS:
        i = source.find(word)
        while i >= 0:
            j = i + len(word)
            if (i == 0 or not source[i - 1].isalpha()) and (j == len(source) or not source[j].isalpha()):
                points.append(i)
            i = source.find(word, j)
    windows: list[tuple[int, int]] = []
    for point in sorted(points):
        lo, hi = max(0, point - _CANDIDATE_REACH), min(len(text), point + _CANDIDATE_REACH)
        if windows and lo <= windows[-1][1]:
            windows[-1] = (windows[-1][0], hi)
        else:
            windows.append((lo, hi))
    return windows


def _age_hits(policy: ContentPolicy, text: str, folded: str) -> list[_Hit]:
    hits: dict[tuple[str, int, int], _Hit] = {}
    windows = _age_windows(text, folded)
    for rule in policy.age_rules:
        for lo, hi in windows:
            for m in rule.pattern.finditer(text, lo, hi):
                key = (rule.name, *m.span())
                if key in hits:
                    continue
                token = m.group("age") or m.group(0).split()[0]  # an ordinal word ("sixteenth birthday")
                value = _age_value(token)
                if value is None or value > policy.max_minor_age:
                    continue
                age_start = m.start("age") if m.group("age") else m.start()
                if _LARGER.search(text, max(0, age_start - 30), age_start):
                    continue  # "twenty five", "a hundred and five"
                if policy.age_exclusions is not None and policy.age_exclusions.match(text, m.end()):
                    continue
                subject = m.group("subject") if "subject" in rule.pattern.groupindex else None
                if subject is not None and subject.casefold() in _NOT_A_PERSON:
                    continue
                hits[key] = _Hit(m.start(), m.end(), rule.name, _is_past(policy, text, m.start(), m.end()),
                                 subject, rule.attach)
    return list(hits.values())


def _term_hits(policy: ContentPolicy, text: str, folded: str, sheet: bool) -> list[_Hit]:
    if not _has_anchor(folded, policy.minor_anchor_re):
        return []
    excluded = _spans(policy.minor_exclusions, text)
    hits = [_Hit(s, e, rule) for pattern, rule in ((policy.child, "child_terms"), (policy.school, "school_terms"))
            for s, e in _spans(pattern, text) if _outside(excluded, s, e)]
    attached: dict[tuple[int, int], _Hit] = {}
    for hit in hits:  # "she is a seventh grader", "Mira's just a kid": the copula ends where the term does
        for m in policy.attached_term.finditer(text, max(0, hit.start - 80), hit.end):
            s, e = m.span("term")
            if (m.start(), e) in attached or not _outside(excluded, s, e) \
                    or m.group("subject").casefold() in _NOT_A_PERSON:
                continue
            kind = "copula_school_terms" if policy.school.fullmatch(m.group("term")) else "copula_child_terms"
            attached[(m.start(), e)] = _Hit(m.start(), e, kind, _is_past(policy, text, m.start(), e),
                                            m.group("subject"), "subject")
    hits.extend(attached.values())
    if sheet:  # a school word as a field's value ("Grade: 8th grade", "Occupation: middle schooler")
        for hit in [h for h in hits if h.rule == "school_terms"]:
            line_start = text.rfind("\n", 0, hit.start) + 1
            if _FIELD_LABEL.match(text, line_start, hit.start) and not _is_past(policy, text, hit.start, hit.end):
                hits.append(_Hit(hit.start, hit.end, "sheet_school_field", attach="context"))
    return hits


_FIELD_LABEL = re.compile(r"[ \t*_>-]*[^\n:]{1,30}:[ \t*_]*(?:[^\s.!?]+[ \t]+){0,2}\(?$")  # "Grade: 8th grade"


_NOT_A_NAME = {"the", "and", "mister", "miss", "mrs", "sir", "lady", "lord", "dame", "captain", "doctor", "king",
               "queen", "prince", "princess", "old", "young", "little", "big", "von", "van", "del", "junior", "senior"}


class _Names:
    """The thread's character names: full names, first and last names (capitalised, 3+ letters)."""

    def __init__(self, names: Iterable[str]):
        self.of: dict[str, str] = {}
        for name in names:
            self.of.setdefault(name, name)
        for name in names:
            words = name.split()
            for word in {words[0], words[-1]} if words else ():
                if len(word) >= 3 and word[0].isupper() and word.casefold() not in _NOT_A_NAME:
                    self.of.setdefault(word, name)
        self._pattern: re.Pattern[str] | None = None

    @property
    def pattern(self) -> re.Pattern[str] | None:
        if self._pattern is None and self.of:
            keys = sorted(self.of, key=len, reverse=True)
            self._pattern = re.compile(r"(?<![\w'’])(?:" + "|".join(map(re.escape, keys)) + r")(?![\w])")
        return self._pattern

    def resolve(self, word: str) -> str | None:
        return self.of.get(word) or next((full for key, full in self.of.items() if key.casefold() == word.casefold()
                                          and word[:1].isupper()), None)

    def last_before(self, text: str, pos: int) -> str | None:
        if self.pattern is None:
            return None
        last = None
        for last in self.pattern.finditer(text, 0, pos):
            pass
        return self.of[last.group(0)] if last else None

    def spans(self, text: str) -> list[tuple[int, str]]:
        return [(m.start(), self.of[m.group(0)]) for m in self.pattern.finditer(text)] if self.pattern else []


def _snippet(text: str, start: int, end: int, limit: int = 160) -> str:
    start, end = max(0, start - 20), min(len(text), end + 20)
    out = _SPACE_RUN.sub(" ", text[start:end]).strip()
    if len(out) > limit:
        out = out[: limit - 1] + "…"
    return ("…" if start else "") + out + ("…" if end < len(text) and not out.endswith("…") else "")


def _in_dialogue(text: str, pos: int) -> bool:
    """Whether `pos` is inside quotation marks on its line ("…", “…”)."""
    line = text[text.rfind("\n", 0, pos) + 1:pos]
    last_curly = max(line.rfind("“"), line.rfind("”"))
    if last_curly >= 0 and line[last_curly] == "“":
        return True
    return line.count('"') % 2 == 1


def _attached_to(hit: _Hit, unit: _Unit, names: _Names, sheet_of: str | None) -> str | None:
    if hit.attach == "context":
        return sheet_of or names.last_before(unit.text, hit.start) or unit.author
    subject = (hit.subject or "").casefold().replace("’", "'")
    if subject in _PRONOUNS_SELF or subject in ("i'm", "i'"):
        return unit.author
    if subject in _PRONOUNS_OTHER:
        if sheet_of:
            return sheet_of
        if _in_dialogue(unit.text, hit.start):
            return None  # "He's nine," she said: someone the speaker talks about
        return names.last_before(unit.text, hit.start) or unit.author
    return names.resolve(hit.subject or "")


def _units(thread: dict) -> list[tuple[_Unit, str | None]]:
    """(unit, the character whose sheet it is) for the title, every turn and every sheet."""
    units: list[tuple[_Unit, str | None]] = []
    if thread.get("title"):
        units.append((_Unit("title", None, thread["title"], []), None))
    for i, turn in enumerate(thread.get("turns") or []):
        who = turn.get("character")
        where = f"turn[{i}]" + (f" ({who})" if who else f" ({turn.get('kind') or 'ic'})")
        units.append((_Unit(where, who, turn.get("text") or "", []), None))
    for character in thread.get("characters") or []:
        if character.get("sheet") and character.get("name"):
            name = character["name"]
            units.append((_Unit(f"sheet of {name}", name, character["sheet"], []), name))
    return units


def check_thread(thread: dict, policy: ContentPolicy) -> Violation | None:
    """A `Violation` (reason `minor_sexual_content`) when the thread must not reach training, else None."""
    if not policy.enabled:
        return None
    units = _units(thread)
    folded = [_fold(unit.text) for unit, _ in units]
    any_sexual = False
    for (unit, _), fold in zip(units, folded):  # the prefilter: most units hold no anchor, most threads end here
        unit.sexual = _sexual_spans(policy, unit.text, fold)
        any_sexual = any_sexual or bool(unit.sexual)
    if not any_sexual:
        return None

    names = _Names([*(c.get("name") for c in thread.get("characters") or [] if c.get("name")),
                    *(t.get("character") for t in thread.get("turns") or [] if t.get("character"))])
    window = policy.window_words
    nearby: list[tuple[str, str]] = []                    # (rule, evidence)
    minors: dict[str, list[tuple[str, str]]] = {}         # character -> [(rule, evidence)]
    for (unit, sheet_of), fold in zip(units, folded):
        text = unit.text
        if not text:
            continue
        hits = _age_hits(policy, text, fold) + _term_hits(policy, text, fold, sheet_of is not None)
        reported: list[tuple[int, int]] = []
        for hit in hits:
            if unit.sexual and _outside(reported, hit.start, hit.end):
                i = unit.word_index(hit.start)
                close = min(((abs(unit.word_index(s) - i), s, e) for s, e in unit.sexual), default=None)
                if close is not None and close[0] <= window:
                    reported.append((hit.start, hit.end))
                    lo, hi = min(hit.start, close[1]), max(hit.end, close[2])
                    nearby.append((hit.rule, f"{unit.where}: {hit.rule} within {close[0]} words of a sexual "
                                             f"term: “{_snippet(text, lo, hi)}”"))
            if hit.attach != "none" and not hit.past:
                who = _attached_to(hit, unit, names, sheet_of)
                if who:
                    snippet = _snippet(text, hit.start, hit.end)
                    minors.setdefault(who, []).append(
                        (hit.rule, f"{unit.where}: {who} is a minor ({hit.rule}): “{snippet}”"))

    involved: list[tuple[str, str]] = []                   # (character, evidence)
    if minors:
        for unit, sheet_of in units:
            if not unit.sexual:
                continue
            who_here: dict[str, int] = {}
            if unit.author in minors:
                who_here[unit.author] = unit.sexual[0][0]
            for pos, name in names.spans(unit.text):
                if name in minors and name not in who_here:
                    i = unit.word_index(pos)
                    near = [s for s, _ in unit.sexual if abs(unit.word_index(s) - i) <= window]
                    if near:
                        who_here[name] = near[0]
            for name, pos in who_here.items():
                involved.append((name, f"{unit.where}: {name} in sexual content: "
                                       f"“{_snippet(unit.text, pos, pos + 40)}”"))

    if not nearby and not involved:
        return None
    parts = []
    if nearby:
        counts: dict[str, int] = {}
        for rule, _ in nearby:
            counts[rule] = counts.get(rule, 0) + 1
        parts.append(f"{len(nearby)} minor indicator(s) within {window} words of a sexual term ("
                     + ", ".join(f"{r}×{n}" for r, n in sorted(counts.items())) + ")")
    evidence = [e for _, e in nearby[:5]]
    if involved:
        characters = sorted({name for name, _ in involved})
        rules = sorted({rule for name in characters for rule, _ in minors[name]})
        parts.append(f"{len(characters)} character(s) stated to be minors ({', '.join(rules)}) in "
                     f"{len(involved)} unit(s) with sexual terms")
        for name in characters:
            evidence.extend(e for _, e in minors[name][:2])
        evidence.extend(e for _, e in involved[:3])
    return Violation(MINOR_SEXUAL_CONTENT, "; ".join(parts), evidence[:12])
