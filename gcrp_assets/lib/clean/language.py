"""A tiny English detector: the share of words that are common English function words.

English prose runs at 40-55 % stop words (the, and, of, to, she, was, …); other languages written
in Latin script share few of them, and non-Latin scripts none. No model, no dependency; good
enough to drop a thread written in another language, not to tell dialects apart. Off by default
(`FilterConfig.language`).
"""

from __future__ import annotations

import re

ENGLISH_STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that
the their theirs them themselves then there these they this those through to too under until up very was
we were what when where which while who whom why will with would you your yours yourself yourselves
isn't wasn't don't didn't won't can't couldn't i'm it's he's she's that's there's they're we're you're
i'd i'll i've you'll you've we'll let's
""".split())

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
MAX_WORDS = 3000  # enough to decide; long threads are not read to the end


def english_score(text: str, max_words: int = MAX_WORDS) -> float:
    """Share of the first `max_words` words that are English stop words (0.0 for no words)."""
    words = []
    for match in _WORD.finditer(text):
        words.append(match.group(0).casefold().replace("’", "'"))
        if len(words) >= max_words:
            break
    if not words:
        return 0.0
    return sum(w in ENGLISH_STOPWORDS for w in words) / len(words)


SCORERS = {"en": english_score}


def language_score(text: str, language: str) -> float:
    try:
        return SCORERS[language](text)
    except KeyError:
        raise ValueError(f"no language heuristic for {language!r}; available: {sorted(SCORERS)}") from None
