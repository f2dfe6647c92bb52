"""Small canonical threads built in code, for tests that need exact, known input."""

from __future__ import annotations

import json
from pathlib import Path

NAMES = ["Mira Vell", "Altair \"Arty\" Enzo", "Keri Wolf", "Dorn Hale", "Sela Quint", "Tobin Reed", "Yara Lusk",
         "Fen Marsh", "Ilse Varo"]
HANDLES = ["nightowl_77", "quill&ink", "Brambleberry", "xX_Vex_Xx", "mossy.stones", "ravenmoor", "tallowcandle",
           "grey_wick", "lanternfish"]
LINES = [
    "{me} pushed the tavern door open and shook the rain from her cloak. \"Anyone seen the ferryman?\"",
    "{me} glanced up from the map, tapping the river crossing. \"He left at dusk, {other}. Said the tolls doubled.\"",
    "<p>{me} <i>sighed</i> and set a coin on the bar.</p><p>\"Then we cross at the ford,\" {me} said.</p>",
    "[b]{me}[/b] laughed quietly. \"The ford floods at night, {other}. You know that.\"",
    "{me} checked the lantern oil twice before nodding toward the stables.",
    "\"We leave at first light,\" {me} decided, rolling the map tight.",
    "{me} lingered by the fire, turning a small brass key over in her fingers.",
    "{me} caught {other}'s eye across the room and raised a cup in silent agreement.",
]


def thread(thread_id: str, n_characters: int, n_posts: int, **overrides) -> dict:
    chars = [{"name": NAMES[i], "player": HANDLES[i], "sheet": f"<b>Name:</b> {NAMES[i]}<br>Age: {20 + i}<br>Race: Human"}
             for i in range(n_characters)]
    posts = []
    for p in range(n_posts):
        c = p % n_characters
        other = NAMES[(c + 1) % n_characters]
        posts.append({"post_id": f"{thread_id}-p{p + 1}", "author": HANDLES[c], "character": NAMES[c],
                      "text": LINES[p % len(LINES)].format(me=NAMES[c], other=other),
                      "posted_at": f"2021-05-01T12:{p:02d}:00Z"})
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
