"""Thread-level filters. Each returns a reason code; a thread is kept only if none fires."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FilterRules:
    min_turns: int = 6
    min_characters: int = 2
    max_characters: int = 7


REASONS = {
    "too_few_turns": "fewer roleplay turns than min_turns",
    "empty_posts": "enough posts, but too many were empty or OOC-only to leave min_turns turns",
    "too_few_characters": "fewer speaking characters than min_characters",
    "too_many_characters": "more speaking characters than max_characters",
}


def rejection_reason(thread: dict, rules: FilterRules) -> tuple[str, str] | None:
    """(reason code, human detail) for a cleaned thread, or None to keep it."""
    n_turns = len(thread["turns"])
    n_characters = len(thread["characters"])
    if n_turns < rules.min_turns:
        lost = thread["n_empty_posts"] + thread["n_ooc_posts"]
        if lost and n_turns + lost >= rules.min_turns:
            return "empty_posts", f"{n_turns} turns left after {lost} empty or OOC-only posts (min {rules.min_turns})"
        return "too_few_turns", f"{n_turns} turns (min {rules.min_turns})"
    if n_characters < rules.min_characters:
        return "too_few_characters", f"{n_characters} characters (min {rules.min_characters})"
    if n_characters > rules.max_characters:
        return "too_many_characters", f"{n_characters} characters (max {rules.max_characters})"
    return None
