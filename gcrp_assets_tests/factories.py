"""Small canonical threads built in code, for tests that need exact, known input."""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Mira Vell", "Altair \"Arty\" Enzo", "Keri Wolf", "Dorn Hale", "Sela Quint", "Tobin Reed", "Yara Lusk",
         "Fen Marsh", "Ilse Varo"]
HANDLES = ["nightowl_77", "quill&ink", "Brambleberry", "xX_Vex_Xx", "mossy.stones", "ravenmoor", "tallowcandle",
           "grey_wick", "lanternfish"]


# A five-turn sample (the augmented_prompts row shape) with non-alternating model turns and a quoted name.
SAMPLE = {
    "sample_id": "s1", "thread_key": "d/t1", "user_character": "Steve",
    "system": "You are involved in a roleplay with Steve.",
    "turns": [
        {"role": "user", "name": "Steve", "text": "Steve opened the door. \"Evening.\""},
        {"role": "model", "name": "Altair \"Arty\" Enzo", "text": "*Arty nodded.* \"You're late.\""},
        {"role": "model", "name": "Sukuna Gojo", "text": "Sukuna shrugged.\n\nHe said nothing."},
        {"role": "user", "name": "Steve", "text": "Steve laughed."},
        {"role": "model", "name": "Altair \"Arty\" Enzo", "text": "Arty poured two drinks."},
    ],
}


_VERBS = ["pushed", "studied", "lifted", "circled", "tapped", "pocketed", "weighed", "dusted", "hid", "mended",
          "sketched", "polished", "traded", "unwrapped", "tested", "counted", "folded", "sniffed", "balanced", "tilted"]
_THINGS = ["brass key", "river map", "salt jar", "copper lantern", "torn letter", "silver coin", "oak staff",
           "glass vial", "wool cloak", "iron nail", "bone dice", "tin whistle", "red ribbon", "clay cup", "old compass",
           "leather satchel", "wax seal", "chalk stub", "pewter ring", "ash wand"]
_PLACES = ["the mill", "the ford", "the chapel steps", "the ferry dock", "the market arch", "the stable loft",
           "the kiln yard", "the watchtower", "the orchard wall", "the cellar door", "the harbor crane", "the inn kitchen"]
_SAYINGS = ["We should move before the bells", "Nobody followed us, I checked twice", "That is not what the ledger says",
            "Keep your voice down near the guards", "I have seen that mark before", "The rain will cover our tracks",
            "Tell me again who paid you", "It smells like smoke over there", "Trust me, just this once",
            "We split the reward evenly", "Someone moved the crates", "Bring the lantern closer"]


def _post_text(rng, me: str, other: str, style: int) -> str:
    verb, thing, place, saying = (rng.choice(_VERBS), rng.choice(_THINGS), rng.choice(_PLACES), rng.choice(_SAYINGS))
    text = f'{me} {verb} the {thing} near {place}. "{saying}," {me} told {other}, glancing toward {rng.choice(_PLACES)}.'
    return [text, f"<p>{text}</p>", f"[i]{text}[/i]", text.replace(" near ", " beside ")][style % 4]


def thread(thread_id: str, n_characters: int, n_posts: int, **overrides) -> dict:
    """A clean canonical thread; its text is drawn from a generator seeded by the id, so threads differ."""
    rng = random.Random(thread_id)
    chars = [{"name": NAMES[i], "player": HANDLES[i], "sheet": f"<b>Name:</b> {NAMES[i]}<br>Age: {20 + i}<br>Race: Human"}
             for i in range(n_characters)]
    posts = []
    for p in range(n_posts):
        c = p % n_characters
        other = NAMES[(c + 1) % n_characters]
        posts.append({"post_id": f"{thread_id}-p{p + 1}", "author": HANDLES[c], "character": NAMES[c],
                      "text": _post_text(rng, NAMES[c], other, p), "posted_at": f"2021-05-01T12:{p:02d}:00Z"})
    record = {"thread_id": thread_id, "title": f"Thread {thread_id}", "forum": "test-forum", "tags": ["fantasy"],
              "characters": chars, "posts": posts}
    record.update(overrides)
    return record


def write_jsonl(path: Path, records: list, raw_lines: dict[int, str] | None = None) -> Path:
    """Records as JSONL; `raw_lines` puts literal text at given 0-based positions (for malformed lines)."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    for index, text in sorted((raw_lines or {}).items()):
        lines.insert(index, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path
