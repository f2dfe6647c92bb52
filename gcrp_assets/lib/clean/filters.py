"""Thread-level filters. Each returns a reason code; a thread is kept only if none fires.

The checks run in the order of `REASONS` and the first that fires names the reason, so a thread
is counted once in the funnel. Duplicates (`exact_duplicate`, `near_duplicate`) are decided
over the whole dump by `dedup.py`, after these per-thread checks, among the threads they keep.

Over-long posts are rejected (`post_too_long`), not split: splitting would invent turn
boundaries the author never wrote (and a speaker change between the halves that never
happened), and a post of tens of thousands of characters is in practice a pasted lore dump,
chat log or sheet, not a roleplay turn. `tokenized_parquet` windows whole threads at turn
boundaries; a turn that alone exceeds the token budget is dropped and reported there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gcrp_assets.lib.clean import content_policy
from gcrp_assets.lib.clean.language import SCORERS, language_score

LANGUAGES = ("", *SCORERS)  # "" = no language filter


@dataclass(frozen=True)
class FilterRules:
    """The per-thread filters' settings (also `FilterConfig`'s fields: one declaration, `orchestration.settings`)."""
    min_turns: int = field(default=6, metadata={"help": "Keep threads with at least this many roleplay turns."})
    min_characters: int = field(default=2, metadata={
        "help": "Keep threads with at least this many speaking characters."})
    max_characters: int = field(default=7, metadata={
        "help": "Keep threads with at most this many speaking characters."})
    max_post_chars: int = field(default=20_000, metadata={
        "help": "Reject a thread (post_too_long) with a roleplay post longer than this many characters "
                "(rejected, not split); 0 = no limit."})
    max_unattributed_share: float = field(default=0.3, metadata={
        "help": "Reject a thread (too_many_unattributed) when more than this share of its posts is attributable "
                "to no character; 1.0 = never."})
    max_ooc_share: float = field(default=0.5, metadata={
        "help": "Reject a thread (too_much_ooc) when more than this share of its posts hold OOC remarks; "
                "1.0 = never."})
    language: str = field(default="", metadata={
        "help": "'' = no language filter; 'en' = reject threads (not_english) whose English stop-word ratio is "
                "below min_language_score.",
        "choices": LANGUAGES})
    min_language_score: float = field(default=0.2, metadata={
        "help": "Minimum stop-word ratio for the language filter."})

    def __post_init__(self) -> None:
        if self.language not in LANGUAGES:
            raise ValueError(f"no language filter for {self.language!r}; use '' (off) or one of {sorted(SCORERS)}")


# A raw post this many times longer than max_post_chars is rejected before it is cleaned: cleaning never
# lengthens text by more than a few spaces, so such a post could not pass, and cleaning a 50 MB post would take
# gigabytes. Posts between max_post_chars and this bound are cleaned first (markup may be most of their length).
RAW_POST_SLACK = 4

REASONS = {
    **content_policy.REASONS,  # checked first (`stages.run_filtered`), so that it is always recorded
    "too_few_turns": "fewer roleplay turns than min_turns",
    "empty_posts": "enough posts, but too many were empty, near-empty or OOC-only to leave min_turns turns",
    "too_few_characters": "fewer speaking characters than min_characters",
    "too_many_characters": "more speaking characters than max_characters",
    "post_too_long": "a roleplay post longer than max_post_chars (rejected, not split)",
    "too_many_unattributed": "share of posts attributable to no character above max_unattributed_share",
    "too_much_ooc": "share of posts with out-of-character remarks above max_ooc_share",
    "not_english": "English stop-word ratio below min_language_score (language filter on)",
    "exact_duplicate": "same normalized text as an earlier thread (earliest by dump, thread_id is kept)",
    "near_duplicate": "MinHash-estimated word-shingle Jaccard with an earlier thread at or above the threshold",
}


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def raw_rejection_reason(thread: dict, rules: FilterRules) -> tuple[str, str] | None:
    """What can be decided on the raw thread before cleaning it: a post far over max_post_chars."""
    if not rules.max_post_chars:
        return None
    bound = rules.max_post_chars * RAW_POST_SLACK
    longest = max((len(p.get("text") or "") for p in thread.get("posts") or []), default=0)
    if longest > bound:
        return "post_too_long", (f"a post of {longest} characters before cleaning (max {rules.max_post_chars} after "
                                 f"cleaning; over {RAW_POST_SLACK}x that is rejected uncleaned)")
    return None


def rejection_reason(thread: dict, rules: FilterRules) -> tuple[str, str] | None:
    """(reason code, human detail) for a cleaned thread, or None to keep it."""
    turns = [t for t in thread["turns"] if t.get("kind", "ic") != "ooc"]
    n_turns = len(turns)
    n_characters = len(thread["characters"])
    n_posts = thread.get("n_posts") or 0
    unattributed = _share(thread["n_unattributed_posts"], n_posts)
    if n_turns < rules.min_turns and unattributed > rules.max_unattributed_share:
        # The turns are missing because no character could be found for the posts: say so, not "0 turns".
        return "too_many_unattributed", (f"{thread['n_unattributed_posts']} of {n_posts} posts unattributed "
                                         f"({unattributed:.0%}), {n_turns} turns left; if the author column names "
                                         "the speaking character (scripts, transcripts), use attribution 'author'")
    if n_turns < rules.min_turns:
        lost = thread["n_empty_posts"] + thread["n_ooc_posts"]
        if lost and n_turns + lost >= rules.min_turns:
            return "empty_posts", (f"{n_turns} turns left after {lost} empty, near-empty or OOC-only posts "
                                   f"(min {rules.min_turns})")
        return "too_few_turns", f"{n_turns} turns (min {rules.min_turns})"
    if n_characters < rules.min_characters:
        return "too_few_characters", f"{n_characters} characters (min {rules.min_characters})"
    if n_characters > rules.max_characters:
        return "too_many_characters", f"{n_characters} characters (max {rules.max_characters})"
    longest = thread.get("max_post_chars") or max((len(t["text"]) for t in turns), default=0)
    if rules.max_post_chars and longest > rules.max_post_chars:
        return "post_too_long", f"a post of {longest} characters (max {rules.max_post_chars})"
    if unattributed > rules.max_unattributed_share:
        return "too_many_unattributed", (f"{thread['n_unattributed_posts']} of {n_posts} posts unattributed "
                                         f"({unattributed:.0%} > {rules.max_unattributed_share:.0%})")
    with_ooc = thread.get("n_posts_with_ooc", thread["n_ooc_posts"])
    ooc = _share(with_ooc, n_posts)
    if ooc > rules.max_ooc_share:
        return "too_much_ooc", (f"{with_ooc} of {n_posts} posts with OOC remarks "
                                f"({ooc:.0%} > {rules.max_ooc_share:.0%})")
    if rules.language:
        score = language_score("\n".join(t["text"] for t in turns), rules.language)
        if score < rules.min_language_score:
            return "not_english", (f"stop-word score {score:.2f} for {rules.language!r} "
                                   f"(min {rules.min_language_score})")
    return None
