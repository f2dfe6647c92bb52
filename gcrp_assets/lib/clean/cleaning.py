"""One raw thread to cleaned, attributed, handle-free roleplay turns.

Per post: markup to text, attribution (which may consume a name header), OOC remarks out (what
happens to them is the OOC policy, see `ooc.py`), handles out. What each step removed is counted
on the thread so that nothing is silent:

- `n_posts`: posts in the raw thread;
- `n_empty_posts`: posts with no text left, or less than `min_post_chars` characters;
- `n_ooc_posts`: posts that left no turn because of OOC (OOC-only, or dropped by `drop_post`);
- `n_posts_with_ooc`: posts with at least one OOC remark (the numerator of the OOC share);
- `n_ooc_remarks`: OOC remarks found;
- `n_unattributed_posts`: posts no attribution rule could give a character;
- `n_narrator_posts`: narrator/system messages of the source program (`narrator_policy` decides);
- `n_reasoning_blocks`: LLM reasoning blocks (`<think>…</think>`) removed from posts;
- `max_post_chars`: the longest in-character turn, in characters.

A turn is `{"post_id", "character", "text", "kind"}`: `kind` is `ic` for roleplay, `ooc` for a
name-less `(OOC: …)` turn (policy `keep` only; `character` is then None).

Every function here works one thread at a time, so a caller can stream a dump: `dump_scrubber`
needs one pass over the handles (it accepts any iterable of threads, or `dump_handles` output).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from gcrp_assets.lib.clean.attribution import attribute
from gcrp_assets.lib.clean.markup import to_text, valid_unicode
from gcrp_assets.lib.clean.ooc import OOC_POLICIES, format_ooc, split_ooc
from gcrp_assets.lib.clean.parallel import workers_setting
from gcrp_assets.lib.clean.privacy import HandleScrubber

COUNTERS = ("n_ooc_remarks", "n_ooc_posts", "n_posts_with_ooc", "n_empty_posts", "n_unattributed_posts",
            "n_narrator_posts", "n_reasoning_blocks")


NARRATOR_POLICIES = ("skip", "ooc")
ATTRIBUTION_MODES = ("contract", "author")


@dataclass(frozen=True)
class CleaningOptions:
    """How posts are cleaned and attributed (also `FilterConfig`'s fields: one declaration,
    `orchestration.settings`)."""
    drop_unattributed: bool = field(default=True, metadata={
        "help": "Drop posts no rule attributes to a character (always counted in n_unattributed_posts)."})
    ooc_policy: str = field(default="strip", metadata={
        "help": "Out-of-character remarks: 'strip' (remove them, keep the post), 'keep' (as a name-less "
                "'(OOC: ...)' turn after the post, rendered as a user turn without a name), or 'drop_post' "
                "(drop any post with OOC).",
        "choices": OOC_POLICIES})
    min_post_chars: int = field(default=10, metadata={
        "help": "A post with fewer characters left after cleaning is near-empty: counted in n_empty_posts, "
                "not a turn."})
    narrator_policy: str = field(default="skip", metadata={
        "help": "Narrator/system messages of the source program (SillyTavern /sys, extra.type narrator): 'skip' "
                "them (counted) or keep them as a name-less OOC turn ('ooc', rendered as a user turn).",
        "choices": NARRATOR_POLICIES})
    attribution: str = field(default="contract", metadata={
        "help": "'contract': the input contract's rules (character field, the author's only character, a name "
                "header). 'author': the author column is the speaking character (play scripts, transcripts, "
                "chat logs); authors are then names, not handles.",
        "choices": ATTRIBUTION_MODES})
    workers: int = workers_setting()

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = every usable core), got {self.workers}")
        if self.ooc_policy not in OOC_POLICIES:
            raise ValueError(f"unknown OOC policy {self.ooc_policy!r}; choose one of {OOC_POLICIES}")
        if self.narrator_policy not in NARRATOR_POLICIES:
            raise ValueError(f"unknown narrator policy {self.narrator_policy!r}; choose one of {NARRATOR_POLICIES}")
        if self.attribution not in ATTRIBUTION_MODES:
            raise ValueError(f"unknown attribution mode {self.attribution!r}; choose one of {ATTRIBUTION_MODES}")

    @property
    def authors_are_characters(self) -> bool:
        return self.attribution == "author"


def dump_handles(threads: Iterable[dict]) -> tuple[set[str], set[str]]:
    """(every forum handle, every character name) seen in the threads; one pass, any iterable."""
    handles: set[str] = set()
    names: set[str] = set()
    for thread in threads:
        posts = thread.get("posts") or []
        characters = thread.get("characters") or []
        handles.update(p["author"] for p in posts if p.get("author"))
        handles.update(c["player"] for c in characters if c.get("player"))
        names.update(c["name"] for c in characters if c.get("name"))
        names.update(p["character"] for p in posts if p.get("character"))
    return handles, names


# The Parquet leaf columns of raw_threads that hold handles and names: reading only these skips the post texts.
HANDLE_COLUMNS = ["posts.list.element.author", "posts.list.element.character",
                  "characters.list.element.name", "characters.list.element.player"]


def dump_handles_arrow(batches: Iterable, authors_are_characters: bool = False) -> tuple[set[str], set[str]]:
    """`dump_handles` over Arrow record batches of raw_threads read with `columns=HANDLE_COLUMNS`
    (e.g. `pyarrow.parquet.ParquetFile(path).iter_batches(columns=HANDLE_COLUMNS)`): no per-post Python
    objects, so a dump of any size is scanned in constant memory."""
    import pyarrow.compute as pc

    handles: set[str] = set()
    names: set[str] = set()
    for batch in batches:
        posts = batch.column(batch.schema.get_field_index("posts")).flatten()
        characters = batch.column(batch.schema.get_field_index("characters")).flatten()
        (names if authors_are_characters else handles).update(pc.unique(posts.field("author")).to_pylist())
        handles.update(pc.unique(characters.field("player")).to_pylist())
        names.update(pc.unique(characters.field("name")).to_pylist())
        names.update(pc.unique(posts.field("character")).to_pylist())
    return {h for h in handles if h}, {n for n in names if n}


def dump_scrubber(threads: Iterable[dict]) -> HandleScrubber:
    """Every handle seen anywhere in the dump, so a handle from another thread is caught too."""
    handles, names = dump_handles(threads)
    return HandleScrubber(handles, protected_names=names)


def _name(value: str | None) -> str | None:
    return valid_unicode(value).strip() or None if value else None


def clean_thread(thread: dict, scrubber: HandleScrubber, options: CleaningOptions = CleaningOptions(),
                 may_leak: list[str] | None = None) -> dict:
    """The thread's posts as clean turns, its characters with clean sheets (see the module's docstring). `may_leak`,
    when given, receives every scrubbed text that could still hold a handle (`HandleScrubber.scrub`)."""
    raw_characters = [dict(c, name=_name(c.get("name"))) for c in thread.get("characters") or []]
    raw_characters = [c for c in raw_characters if c["name"]]
    characters_by_player: dict[str, list[str]] = {}
    for character in raw_characters:
        if character.get("player"):
            characters_by_player.setdefault(character["player"], []).append(character["name"])

    # Who plays whom in this thread, for turning a bare handle into the character's name.
    played_by: dict[str, set[str]] = {}
    for player, names in characters_by_player.items():
        played_by.setdefault(player, set()).update(names)
    posts = thread.get("posts") or []
    for post in posts:
        if _name(post.get("character")):
            played_by.setdefault(post.get("author") or "", set()).add(_name(post.get("character")))
    character_of = {handle: next(iter(names)) for handle, names in played_by.items() if len(names) == 1 and handle}

    turns: list[dict] = []
    counts = dict.fromkeys(COUNTERS, 0)
    min_chars = max(1, options.min_post_chars)
    for post in posts:
        post_id = post.get("post_id")
        text = to_text(post.get("text"), counts)
        if (post.get("kind") or "ic") == "narrator":
            counts["n_narrator_posts"] += 1
            narration = scrubber.scrub(text, character_of, may_leak) if text else ""
            if options.narrator_policy == "ooc" and narration:
                turns.append({"post_id": post_id, "character": None, "text": narration, "kind": "ooc"})
            continue
        if not text:
            counts["n_empty_posts"] += 1
            continue
        character_field = _name(post.get("character"))
        if options.authors_are_characters and not character_field:
            character_field = _name(post.get("author"))
        who = attribute(post.get("author") or "", character_field, text, characters_by_player)
        ooc = split_ooc(who.text, tidy=True)  # to_text's output, maybe less a name header: tidy
        counts["n_ooc_remarks"] += len(ooc.remarks)
        counts["n_posts_with_ooc"] += bool(ooc.remarks)
        ooc_turn = None
        if ooc.remarks and options.ooc_policy == "keep":
            ooc_text = scrubber.scrub(format_ooc(ooc.remarks), character_of, may_leak)
            if ooc_text:
                ooc_turn = {"post_id": post_id, "character": None, "text": ooc_text, "kind": "ooc"}
        if ooc.remarks and options.ooc_policy == "drop_post":
            counts["n_ooc_posts"] += 1
            continue
        body = scrubber.scrub(ooc.text, character_of, may_leak, tidy=True)
        if len(body) < min_chars:
            if ooc.remarks:
                counts["n_ooc_posts"] += 1
            else:
                counts["n_empty_posts"] += 1
            if ooc_turn:
                turns.append(ooc_turn)
            continue
        if who.character is None:
            counts["n_unattributed_posts"] += 1
            if options.drop_unattributed:
                if ooc_turn:
                    turns.append(ooc_turn)
                continue
        turns.append({"post_id": post_id, "character": who.character, "text": body, "kind": "ic"})
        if ooc_turn:
            turns.append(ooc_turn)

    ic_turns = [t for t in turns if t["kind"] == "ic"]
    sheets = {c["name"].casefold(): c.get("sheet") for c in raw_characters}
    aliases = {c["name"].casefold(): [a for a in map(_name, c.get("aliases") or []) if a] for c in raw_characters}
    characters = []
    for name in dict.fromkeys(t["character"] for t in ic_turns if t["character"]):  # order of first appearance
        sheet = sheets.get(name.casefold())
        clean_sheet = scrubber.scrub(to_text(sheet), character_of, may_leak) or None if sheet else None
        characters.append({"name": name, "sheet": clean_sheet, "aliases": aliases.get(name.casefold(), [])})
    return {
        "dump": thread.get("dump"),
        "thread_id": thread.get("thread_id"),
        "title": scrubber.scrub(to_text(thread.get("title") or ""), character_of, may_leak) or None,
        "tags": [valid_unicode(str(t)) for t in thread.get("tags") or []],
        "human": _name(thread.get("human")),
        "characters": characters,
        "turns": turns,
        "n_posts": len(posts),
        **counts,
        "max_post_chars": max((len(t["text"]) for t in ic_turns), default=0),
    }


def ic_turns(thread: dict) -> list[dict]:
    """The roleplay turns of a cleaned thread (without name-less OOC turns)."""
    return [t for t in thread["turns"] if t.get("kind", "ic") != "ooc"]
