"""Threads as a SillyTavern data folder: one group chat per thread, a card per character, the human's persona.

`export_samples(samples, out)` takes training samples (`augmented_prompts` rows or the eval split's
`eval_samples.parquet`; one per thread: the sample for the character the dump marks as human, else the
first variant) and writes what SillyTavern 1.12.6 reads from a user's data folder
(`data/<user>/…`; shapes read from its source, see `gcrp_assets_tests/st_fixtures.py`):

- `characters/<Name>.png`: one card per (name, uniform sheet), a PNG with a tEXt `chara` chunk (base64 of
  the V2 card JSON, V1 fields at the root as `charaFormatData` writes them) and a `ccv3` chunk (the same
  with `spec: chara_card_v3`), as `character-card-parser.js write` does. The description field holds the
  uniform sheet, the way the model card tells users to write cards; every other field is empty (no
  greeting, no examples, no system prompt: they would change the prompt).
- `groups/<id>.json`: one group per thread, members = the other speaking characters in order of first
  appearance (the training roster's order), generation mode "Join character cards" with the join
  prefix/suffix that rebuild the training roster (`sillytavern_roster`), `allow_self_responses` on (turns
  need not alternate), the chat locked to the human's persona (`chat_metadata.persona`).
- `group chats/<chat id>.jsonl`: the current format: a header line `{chat_metadata, user_name: "unused",
  character_name: "unused"}`, then one message per turn: the human's turns `is_user` with the persona's
  avatar, the others' with `original_avatar` (their card), a nameless out-of-character turn as a narrator
  message (`/sys`: `extra.type: "narrator"`, the way training renders it as a nameless user turn).
- `User Avatars/<Name>.png` and `personas.json`: the human's characters as personas, their uniform sheet
  as the persona description, in the file Persona Management → Restore reads (`personas.js
  onPersonasRestoreInput`: `personas`, `persona_descriptions`, `default_persona`).
- `gcrp-export.json`: which thread each chat holds (thread key, sample id, human); `README.md`: how to load.

Dates: the samples carry none, so messages get `send_date`s one minute apart from a fixed start (display
only). Names come from `name_map` when the samples use placeholders. Everything is deterministic: the
same samples write the same bytes.
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

from gcrp_assets.lib.formats.sillytavern_roster import RosterTranslation, roster_translation
from gcrp_assets.lib.hashing import sha256_text

MANIFEST = "gcrp-export.json"
PERSONAS = "personas.json"
NARRATOR_NAME = "System"  # `/sys` messages' default name (chat_metadata.narrator_name unset)
NARRATOR_AVATAR = "img/five.png"
_START = datetime(2024, 1, 1, tzinfo=timezone.utc)
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


@dataclass(frozen=True)
class ExportSummary:
    folder: Path
    threads: int
    characters: int
    personas: int
    messages: int


def _safe(name: str) -> str:
    """A file name SillyTavern accepts (`sanitize-filename`'s rules: no reserved characters, no trailing dot)."""
    return _UNSAFE.sub("_", name).strip().rstrip(".")[:100] or "character"


def _png(chunks: dict[str, str], seed: str) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for keyword, text in chunks.items():
        info.add_text(keyword, text)
    digest = sha256_text(seed)
    colour = tuple(96 + int(digest[i:i + 2], 16) // 2 for i in (0, 2, 4))
    out = io.BytesIO()
    Image.new("RGB", (64, 96), colour).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _b64(obj: dict) -> str:
    return base64.b64encode(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")).decode("ascii")


def card_json(name: str, sheet: str) -> dict:
    """The V2 card `charaFormatData` writes for a character whose description is its uniform sheet."""
    data = {"name": name, "description": sheet, "personality": "", "scenario": "", "first_mes": "", "mes_example": "",
            "creator_notes": "Uniform sheet written by gcrp_assets.", "system_prompt": "",
            "post_history_instructions": "", "tags": ["gcrp_assets"], "creator": "", "character_version": "",
            "alternate_greetings": [],
            "extensions": {"talkativeness": "0.5", "fav": False, "world": "",
                           "depth_prompt": {"prompt": "", "depth": 4, "role": "system"}},
            "group_only_greetings": []}
    return {"name": name, "description": sheet, "personality": "", "scenario": "", "first_mes": "", "mes_example": "",
            "creatorcomment": data["creator_notes"], "avatar": "none", "talkativeness": "0.5", "fav": False,
            "tags": ["gcrp_assets"], "spec": "chara_card_v2", "spec_version": "2.0", "data": data}


def card_png(name: str, sheet: str) -> bytes:
    """A card PNG with `chara` (V2) and `ccv3` (V3) chunks."""
    card = card_json(name, sheet)
    return _png({"chara": _b64(card), "ccv3": _b64(dict(card, spec="chara_card_v3", spec_version="3.0"))},
                f"{name}\0{sheet}")


class _Files:
    """Unique file names per (name, sheet): `Name.png`, then `Name (2).png`, … for another sheet."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], str] = {}
        self.used: set[str] = set()

    def file(self, name: str, sheet: str) -> tuple[str, bool]:
        key = (name, sheet)
        if key in self.by_key:
            return self.by_key[key], False
        stem, n = _safe(name), 1
        file = f"{stem}.png"
        while file.casefold() in self.used:
            n += 1
            file = f"{stem} ({n}).png"
        self.used.add(file.casefold())
        self.by_key[key] = file
        return file, True


def one_per_thread(samples: Iterable[dict]) -> list[dict]:
    """The sample shown for each thread: the one for the character the dump marks as human, else the first
    variant; threads in the order they first appear."""
    chosen: dict[str, dict] = {}
    for sample in samples:
        key = sample["thread_key"]
        best = chosen.get(key)
        rank = (not sample.get("human_marked"), sample.get("variant") or 0)
        if best is None or rank < (not best.get("human_marked"), best.get("variant") or 0):
            chosen[key] = sample
    return list(chosen.values())


def real_names(sample: dict) -> tuple[str, list[dict], dict[str, str]]:
    """(the user's character, the turns, the sheets) with real names (placeholders mapped back)."""
    mapping = json.loads(sample["name_map"]) if sample.get("name_map") else {}
    turns = [dict(t, name=mapping.get(t["name"], t["name"]) if t.get("name") else None) for t in sample["turns"]]
    return sample["user_character"], turns, json.loads(sample.get("sheets") or "{}")


def _chat_id(sample: dict) -> str:
    return f"{_safe(sample['thread_id'])[:80]} {sha256_text(sample['thread_key'])[:8]}"


def export_samples(samples: Iterable[dict], out: Path, *, roster: RosterTranslation | None = None) -> ExportSummary:
    """Write the threads of `samples` as a SillyTavern data folder in `out` (see the module docstring)."""
    if roster is None:
        from gcrp_assets.lib.prompts.samples import load_system_template
        roster, why = roster_translation(load_system_template())
        if roster is None:
            raise ValueError(f"the system prompt template cannot be written in SillyTavern's fields: {why}")
    out = Path(out)
    for folder in ("characters", "groups", "group chats", "User Avatars"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    cards, avatars = _Files(), _Files()
    personas: dict[str, str] = {}
    descriptions: dict[str, dict] = {}
    index = []
    messages = 0
    for sample in one_per_thread(samples):
        human, turns, sheets = real_names(sample)
        others = list(dict.fromkeys(t["name"] for t in turns if t["role"] == "model" and t.get("name")))
        member_files = []
        for name in others:
            sheet = sheets.get(name, "")
            file, new = cards.file(name, sheet)
            if new:
                (out / "characters" / file).write_bytes(card_png(name, sheet))
            member_files.append(file)
        avatar, new = avatars.file(human, sheets.get(human, ""))
        if new:
            (out / "User Avatars" / avatar).write_bytes(_png({}, f"persona\0{human}\0{sheets.get(human, '')}"))
            personas[avatar] = human
            descriptions[avatar] = {"description": sheets.get(human, ""), "position": 0, "depth": 2, "role": 0}
        chat_id = _chat_id(sample)
        group_id = str(10**12 + int(sha256_text(sample["thread_key"])[:12], 16) % (9 * 10**12))
        member_of = dict(zip(others, member_files))
        lines = [{"chat_metadata": {"persona": avatar, "gcrp_thread_key": sample["thread_key"]},
                  "user_name": "unused", "character_name": "unused"}]
        for i, turn in enumerate(turns):
            date = (_START + timedelta(minutes=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            base = {"is_system": False, "send_date": date, "mes": turn["text"]}
            if turn["role"] == "user" and turn.get("name"):
                message = {"name": turn["name"], "is_user": True, **base, "force_avatar": f"User Avatars/{avatar}",
                           "extra": {}}
            elif turn["role"] == "user":
                message = {"name": NARRATOR_NAME, "is_user": False, **base, "force_avatar": NARRATOR_AVATAR,
                           "extra": {"type": "narrator"}}
            else:
                file = member_of[turn["name"]]
                message = {"name": turn["name"], "is_user": False, **base, "original_avatar": file,
                           "force_avatar": f"/thumbnail?type=avatar&file={file}", "extra": {}}
            lines.append(message)
        messages += len(turns)
        (out / "group chats" / f"{chat_id}.jsonl").write_text(
            "\n".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")) for line in lines), "utf-8")
        group = {"id": group_id, "name": sample["thread_id"], "members": member_files, "avatar_url": "",
                 "allow_self_responses": True, "activation_strategy": 0, "generation_mode": 1,
                 "disabled_members": [], "chat_metadata": {"persona": avatar}, "fav": False, "chat_id": chat_id,
                 "chats": [chat_id], "auto_mode_delay": 5, "generation_mode_join_prefix": roster.join_prefix,
                 "generation_mode_join_suffix": roster.join_suffix, "hideMutedSprites": False,
                 "past_metadata": {chat_id: {"persona": avatar}}}
        (out / "groups" / f"{group_id}.json").write_text(json.dumps(group, ensure_ascii=False, indent=4), "utf-8")
        index.append({"thread_key": sample["thread_key"], "sample_id": sample["sample_id"], "human": human,
                      "group": f"groups/{group_id}.json", "chat": f"group chats/{chat_id}.jsonl",
                      "persona": avatar, "members": member_files})
    (out / PERSONAS).write_text(json.dumps({"personas": personas, "persona_descriptions": descriptions,
                                            "default_persona": None}, ensure_ascii=False, indent=2), "utf-8")
    (out / MANIFEST).write_text(json.dumps({"threads": index}, ensure_ascii=False, indent=1), "utf-8")
    (out / "README.md").write_text(README, "utf-8")
    return ExportSummary(out, len(index), len(cards.by_key), len(personas), messages)


README = """# Threads as a SillyTavern data folder (written by gcrp_assets)

1. Copy `characters/`, `groups/`, `group chats/` and `User Avatars/` into your SillyTavern user folder
   (`data/default-user/`, or `public/` before 1.12.6), then reload SillyTavern.
2. Persona Management → Restore → `personas.json`: each thread's human character becomes a persona whose
   description is its uniform sheet; each group chat is locked to its persona.
3. Load the adapter's presets (`sillytavern-master.json`, Advanced Formatting → Master Import) and open a
   group: each group joins its members' cards with the prefix and suffix that rebuild the training system
   prompt. `gcrp-export.json` says which thread each chat holds.
"""
