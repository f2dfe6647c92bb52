"""One raw thread to cleaned, attributed, handle-free roleplay turns.

Per post: markup to text, attribution (which may consume a name header), OOC remarks out,
handles out. What each step removed is counted on the thread so that nothing is silent.
"""

from __future__ import annotations

from dataclasses import dataclass

from gcrp_assets.lib.attribution import attribute
from gcrp_assets.lib.markup import to_text
from gcrp_assets.lib.ooc import split_ooc
from gcrp_assets.lib.privacy import HandleScrubber


@dataclass(frozen=True)
class CleaningOptions:
    drop_unattributed: bool = True  # an unattributed post cannot become a turn; it is counted either way


def dump_scrubber(threads: list[dict]) -> HandleScrubber:
    """Every handle seen anywhere in the dump, so a handle from another thread is caught too."""
    handles: set[str] = set()
    names: set[str] = set()
    for thread in threads:
        handles.update(p["author"] for p in thread["posts"] if p["author"])
        handles.update(c["player"] for c in thread["characters"] if c.get("player"))
        names.update(c["name"] for c in thread["characters"])
        names.update(p["character"] for p in thread["posts"] if p.get("character"))
    return HandleScrubber(handles, protected_names=names)


def clean_thread(thread: dict, scrubber: HandleScrubber, options: CleaningOptions = CleaningOptions()) -> dict:
    characters_by_player: dict[str, list[str]] = {}
    for character in thread["characters"]:
        if character.get("player"):
            characters_by_player.setdefault(character["player"], []).append(character["name"])

    # Who plays whom in this thread, for turning "@handle" into the character's name.
    played_by: dict[str, set[str]] = {}
    for player, names in characters_by_player.items():
        played_by.setdefault(player, set()).update(names)
    for post in thread["posts"]:
        if post.get("character"):
            played_by.setdefault(post["author"], set()).add(post["character"])
    character_of = {handle: next(iter(names)) for handle, names in played_by.items() if len(names) == 1}

    turns: list[dict] = []
    counts = {"n_ooc_remarks": 0, "n_ooc_posts": 0, "n_empty_posts": 0, "n_unattributed_posts": 0}
    for post in thread["posts"]:
        text = to_text(post["text"])
        if not text:
            counts["n_empty_posts"] += 1
            continue
        who = attribute(post["author"], post.get("character"), text, characters_by_player)
        ooc = split_ooc(who.text)
        counts["n_ooc_remarks"] += len(ooc.remarks)
        body = scrubber.scrub(ooc.text, character_of)
        if not body:
            if ooc.remarks:
                counts["n_ooc_posts"] += 1
            else:
                counts["n_empty_posts"] += 1
            continue
        if who.character is None:
            counts["n_unattributed_posts"] += 1
            if options.drop_unattributed:
                continue
        turns.append({"post_id": post["post_id"], "character": who.character, "text": body})

    speaking = {t["character"] for t in turns if t["character"]}
    sheets = {c["name"].casefold(): c.get("sheet") for c in thread["characters"]}
    characters = []
    for name in dict.fromkeys(t["character"] for t in turns if t["character"]):  # order of first appearance
        sheet = sheets.get(name.casefold())
        characters.append({"name": name, "sheet": scrubber.scrub(to_text(sheet), character_of) if sheet else None})
    assert len(characters) == len(speaking)
    return {
        "dump": thread["dump"],
        "thread_id": thread["thread_id"],
        "title": scrubber.scrub(to_text(thread.get("title") or ""), character_of) or None,
        "tags": list(thread.get("tags") or []),
        "characters": characters,
        "turns": turns,
        "n_posts": len(thread["posts"]),
        **counts,
    }
