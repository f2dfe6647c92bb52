"""Threads to training samples: a system prompt that names the human user's character and lists
the others with their uniform sheets, then the turns as `user` (the user's character) or `model`
(everyone else), each with its speaker's name. Turn text is kept exactly as cleaned.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jinja2

from gcrp_assets.lib.hashing import short, sha256_text
from gcrp_assets.lib.sheets import SheetTemplate, normalize_sheet

USER_CHARACTER_STRATEGIES = ("starter",)


def load_system_template(path: str | Path | None = None) -> jinja2.Template:
    source = (Path(path).read_text("utf-8") if path
              else resources.files("gcrp_assets.templates").joinpath("system_prompt.jinja").read_text("utf-8"))
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                             trim_blocks=False, autoescape=False)
    return env.from_string(source)


def thread_key(dump: str, thread_id: str) -> str:
    return f"{dump}/{thread_id}"


def choose_user_characters(thread: dict, strategy: str) -> list[str]:
    if strategy == "starter":
        return [thread["turns"][0]["character"]]
    raise ValueError(f"unknown user-character strategy {strategy!r}; choose one of {USER_CHARACTER_STRATEGIES}")


def build_samples(thread: dict, sheet_template: SheetTemplate, system_template: jinja2.Template,
                  strategy: str = "starter") -> list[dict]:
    sheets = {c["name"]: normalize_sheet(c["name"], c.get("sheet"), sheet_template) for c in thread["characters"]}
    key = thread_key(thread["dump"], thread["thread_id"])
    samples = []
    for user_name in choose_user_characters(thread, strategy):
        others = [{"name": n, "sheet": s} for n, s in sheets.items() if n != user_name]
        system = system_template.render(user={"name": user_name, "sheet": sheets[user_name]}, others=others).strip()
        turns = [{"role": "user" if t["character"] == user_name else "model", "name": t["character"], "text": t["text"]}
                 for t in thread["turns"]]
        samples.append({
            "sample_id": short(sha256_text(f"{key}\0{user_name}")),
            "thread_key": key,
            "dump": thread["dump"],
            "thread_id": thread["thread_id"],
            "user_character": user_name,
            "system": system,
            "turns": turns,
            "sheets": json.dumps(sheets, ensure_ascii=False, sort_keys=True),
        })
    return samples
